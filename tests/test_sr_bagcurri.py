"""The SR + BagCurri comparison script: settings guard and table (the training itself is tested in test_sr.py)."""

import json
from pathlib import Path

import pytest

from benchmarks.sr_bagcurri import _check_settings, main, markdown_table


def test_stage_seconds_reads_the_summary_and_names_a_bad_one(tmp_path):
    from benchmarks.sr_bagcurri import stage_seconds

    (tmp_path / "mle").mkdir()
    (tmp_path / "mle" / "summary.json").write_text(json.dumps({"wall_time_s": 800.0, "total_time_s": 835.0}))
    assert stage_seconds(tmp_path / "mle") == 835.0  # the MLE stage's test-split scoring counts too
    (tmp_path / "sr").mkdir()
    (tmp_path / "sr" / "summary.json").write_text(json.dumps({"steps": 150, "wall_time_s": 259.5}))
    assert stage_seconds(tmp_path / "sr") == 259.5
    (tmp_path / "sr" / "summary.json").write_text(json.dumps({"steps": 150}))
    with pytest.raises(ValueError, match=r"sr.summary\.json: no total_time_s or wall_time_s"):
        stage_seconds(tmp_path / "sr")
    (tmp_path / "sr" / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"sr.summary\.json line 1: not a valid stage summary \(column 2"):
        stage_seconds(tmp_path / "sr")
    with pytest.raises(FileNotFoundError, match="missing is not a finished training stage"):
        stage_seconds(tmp_path / "missing")


def test_stage_timings_persist_across_invocations_and_name_a_corrupt_file(tmp_path):
    from benchmarks.report import StageTimings

    t = StageTimings(tmp_path / "timings.json")
    t.record("world", 12.345)
    t.record("train", 100)
    again = StageTimings(tmp_path / "timings.json")  # a later invocation reads what the first recorded
    assert again.data == {"train": 100.0, "world": 12.35} and again.total == 112.3
    again.record("world", 10)  # a stage made again replaces its time
    assert StageTimings(tmp_path / "timings.json").total == 110.0
    (tmp_path / "timings.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"timings\.json line 1: not a valid stage-timings JSON .*; delete it"):
        StageTimings(tmp_path / "timings.json")


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    settings = {"mle_recipe": {"model": "prefix-small"}, "model": None, "retriever": "finecap:lit"}
    _check_settings(tmp_path, settings)
    assert json.loads((tmp_path / "sr_bagcurri_config.json").read_text()) == settings
    _check_settings(tmp_path, dict(settings))  # the same settings resume
    with pytest.raises(ValueError, match=r"other settings \(model, retriever\)"):
        _check_settings(tmp_path, {**settings, "model": "prefix-mid-pos-small", "retriever": "finecap:lit-v2"})


def test_table_rows_are_percent_for_recall_and_hallucination():
    cols = ["R@1/bag3", "R@1/bag5", "R@1/bag7", "CIDEr", "hallucination_rate", "mean_length_words", "vocabulary"]
    row = dict(zip(cols, ([0.7, 0.01], [0.6, 0.02], [0.5, 0.0], [2.5, 0.1], [0.3, 0.01], [12.0, 0.5], [80.0, 2.0])))
    md = markdown_table({"seeds": [0, 1], "wall_time_s": 12.4, "table": {"mle": row, "sr-bagcurri": row}})
    lines = md.splitlines()
    assert lines[2] == ("| MLE | 70.0 ± 1.0 | 60.0 ± 2.0 | 50.0 ± 0.0 | 2.500 ± 0.100 | 30.0 ± 1.0 | 12.0 ± 0.5 "
                        "| 80.0 ± 2.0 |")
    assert lines[3].startswith("| SR + BagCurri |") and md.endswith("seeds [0, 1]; wall time 12 s")
    timed = markdown_table({"seeds": [0], "wall_time_s": 12.4, "table": {"mle": row}, "stage_time_s": 4811.2,
                            "stage_times_s": {"mle": 835.0, "sr-world": 20.0, "evaluation": 279.0}})
    assert timed.endswith("wall time 12 s (this invocation); the whole comparison 4811 s, the sum of its stages as "
                          "each was made (stage_times_s in the JSON; truematch-eval made before its time was kept)")
    by_edit = {"mle": {"none": [0.4, 0.0], "color": [0.5, 0.0], "color+count": [0.2, 0.0]},
               "sr-bagcurri": {"none": [0.45, 0.01], "color": [0.625, 0.02], "color+count": [0.3, 0.0]}}
    md = markdown_table({"seeds": [0, 1], "wall_time_s": 12.4, "table": {"mle": row}, "by_edit": by_edit})
    tail = md.split("bags of every size:")[1].strip().splitlines()
    facts = {"mle": {"count": {"hallucination_rate": [0.3, 0.0], "per_caption": [1.25, 0.0]}},
             "sr-bagcurri": {"color": {"hallucination_rate": [0.2, 0.0], "per_caption": [1.5, 0.1]},
                             "count": {"hallucination_rate": [0.45, 0.02], "per_caption": [1.6, 0.0]}}}
    md2 = markdown_table({"seeds": [0], "wall_time_s": 1.0, "table": {"mle": row}, "facts_by_kind": facts})
    assert md2.split("per caption):")[1].strip().splitlines() == [
        "| model | color | count |", "|---|---|---|", "| MLE | - | 30.0 (1.25) |",
        "| SR + BagCurri | 20.0 (1.50) | 45.0 (1.60) |"]
    assert tail == ["| model | none | color |", "|---|---|---|", "| MLE | 40.0 | 50.0 |",
                    "| SR + BagCurri | 45.0 | 62.5 |"]
    checks = {"bagcurri_vs_mle_R@1_bag5_points": 4.87, "bagcurri_vs_mle_R@1_bag5_ci95": [1.2, 8.53],
              "bagcurri_vs_random_R@1_bag5_points": -0.4, "bagcurri_vs_random_R@1_bag5_ci95": [-3.0, 2.25]}
    md3 = markdown_table({"seeds": [0], "wall_time_s": 1.0, "table": {"mle": row}, "checks": checks})
    assert ("SR + BagCurri on bags of 5: over MLE +4.9 points (95 % CI +1.2 to +8.5); over random distractors -0.4 "
            "points (95 % CI -3.0 to +2.2).") in md3
    assert "95 % CI" not in markdown_table({"seeds": [0], "wall_time_s": 1.0, "table": {"mle": row}})


def test_the_shipped_sr_arms_differ_only_in_their_curriculum():
    """The comparison's arms build on one config: reward, baseline, regularisers and steps must stay equal."""
    import yaml

    from benchmarks.sr_bagcurri import CONFIGS
    from vlm.train.mle import load_config_file

    base = load_config_file(CONFIGS / "sr-bagcurri.yaml")
    for name in ("sr-random.yaml", "sr-bagcurri-skills.yaml", "sr-bagcurri-with-batch.yaml"):
        assert set(yaml.safe_load((CONFIGS / name).read_text())) == {"base", "curriculum", "out_dir"}, name
        other = load_config_file(CONFIGS / name)
        differ = {k for k in set(base) | set(other) if base.get(k) != other.get(k)}
        assert differ == {"curriculum", "out_dir"}, name
        assert sum(st["steps"] for st in other["curriculum"]) == sum(st["steps"] for st in base["curriculum"]) == 150


def test_the_faithful_arms_differ_only_in_their_curriculum():
    """The faithful pair: the base with a larger CIDEr-D weight and anchors, 180 steps each, and the curriculum's
    last stage on the world's background and count edits."""
    from benchmarks.sr_bagcurri import CONFIGS
    from vlm.train.curriculum import Curriculum
    from vlm.train.mle import load_config_file

    base = load_config_file(CONFIGS / "sr-bagcurri.yaml")
    curri = load_config_file(CONFIGS / "sr-bagcurri-faithful.yaml")
    rand = load_config_file(CONFIGS / "sr-random-faithful.yaml")
    assert {k for k in set(base) | set(curri) if base.get(k) != curri.get(k)} == {
        "curriculum", "out_dir", "cider_weight", "kl_coef", "mle_coef"}
    assert {k for k in set(rand) | set(curri) if rand.get(k) != curri.get(k)} == {"curriculum", "out_dir"}
    assert (curri["cider_weight"], curri["kl_coef"], curri["mle_coef"]) == (1.0, 0.125, 0.125)
    assert sum(st["steps"] for st in curri["curriculum"]) == sum(st["steps"] for st in rand["curriculum"]) == 180
    assert curri["curriculum"][:5] == base["curriculum"]
    curriculum = Curriculum.from_list(curri["curriculum"])
    last = curriculum.stages[-1]
    assert (last.source, last.edits, curriculum.total_steps) == ("world", ("background", "count"), 180)


def test_cli_lists_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(o in out for o in ("--retriever", "--model", "--mle-config", "--sr-set", "--mle-set", "--eval-world-n",
                                 "--pretrain-set", "--bagcurri-config", "--random-config", "--reuse-from",
                                 "--reference-set", "--vcb", "--vcb-set", "--vcb-llm"))


def test_cli_passes_the_arm_configs_and_refuses_a_missing_one(tmp_path, capsys, monkeypatch):
    import benchmarks.sr_bagcurri as sb

    with pytest.raises(SystemExit):
        main(["--bagcurri-config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert f"--bagcurri-config: no such file: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err
    seen = {}

    def fake_run(out, seeds, **kw):  # what the command line hands the comparison
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(sb, "run", fake_run)
    mine = tmp_path / "skills.yaml"
    mine.write_text("method: sr\n")
    with pytest.raises(SystemExit):
        main(["--bagcurri-config", str(mine), "--out", str(tmp_path / "o")])
    assert seen["sr_configs"] == {"sr-random": sb.CONFIGS / "sr-random.yaml", "sr-bagcurri": mine}
    assert seen["reuse_from"] is None
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--reuse-from", "runs/earlier"])
    assert seen["reuse_from"] == "runs/earlier" and seen["reference_set"] == {}
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--reference-set", "captions=dense", "epochs=4"])
    assert seen["reference_set"] == {"captions": "dense", "epochs": 4} and seen["vcb_set"] is None
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--vcb", "--vcb-set", "epochs=4"])
    assert seen["vcb_set"] == {"epochs": 4} and seen["vcb_llm"] is False
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--vcb"])
    assert seen["vcb_set"] == {}
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "o"), "--vcb-set", "epochs=4"])
    assert "--vcb-set and --vcb-llm need --vcb" in capsys.readouterr().err


def test_the_whole_comparison_runs_end_to_end_and_reuses_its_stages(tmp_path):
    """A tiny run of ``run()``: MLE, both SR arms on a truematch world, the held-out scoring and the checks."""
    import yaml

    from benchmarks.sr_bagcurri import run
    from tests.test_sr import PaletteRetriever
    from vlm.retrieval import _FACTORIES, register_retriever

    register_retriever("palette", lambda rest, device="cpu": PaletteRetriever())
    try:
        common = dict(method="sr", world_n=24, batch_size=4, n_samples=2, max_new_tokens=6, eval_every=0,
                      checkpoint_every=2, eval_num_beams=1, eval_max_new_tokens=6, retriever="palette:x",
                      neighbours=6, world_preset="truematch-brief")
        cfgs = {"sr-random": {**common, "curriculum": [{"source": "random", "steps": 3}]},
                "sr-bagcurri": {**common, "curriculum": [{"source": "random", "steps": 1},
                                                         {"source": "hard", "bag_size": 3, "steps": 1},
                                                         {"source": "world", "steps": 1}]}}
        paths = {}
        for name, d in cfgs.items():
            paths[name] = tmp_path / f"{name}.yaml"
            paths[name].write_text(yaml.safe_dump(d))
        mle_set = {"model": "prefix-tiny", "world_n": 30, "epochs": 1, "batch_size": 16, "warmup_steps": 1,
                   "vocab_size": 300, "eval_images": 4, "test_images": 6, "eval_num_beams": 1,
                   "eval_max_new_tokens": 6}
        kw = dict(mle_set=mle_set, sr_set={"kl_coef": 0.1, "mle_coef": 0.1}, eval_world_n=21, sr_configs=paths,
                  progress=False)
        result = run(tmp_path / "out", [0], **kw)
        assert set(result["table"]) == {"mle", "sr-random", "sr-bagcurri"}
        for row in result["table"].values():
            assert 0 <= row["R@1/bag5"][0] <= 1 and row["R@1/bag5"][1] == 0.0 and row["CIDEr"][0] >= 0
        assert set(result["checks"]["pass"]) == {"R@1_bag5_+10_over_mle", "R@1_bag5_+3_over_random",
                                                 "hallucination_rise_<=2", "cider_drop_<=15%"}
        for other in ("mle", "random"):  # the paired bootstrap interval holds the difference it is about
            lo, hi = result["checks"][f"bagcurri_vs_{other}_R@1_bag5_ci95"]
            assert lo <= result["checks"][f"bagcurri_vs_{other}_R@1_bag5_points"] <= hi
        from vlm.pretrained import cache_dir

        # the held-out images' embeddings are kept once for every captioner scored on them
        assert list((cache_dir() / "truematch_embeddings").glob("palette-*.safetensors"))
        hits = result["per_seed"]["mle"][0]["bag_hits"]["5"]
        assert sum(hits) / len(hits) == pytest.approx(result["table"]["mle"]["R@1/bag5"][0], abs=1e-3)
        assert result["sr_set"] == {"kl_coef": 0.1, "mle_coef": 0.1} and result["eval_world_n"] == 21
        # R@1 per edit kind on the held-out bags: every model scored on the same kinds, the first images included
        assert "none" in result["by_edit"]["mle"] and len({tuple(v) for v in result["by_edit"].values()}) == 1
        assert all(0 <= m <= 1 for v in result["by_edit"].values() for m, _ in v.values())
        assert "| MLE | " in (tmp_path / "out" / "sr_bagcurri.md").read_text().split("bags of every size:")[1]
        assert (tmp_path / "out" / "sr_bagcurri.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # per kind of fact on the MLE test split (a 1-epoch tiny model may state none): the kinds add up
        assert set(result["facts_by_kind"]) == {"mle", "sr-random", "sr-bagcurri"}
        for name, kinds in result["facts_by_kind"].items():
            assert all(0 <= v["hallucination_rate"][0] <= 1 for v in kinds.values())
            total = sum(v["per_caption"][0] for v in kinds.values())
            assert total == pytest.approx(result["table"][name]["facts_per_caption"][0], abs=1e-3)
        trained = json.loads((tmp_path / "out" / "sr-bagcurri-s0" / "final" / "training_config.json").read_text())
        assert trained["kl_coef"] == 0.1 and trained["seed"] == 0 and trained["retriever"] == "palette:x"
        assert set(result["timings"]) == {"mle_s", "sr-random-s0_s", "sr-bagcurri-s0_s"}
        # the whole comparison's cost: each stage as it was made (its summary), worlds, this evaluation
        times = result["stage_times_s"]
        assert set(times) == {"mle", "sr-random-s0", "sr-bagcurri-s0", "sr-world", "truematch-eval", "evaluation"}
        assert times["sr-bagcurri-s0"] == json.loads((tmp_path / "out" / "sr-bagcurri-s0" / "summary.json")
                                                     .read_text())["wall_time_s"]
        assert times["mle"] == json.loads((tmp_path / "out" / "mle" / "summary.json").read_text())["total_time_s"]
        assert all(v > 0 for v in times.values())
        assert result["stage_time_s"] == pytest.approx(sum(times.values()), abs=0.1)
        md = (tmp_path / "out" / "sr_bagcurri.md").read_text()
        assert f"the whole comparison {result['stage_time_s']:.0f} s" in md
        # the SR world is written with the SR configs' preset; the held-out world is always plain truematch
        assert json.loads((tmp_path / "out" / "sr-world" / "world.json").read_text())["preset"] == "truematch-brief"
        assert json.loads((tmp_path / "out" / "truematch-eval" / "world.json").read_text())["preset"] == "truematch"
        # each captioner's scores are saved with what they were made from; a rerun scores nothing again
        import benchmarks.sr_bagcurri as sb

        saved_scores = {f.stem: json.loads(f.read_text()) for f in (tmp_path / "out" / "scores").glob("*.json")}
        assert set(saved_scores) == {"mle", "sr-random-s0", "sr-bagcurri-s0"}
        assert saved_scores["mle"]["scores"]["R@1/bag5"] == result["per_seed"]["mle"][0]["R@1/bag5"]
        assert times["evaluation"] == pytest.approx(sum(v["seconds"] for v in saved_scores.values()), abs=0.2)
        real_evaluate = sb.evaluate_captioner

        def no_scoring(*a, **k):
            raise AssertionError("scored again")

        sb.evaluate_captioner = no_scoring
        try:
            again = run(tmp_path / "out", [0], **kw)  # every stage reused: nothing trained, nothing scored
        finally:
            sb.evaluate_captioner = real_evaluate
        assert again["timings"] == {} and again["table"] == result["table"] and "reused" not in again
        assert again["stage_times_s"]["evaluation"] == times["evaluation"]
        # a captioner whose files changed since is scored again
        stale = tmp_path / "out" / "scores" / "sr-random-s0.json"
        stale.write_text(json.dumps({**saved_scores["sr-random-s0"], "key": "another model"}))
        seen_dirs = []

        def count(model_dir, **k):
            seen_dirs.append(Path(model_dir).parent.name)
            return real_evaluate(model_dir, **k)

        sb.evaluate_captioner = count
        try:
            assert run(tmp_path / "out", [0], **kw)["table"] == result["table"]
        finally:
            sb.evaluate_captioner = real_evaluate
        assert seen_dirs == ["sr-random-s0"]  # only the stale one, saved again under its real key
        assert json.loads(stale.read_text())["key"] == saved_scores["sr-random-s0"]["key"]
        # nothing was trained again, yet the whole comparison still counts every stage as it was made
        assert {k: v for k, v in again["stage_times_s"].items() if k != "evaluation"} == \
            {k: v for k, v in times.items() if k != "evaluation"}
        # a comparison of other SR settings takes the finished MLE stage and worlds of the first, linked
        other = run(tmp_path / "kl2", [0], **{**kw, "sr_set": {"kl_coef": 0.2}}, reuse_from=tmp_path / "out")
        assert set(other["reused"]) == {"mle", "sr-world", "truematch-eval"}
        assert other["not_reused"] == {"sr-random-s0": ["config"], "sr-bagcurri-s0": ["config"]}
        assert (tmp_path / "kl2" / "mle").is_symlink() and (tmp_path / "kl2" / "mle" / "final").is_dir()
        assert set(other["timings"]) == {"sr-random-s0_s", "sr-bagcurri-s0_s"}
        # a linked stage counts what it cost where it was made, a linked world too
        assert other["stage_times_s"]["mle"] == times["mle"] and other["stage_times_s"]["sr-world"] == times["sr-world"]
        assert other["table"]["mle"] == result["table"]["mle"]
        rerun = run(tmp_path / "kl2", [0], **{**kw, "sr_set": {"kl_coef": 0.2}})  # the links stay, and are named
        assert rerun["timings"] == {} and rerun["reused"] == other["reused"]
        assert other["reused"]["mle"] == str(Path("..") / "out" / "mle")
        # a stage made from other inputs is made anew, and named with what differs
        from benchmarks.sr_bagcurri import plan_shared_stages

        saved = json.loads((tmp_path / "out" / "sr_bagcurri_config.json").read_text())
        plan, differ = plan_shared_stages(tmp_path / "new", tmp_path / "out",
                                          {**saved, "mle_set": {**mle_set, "epochs": 2}}, [0])
        assert set(plan) == {"sr-world", "truematch-eval"}
        assert differ == {"mle": ["mle_set"], "sr-random-s0": ["mle"], "sr-bagcurri-s0": ["mle"]}
        plan, differ = plan_shared_stages(tmp_path / "new", tmp_path / "out", {**saved, "eval_world_n": 30}, [0, 1])
        assert set(plan) == {"mle", "sr-world", "sr-random-s0", "sr-bagcurri-s0"}  # seed 1 was never run there
        assert differ == {"truematch-eval": ["eval_world_n"]}
        # another curriculum: the random arms are shared, the curriculum arm is trained
        curri2 = {**saved["sr_configs"]["sr-bagcurri"], "curriculum": [{"source": "random", "steps": 3}]}
        plan, differ = plan_shared_stages(tmp_path / "new", tmp_path / "out",
                                          {**saved, "sr_configs": {**saved["sr_configs"], "sr-bagcurri": curri2}}, [0])
        assert "sr-random-s0" in plan and differ == {"sr-bagcurri-s0": ["config"]}
        # and a comparison may link arms for real: its result is the source's for those seeds
        arms = run(tmp_path / "arms", [0], **kw, reuse_from=tmp_path / "out")
        assert arms["timings"] == {} and arms["table"] == result["table"] and "not_reused" not in arms
        assert (tmp_path / "arms" / "sr-bagcurri-s0").is_symlink()
        # --greedy: every captioner decoded greedily too, added to its saved scores without scoring beam 5 again
        sb.evaluate_captioner = no_scoring
        try:
            g = run(tmp_path / "out", [0], **kw, greedy=True)
        finally:
            sb.evaluate_captioner = real_evaluate
        assert g["table"] == result["table"] and g["checks"]["pass"] == result["checks"]["pass"]
        assert set(g["greedy"]) == {"mle", "sr-random", "sr-bagcurri"}
        direct = sb.evaluate_greedy(tmp_path / "out" / "mle" / "final", truematch_world=tmp_path / "out" /
                                    "truematch-eval", retriever=PaletteRetriever(),
                                    caption_world=tmp_path / "out" / "mle" / "world")
        assert g["greedy"]["mle"]["R@1/bag5"][0] == direct["R@1/bag5"]
        assert g["greedy"]["mle"]["CIDEr"][0] == direct["CIDEr"] >= 0  # its greedy captions of the MLE test split
        rise = g["greedy"]["sr-bagcurri"]["hallucination_rate"][0] - g["greedy"]["mle"]["hallucination_rate"][0]
        assert g["checks"]["greedy_hallucination_rise_points"] == pytest.approx(100 * rise, abs=0.01)
        lift = g["table"]["mle"]["R@1/bag5"][0] - direct["R@1/bag5"]  # beam 5 over greedy, the premise's check
        assert g["checks"]["mle_beam_over_greedy_R@1_bag5_points"] == pytest.approx(100 * lift, abs=0.01)
        for a, b in (("sr_bagcurri", "mle"), ("sr_bagcurri", "sr_random"), ("sr_random", "mle")):
            pts, (lo, hi) = (g["checks"][f"greedy_{a}_vs_{b}_R@1_bag5_{k}"] for k in ("points", "ci95"))
            assert lo <= pts <= hi
        assert "With greedy decoding (`--greedy`" in (tmp_path / "out" / "sr_bagcurri.md").read_text()
        saved_g = json.loads((tmp_path / "out" / "scores" / "mle.json").read_text())
        assert saved_g["scores"]["greedy"]["R@1/bag5"] == direct["R@1/bag5"] and saved_g["greedy_seconds"] > 0
        real_greedy, sb.evaluate_greedy = sb.evaluate_greedy, no_scoring
        try:
            assert run(tmp_path / "out", [0], **kw, greedy=True)["greedy"] == g["greedy"]  # kept, not redone
        finally:
            sb.evaluate_greedy = real_greedy
        with pytest.raises(FileNotFoundError, match="not a comparison folder"):
            run(tmp_path / "bad", [0], **kw, reuse_from=tmp_path)
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "sr_bagcurri_config.json").write_text("{not json")
        with pytest.raises(ValueError, match=r"broken/sr_bagcurri_config.json line 1: not a valid comparison config"):
            run(tmp_path / "bad", [0], **kw, reuse_from=tmp_path / "broken")
        assert not (tmp_path / "bad").exists()  # refused before any folder is made
        with pytest.raises(ValueError, match="other settings"):
            run(tmp_path / "out", [0], **{**kw, "sr_set": {"kl_coef": 0.2}})
        with pytest.raises(ValueError, match="curriculum is what the comparison varies"):
            run(tmp_path / "other", [0], **{**kw, "sr_set": {"curriculum": []}})
        with pytest.raises(ValueError, match=r"\['seed'\] are set by the comparison itself"):
            run(tmp_path / "other", [0], **{**kw, "sr_set": {"seed": 3}})
        with pytest.raises(ValueError, match=r"sr_set \(--sr-set\): unknown SRConfig keys \['kl'\]"):
            run(tmp_path / "other", [0], **{**kw, "sr_set": {"kl": 0.1}})
        assert not (tmp_path / "other").exists()  # refused before any folder is made
    finally:
        _FACTORIES.pop("palette", None)


def test_an_mle_pretraining_stage_comes_first_and_the_mle_stage_fine_tunes_from_it(tmp_path):
    """``pretrain_set``: MLE on other annotators' captions first, then the MLE stage from that model."""
    import yaml

    from benchmarks.sr_bagcurri import plan_shared_stages, run
    from tests.test_sr import PaletteRetriever
    from vlm.retrieval import _FACTORIES, register_retriever

    register_retriever("palette", lambda rest, device="cpu": PaletteRetriever())
    try:
        common = dict(method="sr", world_n=24, batch_size=4, n_samples=2, max_new_tokens=6, eval_every=0,
                      checkpoint_every=2, eval_num_beams=1, eval_max_new_tokens=6, retriever="palette:x",
                      curriculum=[{"source": "random", "steps": 1}], mle_coef=0.1, cider_weight=0.5)
        paths = {}
        for name in ("sr-random", "sr-bagcurri"):
            paths[name] = tmp_path / f"{name}.yaml"
            paths[name].write_text(yaml.safe_dump(common))
        mle_set = {"model": "prefix-tiny", "world_n": 30, "epochs": 1, "batch_size": 16, "warmup_steps": 1,
                   "vocab_size": 300, "eval_images": 4, "test_images": 6, "eval_num_beams": 1,
                   "eval_max_new_tokens": 6, "world_preset": "captioning-brief"}
        pretrain_set = {"world_preset": "captioning", "world_seed": 7, "world_n": 20}
        kw = dict(mle_set=mle_set, eval_world_n=21, sr_configs=paths, pretrain_set=pretrain_set, progress=False)
        result = run(tmp_path / "out", [0], **kw)
        out = tmp_path / "out"
        pre = json.loads((out / "mle-pretrain" / "config.json").read_text())
        assert (pre["world_preset"], pre["world_seed"], pre["world_n"], pre["model"]) == ("captioning", 7, 20,
                                                                                         "prefix-tiny")
        mle = json.loads((out / "mle" / "config.json").read_text())
        assert mle["model"] == str(out / "mle-pretrain" / "final") and mle["world_preset"] == "captioning-brief"
        # the MLE stage starts from the pretrained weights and keeps their tokenizer
        from vlm.models import create_captioner

        a, b = create_captioner(str(out / "mle-pretrain" / "final")), create_captioner(str(out / "mle" / "final"))
        assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
        assert set(result["timings"]) == {"mle_pretrain_s", "mle_s", "sr-random-s0_s", "sr-bagcurri-s0_s"}
        assert result["pretrain_set"] == pretrain_set
        assert json.loads((out / "sr_bagcurri_config.json").read_text())["pretrain_set"] == pretrain_set
        assert run(out, [0], **kw)["timings"] == {}  # reused
        # a reference MLE stage on the exact captions, from the same pretrained start, scored beside the others
        ref = run(tmp_path / "ref", [0], **kw, reference_set={"captions": "dense"}, reuse_from=out)
        assert set(ref["timings"]) == {"mle_reference_s"} and "mle-reference" not in ref["reused"]
        assert set(ref["reused"]) == {"mle-pretrain", "mle", "sr-world", "truematch-eval", "sr-random-s0",
                                      "sr-bagcurri-s0"}
        cfg = json.loads((tmp_path / "ref" / "mle-reference" / "config.json").read_text())
        assert cfg["model"] == str(tmp_path / "ref" / "mle-pretrain" / "final") and cfg["captions"] == "dense"
        assert cfg["train_data"] == str(tmp_path / "ref" / "mle" / "world")  # the MLE stage's images, not a copy
        assert not (tmp_path / "ref" / "mle-reference" / "world").exists()
        assert ref["table"]["mle"] == result["table"]["mle"] and "mle-reference" in ref["table"]
        gain = ref["checks"]["reference_vs_mle_R@1_bag5_points"]
        assert gain == pytest.approx(100 * (ref["table"]["mle-reference"]["R@1/bag5"][0]
                                            - ref["table"]["mle"]["R@1/bag5"][0]), abs=0.01)
        lo, hi = ref["checks"]["reference_vs_mle_R@1_bag5_ci95"]
        assert lo <= gain <= hi and "mle-reference" in ref["stage_times_s"]
        assert "| MLE reference (captions=dense) |" in (tmp_path / "ref" / "sr_bagcurri.md").read_text()
        again = run(tmp_path / "ref", [0], **kw, reference_set={"captions": "dense"})
        assert again["timings"] == {} and again["table"] == ref["table"]
        # the paper's whole pipeline beside it: boost the MLE world, MLE on the boosted captions, SR from there
        vcb = run(tmp_path / "vcb", [0], **kw, vcb_set={"epochs": 2}, reuse_from=out)
        assert set(vcb["reused"]) == {"mle-pretrain", "mle", "sr-world", "truematch-eval", "sr-random-s0",
                                      "sr-bagcurri-s0"}
        assert set(vcb["timings"]) == {"mle_vcb_s", "vcb-sr-random-s0_s", "vcb-sr-bagcurri-s0_s"}
        from vlm.boost import merge_captions
        from vlm.data import read_imagefolder

        brief = {r.file_name: r for r in read_imagefolder(out / "mle" / "world", check_images=False)}
        boosted = list(read_imagefolder(tmp_path / "vcb" / "vcb-world"))
        assert len(boosted) == len(brief) and all(  # every image's captions merged, the captions kept
            r.extra["boosted_caption"] == merge_captions(brief[r.file_name].captions)
            and r.captions == brief[r.file_name].captions for r in boosted)
        cfg = json.loads((tmp_path / "vcb" / "mle-vcb" / "config.json").read_text())
        assert (cfg["model"], cfg["captions"], cfg["train_data"], cfg["epochs"]) == (
            str(tmp_path / "vcb" / "mle-pretrain" / "final"), "field:boosted_caption",
            str(tmp_path / "vcb" / "vcb-world"), 2)
        arm = json.loads((tmp_path / "vcb" / "vcb-sr-bagcurri-s0" / "final" / "training_config.json").read_text())
        assert (arm["init_model"], arm["train_data"], arm["captions"]) == (
            str(tmp_path / "vcb" / "mle-vcb" / "final"), str(tmp_path / "vcb" / "sr-world-vcb"),
            "field:boosted_caption")
        sr_boosted = read_imagefolder(tmp_path / "vcb" / "sr-world-vcb", check_images=False)
        assert len(sr_boosted) == len(read_imagefolder(out / "sr-world", check_images=False))
        assert all("bag" in r.extra and r.extra["boosted_caption"] for r in sr_boosted)  # the bags stay
        assert list(vcb["table"]) == ["mle", "sr-random", "sr-bagcurri", "mle-vcb", "vcb-sr-random", "vcb-sr-bagcurri"]
        assert vcb["table"]["mle"] == result["table"]["mle"]
        # the linked captioners' scores came with them, from the first comparison's scores folder
        assert (tmp_path / "vcb" / "scores" / "mle.json").read_text() == (out / "scores" / "mle.json").read_text()
        c = vcb["checks"]
        for key, (a, b) in {"vcb_vs_mle": ("mle-vcb", "mle"), "vcb_bagcurri_vs_mle": ("vcb-sr-bagcurri", "mle"),
                            "vcb_bagcurri_vs_vcb_mle": ("vcb-sr-bagcurri", "mle-vcb"),
                            "vcb_bagcurri_vs_random": ("vcb-sr-bagcurri", "vcb-sr-random")}.items():
            gap = 100 * (vcb["table"][a]["R@1/bag5"][0] - vcb["table"][b]["R@1/bag5"][0])
            lo, hi = c[f"{key}_R@1_bag5_ci95"]
            assert c[f"{key}_R@1_bag5_points"] == pytest.approx(gap, abs=0.01) and lo <= gap + 0.01 and gap - 0.01 <= hi
        assert set(c["vcb_pass"]) == set(c["pass"]) and list(c)[-1] == "pass"
        assert c["vcb_hallucination_rise_points"] == pytest.approx(100 * (
            vcb["table"]["vcb-sr-bagcurri"]["hallucination_rate"][0] - vcb["table"]["mle"]["hallucination_rate"][0]),
            abs=0.01)
        assert {"vcb-world", "sr-world-vcb", "mle-vcb", "vcb-sr-bagcurri-s0"} <= set(vcb["stage_times_s"])
        md = (tmp_path / "vcb" / "sr_bagcurri.md").read_text()
        assert "| MLE + VCB |" in md and "| VCB, then SR + BagCurri |" in md and "With Visual Caption Boosting" in md
        again = run(tmp_path / "vcb", [0], **kw, vcb_set={"epochs": 2})
        assert again["timings"] == {} and again["table"] == vcb["table"]
        # a comparison with the same boosting links all of it; other VCB fields remake its MLE stage and arms
        saved = json.loads((tmp_path / "vcb" / "sr_bagcurri_config.json").read_text())
        plan, differ = plan_shared_stages(tmp_path / "new", tmp_path / "vcb", saved, [0])
        assert {"vcb-world", "mle-vcb", "sr-world-vcb", "vcb-sr-random-s0", "vcb-sr-bagcurri-s0"} <= set(plan)
        plan, differ = plan_shared_stages(tmp_path / "new", tmp_path / "vcb",
                                          {**saved, "vcb": {"set": {"epochs": 3}, "llm": False}}, [0])
        assert {"vcb-world", "sr-world-vcb", "sr-bagcurri-s0"} <= set(plan)
        assert differ == {"mle-vcb": ["vcb"], "vcb-sr-random-s0": ["mle-vcb"], "vcb-sr-bagcurri-s0": ["mle-vcb"]}
        with pytest.raises(ValueError, match="vcb_set: train_data and captions are set by the comparison"):
            run(tmp_path / "other", [0], **{**kw, "vcb_set": {"captions": "dense"}})
        with pytest.raises(ValueError, match="reference_set: model and out_dir are set by the comparison"):
            run(tmp_path / "other", [0], **{**kw, "reference_set": {"out_dir": "x"}})
        with pytest.raises(ValueError, match=r"reference_set \(--reference-set\): unknown MLEConfig keys"):
            run(tmp_path / "other", [0], **{**kw, "reference_set": {"caption": "dense"}})
        # another comparison may share the pretraining stage and make its own brief stage
        saved = json.loads((out / "sr_bagcurri_config.json").read_text())
        plan, differ = plan_shared_stages(tmp_path / "new", out, {**saved, "mle_set": {**mle_set, "world_n": 31}})
        assert set(plan) == {"mle-pretrain", "sr-world", "truematch-eval"} and differ == {"mle": ["mle_set"]}
        plan, differ = plan_shared_stages(tmp_path / "new", out, {**saved, "mle_set": {**mle_set, "epochs": 2}})
        assert differ == {"mle-pretrain": ["fields"], "mle": ["mle_set"]}  # the pretraining stage reads mle_set too
        plan, differ = plan_shared_stages(tmp_path / "new", out, {**saved, "pretrain_set": {**pretrain_set,
                                                                                             "world_n": 22}})
        assert differ == {"mle-pretrain": ["fields"], "mle": ["pretrain_set"]}
        with pytest.raises(ValueError, match="other settings"):
            run(out, [0], **{**kw, "pretrain_set": {**pretrain_set, "world_seed": 8}})
        with pytest.raises(ValueError, match="model and out_dir are set by the comparison"):
            run(tmp_path / "other", [0], **{**kw, "pretrain_set": {"model": "prefix-small"}})
        with pytest.raises(ValueError, match=r"unknown MLEConfig keys \['epoch'\]"):
            run(tmp_path / "other", [0], **{**kw, "pretrain_set": {"epoch": 1}})
        # a bad MLE-stage value fails before the pretraining stage trains
        with pytest.raises(ValueError, match="MLEConfig.epochs must be >= 1"):
            run(tmp_path / "bad", [0], **{**kw, "mle_set": {**mle_set, "epochs": 0}})
        assert not (tmp_path / "bad" / "mle-pretrain").exists()
        # model_overrides shape the pretrained model; the MLE stage fine-tunes it as it is (a saved folder
        # refuses overrides)
        over_kw = {**kw, "mle_set": {**mle_set, "model_overrides": {"prefix_length": 3}}}
        run(tmp_path / "over", [0], **over_kw)
        pre = json.loads((tmp_path / "over" / "mle-pretrain" / "config.json").read_text())
        mle = json.loads((tmp_path / "over" / "mle" / "config.json").read_text())
        assert pre["model_overrides"] == {"prefix_length": 3} and mle["model_overrides"] == {}
        assert create_captioner(str(tmp_path / "over" / "mle" / "final")).config.prefix_length == 3
    finally:
        _FACTORIES.pop("palette", None)


def test_the_figure_adds_training_curves_when_the_runs_logged_evaluations(tmp_path):
    from PIL import Image

    from benchmarks.sr_bagcurri import plot_sr_bagcurri

    def row(r, h):
        return {"R@1/bag5": r, "hallucination_rate": h}

    result = {"per_seed": {"mle": [row(0.60, 0.04)], "sr-random": [row(0.65, 0.06), row(0.66, 0.061)],
                           "sr-bagcurri": [row(0.66, 0.05), row(0.64, 0.052)]}}
    alone = Image.open(plot_sr_bagcurri(result, tmp_path / "alone.png", runs_dir=tmp_path / "none")).size
    for variant in ("sr-random", "sr-bagcurri"):
        run_dir = tmp_path / "runs" / f"{variant}-s0"
        run_dir.mkdir(parents=True)
        lines = [{"step": 0, "eval": {"R@1/bag5": 0.5}}, {"step": 1, "stage": "random", "reward": 0.1},
                 {"step": 2, "stage": "hard5", "reward": 0.2}, {"step": 2, "eval": {"R@1/bag5": 0.6}}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    both = Image.open(plot_sr_bagcurri(result, tmp_path / "both.png", runs_dir=tmp_path / "runs")).size
    assert alone[1] == both[1] and both[0] == 2 * alone[0]  # a second panel, as wide as the first
