import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm.train.mle import MLEConfig, train_mle, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, name, **kw):
    base = dict(model="prefix-tiny", train_data=str(tmp_path / "world"), vocab_size=300, epochs=2, batch_size=16,
                lr=3e-3, warmup_steps=2, checkpoint_every=4, out_dir=str(tmp_path / name), progress=False)
    base.update(kw)
    return MLEConfig(**base)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    from vlm.world import generate_world

    root = tmp_path_factory.mktemp("mle")
    generate_world(root / "world", n=40, seed=0, preset="captioning", image_size=48)
    return root


def test_training_lowers_the_loss_and_saves_a_loadable_model(world_dir):
    summary = train_mle(_cfg(world_dir, "run"))
    log = [json.loads(x) for x in (world_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == summary["steps"] == 2 * -(-summary["examples"] // 16)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    evals = [r["eval"] for r in log if "eval" in r]
    assert len(evals) == 2 and evals[-1]["val_loss"] < 6.0  # one per epoch
    from vlm.models import create_captioner

    model = create_captioner(str(world_dir / "run" / "final"))
    assert len(model.generate(features=torch.zeros(2, model.image_encoder.num_features), max_new_tokens=4)) == 2
    saved = json.loads((world_dir / "run" / "final" / "training_config.json").read_text())
    assert saved["model"] == "prefix-tiny"
    n_test = sum(r.get("split") == "test" for r in map(json.loads, (world_dir / "world" / "metadata.jsonl").open()))
    assert summary["test"]["images"] == n_test > 0 and 0 < summary["test"]["test_loss"] < 6.0


def test_caption_cli_scores_a_trained_model_on_the_test_split(world_dir, capsys):
    from vlm.caption import main

    if not (world_dir / "run" / "final").is_dir():
        train_mle(_cfg(world_dir, "run"))
    preds = world_dir / "preds.json"
    assert main(["--model", str(world_dir / "run" / "final"), "--data", str(world_dir / "world"), "--split", "test",
                 "--max-new-tokens", "6", "--num-beams", "1", "--out", str(preds), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    written = json.loads(preds.read_text())
    assert out["images"] == len(written) > 0 and all(isinstance(c, str) and c for c in written.values())
    assert 0.0 <= out["hallucination_rate"] <= 1.0 and out["facts_per_caption"] >= 0 and "CIDEr" in out


def test_killed_and_resumed_run_ends_with_the_same_weights(world_dir):
    full = _cfg(world_dir, "full")
    train_mle(full)
    part = _cfg(world_dir, "part")
    assert train_mle(part, stop_after_steps=6) == {"stopped_at": 6}
    from vlm.train.checkpoint import latest_checkpoint

    trainer_json = latest_checkpoint(world_dir / "part" / "checkpoints") / "trainer.json"
    tstate = json.loads(trainer_json.read_text())
    assert 0 < tstate["elapsed_s"] < 1000
    trainer_json.write_text(json.dumps({**tstate, "elapsed_s": 1000.0}))  # as if the first process ran long
    summary = train_mle(part)  # resumes from the step-6 checkpoint
    assert summary["total_time_s"] >= summary["wall_time_s"] >= 1000  # the interrupted process's time is counted
    a = load_file(str(world_dir / "full" / "final" / "model.safetensors"))
    b = load_file(str(world_dir / "part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(x)["step"] for x in (world_dir / "part" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: prefix-tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        MLEConfig.from_yaml(f)
    with pytest.raises(ValueError, match="captions"):
        MLEConfig(captions="boosted")


def test_shipped_configs_load():
    configs = sorted((ROOT / "vlm" / "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        first = c.read_text().splitlines()[0]
        assert first.startswith("# python -m vlm train --config"), c  # each config says how to run it
        from vlm.train.mle import load_config_file
        from vlm.train.sr import SRConfig

        raw = load_config_file(c)
        if raw.get("method") == "sr":
            SRConfig.from_dict(raw, source=str(c))
        else:
            MLEConfig.from_yaml(c)
    assert {"sr-bagcurri.yaml", "sr-random.yaml"} <= {c.name for c in configs}


def test_config_base_key_inherits_and_names_bad_files(tmp_path, capsys):
    from vlm.train.mle import load_config_file, main

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("model: prefix-tiny\nlr: 0.001\ncurriculum: [1, 2]\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nlr: 0.002\ncurriculum: [3]\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nepochs: 2\n")
    # relative to each file; the file's own fields replace the base's whole (lists too)
    assert load_config_file(tmp_path / "c.yaml") == {"model": "prefix-tiny", "lr": 0.002, "curriculum": [3],
                                                      "epochs": 2}
    (tmp_path / "d.yaml").write_text("base: e.yaml\n")
    (tmp_path / "e.yaml").write_text("base: d.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config_file(tmp_path / "d.yaml")
    (tmp_path / "f.yaml").write_text("base: nope.yaml\nlr: 1\n")
    with pytest.raises(FileNotFoundError, match=r"nope.yaml: no such config file \(the base of .*f.yaml\)"):
        load_config_file(tmp_path / "f.yaml")
    (tmp_path / "g.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="g.yaml: expected a mapping"):
        load_config_file(tmp_path / "g.yaml")
    (tmp_path / "h.yaml").write_text("base: 3\n")
    with pytest.raises(ValueError, match="'base' must be the path"):
        load_config_file(tmp_path / "h.yaml")
    # the CLI reports the same, naming the file
    with pytest.raises(SystemExit, match="nope.yaml: no such config file"):
        main(["--config", str(tmp_path / "f.yaml")])
    # and MLEConfig.from_yaml resolves the base before checking the fields
    (tmp_path / "i.yaml").write_text("base: a.yaml\ncurriculum: null\n")
    with pytest.raises(ValueError, match="curriculum"):
        MLEConfig.from_yaml(tmp_path / "i.yaml")
    (tmp_path / "j.yaml").write_text("base: sub/k.yaml\nepochs: 3\n")
    (tmp_path / "sub" / "k.yaml").write_text("model: prefix-tiny\nlr: 0.005\n")
    assert (MLEConfig.from_yaml(tmp_path / "j.yaml").lr, MLEConfig.from_yaml(tmp_path / "j.yaml").epochs) == (0.005, 3)


def test_warmup_cosine_schedule():
    f = warmup_cosine(4, 20)
    assert [round(f(s), 4) for s in (0, 3, 4, 12, 20)] == [0.25, 1.0, 1.0, 0.5, 0.0]


@pytest.mark.slow
def test_two_process_accelerate_run_on_cpu(world_dir, tmp_path, launch_two_cpu_processes):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(f"model: prefix-tiny\ntrain_data: {world_dir / 'world'}\nvocab_size: 300\nepochs: 1\n"
                   f"batch_size: 16\nwarmup_steps: 1\nout_dir: {tmp_path / 'ddp'}\nprogress: false\n")
    res = launch_two_cpu_processes(cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["steps"] == -(-summary["examples"] // 16)
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()
