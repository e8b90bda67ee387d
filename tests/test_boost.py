import json

import pytest
import torch

from vlm.boost import BoostResult, boost_captions, boost_dataset, content_words, merge_captions, unanchored_words


def test_content_words_singularise_and_drop_function_words():
    assert content_words("A photo of two women and three red dresses in the kitchen.") == {
        "two", "woman", "three", "red", "dress", "kitchen"}


def test_anchoring_flags_only_words_absent_from_every_source():
    sources = ["Two red circles.", "A circle on the grass.", "A woman in a kitchen."]
    assert unanchored_words("Two red circles on the grass and a woman in a kitchen.", sources) == set()
    assert unanchored_words("Three blue circles near a dog.", sources) == {"three", "blue", "dog"}


def test_merge_keeps_the_richest_caption_and_adds_only_new_facts():
    merged = merge_captions(["A circle.", "Two red circles on the grass.", "A picture of a woman.",
                             "Some circles."])
    assert merged == "Two red circles on the grass. A woman."
    assert unanchored_words(merged, ["A circle.", "Two red circles on the grass.", "A picture of a woman."]) == set()


class ScriptedLM:
    """A language model whose replies are scripted, with a real tokenizer and chat template."""

    def __init__(self, replies):
        from vlm.models.tokenizer import train_caption_tokenizer

        corpus = replies + ["user assistant combine these descriptions two red circles grass woman"] * 5
        self.tokenizer = train_caption_tokenizer(corpus, vocab_size=400)
        self.tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                                        "{% if add_generation_prompt %}<assistant>{% endif %}")
        self.replies = list(replies)
        self.model = self

    device = torch.device("cpu")

    def generate(self, input_ids, attention_mask=None, **kw):
        out = []
        for row in input_ids:
            reply = self.tokenizer(self.replies.pop(0), add_special_tokens=False)["input_ids"]
            out.append(row.tolist() + reply)
        width = max(map(len, out))
        return torch.tensor([r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in out])


def test_llm_blend_is_kept_when_anchored_and_replaced_when_not():
    lm = ScriptedLM(["Two red circles on the grass.", "Two red circles and a dog on the grass."])
    sources = [["A circle on the grass.", "Two red circles."]] * 2
    res = boost_captions(sources, lm=lm, batch_size=2)
    assert res[0] == BoostResult("Two red circles on the grass.", "llm", "Two red circles on the grass.")
    assert res[1].source == "merge" and res[1].unanchored == ["dog"]
    assert res[1].caption == merge_captions(sources[1])


def test_boost_dataset_writes_a_trainable_copy_and_resumes(tmp_path):
    from vlm.data import read_imagefolder
    from vlm.world import generate_world

    src = generate_world(tmp_path / "w", n=6, seed=0, image_size=32)
    stats = boost_dataset(src, tmp_path / "b", use_llm=False, limit=4)
    assert stats["images"] == 4 and stats["merged"] == 4
    ds = read_imagefolder(tmp_path / "b")
    assert len(ds) == 4 and all(r.extra["boosted_caption"] and r.extra["boost_source"] == "merge" for r in ds)
    lines = (tmp_path / "b" / "boost_progress.jsonl").read_text().splitlines()
    boost_dataset(src, tmp_path / "b", use_llm=False)  # resume: only the 2 new images are added
    lines2 = (tmp_path / "b" / "boost_progress.jsonl").read_text().splitlines()
    assert lines2[:4] == lines and len(lines2) == 6
    assert len({json.loads(x)["file_name"] for x in lines2}) == 6


def test_boosted_world_captions_state_more_facts_without_hallucinating(tmp_path):
    from benchmarks.hallucination import fact_scores
    from vlm.world import iter_world, resolve_config

    items = list(iter_world(resolve_config("captioning"), 150, seed=2))
    scenes = {it.id: it.scene for it in items}
    boosted = {it.id: r.caption for it, r in zip(items, boost_captions([it.captions for it in items], use_llm=False))}
    first = {it.id: it.captions[0] for it in items}
    b, f = fact_scores(boosted, scenes), fact_scores(first, scenes)
    assert b["facts_per_caption"] >= 1.5 * f["facts_per_caption"]
    assert b["hallucination_rate"] == 0.0


def test_hallucination_cli_reports_baselines_and_fields(tmp_path, capsys):
    from benchmarks.hallucination import main
    from vlm.world import generate_world

    src = generate_world(tmp_path / "w", n=8, seed=0, image_size=32)
    boost_dataset(src, tmp_path / "b", use_llm=False)
    assert main(["--data", str(tmp_path / "b"), "--field", "boosted_caption"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dense_caption"]["hallucination_rate"] == 0.0
    assert out["field:boosted_caption"]["facts_per_caption"] > out["reference_first"]["facts_per_caption"]
    with pytest.raises(SystemExit):
        main(["--nope"])
