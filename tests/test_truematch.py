"""TrueMatch (benchmarks.truematch) and the retrievers it uses (vlm.retrieval).

A fake retriever that embeds images by the colours they show and captions by the colour words they name
gives R@1 values that can be worked out by hand; a tiny random-weight open_clip CLIP exercises the real
model path; the chunked scorer is checked against the brute-force reference.
"""

import json
import math
import os
import time

import pytest
import torch
from PIL import Image

from benchmarks import truematch as tm
from vlm import retrieval
from vlm.data import DatasetFormatError
from vlm.pretrained import HubOfflineError

# ---------------------------------------------------------------------------------------------- fixtures

PALETTE = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "purple": (128, 0, 128)}
WORDS = list(PALETTE)


class ColourRetriever:
    """Image -> indicator of the palette colours it shows; text -> indicator of the colour words it names.

    The text vector has one extra dimension (0.1) that no image uses, so a caption naming no colour is
    equally close to every image: a tie.
    """

    name = "colour"
    fingerprint = "v1"

    def __init__(self):
        self.images_encoded = 0
        self.image_calls = 0

    def encode_images(self, images, *, batch_size=64):
        self.image_calls += 1
        self.images_encoded += len(images)
        x = torch.zeros(len(images), len(WORDS) + 1)
        names = {v: k for k, v in PALETTE.items()}
        for r, im in enumerate(images):
            for _, rgb in im.getcolors():
                x[r, WORDS.index(names[rgb])] = 1.0
        return torch.nn.functional.normalize(x, dim=1)

    def encode_texts(self, texts, *, batch_size=256):
        x = torch.zeros(len(texts), len(WORDS) + 1)
        x[:, -1] = 0.1
        for r, t in enumerate(texts):
            for w in t.lower().replace(",", " ").split():
                if w in PALETTE:
                    x[r, WORDS.index(w)] = 1.0
        return torch.nn.functional.normalize(x, dim=1)


# id -> colours shown (two colours: left and right halves)
IMAGES = {"A": ["red"], "B": ["green"], "C": ["blue"], "D": ["yellow"], "E": ["red", "green"],
          "F": ["red", "blue"], "G": ["purple"]}
BAGS = {"3": [["A", "B", "C"]], "5": [["A", "E", "F", "B", "D"]], "7": [["A", "B", "C", "D", "E", "F", "G"]]}
CAPTIONS = {"A": "a red square", "B": "a square", "C": "a green square", "D": "a yellow square",
            "E": "red and green halves", "F": "a red square", "G": "a purple square"}
# Worked out by hand: cos ~ |words & colours| / sqrt(|colours|); a tie is a miss.
#   bag 3 (A B C): A hit; B names nothing -> tie, miss; C says green -> B wins, miss                 -> 1/3
#   bag 5 (A E F B D): A hit (1 > 0.71); E hit (1.41 > 1); F says red -> A wins, miss; B tie, miss; D hit -> 3/5
#   bag 7 (all): A, D, E, G hit; B, C, F miss                                                         -> 4/7
#   RD100 on a pool of 7 is every other image, so it equals bag 7                                     -> 4/7
EXPECTED = {"R@1/bag3": 1 / 3, "R@1/bag5": 3 / 5, "R@1/bag7": 4 / 7, "R@1/RD100": 4 / 7}


def _expected_clipscore():
    own = []
    for image_id, colours in IMAGES.items():
        words = {w for w in CAPTIONS[image_id].split() if w in PALETTE}
        shared = len(words & set(colours))
        own.append(shared / (math.sqrt(len(words) + 0.01) * math.sqrt(len(colours))))
    return 100 * sum(max(c, 0) for c in own) / len(own)


def _write_image(path, colours, size=16):
    im = Image.new("RGB", (size, size), PALETTE[colours[0]])
    if len(colours) > 1:
        im.paste(PALETTE[colours[1]], (size // 2, 0, size, size))
    im.save(path)


@pytest.fixture
def public(tmp_path):
    """The public layout: bags.json + an image folder of PNGs, and a predictions file."""
    images = tmp_path / "images"
    images.mkdir()
    for image_id, colours in IMAGES.items():
        _write_image(images / f"{image_id}.png", colours)
    (tmp_path / "bags.json").write_text(json.dumps(BAGS))
    (tmp_path / "pred.json").write_text(json.dumps(CAPTIONS))
    return tmp_path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlm.world import generate_world

    return generate_world(tmp_path_factory.mktemp("world") / "w", n=15, seed=0, preset="truematch", image_size=32)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "finecap-test-tiny-clip.json"
    path.write_text(json.dumps(retrieval.TINY_OPEN_CLIP_CONFIG))
    return path


@pytest.fixture(scope="module")
def tiny_clip(tiny_config):
    return retrieval.OpenCLIPRetriever(str(tiny_config), seed=0)


def _coloured_images():
    return [Image.new("RGB", (40, 24), "red"), Image.new("L", (20, 20), 128), Image.new("RGB", (32, 32), "blue")]


# ---------------------------------------------------------------------------------------------- retriever


def test_tiny_open_clip_embeddings_are_unit_norm_float32_rows(tiny_clip):
    img = tiny_clip.encode_images(_coloured_images())
    txt = tiny_clip.encode_texts(["a red cube", "two blue balls left of a man", "grass"])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    assert img.dtype == torch.float32 and img.device.type == "cpu"
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(img[0], img[2])  # different pictures, different embeddings


def test_tiny_open_clip_is_deterministic_across_calls_batches_and_builds(tiny_clip, tiny_config):
    a = tiny_clip.encode_images(_coloured_images(), batch_size=64)
    b = tiny_clip.encode_images(_coloured_images(), batch_size=1)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    again = retrieval.OpenCLIPRetriever(str(tiny_config), seed=0)
    torch.testing.assert_close(again.encode_texts(["a red cube"]), tiny_clip.encode_texts(["a red cube"]))
    other = retrieval.OpenCLIPRetriever(str(tiny_config), seed=1)
    assert not torch.allclose(other.encode_texts(["a red cube"]), tiny_clip.encode_texts(["a red cube"]))
    assert other.fingerprint != tiny_clip.fingerprint  # so the embedding cache keeps them apart


def test_load_retriever_builds_open_clip_from_config_spec(tiny_config):
    r = retrieval.load_retriever(f"open_clip:{tiny_config}:random")
    assert isinstance(r, retrieval.Retriever)
    assert r.name == "open_clip:finecap-test-tiny-clip:random"
    assert r.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature


@pytest.mark.parametrize("spec, words", [
    ("nope:ViT-B-32:openai", "open_clip:"),
    ("open_clip:ViT-B-32", "random"),
    ("open_clip:No-Such-Arch:random", "not an open_clip architecture"),
    ("open_clip:ViT-B-32:no-such-tag", "laion2b"),  # lists the real tags
])
def test_load_retriever_rejects_bad_specs_with_a_hint(spec, words):
    with pytest.raises(ValueError, match=words):
        retrieval.load_retriever(spec)


def test_config_file_clashing_with_a_registered_architecture_is_refused(tiny_config, tmp_path):
    other = tmp_path / tiny_config.name  # same name, different architecture
    other.write_text(json.dumps({**retrieval.TINY_OPEN_CLIP_CONFIG, "embed_dim": 8}))
    retrieval.OpenCLIPRetriever(str(tiny_config))  # registers the name
    with pytest.raises(ValueError, match="already has a different architecture named 'finecap-test-tiny-clip'"):
        retrieval.OpenCLIPRetriever(str(other))


def test_pretrained_tag_offline_fails_fast_and_clearly():
    t0 = time.perf_counter()
    with pytest.raises(HubOfflineError, match="open_clip ViT-B-32:openai.*not in the local cache"):
        retrieval.OpenCLIPRetriever("ViT-B-32", "openai")
    assert time.perf_counter() - t0 < 10


def test_cached_openai_tag_loads_from_file_with_quick_gelu_and_its_preprocessing(monkeypatch, tmp_path):
    # open_clip only warns when OpenAI weights meet the GELU config; the retriever must force QuickGELU.
    weights = tmp_path / "open_clip_model.safetensors"
    monkeypatch.setattr(retrieval, "_hf_cached_weights", lambda hf_hub: str(weights))
    kwargs, identity = retrieval._resolve_pretrained("ViT-B-32", "openai")
    assert kwargs["pretrained"] == str(weights)
    assert kwargs["force_quick_gelu"] is True
    assert kwargs["force_preprocess_cfg"]["mean"] == (0.48145466, 0.4578275, 0.40821073)
    assert identity == "tag:ViT-B-32:openai"


# ---------------------------------------------------------------------------------------------- scoring


def _random_case(n=37, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.9 * torch.randn(n, d, generator=g), dim=1)
    img[5] = img[4]  # exact duplicates: ties, which both scorers must call misses
    txt[4] = img[4]
    perm = torch.randperm(n, generator=g).tolist()
    bags = {3: [perm[0:3], perm[3:6], [4, 5, 6]], 5: [perm[6:11], perm[11:16], perm[16:21]],
            7: [perm[21:28], perm[28:35]]}
    return img, txt, bags


@pytest.mark.parametrize("rd_candidates", [100, 10])
@pytest.mark.parametrize("chunk_size", [1, 2, 5, 7, 36, 37, 1000])
def test_chunked_scores_equal_brute_force_reference(chunk_size, rd_candidates):
    img, txt, bags = _random_case()
    fast = tm.score_truematch(img, txt, bags, rd_candidates=rd_candidates, seed=3, chunk_size=chunk_size)
    ref = tm.score_truematch_reference(img, txt, bags, rd_candidates=rd_candidates, seed=3)
    fast_m, ref_m = fast.metrics(), ref.metrics()
    assert fast_m.pop("CLIPScore") == pytest.approx(ref_m.pop("CLIPScore"), abs=1e-4)  # 100 x (sims within 1e-6)
    assert fast_m == ref_m  # every R@1 exactly equal
    for k in bags:
        assert torch.equal(fast.bag_hits[k], ref.bag_hits[k])
        torch.testing.assert_close(fast.bag_sims[k].double(), ref.bag_sims[k], atol=1e-6, rtol=0)
    assert torch.equal(fast.rd_candidates, ref.rd_candidates)
    assert fast.rd_candidates.shape == (37, min(rd_candidates, 37))
    assert torch.equal(fast.rd_hits, ref.rd_hits)
    torch.testing.assert_close(fast.rd_sims.double(), ref.rd_sims, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.own_sims.double(), ref.own_sims, atol=1e-6, rtol=0)


def test_reference_scores_random_case_sensibly():
    # Guards the brute-force reference itself: captions are noisy copies of their images, so most hit.
    img, txt, bags = _random_case()
    m = tm.score_truematch_reference(img, txt, bags).metrics()
    assert m["R@1/bag3"] > 1 / 3 and m["R@1/bag7"] > 1 / 7 and m["R@1/RD100"] > 1 / 37


def test_tie_with_a_distractor_is_a_miss():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = tm.score_truematch(img, txt, {3: [[0, 1, 2]]})
    assert s.bag_hits[3].tolist() == [[False, False, True]]
    assert s.rd_hits.tolist() == [False, False, True]


def test_bag_difference_ci_values_and_refusals():
    # the same bags, a constant difference, or seeds that cancel out: nothing to resample, the interval is a point
    assert tm.bag_difference_ci([[0.4, 0.8]], [[0.4, 0.8]]) == (0.0, 0.0, 0.0)
    m, lo, hi = tm.bag_difference_ci([[0.6, 1.0, 0.4]], [[0.4, 0.8, 0.2]])
    assert m == lo == hi == pytest.approx(0.2)
    assert tm.bag_difference_ci([[0.8, 0.2], [0.4, 0.6]], [[0.6, 0.4]])[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same bags"):
        tm.bag_difference_ci([[0.2, 0.4, 0.6]], [[0.2, 0.4]])
    with pytest.raises(ValueError, match="shapes"):
        tm.bag_difference_ci([0.2, 0.4], [0.2, 0.4])


def test_bag_difference_ci_narrows_with_more_bags_and_covers_the_true_difference():
    import numpy as np

    rng = np.random.default_rng(0)
    # per bag of 5, captioner a hits each member with p 0.7, b with p 0.6, both p shifted per bag (hard and easy bags)
    def draw(n_bags):
        shift = rng.uniform(-0.25, 0.25, n_bags)
        return (rng.binomial(5, 0.7 + shift) / 5)[None], (rng.binomial(5, 0.6 + shift) / 5)[None]

    m, lo, hi = tm.bag_difference_ci(*draw(100), seed=1)
    assert lo < m < hi and tm.bag_difference_ci(*draw(100), seed=1) != (m, lo, hi)  # data, not the seed, moved it
    widths = [np.mean([(lambda r: r[2] - r[1])(tm.bag_difference_ci(*draw(n), n_resamples=500)) for _ in range(20)])
              for n in (100, 400)]
    assert 0.4 < widths[1] / widths[0] < 0.6  # four times the bags, half the width
    covered = [(lambda r: r[1] <= 0.1 <= r[2])(tm.bag_difference_ci(*draw(100), n_resamples=500)) for _ in range(200)]
    assert 0.88 <= np.mean(covered) <= 0.99  # a 95 % interval holds the true difference about 95 % of the time


def test_rd_distractors_are_seeded_distinct_and_never_the_target():
    a = tm.sample_distractors(50, 20, seed=3)
    assert torch.equal(a, tm.sample_distractors(50, 20, seed=3))
    assert not torch.equal(a, tm.sample_distractors(50, 20, seed=4))
    assert a.shape == (50, 20)
    for i, row in enumerate(a.tolist()):
        assert i not in row and len(set(row)) == 20 and all(0 <= j < 50 for j in row)
    # with k = n - 1 each row is exactly the other images
    assert [sorted(r) for r in tm.sample_distractors(6, 5).tolist()] == [
        [j for j in range(6) if j != i] for i in range(6)]
    with pytest.raises(ValueError, match="cannot draw 6"):
        tm.sample_distractors(6, 6)


def test_rd_uses_99_distractors_when_the_pool_is_large_enough():
    img, txt, _ = _random_case(n=150)
    s = tm.score_truematch(img, txt, {}, seed=0)
    assert s.rd_candidates.shape == (150, 100)
    assert torch.equal(s.rd_candidates[:, 0], torch.arange(150))


# ---------------------------------------------------------------------------------------------- known answers


def test_colour_retriever_gives_the_worked_out_recall(public):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    captions = tm.read_captions(public / "pred.json", data)
    result = tm.evaluate_truematch(data, ColourRetriever(), captions=captions, chunk_size=2)
    for key, value in EXPECTED.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-12), key
    assert result.metrics["CLIPScore"] == pytest.approx(_expected_clipscore(), abs=1e-4)
    assert result.counts == {"images": 7, "bags/bag3": 1, "images/bag3": 3, "bags/bag5": 1, "images/bag5": 5,
                             "bags/bag7": 1, "images/bag7": 7, "candidates/RD100": 7}


def test_captioner_captions_every_image_independently_in_batches(public):
    names = {v: k for k, v in PALETTE.items()}

    class Describer:  # names every colour it sees: a perfect describer for this retriever
        calls = []

        def generate(self, images):
            self.calls.append(len(images))
            return [" and ".join(names[rgb] for _, rgb in sorted(im.getcolors())) for im in images]

    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    captioner = Describer()
    result = tm.evaluate_truematch(data, ColourRetriever(), captioner=captioner, batch_size=3)
    assert captioner.calls == [3, 3, 1]
    assert [result.metrics[k] for k in EXPECTED] == [1.0, 1.0, 1.0, 1.0]


def test_cli_on_public_layout_writes_results_and_plot(public, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(retrieval._FACTORIES, "colour", lambda rest, device="cpu": ColourRetriever())
    out = tmp_path / "out"
    rc = tm.main(["--retriever", "colour:v1", "--bags", str(public / "bags.json"), "--images",
                  str(public / "images"), "--image-ext", ".png", "--captions", str(public / "pred.json"),
                  "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--chunk-size", "3", "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((out / "truematch.json").read_text())
    assert printed == record["results"]
    metrics = {k: v for k, v in record["results"].items() if not isinstance(v, dict)}
    assert set(metrics) == {"R@1/bag3", "R@1/bag5", "R@1/bag7", "R@1/RD100", "CLIPScore"}
    assert metrics["R@1/bag5"] == pytest.approx(3 / 5)
    assert record["results"]["chance"] == {"bag3": pytest.approx(1 / 3), "bag5": 0.2,
                                           "bag7": pytest.approx(1 / 7), "RD100": pytest.approx(1 / 7)}
    assert record["config"]["retriever_name"] == "colour" and record["seed"] == 0
    assert (out / "truematch.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "truematch_items.jsonl").read_text().splitlines()]
    assert len(rows) == 3 + 5 + 7
    assert rows[2] == {"image_id": "C", "bag_size": 3, "bag": 0, "member": 2, "hit": False,
                       "caption": "a green square", "sim_target": 0.0, "sim_best_other": pytest.approx(0.995037),
                       "best_other_id": "B", "rd_hit": False}


# ---------------------------------------------------------------------------------------------- data layouts


def test_public_layout_ids_paths_and_integer_ids(tmp_path):
    for name in ("139.jpg", "x7"):
        Image.new("RGB", (8, 8), "red").save(tmp_path / name, format="JPEG")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "y.jpg")
    (tmp_path / "bags.json").write_text(json.dumps({"3": [[139, "x7", "y"]]}))
    data = tm.load_bags_json(tmp_path / "bags.json", tmp_path)
    assert data.ids == ["139", "x7", "y"]
    assert [p.name for p in data.paths] == ["139.jpg", "x7", "y.jpg"]  # <id> itself wins over <id>.jpg
    assert data.bags == {3: [[0, 1, 2]]}


def test_public_layout_missing_image_names_the_file_and_the_bag(public):
    os.remove(public / "images" / "F.png")
    with pytest.raises(DatasetFormatError) as err:
        tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    assert err.value.field == "5[0]"
    assert str(public / "images" / "F.png") in str(err.value) and "bags.json" in str(err.value)


@pytest.mark.parametrize("content, words", [
    ('{"3": [["A", "B", "C"]', "line 1: not a valid bags file"),
    ('[["A", "B", "C"]]', "non-empty object"),
    ('{"three": [["A", "B", "C"]]}', "not a bag size"),
    ('{"3": [["A", "B"]]}', "must hold 3 image ids, got 2"),
    ('{"3": [["A", "B", "B"]]}', "must not repeat"),
    ('{"3": [{"ids": ["A", "B", "C"]}]}', "must be a list of image ids"),
    ('{"3": [["A", "B", null]]}', "non-empty strings or integers"),
    ('{"3": [["A", "B", "../C"]]}', "'..' component"),
])
def test_public_layout_malformed_bags_json_is_refused_clearly(public, content, words):
    (public / "bags.json").write_text(content)
    with pytest.raises(DatasetFormatError, match=words) as err:
        tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    assert err.value.file == str(public / "bags.json")


def test_world_layout_groups_bags_and_reads_references(world):
    data = tm.load_world_bags(world)
    assert data.counts() == {"images": 15, "bags/bag3": 1, "images/bag3": 3, "bags/bag5": 1, "images/bag5": 5,
                             "bags/bag7": 1, "images/bag7": 7}
    records = [json.loads(line) for line in (world / "metadata.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    for size, bags in data.bags.items():
        for bag in bags:
            assert [by_id[data.ids[i]]["bag"]["index"] for i in bag] == list(range(size))
            assert len({by_id[data.ids[i]]["bag"]["id"] for i in bag}) == 1
    assert tm.read_captions("reference:dense_caption", data) == [by_id[i]["dense_caption"] for i in data.ids]
    assert tm.read_captions("reference:first", data) == [by_id[i]["captions"][0] for i in data.ids]
    assert tm.read_captions("reference:caption:4", data) == [by_id[i]["captions"][4] for i in data.ids]
    with pytest.raises(DatasetFormatError, match="none at index 9"):
        tm.read_captions("reference:caption:9", data)
    with pytest.raises(ValueError, match="reference:caption:K"):
        tm.read_captions("reference:caption:x", data)


def test_world_with_an_incomplete_bag_is_refused_naming_it(world, tmp_path):
    import shutil

    broken = tmp_path / "w"
    shutil.copytree(world, broken)
    lines = (broken / "metadata.jsonl").read_text().splitlines()
    (broken / "metadata.jsonl").write_text("\n".join(lines[:4] + lines[5:]) + "\n")  # drop member 1 of bag 1
    with pytest.raises(DatasetFormatError, match=r"bag 'bag00001'.*indices \[0, 2, 3, 4\]"):
        tm.load_world_bags(broken)


def test_reference_captions_need_a_world(public):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    with pytest.raises(ValueError, match="needs stored captions"):
        tm.read_captions("reference:dense_caption", data)


def test_predictions_file_missing_ids_and_coco_list_format(public):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    (public / "short.json").write_text(json.dumps({k: v for k, v in CAPTIONS.items() if k != "G"}))
    with pytest.raises(DatasetFormatError, match="no caption for 1 of 7 images, e.g. 'G'"):
        tm.read_captions(public / "short.json", data)
    (public / "coco.json").write_text(json.dumps([{"image_id": k, "caption": v} for k, v in CAPTIONS.items()]))
    assert tm.read_captions(public / "coco.json", data) == [CAPTIONS[i] for i in data.ids]


def test_cli_on_world_with_tiny_open_clip(world, tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    rc = tm.main(["--retriever", f"open_clip:{tiny_config}:random", "--world", str(world), "--captions",
                  "reference:dense_caption", "--out", str(out), "--device", "cpu", "--batch-size", "4",
                  "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)
    assert results["counts"]["images"] == 15 and results["counts"]["candidates/RD100"] == 15
    assert all(0 <= results[f"R@1/bag{k}"] <= 1 for k in (3, 5, 7))
    # CLIPScore is 100 * mean(max(cos, 0)) of each image with its own caption
    r = retrieval.OpenCLIPRetriever(str(tiny_config))
    data = tm.load_world_bags(world)
    img = r.encode_images([data.image(i) for i in range(15)])
    txt = r.encode_texts(tm.read_captions("reference:dense_caption", data))
    assert results["CLIPScore"] == pytest.approx(float(100 * (img * txt).sum(1).clamp_min(0).mean()), abs=1e-4)
    # Per edit kind: every member counted once, first images as "none"; R@1 recomputed from the item rows.
    by_edit = results["by_edit"]
    assert sum(v["n"] for v in by_edit.values()) == 15
    assert by_edit["none"]["n"] == sum(len(bags) for bags in data.bags.values())  # one first image per bag
    items = [json.loads(line) for line in (out / "truematch_items.jsonl").read_text().splitlines()]
    edits = {r.id: "+".join(sorted(r.extra["bag"]["edits"])) or "none" for r in data.records}
    for kind, v in by_edit.items():
        rows = [it for it in items if edits[it["image_id"]] == kind]
        assert v["R@1"] == pytest.approx(sum(it["hit"] for it in rows) / len(rows))
        assert (v["vs_base"] is None) == (kind == "none") and (kind == "none" or 0 <= v["vs_base"] <= 1)
    assert "| edit | members | R@1 | vs_base |" in (out / "truematch.md").read_text()


def test_cli_reports_bad_input_without_a_traceback(public, tmp_path, capsys):
    rc = tm.main(["--retriever", "open_clip:ViT-B-32:openai", "--bags", str(public / "bags.json"), "--images",
                  str(public / "images"), "--captions", str(public / "pred.json"), "--out", str(tmp_path)])
    assert rc == 2
    assert "image 'A' not found" in capsys.readouterr().err  # default --image-ext .jpg; images are .png


# ---------------------------------------------------------------------------------------------- cache


def test_embedding_cache_second_run_encodes_nothing(public, tmp_path):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    cache = tm.EmbeddingCache(tmp_path / "cache")
    r = ColourRetriever()
    first = tm.evaluate_truematch(data, r, captions=[CAPTIONS[i] for i in data.ids], cache=cache, batch_size=4)
    assert (r.images_encoded, r.image_calls) == (7, 2)
    second = tm.evaluate_truematch(data, r, captions=[CAPTIONS[i] for i in data.ids], cache=cache, batch_size=4)
    assert (r.images_encoded, r.image_calls) == (7, 2)
    assert second.metrics == first.metrics


def test_embedding_cache_serves_images_reached_through_a_linked_folder(public, tmp_path):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    cache = tm.EmbeddingCache(tmp_path / "cache")
    r = ColourRetriever()
    first = tm.encode_image_files(r, data.paths, cache=cache)
    (tmp_path / "linked").symlink_to(public / "images", target_is_directory=True)  # as --reuse-from links a world
    linked = tm.load_bags_json(public / "bags.json", tmp_path / "linked", image_ext=".png")
    assert linked.paths[0] != data.paths[0]
    again = tm.encode_image_files(r, linked.paths, cache=cache)
    assert r.images_encoded == 7 and torch.equal(again, first)


def test_embedding_cache_reencodes_only_a_changed_file(public, tmp_path):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    cache = tm.EmbeddingCache(tmp_path / "cache")
    r = ColourRetriever()
    tm.encode_image_files(r, data.paths, cache=cache)
    _write_image(data.paths[0], ["blue"], size=20)  # same path, new content (size and mtime change)
    emb = tm.encode_image_files(r, data.paths, cache=cache)
    assert r.images_encoded == 8
    assert emb[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_embedding_cache_keeps_retrievers_with_different_fingerprints_apart(public, tmp_path):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    cache = tm.EmbeddingCache(tmp_path / "cache")
    a, b = ColourRetriever(), ColourRetriever()
    b.fingerprint = "v2"
    tm.encode_image_files(a, data.paths, cache=cache)
    tm.encode_image_files(b, data.paths, cache=cache)
    assert (a.images_encoded, b.images_encoded) == (7, 7)
    assert cache.path_for(a) != cache.path_for(b) and cache.path_for(b).is_file()


def test_unreadable_cache_file_is_ignored_and_rewritten(public, tmp_path):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    cache = tm.EmbeddingCache(tmp_path / "cache")
    r = ColourRetriever()
    cache.path_for(r).parent.mkdir(parents=True)
    cache.path_for(r).write_bytes(b"garbage")
    tm.encode_image_files(r, data.paths, cache=cache)
    assert len(cache.load(r)) == 7


def test_retriever_returning_unnormalised_rows_is_refused(public):
    class Raw(ColourRetriever):
        def encode_images(self, images, *, batch_size=64):
            return 2 * super().encode_images(images)

    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    with pytest.raises(ValueError, match="L2-normalised"):
        tm.encode_image_files(Raw(), data.paths)


def test_config_requires_exactly_one_data_layout():
    with pytest.raises(ValueError, match="give world, or bags with images"):
        tm.TrueMatchConfig(retriever="x", captions="c.json")
    with pytest.raises(ValueError, match="bags and images go together"):
        tm.TrueMatchConfig(retriever="x", captions="c.json", bags="b.json")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        tm.TrueMatchConfig(retriever="x", captions="c.json", world="w", chunk_size=0)
    with pytest.raises(ValueError, match="num_beams applies to model: captions only"):
        tm.TrueMatchConfig(retriever="x", captions="c.json", world="w", num_beams=1)
    with pytest.raises(ValueError, match="num_beams must be >= 1"):
        tm.TrueMatchConfig(retriever="x", captions="model:m", world="w", num_beams=0)


def test_cli_captions_with_a_trained_captioner_folder(tmp_path, capsys):
    """--captions model:FOLDER captions every world image with a saved prefix captioner, then scores."""
    from benchmarks.truematch import main
    from vlm.models import create_captioner
    from vlm.world import generate_world

    world = generate_world(tmp_path / "w", n=15, seed=0, preset="truematch", image_size=48)
    cap = create_captioner("prefix-tiny", train_texts=["a red circle.", "two blue squares."] * 10, vocab_size=280)
    cap.save_pretrained(tmp_path / "cap")
    cfg = tmp_path / "clip.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                               "head_width": 16, "patch_size": 16},
                               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                            "layers": 1}}))
    rc = main(["--retriever", f"open_clip:{cfg}:random", "--world", str(world), "--captions",
               f"model:{tmp_path / 'cap'}", "--out", str(tmp_path / "out"), "--quiet", "--no-cache"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["counts"]["images"] == 15 and 0.0 <= res["R@1/bag3"] <= 1.0
    items = [json.loads(x) for x in (tmp_path / "out" / "truematch_items.jsonl").read_text().splitlines()]
    assert len(items) == 15 and all(isinstance(r["caption"], str) for r in items)
    # --num-beams 1: the same captioner decoded greedily (same limits), recorded in the saved config
    rc = main(["--retriever", f"open_clip:{cfg}:random", "--world", str(world), "--captions",
               f"model:{tmp_path / 'cap'}", "--num-beams", "1", "--out", str(tmp_path / "greedy"), "--quiet",
               "--no-cache"])
    assert rc == 0
    capsys.readouterr()
    data = tm.load_world_bags(world)
    ims = [data.image(i) for i in range(data.n_images)]
    for folder, beams in (("out", 5), ("greedy", 1)):
        rows = [json.loads(x) for x in (tmp_path / folder / "truematch_items.jsonl").read_text().splitlines()]
        want = dict(zip(data.ids, cap.generate(ims, num_beams=beams, max_new_tokens=20, stop_at_period=True)))
        assert all(r["caption"] == want[r["image_id"]] for r in rows)
    assert json.loads((tmp_path / "greedy" / "truematch.json").read_text())["config"]["num_beams"] == 1


def test_world_words_judge_reads_synonyms_as_their_words_and_shares_the_image_cache(public, tmp_path):
    data = tm.load_bags_json(public / "bags.json", public / "images", image_ext=".png")
    cache = tm.EmbeddingCache(tmp_path / "cache")
    r = ColourRetriever()
    canonical = tm.evaluate_truematch(data, r, captions=[CAPTIONS[i] for i in data.ids], cache=cache, batch_size=4)
    # the same captions in the synonyms wording: the plain judge misses the colours, the world-words judge does not
    swap = {"red": "crimson", "yellow": "golden", "purple": "violet", "square": "square"}
    synonyms = [" ".join(swap.get(w, w) for w in CAPTIONS[i].split()) for i in data.ids]
    assert synonyms[data.ids.index("A")] == "a crimson square"
    plain = tm.evaluate_truematch(data, r, captions=synonyms, cache=cache, batch_size=4)
    assert plain.metrics["R@1/bag5"] < canonical.metrics["R@1/bag5"] == EXPECTED["R@1/bag5"]
    retrieval.register_retriever("colourtest", lambda rest, device="cpu": r)
    try:
        wrapped = retrieval.load_retriever("world-words:colourtest:x")
    finally:
        del retrieval._FACTORIES["colourtest"]
    assert isinstance(wrapped, retrieval.WorldWordsRetriever) and wrapped.inner is r
    assert wrapped.name == "world-words:colour" and wrapped.fingerprint == "v1"  # other attributes are r's
    assert retrieval.image_cache_name(wrapped) == "colour" and cache.path_for(wrapped) == cache.path_for(r)
    calls = r.image_calls
    read = tm.evaluate_truematch(data, wrapped, captions=synonyms, cache=cache, batch_size=4)
    assert read.metrics == canonical.metrics and r.image_calls == calls  # its images came from r's cache
