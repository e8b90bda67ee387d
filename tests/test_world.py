import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from vlm.world import (BACKGROUNDS, COLORS, COUNT_WORDS, FINE_CLASSES, PRESETS, SHAPES, TIDA_COLORS, Scene,
                       Thing, dense_caption, edit_scene, generate_world, iter_world, render, resolve_config,
                       sample_bag)
from vlm.world.language import groups
from vlm.world.scene import SYNONYMS


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_seed_gives_byte_identical_output(tmp_path, preset):
    a = generate_world(tmp_path / "a", n=16, seed=3, preset=preset, image_size=48)
    b = generate_world(tmp_path / "b", n=16, seed=3, preset=preset, image_size=48)
    da, db = _tree_digest(a), _tree_digest(b)
    assert da == db
    assert len([k for k in da if k.startswith("images/")]) >= 15 - 7  # bag presets keep whole bags
    c = generate_world(tmp_path / "c", n=16, seed=4, preset=preset, image_size=48)
    assert _tree_digest(c)["metadata.jsonl"] != da["metadata.jsonl"]


def test_metadata_fields_and_world_json(tmp_path):
    out = generate_world(tmp_path / "w", n=12, seed=0, preset="vqa", image_size=32)
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 12
    rec = json.loads(lines[0])
    assert rec["file_name"] == "images/000000.png"
    assert len(rec["captions"]) == 5 and all(isinstance(c, str) and c for c in rec["captions"])
    assert {"id", "split", "scene", "dense_caption", "qa"} <= set(rec)
    assert len(rec["qa"]) == 4
    cfg = json.loads((out / "world.json").read_text())
    assert cfg["preset"] == "vqa" and cfg["seed"] == 0 and cfg["n"] == 12 and cfg["image_size"] == 32


def test_refuses_non_empty_folder_without_overwrite(tmp_path):
    generate_world(tmp_path, n=2, seed=0, image_size=32, overwrite=True)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_world(tmp_path, n=2, seed=0, image_size=32)


def test_world_covers_every_attribute():
    items = list(iter_world(resolve_config("captioning"), 600, seed=0))
    things = [t for it in items for t in it.scene.things]
    assert {t.color for t in things} == set(COLORS)
    assert {t.shape for t in things if t.kind == "shape"} == set(SHAPES)
    assert {it.scene.background for it in items} == set(BACKGROUNDS)
    assert {t.noun for t in things if t.kind == "person"} == {"man", "woman", "boy", "girl"}
    counts = Counter(c for it in items for _, c in groups(it.scene))
    assert set(range(1, 7)) <= set(counts)


def test_captions_are_true_to_the_scene():
    skill_colors = set(TIDA_COLORS)
    for it in iter_world(resolve_config("captioning"), 300, seed=1):
        scene_colors = {t.color for t in it.scene.things}
        nouns = {t.noun for t in it.scene.things}
        group_counts = {COUNT_WORDS[c] for _, c in groups(it.scene)}
        for cap in it.captions + [it.dense_caption]:
            words = set(re.findall(r"[a-z-]+", cap.lower()))
            assert words & skill_colors <= scene_colors, (cap, scene_colors)
            for w, noun in (("woman", "woman"), ("women", "woman"), ("man", "man"), ("men", "man"),
                            ("girl", "girl"), ("boy", "boy")):
                if w in words:
                    assert noun in nouns, (cap, nouns)
            assert words & set(COUNT_WORDS[2:7]) <= group_counts, (cap, group_counts)
        # The dense caption names every group with its exact count.
        for t, c in groups(it.scene):
            if c > 1:
                assert COUNT_WORDS[c] in it.dense_caption.lower()


def test_dense_caption_example():
    s = Scene("kitchen", [Thing("shape", "green", "large", 0.3, 0.3, shape="star"),
                          Thing("shape", "green", "large", 0.7, 0.3, shape="star"),
                          Thing("person", "red", "small", 0.5, 0.7, gender="man")])
    assert dense_caption(s) == "A boy in a red shirt and two large green stars in a kitchen."


def test_render_draws_things_in_their_colour():
    s = Scene("snow", [Thing("shape", "purple", "large", 0.3, 0.4, shape="circle"),
                       Thing("shape", "yellow", "large", 0.72, 0.7, shape="square")])
    img = render(s, 100)
    assert img.size == (100, 100)
    assert img.getpixel((30, 40)) == COLORS["purple"]
    assert img.getpixel((72, 70)) == COLORS["yellow"]
    assert render(s, 100).tobytes() == img.tobytes()


def test_scene_round_trip_and_bad_fields():
    it = next(iter_world(resolve_config("vqa"), 1, seed=0))
    d = it.scene.to_dict()
    back = Scene.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    with pytest.raises(ValueError, match="background"):
        Scene.from_dict({"background": "moon", "things": []})
    with pytest.raises(ValueError, match=r"things\[0\].*wings"):
        Scene.from_dict({"background": "grass", "things": [{"kind": "shape", "wings": 2}]})


def _rate(items, split, pred_if, pred_then):
    hits = total = 0
    for it in items:
        if it.split != split:
            continue
        for t in it.scene.things:
            if pred_if(t):
                total += 1
                hits += pred_then(t, it.scene)
    return hits / max(total, 1), total


def test_tida_biased_correlations_hold_in_train_and_break_in_counterfactual_split():
    items = list(iter_world(resolve_config("tida-biased"), 1500, seed=0))
    assert {it.split for it in items} == {"train", "val", "test", "test_cf"}
    woman = lambda t: t.kind == "person" and t.gender == "woman"  # noqa: E731
    kitchen = lambda t, s: s.background == "kitchen"  # noqa: E731
    circle = lambda t: t.shape == "circle"  # noqa: E731
    red = lambda t, s: t.color == "red"  # noqa: E731
    tr, n_tr = _rate(items, "train", woman, kitchen)
    cf, n_cf = _rate(items, "test_cf", woman, kitchen)
    iid, _ = _rate(items, "test", woman, kitchen)
    assert n_tr > 100 and n_cf > 10
    assert tr > 0.85 and cf == 0.0 and iid < 0.5
    tr, _ = _rate(items, "train", circle, red)
    cf, n_cf = _rate(items, "test_cf", circle, red)
    assert tr > 0.85 and cf == 0.0 and n_cf > 5
    assert all(it.extra["counterfactual"] for it in items if it.split == "test_cf")
    # Every gender rule is broken by the other gender's context (never a neutral one): a lone woman is on the
    # street, a lone man in the kitchen, and a scene with both is in neither.
    seen = Counter()
    for it in items:
        if it.split != "test_cf":
            continue
        genders = {t.gender for t in it.scene.things if t.kind == "person"}
        broken = [r for r in it.extra["counterfactual"] if r.startswith("gender=")]
        assert len(broken) == len(genders)  # every person's rule is broken, and listed
        if genders == {"woman"}:
            assert it.scene.background == "street"
        elif genders == {"man"}:
            assert it.scene.background == "kitchen"
        elif genders:
            assert it.scene.background not in ("kitchen", "street")
        seen[frozenset(genders)] += 1
    assert seen[frozenset({"woman"})] > 10 and seen[frozenset({"man"})] > 10


def test_truematch_bags_are_near_duplicates_and_distinct():
    items = list(iter_world(resolve_config("truematch"), 60, seed=0))
    bags: dict[str, list] = {}
    for it in items:
        bags.setdefault(it.extra["bag"]["id"], []).append(it)
    sizes = Counter(len(b) for b in bags.values())
    assert set(sizes) == {3, 5, 7}
    for members in bags.values():
        assert len({m.split for m in members}) == 1
        assert len({m.dense_caption for m in members}) == len(members)
        assert len({m.scene.signature() for m in members}) == len(members)
        assert members[0].extra["bag"]["edits"] == []
        assert all(1 <= len(m.extra["bag"]["edits"]) <= 2 for m in members[1:])
        base = members[0].scene
        for m in members[1:]:  # near-duplicates: most things unchanged
            assert abs(len(m.scene.things) - len(base.things)) <= 2


def test_color_edit_changes_one_group_only():
    rng = random.Random(0)
    cfg = resolve_config("captioning", min_groups=2)
    scene = next(iter_world(cfg, 1, seed=5)).scene
    edited = edit_scene(scene, rng, "color")
    before = Counter(t.color for t in scene.things)
    after = Counter(t.color for t in edited.things)
    assert before != after
    assert [(t.x, t.y, t.kind, t.size) for t in scene.things] == [(t.x, t.y, t.kind, t.size) for t in edited.things]
    changed = {t.key()[:3] for t, u in zip(scene.things, edited.things) if t.color != u.color}
    assert len(changed) == 1


def test_vqa_answers_agree_with_the_scene():
    for it in iter_world(resolve_config("vqa"), 100, seed=2):
        shapes = [t for t in it.scene.things if t.kind == "shape"]
        for qa in it.extra["qa"]:
            q, a = qa["question"], qa["answer"]
            m = re.fullmatch(r"How many (\w+) (\w+)s are there\?", q)
            if m and m.group(1) in COLORS:
                assert int(a) == sum(t.color == m.group(1) and t.shape == m.group(2) for t in shapes)
            m = re.fullmatch(r"Is there an? (\w+) (\w+)\?", q)
            if m:
                present = any(t.color == m.group(1) and t.shape == m.group(2) for t in shapes)
                assert a == ("yes" if present else "no")
            m = re.fullmatch(r"What color is the (\w+)\?", q)
            if m:
                assert a in {t.color for t in shapes if t.shape == m.group(1)}
    types = Counter(qa["type"] for it in iter_world(resolve_config("vqa"), 100, seed=2) for qa in it.extra["qa"])
    assert set(types) == {"count", "attribute", "spatial", "compare", "exists"}


def test_finegrained_labels_and_captions():
    items = list(iter_world(resolve_config("finegrained"), 240, seed=0))
    labels = Counter(it.label for it in items)
    assert set(labels) == set(range(len(FINE_CLASSES)))
    for it in items:
        assert it.extra["class_name"] == FINE_CLASSES[it.label]
        assert all(FINE_CLASSES[it.label] in c for c in it.captions)


def test_bag_of_seven_from_a_sparse_scene():
    rng = random.Random(0)
    bag = sample_bag(rng, resolve_config("truematch"), 7)
    assert len(bag) == 7


def test_cli_world_writes_and_reports(tmp_path, capsys):
    from vlm.cli import main

    assert main(["world", "--out", str(tmp_path / "w"), "--n", "5", "--seed", "1", "--preset", "finegrained",
                 "--size", "32", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 5 and report["preset"] == "finegrained"
    assert main(["world", "--out", str(tmp_path / "w"), "--n", "5", "--quiet"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["world", "--out", str(tmp_path / "x"), "--n", "5", "--preset", "nope", "--quiet"]) == 2


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_world_loads_with_datasets_imagefolder(tmp_path, preset):
    import datasets

    out = generate_world(tmp_path / preset, n=10, seed=0, preset=preset, image_size=32)
    rows = (out / "metadata.jsonl").read_text().splitlines()
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == len(rows)
    first = json.loads(rows[0])
    assert ds[0]["captions"] == first["captions"]
    assert ds[0]["image"].size == (32, 32)
    assert ds[0]["scene"]["background"] == first["scene"]["background"]


def test_every_generated_caption_is_fully_supported_by_its_scene():
    from vlm.world.facts import score_caption

    stated = 0
    for preset in sorted(PRESETS):
        for it in iter_world(resolve_config(preset), 120, seed=7):
            for cap in it.captions + [it.dense_caption]:
                r = score_caption(cap, it.scene)
                assert r["unsupported"] == 0, (preset, cap)
                stated += r["facts"]
    assert stated > 5000


def test_fact_checker_catches_wrong_colour_count_background_and_relation():
    from vlm.world.facts import caption_facts, check_fact

    s = Scene("beach", [Thing("shape", "red", "small", 0.2, 0.5, shape="circle"),
                        Thing("shape", "red", "small", 0.2, 0.8, shape="circle"),
                        Thing("person", "blue", "large", 0.7, 0.5, gender="woman")])
    wrong = ("Three red circles in a kitchen. The woman in the blue dress is to the left of the small red circle.")
    verdict = {f[0]: check_fact(f, s) for f in caption_facts(wrong)}
    assert verdict == {"thing": True, "color": True, "count": False, "background": False, "relation": False}
    right = "Two small red circles on a beach. A woman in a blue dress."
    assert all(check_fact(f, s) for f in caption_facts(right))


def test_fact_scores_by_kind_split_the_hallucination_rate():
    from vlm.world.facts import FACT_KINDS, fact_scores

    s = Scene("beach", [Thing("shape", "red", "small", 0.2, 0.5, shape="circle"),
                        Thing("shape", "red", "small", 0.2, 0.8, shape="circle")])
    caps = {"a": "Three red circles in a kitchen.", "b": "Two red circles on a beach.", "c": "A blue circle."}
    out = fact_scores(caps, {k: s for k in caps}, by_kind=True)
    # a: thing, colour ok; count 3 and kitchen wrong. b: all four right. c: thing ok; blue and "a" (one) wrong.
    assert out["by_kind"] == {
        "thing": {"stated": 3, "per_caption": 1.0, "hallucination_rate": 0.0},
        "color": {"stated": 3, "per_caption": 1.0, "hallucination_rate": round(1 / 3, 4)},
        "count": {"stated": 3, "per_caption": 1.0, "hallucination_rate": round(2 / 3, 4)},
        "background": {"stated": 2, "per_caption": round(2 / 3, 4), "hallucination_rate": 0.5}}
    assert list(out["by_kind"]) == [k for k in FACT_KINDS if k in out["by_kind"]]
    assert out["hallucination_rate"] == round(4 / 11, 4) and out["facts_per_caption"] == round(11 / 3, 4)
    assert "by_kind" not in fact_scores(caps, {k: s for k in caps})  # the default keeps its old keys


def test_dense_captions_state_more_facts_than_terse_ones():
    from vlm.world.facts import score_caption

    items = list(iter_world(resolve_config("captioning"), 200, seed=1))
    dense = sum(score_caption(it.dense_caption, it.scene)["facts"] for it in items)
    terse = sum(score_caption(it.captions[0], it.scene)["facts"] for it in items)
    assert dense > 2 * terse


def test_caption_levels_set_each_annotators_detail():
    from vlm.world.facts import score_caption

    def mean_facts(preset, k):
        items = list(iter_world(resolve_config(preset), 200, seed=1))
        return sum(score_caption(it.captions[k], it.scene)["facts"] for it in items) / len(items)

    # captioning's fifth annotator is exhaustive; captioning-generic's is medium, like its third
    assert mean_facts("captioning", 4) > mean_facts("captioning-generic", 4) + 1.0
    assert abs(mean_facts("captioning-generic", 4) - mean_facts("captioning-generic", 2)) < 0.8
    only = list(iter_world(resolve_config("captioning", caption_levels=("terse",), n_captions=3), 20, seed=1))
    terse = [score_caption(c, it.scene)["facts"] for it in only for c in it.captions]
    assert len(terse) == 60 and sum(terse) / 60 < mean_facts("captioning", 4) / 2
    with pytest.raises(ValueError, match="caption_levels"):
        resolve_config("captioning", caption_levels=("exhaustive",))


def test_brief_annotators_leave_each_detail_unsaid_more_often_than_not():
    from vlm.world.facts import caption_facts

    items = list(iter_world(resolve_config("captioning-brief"), 300, seed=2))
    assert all(len(it.captions) == 5 for it in items)
    rates = {}
    for k in range(5):
        facts = [caption_facts(it.captions[k]) for it in items]
        n = len(items)
        rates[k] = {"size": sum(any(f[0] == "size" for f in fs) for fs in facts) / n,
                    "relation": sum(any(f[0] == "relation" for f in fs) for fs in facts) / n,
                    "color": sum(any(f[0] == "color" for f in fs) for fs in facts) / n,
                    "background": sum(any(f[0] == "background" for f in fs) for fs in facts) / n,
                    "two_things": sum(len({f[1] for f in fs if f[0] == "thing"}) >= 2 for fs in facts) / n}
    for k in range(4):  # brief: never a size or a relation; colour, setting and a second thing now and then
        assert rates[k]["size"] == 0 and rates[k]["relation"] == 0
        assert 0.15 < rates[k]["color"] < 0.45 and 0.15 < rates[k]["background"] < 0.45
        assert 0.1 < rates[k]["two_things"] < 0.45
    assert rates[4]["color"] > 0.75 and rates[4]["two_things"] > 2 * rates[0]["two_things"]  # the fifth is medium
    # over all five annotators each detail is still stated in under half the captions
    for key in ("color", "background", "two_things"):
        assert sum(rates[k][key] for k in range(5)) / 5 < 0.5
    tm = list(iter_world(resolve_config("truematch-brief"), 30, seed=2))
    assert {it.extra["bag"]["size"] for it in tm} <= {3, 5, 7}
    assert all(not any(f[0] == "size" for f in caption_facts(it.captions[0])) for it in tm)


@pytest.mark.parametrize("preset,wording", [("captioning-brief", "varied"), ("captioning", "varied"),
                                            ("captioning-brief", "synonyms"), ("captioning", "synonyms")])
def test_varied_wording_states_the_same_facts_in_other_words(preset, wording):
    from vlm.world.facts import caption_facts, check_fact

    fixed = list(iter_world(resolve_config(preset), 200, seed=2))
    varied = list(iter_world(resolve_config(preset, wording=wording), 200, seed=2))
    changed = 0
    for a, b in zip(fixed, varied, strict=True):
        assert a.scene == b.scene and a.dense_caption == b.dense_caption  # what is drawn and said is the same
        for ca, cb in zip(a.captions, b.captions, strict=True):
            assert set(caption_facts(ca)) == set(caption_facts(cb)), (ca, cb)
            assert all(check_fact(f, b.scene) for f in caption_facts(cb)), cb
            changed += ca != cb
    texts = [c for it in varied for c in it.captions]
    assert changed > 0.3 * len(texts)
    assert any(re.search(r"\b(circle|square|triangle|star|hexagon|diamond)s? in (red|blue|green)\b", c) for c in texts)
    assert any(re.search(r"\b[2-6] ", c) for c in texts)
    assert any(v in c for c in texts for v in ("at the beach", "on grass", "in the street", "on snow", "in the dark"))
    alternatives = {alt for alts in SYNONYMS.values() for alt in alts}
    used = {w for c in texts for w in re.findall(r"[a-z-]+", c.lower())} & alternatives
    if wording == "synonyms":  # every size, colour and person word occurs; a size only where the annotators say one
        assert used >= alternatives - ({"little", "tiny", "big", "mid-sized"} if preset.endswith("brief") else set())
        assert any("a pair of" in c.lower() for c in texts)
    else:
        assert not used
    with pytest.raises(ValueError, match="wording"):
        resolve_config(preset, wording="poetic")


def test_content_caption_states_exactly_the_chosen_content_and_nothing_false():
    from vlm.world import content_caption
    from vlm.world.facts import caption_facts, check_fact

    items = list(iter_world(resolve_config("truematch"), 150, seed=3))
    for it in items:
        n_groups = len(groups(it.scene))
        assert content_caption(it.scene) == it.dense_caption.split(". ")[0].rstrip(".") + "."
        for kw in ({"max_groups": 1, "size": False}, {"max_groups": 2}, {"color": False}, {"exact_counts": False},
                   {"background": False}):
            cap = content_caption(it.scene, **kw)
            facts = caption_facts(cap)
            assert all(check_fact(f, it.scene) for f in facts), (kw, cap)
            kinds = Counter(f[0] for f in facts)
            assert kinds["background"] == (0 if kw.get("background") is False else 1), cap
            if "max_groups" in kw:  # one exact count per group named (the fact reader merges same-noun groups)
                assert 1 <= kinds["count"] <= min(kw["max_groups"], n_groups), cap
                assert cap.count(",") + cap.count(" and ") == min(kw["max_groups"], n_groups) - 1, cap
            if kw.get("size") is False:
                assert kinds["size"] == 0, cap
            if kw.get("color") is False:
                assert kinds["color"] == 0, cap
            if kw.get("exact_counts") is False:
                assert not any(f"{COUNT_WORDS[c]} " in cap.lower() for c in range(3, len(COUNT_WORDS))), cap
    with pytest.raises(ValueError, match="max_groups must be >= 1"):
        content_caption(items[0].scene, max_groups=0)
