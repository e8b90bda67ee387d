"""Caption metrics (benchmarks.captions): equal to pycocoevalcap, run against the real toolkit and its Java."""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.captions import (Bleu, CaptionInputError, Cider, JavaNotFoundError, Meteor, MeteorError, Rouge,
                                 Spice, SpiceUnavailableError, caption_speed, clip_score, compute_caption_metrics,
                                 lcs_length, load_predictions, load_references, main, ptb_tokens, skill_subsets,
                                 spice_status, synthetic_corpus, tokenize, tokenize_many)
from benchmarks.captions.spice import CORENLP_JARS, CORENLP_URL
from vlm.metrics.tokenizer import _scan

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(JAVA is None, reason="needs Java (pycocoevalcap's tokenizer and METEOR)")
TOL = 1e-9
BLEU_KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]


def _pycoco_dir() -> Path:
    import importlib.util

    return Path(list(importlib.util.find_spec("pycocoevalcap").submodule_search_locations)[0])


def _java_raw_tokens(lines: list[str]) -> list[list[str]]:
    """Stanford PTBTokenizer 3.4.1 as pycocoevalcap runs it, without the punctuation filter."""
    jar = _pycoco_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(line.replace("\n", " ") for line in lines))
    try:
        out = subprocess.run([JAVA, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                              "-lowerCase", f.name], capture_output=True, check=True).stdout.decode("utf-8")
    finally:
        os.remove(f.name)
    return [line.split(" ") if line else [] for line in out.split("\n")]


def _pycoco_scores(gts: dict, res: dict) -> tuple[dict, dict]:
    from pycocoevalcap.bleu.bleu import Bleu as PBleu
    from pycocoevalcap.cider.cider import Cider as PCider
    from pycocoevalcap.rouge.rouge import Rouge as PRouge

    scores, per = {}, {}
    b, b_per = PBleu(4).compute_score(gts, res, verbose=0)
    for i, k in enumerate(BLEU_KEYS):
        scores[k], per[k] = b[i], list(b_per[i])
    scores["ROUGE_L"], r = PRouge().compute_score(gts, res)
    per["ROUGE_L"] = list(r)
    scores["CIDEr"], c = PCider().compute_score(gts, res)
    per["CIDEr"] = list(c)
    return scores, per


@pytest.fixture(scope="module")
def coco_5000():
    """pycocoevalcap (Java PTBTokenizer + Bleu/Rouge/Cider) on the 5,000-image synthetic corpus, computed once."""
    if JAVA is None:
        pytest.skip("needs Java")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs, preds = synthetic_corpus(5000, n_refs=5, seed=0)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    scores, per = _pycoco_scores(gts, res)
    return {"refs": refs, "preds": preds, "gts": gts, "res": res, "scores": scores, "per": per}


# ---------------------------------------------------------------------------------------------------------
# Equality with pycocoevalcap on the generated corpus (5,000 images x 5 references)

def test_synthetic_corpus_is_seeded_and_exercises_the_tokenizer():
    refs, preds = synthetic_corpus(5000, n_refs=5, seed=0)
    assert len(refs) == len(preds) == 5000 and all(len(v) == 5 for v in refs.values())
    assert synthetic_corpus(50, seed=0) == synthetic_corpus(50, seed=0) != synthetic_corpus(50, seed=1)
    text = "\n".join(c for v in refs.values() for c in v) + "\n".join(preds.values())
    for needle in ["’s", "'s", "n't", "o'clock", "“", "”", "—", "–", "...", "…", "(", "-year-old", "10:30", "2.5",
                   "U.S.", "Mr.", "etc.", "  ", ","]:
        assert text.count(needle) >= 20, needle
    assert sum(c.isupper() for c in text) > 20_000 and sum(c.isdigit() for c in text) > 5_000
    assert any("\n" in c for v in refs.values() for c in v)
    # candidates share words with their references, but are not copies of them
    same = sum(preds[k] in refs[k] for k in refs)
    assert same < 50


def test_tokenization_equals_pycocoevalcap_on_5000_images(coco_5000):
    gts, res = tokenize_many(coco_5000["refs"], {k: [v] for k, v in coco_5000["preds"].items()})
    assert gts == coco_5000["gts"]
    assert res == coco_5000["res"]


def test_metrics_equal_pycocoevalcap_on_5000_images(coco_5000):
    out = compute_caption_metrics(coco_5000["refs"], coco_5000["preds"], per_image=True)
    ref_scores, ref_per = coco_5000["scores"], coco_5000["per"]
    assert 0.1 < ref_scores["Bleu_4"] < ref_scores["Bleu_1"] < 1 and 0.5 < ref_scores["CIDEr"] < 5
    for key in BLEU_KEYS + ["ROUGE_L", "CIDEr"]:
        assert abs(out[key] - ref_scores[key]) < TOL, key
        ours = np.array([out["per_image"][k][key] for k in coco_5000["refs"]])
        assert np.max(np.abs(ours - np.array(ref_per[key]))) < TOL, key


def test_scorer_classes_equal_pycocoevalcap_on_its_own_tokens(coco_5000):
    gts, res = coco_5000["gts"], coco_5000["res"]
    b, b_per = Bleu(4).compute_score(gts, res)
    assert max(abs(x - y) for x, y in zip(b, [coco_5000["scores"][k] for k in BLEU_KEYS])) < TOL
    assert max(np.max(np.abs(np.array(x) - coco_5000["per"][k])) for x, k in zip(b_per, BLEU_KEYS)) < TOL
    r, r_per = Rouge().compute_score(gts, res)
    assert abs(r - coco_5000["scores"]["ROUGE_L"]) < TOL
    assert np.max(np.abs(r_per - coco_5000["per"]["ROUGE_L"])) < TOL
    c, c_per = Cider().compute_score(gts, res)
    assert abs(c - coco_5000["scores"]["CIDEr"]) < TOL
    assert np.max(np.abs(c_per - coco_5000["per"]["CIDEr"])) < TOL


@needs_java
def test_scorers_equal_pycocoevalcap_on_edge_cases():
    rng = random.Random(3)
    words = "a the dog dogs cat red blue two on in of runs".split()
    gts, res = {}, {}
    for i in range(60):
        gts[i] = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 7))]
        res[i] = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))]
    res[0] = [""]                                                   # empty candidate
    gts[1] = ["", "a dog"]                                          # empty reference
    res[2] = [" ".join(rng.choice(words) for _ in range(90))]      # longer than one 64-bit LCS word
    gts[3] = ["the the the the dog", "the dog"]                     # clipping
    res[3] = ["the the the the the the"]
    gts[4], res[4] = ["3\u00a01/2 cups of flour"], ["3\u00a01/2 cups"]  # no-break space inside a token
    ours = {}
    b, b_per = Bleu(4).compute_score(gts, res)
    ours.update({k: (b[i], b_per[i]) for i, k in enumerate(BLEU_KEYS)})
    ours["ROUGE_L"] = Rouge().compute_score(gts, res)
    ours["CIDEr"] = Cider().compute_score(gts, res)
    ref_scores, ref_per = _pycoco_scores(gts, res)
    for key in ours:
        assert abs(ours[key][0] - ref_scores[key]) < TOL, key
        assert np.max(np.abs(np.array(ours[key][1]) - np.array(ref_per[key]))) < TOL, key


def test_scorers_reject_what_pycocoevalcap_asserts():
    with pytest.raises(ValueError, match="same ids.*missing in res: \\['b'\\]"):
        Bleu().compute_score({"a": ["x"], "b": ["y"]}, {"a": ["x"]})
    with pytest.raises(ValueError, match="res\\['a'\\] must be a list with exactly one caption"):
        Cider().compute_score({"a": ["x"]}, {"a": ["x", "y"]})
    with pytest.raises(ValueError, match="gts\\['a'\\] must be a non-empty list"):
        Rouge().compute_score({"a": []}, {"a": ["x"]})


# ---------------------------------------------------------------------------------------------------------
# The tokenizer against the Java tokenizer itself

TRICKY = [
    "A man's dog, don't go.", "It's 10:30 a.m. and the U.S. flag is up.", "Two “quoted” ‘words’ — and – dashes...",
    "(Parentheses) [brackets] {braces}", "o'clock O'Clock rock'n'roll y'all 'twas 'tis c'mon ’90s '90s",
    "cannot Cannot gonna WANNA gotta lemme gimme can't won't isn't I'm they're we've he'll she'd",
    "well-known x-ray 5-year-old black-and-white T-shirt anti-war pro-choice",
    "Mr. Smith met Dr. Jones at St. Paul's etc. in Calif. and Inc.", "a plan B.", "The end.", "plan B. the end",
    "e.g. i.e. a.k.a. Ph.D. p.m. P.M. No. 5", "3 1/2 cups, ½ a cup, £5, €10, $20, 50¢, US$3, 1,000 and 3.14",
    "555-1234 (555) 123-4567 12/25/2020", "dog.. cat... bird.... fish . . . end.", "multiple   spaces\tand\ttabs",
    "a newline\ninside", "WHAT?! no!! yes?? ok; fine: done -- over ---- ----- — –", "café naïve Zürich 😀 emoji",
    "“Quotes” at \"start\" and 'single' too'", "children's toys, the boys' bikes, James' hat, man’s hat",
    "www.example.com http://x.org/a?b=c mail@example.com @user #tag", ":) :-( ;) ^_^ <3", "AT&T R&D S&P-500 c++ C#",
    "", "   ", "ALL CAPS SENTENCE WITH DON'T AND IT'S.", "Ellipsis… and en–dash and em—dash", "x\u00a0y  \u00a0.com",
    "soft\u00adhyphen, ¿qué? ¡sí!", "photo.jpg file.txt dog.", "I. The", "A. An", "a. the",
]


@needs_java
def test_tokenizer_equals_java_tokens_on_tricky_captions():
    java = _java_raw_tokens(TRICKY)
    assert ptb_tokens(TRICKY) == java
    assert ptb_tokens(TRICKY, engine_only=True) == java
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    theirs = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(TRICKY)})
    assert tokenize({i: [c] for i, c in enumerate(TRICKY)}) == theirs
    # spot checks of what the rules do (values from the Java tokenizer)
    got = dict(zip(TRICKY, ptb_tokens(TRICKY)))
    assert got["A man's dog, don't go."] == ["a", "man", "'s", "dog", ",", "do", "n't", "go", "."]
    assert got["a plan B."] == ["a", "plan", "b", "."]        # "B." before "The" (next caption): acronym split
    assert got["plan B. the end"] == ["plan", "b.", "the", "end"]
    assert got["(Parentheses) [brackets] {braces}"][0] == "-lrb-"   # kept by pycocoevalcap: its list says -LRB-


def _random_caption(rng: random.Random) -> str:
    pieces = list("aAbBcCdDeEnNoOsStTmMyYzZ0123456789 .,;:!?'\"()-_/&#@$%*+=<>[]{}`~^|") + list(
        "’‘“”—–…½£€¢°×éñü\u00a0\u00ad\t") + ["'s", "n't", "Mr.", "U.S.", "The ", "A ", "etc.", "&amp;", "&quot;",
                                           "http://", "www.", ".com", "...", "--", "'90s", "o'", ":)", "1/2", " 3 ",
                                           "555 ", "-555-", "dog. ", "Co. ", "p.m. ", "2 "]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))


@needs_java
def test_tokenizer_equals_java_on_random_text():
    rng = random.Random(0)
    lines = [_random_caption(rng) for _ in range(3000)]
    java = _java_raw_tokens(lines)
    assert ptb_tokens(lines) == java
    assert ptb_tokens(lines, engine_only=True) == java
    from vlm.metrics.tokenizer import PUNCTUATIONS

    expected = [" ".join(w for w in " ".join(t).rstrip().split(" ") if w not in PUNCTUATIONS) for t in java]
    assert _scan(lines, kept=True) == expected                 # the bulk path used by tokenize()


def test_chunk_shortcuts_equal_the_rule_engine():
    # Every word shape the chunk cache tokenizes without the engine, in contexts that could matter.
    import itertools

    from vlm.metrics.tokenizer import _SIMPLE_CHUNK, _ChunkCache, _lexer

    lexer = _lexer()
    cache = _ChunkCache(lexer)
    words = ["dog", "DOG", "a", "I", "x2", "cannot", "Gonna", "Mr", "etc", "co", "no", "d", "Joe", "do", "Ann",
             "3", "555", "5-year-old", "T-Shirt", "anti-war", "555-123-4567", "1-2"]
    checked = 0
    for lead, w, suffix, punct, trail in itertools.product(["", '"', "“", "‘"], words, ["", "'s", "’s", "n't"],
                                                            ["", ",", ".", "!", ";"], ["", "”"]):
        chunk = lead + w + suffix + punct + trail
        m = _SIMPLE_CHUNK.fullmatch(chunk)
        shortcut = cache._simple(m) if m else None
        if shortcut is None:
            continue
        for after in [" The x", " 1/2", " . .", " ltd", " A", "\nThe x", ""]:
            if (chunk[-1] == "." and after.startswith(" .")) or (chunk[-1].isdigit() and after[1:2].isdigit()):
                continue  # the cache re-scans these in context
            text, pos, toks = chunk + after, 0, []
            while pos < len(chunk):
                tok, pos = lexer.next_token(text, pos)
                if tok is not None:
                    toks.append(tok.lower())
            assert (tuple(toks), pos) == (shortcut, len(chunk)), (chunk, after)
            checked += 1
    assert checked > 10_000


def test_chunk_cache_paths_equal_the_rule_engine():
    refs, preds = synthetic_corpus(800, seed=1)
    caps = [c for v in refs.values() for c in v] + list(preds.values())
    engine = _scan(caps, kept=True, engine_only=True)
    assert _scan(caps, kept=True) == engine
    assert ptb_tokens(caps) == ptb_tokens(caps, engine_only=True)


# ---------------------------------------------------------------------------------------------------------
# ROUGE-L's LCS

def test_lcs_length_matches_pycocoevalcap_dynamic_programming():
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(1)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 150))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 80))]
        assert lcs_length(a, b) == my_lcs(a, b)


# ---------------------------------------------------------------------------------------------------------
# METEOR (Java, ~10 s start-up: both JVMs load side by side)

@needs_java
def test_meteor_equals_pycocoevalcap():
    from pycocoevalcap.meteor.meteor import Meteor as PMeteor

    gts = {"1": ["a dog runs on the grass", "a brown dog in a field"], "2": ["two cats sleep on a bed", "cats sleeping"],
           "3": ["a man rides a red bike", "a person on a bicycle"]}
    res = {"1": ["a dog running on grass"], "2": ["a cat on a bed"], "3": ["a man riding a red bicycle"]}
    theirs = PMeteor()  # starts its JVM now, loading while ours runs
    try:
        corpus, per = Meteor(timeout=300).score_subsets(gts, res, [list(gts), ["1", "3"]])
        t_score, t_per = theirs.compute_score(gts, res)
        t_sub, _ = theirs.compute_score({k: gts[k] for k in ("1", "3")}, {k: res[k] for k in ("1", "3")})
    finally:
        del theirs
    assert corpus[0] == pytest.approx(t_score, abs=1e-12)
    assert per == pytest.approx(t_per, abs=1e-12)
    assert corpus[1] == pytest.approx(t_sub, abs=1e-12)
    assert 0.2 < corpus[0] < 0.8


@needs_java
def test_meteor_skips_what_the_jvm_prints_on_stdout(tmp_path, caplog):
    # HotSpot prints its warnings on stdout ("OpenJDK 64-Bit Server VM warning: ..."); such a line used to shift
    # every answer by one, so a statistics line was read where a score was expected
    real = shutil.which("java")
    fake = tmp_path / "java"
    fake.write_text(f"#!/bin/sh\necho 'OpenJDK 64-Bit Server VM warning: a message on stdout'\nexec {real} \"$@\"\n")
    fake.chmod(0o755)
    gts = {"1": ["a dog runs on the grass", "a brown dog in a field"], "2": ["two cats sleep on a bed"]}
    res = {"1": ["a dog running on grass"], "2": ["a cat on a bed"]}
    with caplog.at_level("WARNING", logger="benchmarks.captions.meteor"):
        noisy = Meteor(timeout=300, java=str(fake)).compute_score(gts, res)
    assert "VM warning" in caplog.text
    clean = Meteor(timeout=300).compute_score(gts, res)
    assert noisy == clean
    assert 0.2 < clean[0] < 0.8 and len(clean[1]) == 2


def _children() -> list[int]:
    me, kids = os.getpid(), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    kids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return kids


@needs_java
def test_meteor_timeout_raises_and_leaves_no_process():
    before = set(_children())
    with pytest.raises(MeteorError, match="timed out after 0.5 s"):
        Meteor(timeout=0.5).compute_score({"1": ["a dog"]}, {"1": ["a dog"]})
    assert set(_children()) - before == set()


def test_meteor_without_java_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="no 'java' executable is on PATH.*default-jre-headless"):
        Meteor().compute_score({"1": ["a dog"]}, {"1": ["a dog"]})


# ---------------------------------------------------------------------------------------------------------
# SPICE: only with Stanford CoreNLP installed, never downloaded

def test_spice_status_names_the_missing_jars_and_where_they_go(tmp_path):
    (tmp_path / "spice-1.0.jar").write_bytes(b"")
    ok, message = spice_status(tmp_path)
    assert not ok
    assert CORENLP_URL in message and str(tmp_path / "lib") in message and CORENLP_JARS[1] in message
    with pytest.raises(SpiceUnavailableError, match="never downloads"):
        Spice(spice_dir=tmp_path)


def test_compute_caption_metrics_notes_spice_when_unavailable():
    ok, _ = spice_status()
    if ok:
        pytest.skip("Stanford CoreNLP is installed here")
    out = compute_caption_metrics({"1": ["A dog runs."]}, {"1": "A dog runs."}, spice=True)
    assert "SPICE" not in out
    assert any(CORENLP_URL in n for n in out["notes"])


def test_spice_wrapper_runs_the_jar_and_parses_its_output(tmp_path):
    # A stand-in for `java -jar spice-1.0.jar`: checks the command line and writes SPICE's output format.
    (tmp_path / "spice-1.0.jar").write_bytes(b"")
    (tmp_path / "lib").mkdir()
    for j in CORENLP_JARS:
        (tmp_path / "lib" / j).write_bytes(b"")
    fake = tmp_path / "java"
    fake.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
assert args[:3] == ["-jar", "-Xmx1G", "spice-1.0.jar"] and "-subset" in args and "-silent" in args, args
data = json.load(open(args[3]))
out = [{{"image_id": d["image_id"], "scores": {{"All": {{"pr": 0.5, "re": 0.5,
        "f": None if d["test"] == "nan" else len(d["test"]) / 10}}}}}} for d in data]
json.dump(out, open(args[args.index("-out") + 1], "w"))
""")
    fake.chmod(0o755)
    spice = Spice(java=str(fake), memory="1G", spice_dir=tmp_path, cache_dir="")
    score, per = spice.compute_score({"b": ["x"], "a": ["y"]}, {"b": ["abcd"], "a": ["ab"]})
    assert [p["All"]["f"] for p in per] == [0.4, 0.2]           # in gts order
    assert score == pytest.approx(0.3)
    score, per = spice.compute_score({"a": ["y"]}, {"a": ["nan"]})
    assert np.isnan(per[0]["All"]["f"]) and np.isnan(score)      # pycocoevalcap: None -> NaN


# ---------------------------------------------------------------------------------------------------------
# CLIP-S / RefCLIP-S

class ColourRetriever:
    """Images: one-hot of their dominant channel. Texts: colour words mixed with a little 'other'."""

    NAMES = ("red", "green", "blue")

    def encode_images(self, images):
        import torch

        return torch.stack([torch.eye(4)[int(np.argmax(np.asarray(im).reshape(-1, 3).mean(0)))] for im in images])

    def encode_texts(self, texts):
        import torch

        rows = []
        for t in texts:
            v = torch.tensor([float(n in t) for n in self.NAMES] + [0.5])
            rows.append(v / v.norm())
        return torch.stack(rows)


def test_clip_s_and_refclip_s_follow_hessel_et_al():
    from PIL import Image

    images = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 250, 0), (0, 0, 250)]]
    cands = ["a red car", "a blue bird", "a green and blue kite"]
    refs = [["red car"], ["green field", "a bird"], ["blue sky"]]
    out = clip_score(ColourRetriever(), images, cands, references=refs)
    # cos(image, text) = weight of the image's colour in the normalised text vector
    cos = np.array([1 / np.sqrt(1.25), 0.0, 1 / np.sqrt(2.25)])
    clip_s = 2.5 * np.maximum(cos, 0)
    assert out["per_image"]["CLIP-S"] == pytest.approx(clip_s.tolist(), abs=1e-6)
    assert out["CLIP-S"] == pytest.approx(clip_s.mean(), abs=1e-6)
    # best candidate-reference text similarity: "red car" = the candidate's vector; "a bird" shares only the
    # 0.5 component (beats "green field": 0.25 / 1.25); "blue sky" shares blue and the 0.5 component
    text = np.array([1.0, 0.5 / np.sqrt(1.25), 1.25 / (1.5 * np.sqrt(1.25))])
    hm = np.where(clip_s + text > 0, 2 * clip_s * text / np.maximum(clip_s + text, 1e-12), 0.0)
    assert out["per_image"]["RefCLIP-S"] == pytest.approx(hm.tolist(), abs=1e-6)
    assert out["per_image"]["RefCLIP-S"][1] == 0.0                   # CLIP-S 0 -> harmonic mean 0


def test_clip_score_rejects_unnormalised_embeddings():
    from PIL import Image

    class Bad(ColourRetriever):
        def encode_texts(self, texts):
            return 3 * super().encode_texts(texts)

    with pytest.raises(ValueError, match="L2-normalised"):
        clip_score(Bad(), [Image.new("RGB", (4, 4), (255, 0, 0))], ["a red car"])


# ---------------------------------------------------------------------------------------------------------
# Inputs, outputs, CLI

def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_loaders_read_both_formats_of_each_file(tmp_path):
    plain = load_references(_write(tmp_path / "r1.json", {"1": ["A dog.", "A pup."], "2": ["A cat."]}))
    coco = load_references(_write(tmp_path / "r2.json", {"images": [], "annotations": [
        {"image_id": 1, "id": 10, "caption": "A dog."}, {"image_id": 2, "id": 11, "caption": "A cat."},
        {"image_id": 1, "id": 12, "caption": "A pup."}]}))
    assert plain == coco == {"1": ["A dog.", "A pup."], "2": ["A cat."]}
    p1 = load_predictions(_write(tmp_path / "p1.json", {"1": "a dog", "2": ["a cat"]}))
    p2 = load_predictions(_write(tmp_path / "p2.json", [{"image_id": 1, "caption": "a dog"},
                                                         {"image_id": 2, "caption": "a cat"}]))
    assert p1 == p2 == {"1": "a dog", "2": "a cat"}


@pytest.mark.parametrize("data, pattern", [
    ([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}], r"item 1: a second prediction for image_id 1"),
    ([{"image_id": 1}], r"item 0 has no 'caption' field"),
    ([{"image_id": 3, "caption": "  "}], r"item 0 \(image_id 3\): empty caption"),
    ({"7": 5}, r"id '7': caption must be a string, got int"),
    ({"7": ["a", "b"]}, r"id '7': expected one caption, got a list of 2"),
    ("a dog", r"expected \{id: caption\} or COCO results"),
])
def test_prediction_errors_name_the_file_and_the_item(tmp_path, data, pattern):
    path = _write(tmp_path / "preds.json", data)
    with pytest.raises(CaptionInputError, match=str(path).replace(".", r"\.") + ": " + pattern):
        load_predictions(path)


def test_reference_errors_name_the_file_and_the_item(tmp_path):
    with pytest.raises(CaptionInputError, match=r"refs\.json: id '4': references must be a list of captions, got a single"):
        load_references(_write(tmp_path / "refs.json", {"4": "a dog"}))
    with pytest.raises(CaptionInputError, match=r"refs\.json: annotations\[1\] has no 'image_id' field"):
        load_references(_write(tmp_path / "refs.json", {"annotations": [{"image_id": 1, "caption": "a"},
                                                                        {"caption": "b"}]}))
    bad = tmp_path / "broken.json"
    bad.write_text('{"1": ["a",]}')
    with pytest.raises(CaptionInputError, match=r"broken\.json line 1: not a valid .* file \(column"):
        load_references(bad)


def test_missing_prediction_is_an_error_naming_the_ids():
    with pytest.raises(CaptionInputError, match=r"no prediction for 2 ids of references: '2', '3'"):
        compute_caption_metrics({"1": ["a"], "2": ["b"], "3": ["c"]}, {"1": "a"})
    with pytest.raises(CaptionInputError, match=r"predictions: id '1': empty caption"):
        compute_caption_metrics({"1": ["a"]}, {"1": ""})


def test_metric_selection_and_key_names():
    refs, preds = synthetic_corpus(40, seed=2)
    out = compute_caption_metrics(refs, preds, metrics=["rouge_l"])
    assert [k for k in out if k not in ("n_images", "notes")] == ["ROUGE_L"]
    full = compute_caption_metrics(refs, preds)
    assert list(full)[:6] == BLEU_KEYS + ["ROUGE_L", "CIDEr"]
    assert out["ROUGE_L"] == full["ROUGE_L"]
    with pytest.raises(ValueError, match="unknown metric 'BLEURT'"):
        compute_caption_metrics(refs, preds, metrics=["BLEURT"])


def test_skill_subsets_are_scored_as_their_own_corpus():
    from pycocoevalcap.cider.cider import Cider as PCider

    refs, preds = synthetic_corpus(400, seed=4)
    subsets = skill_subsets(refs)
    assert 0 < len(subsets["counting"]) < 400 and 0 < len(subsets["gender"]) < 400
    assert all(any(w in r.lower() for r in refs[k] for w in ("two", "three", "four", "five", "six"))
               for k in subsets["counting"])
    out = compute_caption_metrics(refs, preds, skills=True, per_image=True)
    assert out["skills"]["color"]["n_images"] == len(subsets["color"])
    sub = subsets["counting"]
    gts, res = tokenize_many({k: refs[k] for k in sub}, {k: [preds[k]] for k in sub})
    expected, _ = PCider().compute_score(gts, res)                   # pycocoevalcap run on the subset
    assert out["skills"]["counting"]["CIDEr"] == pytest.approx(expected, abs=TOL)
    mean_of_full = np.mean([out["per_image"][k]["CIDEr"] for k in sub])
    assert abs(out["skills"]["counting"]["CIDEr"] - mean_of_full) > 1e-3   # the document frequencies differ
    assert any("document frequencies" in n for n in out["notes"])


def test_cli_prints_and_writes_results(tmp_path, capsys):
    refs, preds = synthetic_corpus(30, seed=5)
    r = _write(tmp_path / "refs.json", {"annotations": [{"image_id": int(k), "caption": c}
                                                         for k, v in refs.items() for c in v]})
    p = _write(tmp_path / "preds.json", [{"image_id": int(k), "caption": c} for k, c in preds.items()])
    rc = main(["--refs", str(r), "--preds", str(p), "--out", str(tmp_path / "out"), "--per-image", "--skills"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == compute_caption_metrics(refs, preds, per_image=True, skills=True)
    saved = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert saved["results"]["CIDEr"] == printed["CIDEr"] and saved["config"]["skills"] is True
    report = (tmp_path / "out" / "captions.md").read_text()
    assert "| CIDEr |" in report and "## Skill subsets" in report


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    r = _write(tmp_path / "refs.json", {"1": ["a dog"], "2": ["a cat"]})
    p = _write(tmp_path / "preds.json", {"1": "a dog"})
    assert main(["--refs", str(r), "--preds", str(p)]) == 2
    assert f"{p}: no prediction for 1 id of {r}: '2'" in capsys.readouterr().err


@needs_java
def test_caption_speed_reports_both_timings_and_equal_scores():
    r = caption_speed(n_images=40, n_refs=3, seed=0, repeats=1)
    assert r["ours_s"] > 0 and r["pycocoevalcap_s"] > 0 and r["speedup"] == pytest.approx(
        r["pycocoevalcap_s"] / r["ours_s"], rel=0.05)  # both timings are rounded in the report
    assert r["tokenization_equal"] is True
    assert max(r["max_abs_diff"].values()) < TOL
