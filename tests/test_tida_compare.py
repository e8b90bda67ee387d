"""Skill correctness against world scene graphs, and the seeded TIDA comparison script (smoke run)."""

import json

import pytest

from benchmarks.skills_world import skill_scores, skill_verdicts
from benchmarks.tida_compare import TIDACompareConfig, main, rule_skill, summarise
from vlm.world import Scene, Thing


def _shape(shape, color, size="small", x=0.2, y=0.5):
    return Thing("shape", color, size, x, y, shape=shape)


def _person(gender, color, size="large", x=0.5, y=0.5):
    return Thing("person", color, size, x, y, gender=gender)


def test_colour_words_are_checked_against_their_noun():
    s = Scene("grass", [_shape("circle", "red"), _shape("square", "blue", x=0.6), _shape("hexagon", "green", x=0.8)])
    right = skill_verdicts("A red circle and a blue square on the grass.", s)["color"]
    assert (right["words"], right["wrong"], right["right"]) == (["red", "blue"], [], True)
    wrong = skill_verdicts("A blue circle and a blue square.", s)["color"]
    assert (wrong["words"], wrong["wrong"], wrong["right"]) == (["blue", "blue"], ["blue"], False)
    omitted = skill_verdicts("A circle and a square.", s)["color"]
    assert [omitted[k] for k in ("present", "mentioned", "relevant", "right")] == [True, False, True, False]
    # orange is not a TIDA colour: no colour skill word is stated
    assert skill_verdicts("An orange circle.", s)["color"]["mentioned"] is False


def test_count_words_are_checked_and_a_wrong_count_of_one_thing_is_relevant():
    s = Scene("grass", [_shape("star", "yellow", x=0.1 * k + 0.2) for k in range(3)] + [_shape("circle", "red", y=0.8)])
    v = skill_verdicts("Three yellow stars and a red circle.", s)["counting"]
    assert (v["present"], v["words"], v["right"]) == (True, ["three"], True)
    assert skill_verdicts("Two stars.", s)["counting"]["wrong"] == ["two"]
    assert skill_verdicts("Some stars.", s)["counting"]["mentioned"] is False  # "some" states no count
    one = Scene("grass", [_shape("star", "yellow")])
    v = skill_verdicts("Two stars.", one)["counting"]
    assert (v["present"], v["mentioned"], v["relevant"], v["right"]) == (False, True, True, False)
    assert skill_verdicts("A star.", one)["counting"]["relevant"] is False  # "a" is not a counting word


def test_gender_is_checked_apart_from_age_colour_and_count():
    s = Scene("street", [_person("woman", "red")])
    v = skill_verdicts("A man in a red shirt on a street.", s)
    assert (v["gender"]["wrong"], v["color"]["right"]) == (["man"], True)  # the colour is right, the gender not
    assert skill_verdicts("A girl.", s)["gender"]["right"] is True  # age is a size fact, not a gender one
    v = skill_verdicts("Two women.", s)
    assert (v["gender"]["right"], v["counting"]["right"]) == (True, False)
    assert skill_verdicts("A red circle.", Scene("grass", [_shape("circle", "red")]))["gender"]["relevant"] is False


def test_skill_scores_count_omissions_as_not_right():
    scenes = {"a": Scene("grass", [_shape("circle", "red")]),
              "b": Scene("grass", [_shape("circle", "blue")]),
              "c": Scene("grass", [_shape("circle", "green")]),
              "d": Scene("grass", [_shape("circle", "orange")])}
    caps = {"a": "A red circle.", "b": "A red circle.", "c": "A circle.", "d": "A green circle."}
    summary, per_item = skill_scores(caps, scenes)
    # relevant: a, b, c (scene colour), d (caption states green); right: a only
    assert summary["color"] == {"relevant": 4, "present": 3, "mentioned": 3, "right": 1, "accuracy": 0.25,
                                "precision": round(1 / 3, 6), "mention_rate": round(2 / 3, 6)}
    assert summary["gender"] == {"relevant": 0, "present": 0, "mentioned": 0, "right": 0, "accuracy": None,
                                 "precision": None, "mention_rate": None}
    assert per_item["d"]["color"]["wrong"] == ["green"]
    with pytest.raises(KeyError, match="no scene"):
        skill_scores({"x": "A red circle."}, scenes)


def test_rules_map_to_skills():
    from vlm.world.generate import TIDA_CORRELATIONS

    assert [rule_skill(c.describe()) for c in TIDA_CORRELATIONS] == ["gender", "gender", "color", "color", "color",
                                                                      "counting"]


def test_summary_checks_gain_and_cider_change():
    def row(color, counting, gender, cider):
        return {"color/test_cf": color, "counting/test_cf": counting, "gender/test_cf": gender, "CIDEr/val": cider}

    per_seed = {"biased": [row(0.40, 0.30, 0.50, 1.00), row(0.42, 0.32, 0.52, 1.10)],
                "tida": [row(0.60, 0.40, 0.70, 1.00), row(0.62, 0.52, 0.72, 1.02)]}
    table, paired, checks = summarise(per_seed)
    assert table["tida"]["color/test_cf"] == [0.61, round(0.02 ** 0.5 * 0.1, 6)]
    assert paired["counting/test_cf"] == [0.15, round((0.05 ** 2 * 2) ** 0.5, 6)]
    assert (checks["color_gain_points"], checks["counting_gain_points"], checks["gender_gain_points"]) == (20.0, 15.0,
                                                                                                         20.0)
    assert checks["cider_val_relative_change_pct"] == round(100 * (1.01 / 1.05 - 1), 2) == -3.81
    assert checks["pass"] == {"color_gain_>=15_points": True, "counting_gain_>=15_points": True,
                              "gender_gain_>=15_points": True, "cider_val_drop_<=3%": False}
    assert checks["all_pass"] is False


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="seeds"):
        TIDACompareConfig(seeds=[0, 0])
    with pytest.raises(ValueError, match="steps"):
        TIDACompareConfig(steps=0)
    with pytest.raises(ValueError, match="skill_files: nope.yaml is not a file"):
        TIDACompareConfig(skill_files=["nope.yaml"])


def test_shipped_counting_from_one_skill_file_lets_two_become_one():
    from augment import counterfactuals, load_skills
    from benchmarks.tida_compare import ROOT

    path = ROOT / "benchmarks" / "skill_data" / "counting-from-one.yaml"
    skill = load_skills([path])["counting"]
    assert skill.words[0] == "one" and skill.source == str(path)
    edited = sorted(e.edited for e in counterfactuals("Two red stars on the grass.", [skill]))
    assert edited == ["One red star on the grass.", "Three red stars on the grass."]
    # the settings hold the file's content: a changed word list is a changed comparison
    settings = TIDACompareConfig(skill_files=[str(path)]).settings()
    assert settings["skill_files"][0]["groups"]["count"][:2] == ["one", "two"]


def test_smoke_run_writes_the_table_and_reuses_finished_stages(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--out", str(out), "--n", "60", "--steps", "3", "--seeds", "0", "--image-size", "32", "--model",
            "prefix-tiny", "--max-new-tokens", "8", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| biased + TIDA |" in printed and '"all_pass"' in printed
    result = json.loads((out / "tida_compare.json").read_text())
    md = (out / "tida_compare.md").read_text()
    assert md.startswith("| captioner |") and "counting right, val (%)" in md
    summaries = {arm: json.loads((out / "runs" / f"{arm}-s0" / "summary.json").read_text())
                 for arm in ("biased", "tida")}
    assert summaries["biased"]["steps"] == summaries["tida"]["steps"] == 3  # same steps in both arms
    world_train = result["world"]["train"]
    assert summaries["biased"]["train_images"] == world_train
    assert summaries["tida"]["train_images"] == world_train + result["tida"]["written"] > world_train
    for arm in ("biased", "tida"):
        for k in ("color/test_cf", "counting/test_cf", "gender/test_cf", "CIDEr/val", "color/val", "gender/val"):
            m, _ = result["table"][arm][k]
            assert m is None or 0.0 <= m <= 10.0
    assert set(result["checks"]["pass"]) == {"color_gain_>=15_points", "counting_gain_>=15_points",
                                             "gender_gain_>=15_points", "cider_val_drop_<=3%"}
    assert result["stage_time_s"] > 0
    assert {"world", "tida", "train/biased-s0", "train/tida-s0"} <= set(result["timings"])
    captions = (out / "runs" / "tida-s0" / "captions_test_cf.json").read_text()
    # a rerun reuses every stage: same captions, same timings, same table
    assert main(argv) == 0
    again = json.loads((out / "tida_compare.json").read_text())
    assert again["timings"] == result["timings"] and again["table"] == result["table"]
    assert (out / "runs" / "tida-s0" / "captions_test_cf.json").read_text() == captions
    with pytest.raises(ValueError, match="other settings .*steps"):
        main([*argv[:4], "--steps", "4", *argv[6:]])
