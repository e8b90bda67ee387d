"""Best-of-n headroom (python -m benchmarks sr-headroom): every rule keeps the sample it should."""

import hashlib

import pytest
import torch

from benchmarks.sr_headroom import (CONTENT_VARIANTS, captioner_sight, content_ceilings, content_table, main,
                                   markdown_table, sight_table, sr_headroom)
from benchmarks.truematch import load_world_bags
from vlm.world import generate_world


def _key(im) -> str:
    return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


class CaptionJudge:
    """Embeds a text as a fixed random vector per string, and an image as the vector of its dense caption."""

    name, logit_scale = "caption-judge", 50.0

    def __init__(self, dense_of: dict[str, str]):
        self.dense_of = dense_of

    def encode_texts(self, texts, *, batch_size=64):
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            out.append(torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0))
        return torch.stack(out)

    def encode_images(self, images, *, batch_size=64):
        return self.encode_texts([self.dense_of[_key(im)] for im in images])


class ScriptedCaptioner:
    """Beam: "A picture." Greedy: the image's own dense caption. Samples: another image's dense caption first, the
    image's own at position i % n."""

    def __init__(self, index_of: dict[str, int], dense: list[str]):
        self.index_of, self.dense = index_of, dense

    def generate(self, images, *, num_beams=1, do_sample=False, num_return_sequences=1, **kw):
        out = []
        for im in images:
            i = self.index_of[_key(im)]
            if not do_sample:
                out.append("A picture." if num_beams > 1 else self.dense[i])
                continue
            caps = [self.dense[(i + 1 + k) % len(self.dense)] for k in range(num_return_sequences)]
            caps[i % num_return_sequences or 1] = self.dense[i]  # never sample 0: that one is always wrong
            out += caps
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = generate_world(tmp_path_factory.mktemp("hr") / "w", n=45, seed=0, preset="truematch", image_size=48)
    data = load_world_bags(root)
    keys = [_key(data.image(i)) for i in range(data.n_images)]
    dense = [r.extra["dense_caption"] for r in data.records]
    return root, data, keys, dense


def test_every_rule_keeps_the_image_own_dense_caption(world):
    _, data, keys, dense = world
    judge = CaptionJudge(dict(zip(keys, dense)))
    cap = ScriptedCaptioner({k: i for i, k in enumerate(keys)}, dense)
    res = sr_headroom(cap, data, judge, n=4, k_random=5, k_nn=3, batch_size=16)
    assert list(res) == ["beam", "greedy", "sample", "clip_s", "rd5", "nn3", "bag"]
    for k in data.bags:  # one caption for every image of a bag: ties shared, chance
        assert res["beam"][f"R@1/bag{k}"] == pytest.approx(1 / k, abs=1e-4)
    assert res["beam"]["facts_per_caption"] == 0
    for rule in ("greedy", "clip_s", "rd5", "nn3", "bag"):  # the own dense caption: exact, found by every reward
        assert all(res[rule][f"R@1/bag{k}"] == 1.0 for k in data.bags)
        assert res[rule]["hallucination_rate"] == 0.0 and res[rule]["facts_per_caption"] > 3
    assert res["sample"]["hallucination_rate"] > 0.2  # another image's caption states wrong facts
    md = markdown_table(res).splitlines()
    assert md[0].startswith("| kept caption | R@1/bag3 | R@1/bag5 | R@1/bag7 |")
    assert md[-1].startswith("| bag | 100.0 |")


class LikelihoodCaptioner:
    """log p(text | image): 0 for the image's own dense caption, else -1 - (a per-text prior) or a constant."""

    def __init__(self, index_of: dict[str, int], dense: list[str], *, sees: bool, prior: dict[str, float]):
        self.index_of, self.dense, self.sees, self.prior = index_of, dense, sees, prior

    def token_log_probs(self, texts, *, images=None):
        rows = []
        for t, im in zip(texts, images, strict=True):
            own = self.dense[self.index_of[_key(im)]] == t
            rows.append([0.0 if (self.sees and own) else -1.0 - self.prior[t], -0.5])  # 2 tokens, summed
        return torch.tensor(rows), torch.ones(len(rows), 2, dtype=torch.bool)


def test_captioner_sight_counts_what_the_likelihoods_tell_apart(world):
    _, data, keys, dense = world
    index_of = {k: i for i, k in enumerate(keys)}
    prior = {t: 0.01 * i for i, t in enumerate(dict.fromkeys(dense))}  # distinct, so image_to_caption never ties
    seeing = captioner_sight(LikelihoodCaptioner(index_of, dense, sees=True, prior=prior), data, batch_size=7)
    assert seeing == {d: {f"R@1/bag{k}": 1.0 for k in sorted(data.bags)}
                      for d in ("image_to_caption", "caption_to_image")}
    blind = captioner_sight(LikelihoodCaptioner(index_of, dense, sees=False, prior=prior), data)
    for k, bags in data.bags.items():
        # The image is ignored: each caption scores the same under every image (ties: misses), and every image
        # picks the caption with the smallest prior, which is its own in exactly one member per bag.
        assert blind["caption_to_image"][f"R@1/bag{k}"] == 0.0
        assert blind["image_to_caption"][f"R@1/bag{k}"] == pytest.approx(1 / k, abs=1e-4)
    md = sight_table(seeing).splitlines()
    assert md[0].endswith("| R@1/bag3 | R@1/bag5 | R@1/bag7 |")
    assert md[2].startswith("| image -> its exact caption | 100.0")
    with pytest.raises(TypeError, match="token_log_probs"):
        captioner_sight(object(), data)
    with pytest.raises(ValueError, match=r"exact caption in extra\['no_such_field'\]"):
        captioner_sight(LikelihoodCaptioner(index_of, dense, sees=True, prior=prior), data, field="no_such_field")


def test_content_ceilings_score_true_captions_of_chosen_content(world):
    """The judge embeds an image as its dense caption: only the whole dense caption retrieves every image."""
    _, data, keys, dense = world
    content = content_ceilings(data, CaptionJudge(dict(zip(keys, dense))))
    assert list(content) == list(CONTENT_VARIANTS) + ["dense caption (+ relations)"]
    assert content["dense caption (+ relations)"] == {**{f"R@1/bag{k}": 1.0 for k in sorted(data.bags)},
                                                      "mean_length_words": pytest.approx(
                                                          sum(len(d.split()) for d in dense) / len(dense), abs=0.01)}
    for name in CONTENT_VARIANTS:  # other texts are unrelated random vectors to this judge: far from 1.0
        assert content[name]["R@1/bag7"] < 0.8, name
    words = {k: v["mean_length_words"] for k, v in content.items()}
    assert words["1 group, colour"] < words["2 groups, colour"] < words["all groups, colour"]
    assert words["all groups, colour"] < words["all groups, colour + size"] < words["dense caption (+ relations)"]
    md = content_table(content).splitlines()
    assert md[0] == "| true captions that say (judge's R@1) | R@1/bag3 | R@1/bag5 | R@1/bag7 | words |"
    assert md[-1].startswith("| dense caption (+ relations) | 100.0 | 100.0 | 100.0 |")
    few = content_ceilings(data, CaptionJudge(dict(zip(keys, dense))), variants={"one": {"max_groups": 1}})
    assert list(few) == ["one", "dense caption (+ relations)"]
    with pytest.raises(ValueError, match="records with scenes"):
        content_ceilings(type("NoScenes", (), {"records": None})(), CaptionJudge({}))


def test_bad_inputs_are_refused_clearly(world):
    _, data, keys, dense = world
    judge, cap = CaptionJudge(dict(zip(keys, dense))), ScriptedCaptioner({k: i for i, k in enumerate(keys)}, dense)
    with pytest.raises(ValueError, match="n >= 2"):
        sr_headroom(cap, data, judge, n=1)
    with pytest.raises(ValueError, match="too few for k_random=50"):
        sr_headroom(cap, data, judge, n=2, k_random=50)


def test_cli_help_names_the_rules(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(w in out for w in ("clip_s", "greedy", "nn{K}", "--k-nn", "--world", "--retriever"))


def _run_cli(world_dir, tmp_path, keys, dense, *, n):
    """``python -m benchmarks sr-headroom`` on a tiny saved captioner under the caption judge; the JSON's path."""
    from vlm.models import create_captioner
    from vlm.retrieval import _FACTORIES, register_retriever

    model = create_captioner("prefix-tiny", train_texts=dense * 2, vocab_size=300, seed=0)
    model.save_pretrained(tmp_path / "cap")
    register_retriever("judge", lambda rest, device="cpu": CaptionJudge(dict(zip(keys, dense))))
    try:
        out = tmp_path / "headroom.json"
        assert main(["--model", str(tmp_path / "cap"), "--world", str(world_dir), "--retriever", "judge:x", "--n",
                     str(n), "--k-random", "4", "--k-nn", "2", "--out", str(out), "--quiet"]) == 0
    finally:
        _FACTORIES.pop("judge", None)
    return out


def test_cli_scores_a_saved_captioner_and_writes_json(world, tmp_path, capsys):
    import json

    root, data, keys, dense = world
    out = _run_cli(root, tmp_path, keys, dense, n=3)
    scores = json.loads(out.read_text())["scores"]
    assert list(scores) == ["beam", "greedy", "sample", "clip_s", "rd4", "nn2", "bag"]
    for row in scores.values():  # the real path: a saved captioner sampled, scored and written per rule
        assert all(0.0 <= row[f"R@1/bag{k}"] <= 1.0 for k in data.bags) and row["mean_length_words"] >= 0
    printed = capsys.readouterr().out
    assert scores["beam"]["facts_per_caption"] >= 0 and "| bag |" in printed
    sight = json.loads(out.read_text())["sight"]  # the tiny captioner's own likelihoods, real token_log_probs
    assert set(sight) == {"image_to_caption", "caption_to_image"}
    content = json.loads(out.read_text())["content"]
    assert content["dense caption (+ relations)"]["R@1/bag3"] == 1.0 and "| all groups, colour |" in printed
    assert all(0.0 <= v <= 1.0 for row in sight.values() for v in row.values()) and len(sight["caption_to_image"]) == 3


def test_cli_says_up_front_why_there_is_no_sight_table(world, tmp_path, capsys):
    """A world without exact captions still gets the headroom table; the missing sight table is explained."""
    import json
    import shutil

    root, data, keys, dense = world
    bare = tmp_path / "bare"
    shutil.copytree(root, bare)
    rows = [json.loads(line) for line in (bare / "metadata.jsonl").read_text().splitlines() if line.strip()]
    (bare / "metadata.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "dense_caption"})
                                                 + "\n" for r in rows))
    out = _run_cli(bare, tmp_path, keys, dense, n=2)
    captured = capsys.readouterr()
    assert f"no sight table ({bare}: records without 'dense_caption' (exact captions))" in captured.err
    assert "(no sight table:" in captured.out
    result = json.loads(out.read_text())
    assert result["sight"] is None and set(result["scores"]) == {"beam", "greedy", "sample", "clip_s", "rd4", "nn2", "bag"}
