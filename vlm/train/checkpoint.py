"""Training checkpoints as safetensors + JSON, never pickles.

A checkpoint folder holds what a resumed run needs to continue exactly where it stopped:

- ``model.safetensors``: the trainable (and non-reloadable) weights;
- ``optimizer.safetensors`` + ``optimizer.json``: every optimizer state tensor, and the rest of its state;
- ``trainer.json``: step, data position, scheduler state, Python RNG state, the resolved config;
- ``rng.safetensors``: torch (and CUDA) RNG states.

Folders are written under a temporary name and renamed, so a killed save never leaves a half checkpoint;
``latest`` names the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from vlm.data.io import read_json


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
                meta["state"][str(pid)][k] = "__tensor__"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for pid, pstate in meta["state"].items():
        state[int(pid)] = {k: tensors[f"{pid}.{k}"] if v == "__tensor__" else v for k, v in pstate.items()}
    groups = meta["param_groups"]
    for g in groups:  # JSON turned tuples into lists; AdamW wants betas as a tuple
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    if torch.is_tensor(x) and x.numel() == 1:
        return x.item()
    return None  # e.g. scheduler lambdas: rebuilt from the config, not stored


def save_checkpoint(folder: str | Path, *, model_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict, keep: int = 2) -> Path:
    """Write a checkpoint ``folder/step-<N>`` atomically and point ``folder/latest`` at it."""
    from safetensors.torch import save_file

    root = Path(folder)
    step = int(trainer_state["step"])
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    state = dict(trainer_state)
    state["scheduler"] = _json_safe(scheduler.state_dict()) if scheduler is not None else None
    state["python_random"] = _json_safe(random.getstate())
    (tmp / "trainer.json").write_text(json.dumps(_json_safe(state), indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".latest.tmp{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, root / "latest")
    olds = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in olds[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint under ``folder``, or None."""
    root = Path(folder)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    ckpt = root / pointer.read_text().strip()
    return ckpt if (ckpt / "trainer.json").is_file() else None


def load_checkpoint(ckpt: str | Path, *, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[dict, dict]:
    """Restore optimizer, scheduler and RNG states; return ``(model_state, trainer_state)``."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    model_state = load_file(str(ckpt / "model.safetensors"))
    fix = f"delete {ckpt} to resume from the checkpoint before it"
    opt = _join_optimizer_state(load_file(str(ckpt / "optimizer.safetensors")),
                                read_json(ckpt / "optimizer.json", "optimizer state", fix=fix))
    optimizer.load_state_dict(opt)
    state = read_json(ckpt / "trainer.json", "trainer state", fix=fix)
    if scheduler is not None and state.get("scheduler"):
        sched = {k: v for k, v in state["scheduler"].items() if v is not None or k != "lr_lambdas"}
        sched.setdefault("lr_lambdas", [None] * len(optimizer.param_groups))
        scheduler.load_state_dict(sched)
    rng = load_file(str(ckpt / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    py = state.get("python_random")
    if py:
        random.setstate((py[0], tuple(py[1]), py[2]))
    return model_state, state


def trim_log(path: Path, step: int) -> None:
    r"""Drop the JSONL lines of ``path`` logged after ``step`` (a resumed run logs them again).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> _ = p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
        >>> trim_log(p, 2); p.read_text()
        '{"step": 1}\n{"step": 2}\n'
    """
    from vlm.data import atomic_write_text

    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if json.loads(ln).get("step", 0) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
