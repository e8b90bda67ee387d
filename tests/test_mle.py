import json
import os
import subprocess
import sys
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
    train_mle(part)  # resumes from the step-6 checkpoint
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
        import yaml

        from vlm.train.sr import SRConfig

        raw = yaml.safe_load(c.read_text())
        if raw.get("method") == "sr":
            SRConfig.from_dict(raw, source=str(c))
        else:
            MLEConfig.from_yaml(c)
    assert {"sr-bagcurri.yaml", "sr-random.yaml"} <= {c.name for c in configs}


def test_warmup_cosine_schedule():
    f = warmup_cosine(4, 20)
    assert [round(f(s), 4) for s in (0, 3, 4, 12, 20)] == [0.25, 1.0, 1.0, 0.5, 0.0]


@pytest.mark.slow
def test_two_process_accelerate_run_on_cpu(world_dir, tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(f"model: prefix-tiny\ntrain_data: {world_dir / 'world'}\nvocab_size: 300\nepochs: 1\n"
                   f"batch_size: 16\nwarmup_steps: 1\nout_dir: {tmp_path / 'ddp'}\nprogress: false\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "vlm", "train", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["steps"] == -(-summary["examples"] // 16)
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()
