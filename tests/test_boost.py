import json

import pytest
import torch

from vlm.boost import (BoostResult, anchoring_violations, boost_captions, boost_dataset, boost_messages, content_words,
                       merge_captions, unanchored_words, unbound_phrases)


def test_content_words_singularise_and_drop_function_words():
    assert content_words("A photo of two women and three red dresses in the kitchen.") == {
        "two", "woman", "three", "red", "dress", "kitchen"}


def test_anchoring_flags_only_words_absent_from_every_source():
    sources = ["Two red circles.", "A circle on the grass.", "A woman in a kitchen."]
    assert unanchored_words("Two red circles on the grass and a woman in a kitchen.", sources) == set()
    assert unanchored_words("Three blue circles near a dog.", sources) == {"three", "blue", "dog"}


@pytest.mark.parametrize("candidate,expected", [
    ("Two large purple circles and three small black circles on a beach.", []),  # a faithful blend
    ("Purple circles and small circles on a beach.", []),  # dropping modifiers is allowed
    ("Three purple circles on a beach.", ["three purple circle"]),  # count moved to the other group
    ("Two black circles on a beach.", ["two black circle"]),  # colour moved to the other group
    ("Large black circles.", ["large black circle"]),  # size moved
    ("Two large purple circles near a tree.", ["tree"]),  # a word no source has: reported alone
])
def test_anchoring_catches_attribute_and_count_binding_errors(candidate, expected):
    sources = ["Two circles and three circles on a beach.",
               "A picture of two large purple circles and three small black circles on a beach."]
    assert anchoring_violations(candidate, sources) == expected
    assert unbound_phrases(candidate, sources) == [e for e in expected if " " in e]


def test_blends_that_drop_details_are_rejected_when_asked():
    src = [["Two red circles.", "Two large red circles on the grass."]]
    lm = ScriptedLM(["Two red circles.", "Two red circles."])
    short = boost_captions(src, lm=lm, batch_size=1)[0]
    assert short.source == "merge" and short.unanchored == ["<fewer details: 3 < 5>"]
    assert short.caption == "Two large red circles on the grass."
    assert boost_captions(src, lm=lm, batch_size=1, min_detail=0)[0].source == "llm"


def test_prompt_carries_one_worked_example_unless_disabled():
    msgs = boost_messages(["A red circle.", "Two circles."])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert "- A red circle.\n- Two circles." in msgs[-1]["content"]
    assert anchoring_violations(msgs[1]["content"], msgs[0]["content"].splitlines()) == []  # the example is anchored
    assert len(boost_messages(["A red circle."], few_shot=False)) == 1


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
    kinds = {row["kind"]: row for row in out["by_kind:field:boosted_caption"]}  # its own table, per kind of fact
    assert kinds["thing"]["stated"] >= 8 and all(row["hallucination_rate"] == 0.0 for row in kinds.values())
    assert sum(r["per_caption"] for r in kinds.values()) == pytest.approx(
        out["field:boosted_caption"]["facts_per_caption"], abs=1e-3)
    with pytest.raises(SystemExit):
        main(["--nope"])
