"""MLE training of captioners (``python -m vlm train --config FILE.yaml``), on Hugging Face Accelerate.

One loop for a CPU, one GPU, or many (``accelerate launch ... -m vlm train --config ...``: DDP, FSDP,
DeepSpeed, multi-node). What it does, in order:

1. resolve the data (a dataset folder, or ``world`` to generate the built-in world into the run folder, plus
   the ``extra_train_data`` folders whose training records are added, e.g. TIDA's augmented pairs);
2. build the captioner (``vlm.models.create_captioner``; from-scratch LMs get a BPE trained on the
   training captions);
3. compute the frozen encoder's features once, cached on disk (``vlm.train.features``);
4. train on (image, caption) pairs, every reference caption an example (as ClipCap does), AdamW with
   warm-up + cosine decay, gradient accumulation, bf16 on GPU, a progress bar, a JSONL metrics log;
5. checkpoint every ``checkpoint_every`` optimizer steps (safetensors + JSON, model, optimizer, scheduler,
   RNG and data position): a killed run resumes where it stopped and ends with the same weights;
6. evaluate (validation loss, and caption metrics of generated captions when a metric function is given)
   and save the final model with ``save_pretrained`` plus the resolved config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger(__name__)


@dataclass
class MLEConfig:
    """An MLE training run. Every field is documented once, here; YAML files only serialise it."""

    model: str = "prefix-small"
    """A ``vlm.models.list_models()`` name, or a folder saved with ``save_pretrained`` (fine-tuning)."""
    model_overrides: dict = field(default_factory=dict)
    """Config fields of the model to change, e.g. ``{prefix_length: 4}``."""
    train_data: str = "world"
    """A dataset folder (imagefolder + metadata.jsonl), or ``world`` to generate one into ``out_dir/world``."""
    extra_train_data: list[str] = field(default_factory=list)
    """More dataset folders whose ``train_split`` records are trained on together with those of ``train_data``
    (e.g. a ``python -m augment tida`` output: originals + counterfactual pairs); each record's image is found
    in its own folder. Evaluation and test splits come from ``train_data`` alone."""
    train_split: str = "train"
    """Split of ``train_data`` to train on."""
    eval_split: str = "val"
    """Split of ``train_data`` to evaluate on (empty string: no evaluation)."""
    test_split: str = "test"
    """Split scored once at the end (loss + caption metrics of up to ``test_images`` images) into
    ``summary.json["test"]`` (empty string, or a split the data lacks: skipped)."""
    test_images: int = 1000
    """Test images used for generated-caption metrics."""
    world_preset: str = "captioning"
    """World preset when ``train_data`` is ``world``."""
    world_n: int = 3000
    """World images when ``train_data`` is ``world``."""
    world_seed: int = 0
    """World seed when ``train_data`` is ``world``."""
    captions: str = "human"
    """Training targets: ``human`` (the ``captions`` list), ``dense`` (the ``dense_caption`` field), or
    ``field:NAME`` (e.g. ``field:boosted_caption`` written by Visual Caption Boosting)."""
    vocab_size: int = 1000
    """BPE vocabulary of a from-scratch LM, trained on the training captions."""
    epochs: int = 10
    """Passes over the (image, caption) pairs."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    batch_size: int = 64
    """Examples per optimizer step, over all processes and accumulation micro-steps."""
    grad_accum: int = 1
    """Micro-steps per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (from-scratch LMs like 1e-3; fine-tuning pretrained LMs ClipCap-style 2e-5)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps before cosine decay."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0: off)."""
    seed: int = 0
    """Seeds model initialisation, data order and sampling."""
    mixed_precision: str = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``no`` or ``bf16``."""
    eval_every: int = 0
    """Evaluate every N optimizer steps (0: at the end of each epoch)."""
    eval_images: int = 200
    """Validation images used for generated-caption metrics."""
    eval_num_beams: int = 3
    """Beams for evaluation captions."""
    eval_max_new_tokens: int = 30
    """Token budget of evaluation captions."""
    checkpoint_every: int = 200
    """Checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the ``tensorboard`` package)."""
    out_dir: str = "runs/mle"
    """Run folder: checkpoints, metrics.jsonl, config.json, final model."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        if isinstance(self.extra_train_data, (str, Path)):
            self.extra_train_data = [self.extra_train_data]
        if not isinstance(self.extra_train_data, (list, tuple)):
            raise ValueError("MLEConfig.extra_train_data must be a list of dataset folders, got "
                             f"{self.extra_train_data!r}")
        self.extra_train_data = [str(d) for d in self.extra_train_data]
        if "world" in self.extra_train_data:
            raise ValueError("MLEConfig.extra_train_data: 'world' is generated only as train_data; list folders here")
        if self.captions not in ("human", "dense") and not self.captions.startswith("field:"):
            raise ValueError(f"MLEConfig.captions must be 'human', 'dense' or 'field:NAME', got {self.captions!r}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"MLEConfig.mixed_precision must be auto, no or bf16, got {self.mixed_precision!r}")
        for f in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, f) < 1:
                raise ValueError(f"MLEConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.lr <= 0:
            raise ValueError(f"MLEConfig.lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> MLEConfig:
        check_config_keys(cls, d, source=source)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> MLEConfig:
        d = load_config_file(path)
        d.update(overrides)
        return cls.from_dict(d, source=str(path))


# ---- data ----------------------------------------------------------------------------------------------


def resolve_dataset(cfg: MLEConfig, *, is_main: bool = True):
    """The training dataset folder, generating the world on the main process when asked."""
    from vlm.data import read_imagefolder

    if cfg.train_data == "world":
        root = Path(cfg.out_dir) / "world"
        from vlm.world import world_matches

        if is_main and not world_matches(root, preset=cfg.world_preset, n=cfg.world_n, seed=cfg.world_seed):
            from vlm.world import generate_world

            generate_world(root, n=cfg.world_n, seed=cfg.world_seed, preset=cfg.world_preset, overwrite=True,
                           progress=cfg.progress)
    else:
        root = Path(cfg.train_data)
    return root, read_imagefolder


class ConcatCaptionDataset:
    """Several :class:`vlm.data.CaptionDataset` read as one: records in order, each image in its own root.

    Has what training and feature caching use: ``len``, indexing, iteration, ``path(i)`` and ``image(i)``.

    Example:
        >>> from vlm.data import CaptionDataset, Record
        >>> a = CaptionDataset("A", [Record("images/0.png", ["a red circle"])])
        >>> b = CaptionDataset("B", [Record("images/0.png", ["a blue circle"])])
        >>> ds = ConcatCaptionDataset([a, b])
        >>> len(ds), ds[1].captions, ds.path(1).as_posix()
        (2, ['a blue circle'], 'B/images/0.png')
    """

    def __init__(self, parts):
        self.parts = list(parts)
        self._where = [(k, i) for k, part in enumerate(self.parts) for i in range(len(part))]

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, i: int):
        k, j = self._where[i]
        return self.parts[k][j]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def path(self, i: int) -> Path:
        k, j = self._where[i]
        return self.parts[k].path(j)

    def image(self, i: int):
        k, j = self._where[i]
        return self.parts[k].image(j)


def training_set(cfg: MLEConfig, full):
    """The records trained on: ``cfg.train_split`` of ``full`` (read from ``train_data``), followed by that
    split of every ``extra_train_data`` folder, each non-empty.

    Example:
        >>> import tempfile
        >>> from vlm.data import read_imagefolder
        >>> from vlm.world import generate_world
        >>> a, b = (generate_world(tempfile.mkdtemp(), n=8, seed=s, image_size=16) for s in (0, 1))
        >>> ds = training_set(MLEConfig(train_data=str(a), extra_train_data=[str(b)]), read_imagefolder(a))
        >>> len(ds) == sum(r.split == "train" for f in (a, b) for r in read_imagefolder(f))
        True
    """
    from vlm.data import read_imagefolder

    parts = [full.filter_split(cfg.train_split)]
    if len(parts[0]) == 0:
        raise ValueError(f"{full.root}: no records in split {cfg.train_split!r}")
    for folder in cfg.extra_train_data:
        part = read_imagefolder(folder, check_images=False).filter_split(cfg.train_split)
        if len(part) == 0:
            raise ValueError(f"MLEConfig.extra_train_data: {folder} has no records in split {cfg.train_split!r}; "
                             "train on that folder's split or drop it from the list")
        parts.append(part)
    return parts[0] if len(parts) == 1 else ConcatCaptionDataset(parts)


def targets_of(record, how: str) -> list[str]:
    """The training captions of a record under ``MLEConfig.captions``."""
    if how == "human":
        return list(record.captions)
    key = "dense_caption" if how == "dense" else how[len("field:"):]
    value = record.extra.get(key)
    if value is None:
        raise ValueError(f"record {record.file_name}: no field {key!r} for captions={how!r}")
    return [value] if isinstance(value, str) else list(value)


def _features_for(model, ds, *, progress: bool) -> torch.Tensor:
    from vlm.train.features import cached_features, feature_cache_key

    cfg = model.config
    fp = getattr(model.image_encoder, "fingerprint", "")  # open_clip towers: weights + config identity
    kind = cfg.feature_kind + (f"/pool{cfg.spatial_pool}" if getattr(cfg, "spatial_pool", 1) > 1 else "")
    key = feature_cache_key(cfg.image_encoder + (f"#{fp}" if fp else ""), kind,
                            {"center_crop": cfg.center_crop},
                            [ds.path(i) for i in range(len(ds))])
    return cached_features(key, len(ds), lambda idx: model.image_features(model.preprocess([ds.image(i) for i in idx])),
                           batch_size=32, progress=progress, desc="image features")


# ---- schedule ------------------------------------------------------------------------------------------


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Example:
        >>> f = warmup_cosine(10, 110)
        >>> f(0), f(10), round(f(60), 3), f(110)
        (0.1, 1.0, 0.5, 0.0)
    """
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


# ---- training ------------------------------------------------------------------------------------------


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if model._must_save(k) and k not in model._aliased_keys()}


def append_jsonl(path: Path, obj: dict) -> None:
    """Append one JSON line (metrics logs of the trainers)."""
    with path.open("a") as f:
        f.write(json.dumps(obj) + "\n")


def train_mle(cfg: MLEConfig, *, metrics_fn: Callable[[dict, dict], dict] | None = None,
              stop_after_steps: int | None = None) -> dict:
    """Run (or resume) MLE training; returns the final summary (also in ``out_dir/summary.json``).

    Args:
        cfg: the run.
        metrics_fn: ``(references {id: [str]}, predictions {id: str}) -> {metric: value}`` for evaluation
            (the CLI passes :func:`vlm.metrics.caption_scores`: BLEU, ROUGE-L, CIDEr-D); None: validation
            loss only.
        stop_after_steps: stop (as if killed) after this optimizer step; for resume tests.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from vlm.models import create_captioner
    from vlm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trim_log

    t_start = time.perf_counter()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root, reader = resolve_dataset(cfg, is_main=acc.is_main_process)
    acc.wait_for_everyone()
    full = reader(root, check_images=False)
    train_ds = training_set(cfg, full)
    eval_ds = full.filter_split(cfg.eval_split) if cfg.eval_split else None

    examples = [(i, c) for i in range(len(train_ds)) for c in targets_of(train_ds[i], cfg.captions)]
    texts = [c for _, c in examples]
    model = create_captioner(cfg.model, train_texts=texts, vocab_size=cfg.vocab_size, seed=cfg.seed,
                             **cfg.model_overrides) if not Path(cfg.model).is_dir() else create_captioner(cfg.model)
    if Path(cfg.model).is_dir() and cfg.model_overrides:
        raise ValueError("model_overrides apply to new models, not to a saved folder")
    model.to(acc.device)
    frozen_encoder = model.config.image_encoder_training == "frozen"
    feats = _features_for(model, train_ds, progress=cfg.progress and acc.is_main_process) if frozen_encoder else None
    eval_feats = (_features_for(model, eval_ds, progress=cfg.progress and acc.is_main_process)
                  if frozen_encoder and eval_ds is not None and len(eval_ds) else None)

    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_steps, total_steps))

    step = 0
    ckpt_dir = out / "checkpoints"
    ckpt = latest_checkpoint(ckpt_dir)
    metrics_log = out / "metrics.jsonl"
    if ckpt is not None:
        state, tstate = load_checkpoint(ckpt, optimizer=opt, scheduler=sched)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{ckpt}: unexpected tensors {unexpected[:3]}")
        step = int(tstate["step"])
        t_start -= float(tstate.get("elapsed_s", 0.0))  # the times in summary.json count the interrupted process too
        logger.info("resumed from %s at step %d", ckpt, step)
        if acc.is_main_process:  # lines written after that checkpoint would otherwise appear twice
            trim_log(metrics_log, step)
    else:
        torch.manual_seed(cfg.seed + 1)
        random.seed(cfg.seed + 1)
        if acc.is_main_process and metrics_log.exists():
            metrics_log.unlink()
    if acc.is_main_process:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    wrapped, opt_p = acc.prepare(model, opt)
    writer = None
    if cfg.tensorboard and acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))

    micro = cfg.batch_size // cfg.grad_accum
    if micro * cfg.grad_accum != cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of grad_accum {cfg.grad_accum}")
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (cfg.progress and acc.is_main_process))
    last_eval: dict = {}
    running = None
    while step < total_steps:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        # The data order is a function of (seed, epoch) alone: a resumed run sees the same batches.
        perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batch_idx = perm[in_epoch * cfg.batch_size:(in_epoch + 1) * cfg.batch_size].tolist()
        wrapped.train()
        opt_p.zero_grad(set_to_none=True)
        loss_sum = 0.0
        n_micro = math.ceil(len(batch_idx) / micro)
        for m in range(n_micro):
            chunk = batch_idx[m * micro:(m + 1) * micro]
            mine = chunk[acc.process_index::acc.num_processes]  # this process's share of the micro-batch
            if not mine:
                mine = chunk[:1]  # keep every process in the collective; its weight is negligible
            imgs = [examples[j][0] for j in mine]
            batch = {"captions": [examples[j][1] for j in mine]}
            if feats is not None:
                batch["features"] = feats[imgs]
            else:
                batch["images"] = [train_ds.image(i) for i in imgs]
            with acc.autocast():
                loss = wrapped(batch) * (len(chunk) / len(batch_idx))
            acc.backward(loss)
            loss_sum += loss.detach().float().item()
        if cfg.grad_clip:
            acc.clip_grad_norm_(params, cfg.grad_clip)
        opt_p.step()
        sched.step()
        step += 1
        running = loss_sum if running is None else 0.95 * running + 0.05 * loss_sum
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if acc.is_main_process:
            rec = {"step": step, "epoch": epoch, "loss": round(loss_sum, 6), "lr": sched.get_last_lr()[0]}
            append_jsonl(metrics_log, rec)
            if writer:
                writer.add_scalar("train/loss", loss_sum, step)
        end_of_epoch = step % steps_per_epoch == 0
        if eval_ds is not None and len(eval_ds) and (
                (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch)
                or step == total_steps):
            last_eval = evaluate(acc.unwrap_model(wrapped), eval_ds, eval_feats, cfg, metrics_fn=metrics_fn)
            if acc.is_main_process:
                append_jsonl(metrics_log, {"step": step, "eval": last_eval})
                if writer:
                    for k, v in last_eval.items():
                        writer.add_scalar(f"eval/{k}", v, step)
        if step % cfg.checkpoint_every == 0 or step == total_steps or step == stop_after_steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(ckpt_dir, model_state=_trainable_state(acc.unwrap_model(wrapped)), optimizer=opt,
                                scheduler=sched, keep=cfg.keep_checkpoints,
                                trainer_state={"step": step, "epoch": epoch, "config": dataclasses.asdict(cfg),
                                               "elapsed_s": round(time.perf_counter() - t_start, 1)})
        if stop_after_steps is not None and step >= stop_after_steps:
            bar.close()
            return {"stopped_at": step}
    bar.close()
    acc.wait_for_everyone()
    final = acc.unwrap_model(wrapped)
    train_time = round(time.perf_counter() - t_start, 1)
    test_eval: dict = {}
    test_ds = full.filter_split(cfg.test_split) if cfg.test_split else None
    if test_ds is not None and len(test_ds) and acc.is_main_process:
        test_feats = _features_for(final, test_ds, progress=cfg.progress) if frozen_encoder else None
        test_eval = evaluate(final, test_ds, test_feats, dataclasses.replace(cfg, eval_images=cfg.test_images),
                             metrics_fn=metrics_fn)
        test_eval = {("test_loss" if k == "val_loss" else k): v for k, v in test_eval.items()}
        test_eval["images"] = min(cfg.test_images, len(test_ds))
    per_folder = ({str(p.root): len(p) for p in train_ds.parts} if isinstance(train_ds, ConcatCaptionDataset)
                  else {str(root): len(train_ds)})
    summary = {"steps": step, "examples": len(examples), "train_images": len(train_ds),
               "train_images_per_folder": per_folder,
               "wall_time_s": train_time, "eval": last_eval, "test": test_eval,
               "total_time_s": round(time.perf_counter() - t_start, 1), "final_train_loss": running}
    if acc.is_main_process:
        final.save_pretrained(out / "final")
        (out / "final" / "training_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if writer:
        writer.close()
    return summary


@torch.no_grad()
def evaluate(model, ds, feats: torch.Tensor | None, cfg: MLEConfig, *,
             metrics_fn: Callable[[dict, dict], dict] | None = None) -> dict:
    """Validation loss over all of ``ds``; with ``metrics_fn``, caption metrics of generated captions."""
    model.eval()
    n = len(ds)
    total, count = 0.0, 0
    for start in range(0, n, 64):
        idx = list(range(start, min(start + 64, n)))
        caps, rows = [], []
        for i in idx:
            for c in targets_of(ds[i], cfg.captions):
                caps.append(c)
                rows.append(i)
        batch = {"captions": caps}
        if feats is not None:
            batch["features"] = feats[rows]
        else:
            batch["images"] = [ds.image(i) for i in rows]
        total += model.loss(batch).item() * len(caps)
        count += len(caps)
    result = {"val_loss": round(total / max(count, 1), 6)}
    if metrics_fn is not None:
        m = min(cfg.eval_images, n)
        kw = {"features": feats[:m]} if feats is not None else {"images": [ds.image(i) for i in range(m)]}
        preds_list = model.generate(num_beams=cfg.eval_num_beams, max_new_tokens=cfg.eval_max_new_tokens,
                                    stop_at_period=False, **kw)
        refs = {str(i): list(ds[i].captions) for i in range(m)}
        preds = {str(i): p or "." for i, p in enumerate(preds_list)}
        result.update({k: round(float(v), 6) for k, v in metrics_fn(refs, preds).items()
                       if isinstance(v, (int, float))})
    model.train()
    return result


def check_config_keys(cls: type, d: dict, *, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` if ``d`` has keys that are not fields of the dataclass ``cls``.

    Example:
        >>> check_config_keys(MLEConfig, {"lr": 0.001, "lrate": 1}, source="--set")
        Traceback (most recent call last):
        ...
        ValueError: --set: unknown MLEConfig keys ['lrate']
    """
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} keys {sorted(unknown)}")


def load_config_file(path: str | os.PathLike) -> dict:
    r"""A YAML config file as a dict of fields, with ``base:`` resolved.

    ``base: other.yaml`` (a path relative to the file) starts from that file's fields, itself resolved the same
    way; the file's own fields then replace the base's whole (a ``curriculum`` list is replaced, not merged). So
    an ablation config states only what it changes. A missing file, a non-mapping and a cycle of bases are
    errors naming the file.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a.yaml").write_text("lr: 0.001\nsteps: 10\n")
        >>> _ = (d / "b.yaml").write_text("base: a.yaml\nsteps: 20\n")
        >>> load_config_file(d / "b.yaml")
        {'lr': 0.001, 'steps': 20}
    """
    import yaml

    chain: list[Path] = []
    path = Path(path)
    fields: list[dict] = []
    while True:
        resolved = path.resolve()
        if resolved in chain:
            raise ValueError(f"{chain[-1]}: 'base' makes a cycle: "
                             f"{' -> '.join(str(c) for c in [*chain, resolved])}")
        chain.append(resolved)
        if not path.is_file():
            where = f" (the base of {chain[-2]})" if len(chain) > 1 else ""
            raise FileNotFoundError(f"{path}: no such config file{where}")
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
        base = d.pop("base", None)
        fields.append(d)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ValueError(f"{path}: 'base' must be the path of another YAML config, got {base!r}")
        path = path.parent / base
    out: dict = {}
    for d in reversed(fields):
        out.update(d)
    return out


def parse_overrides(items: list[str], *, option: str = "--set") -> dict:
    """``["key=value", ...]`` (values read as YAML) -> ``{key: value}``; what ``--set`` options take.

    Example:
        >>> parse_overrides(["lr=0.0001", "curriculum=[{source: world, steps: 3}]", "out_dir=runs/x"])
        {'lr': 0.0001, 'curriculum': [{'source': 'world', 'steps': 3}], 'out_dir': 'runs/x'}
    """
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"{option} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m vlm train --config FILE.yaml [--set key=value ...]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vlm train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="YAML file of MLEConfig fields, or SRConfig fields with 'method: sr' (see vlm/configs/); "
                        "'base: other.yaml' starts from another config's fields")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override fields (YAML values)")
    args = p.parse_args(argv)
    overrides = parse_overrides(args.set)
    try:
        raw = load_config_file(args.config)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    method = {**raw, **overrides}.get("method", "mle")
    if method == "sr":  # self-retrieval fine-tuning (vlm.train.sr)
        from vlm.train.sr import SRConfig, train_sr

        sr_cfg = SRConfig.from_dict({**raw, **overrides}, source=args.config)
        summary = train_sr(sr_cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(summary, indent=2))
        return 0
    if method != "mle":
        raise SystemExit(f"error: {args.config}: unknown method {method!r} (mle or sr)")
    overrides.pop("method", None)
    raw.pop("method", None)
    cfg = MLEConfig.from_dict({**raw, **overrides}, source=args.config)
    from vlm.metrics import caption_scores as metrics_fn

    summary = train_mle(cfg, metrics_fn=metrics_fn)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
