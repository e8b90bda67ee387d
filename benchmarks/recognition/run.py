"""``python -m benchmarks recognition``: run one protocol on one dataset and write its report.

Usage::

    python -m benchmarks recognition --data fashion-mnist --protocol linear-probe --train-per-class 1000 \\
        --baseline raw-pixels
    python -m benchmarks recognition --data world-finegrained --protocol k-shot --k 1,2,4,8,16
    python -m benchmarks recognition --data cub:/data/CUB_200_2011 --protocol zero-shot \\
        --retriever open_clip:ViT-B-32:laion2b_s34b_b79k
    python -m benchmarks recognition --data world-finegrained --protocol generative --vlm py:mypkg:make_vlm

Writes ``recognition-<protocol>.json`` / ``.md`` and ``confusion-<protocol>.png`` into ``--out`` (default
``runs/recognition/<data>``) and prints the results as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.recognition.protocols import DEFAULT_GENERATIVE_PROMPT, DEFAULT_TEMPLATES, K_SHOT_WEIGHT_DECAY

logger = logging.getLogger(__name__)

PROTOCOLS = ("zero-shot", "linear-probe", "k-shot", "generative")
BASELINES = ("raw-pixels",)


@dataclass
class RecognitionConfig:
    """Everything a recognition run depends on; saved with its results."""

    data: str
    """A ``--data`` spec (``benchmarks.recognition.load_recognition_data``)."""
    protocol: str
    """``"zero-shot"``, ``"linear-probe"``, ``"k-shot"`` or ``"generative"``."""
    encoder: str = "efficientnet_lite0"
    """Image encoder of the probes (``vlm.pretrained.load_image_encoder`` name, folder or hub id)."""
    feature_kind: str = "pooled"
    """``"pooled"`` (the backbone's pre-logits) or ``"spatial-mean"`` (last feature map averaged)."""
    retriever: str | None = None
    """Zero-shot retriever spec when none is passed in: ``open_clip:MODEL[:PRETRAINED]`` or ``py:MODULE:FACTORY``."""
    vlm: str | None = None
    """Generative VLM spec when none is passed in: ``py:MODULE:FACTORY``."""
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    """Shots per class of the k-shot protocol."""
    draws: int = 5
    """Seeded draws per k."""
    train_per_class: int | None = None
    """At most this many training images per class (seeded); None for all."""
    test_per_class: int | None = None
    """At most this many test images per class (seeded); None for the full test set."""
    weight_decay: float | None = None
    """The probe's L2 penalty; None chooses it on a validation split carved from train (k-shot: fixed
    ``K_SHOT_WEIGHT_DECAY`` when None)."""
    val_fraction: float = 0.1
    """Share of each class held out of train to choose the weight decay."""
    baselines: tuple[str, ...] = ()
    """Run beside the probe: ``"raw-pixels"`` (the same probe on raw pixels)."""
    center_crop: bool | None = None
    """The encoder's centre crop; None lets the data decide (off for small images such as Fashion-MNIST)."""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    """Zero-shot prompt templates (``{name}``, ``{article}``)."""
    prompt: str = DEFAULT_GENERATIVE_PROMPT
    """Generative question; ``{options}`` lists the class names."""
    max_new_tokens: int = 16
    """Generative answer length."""
    out: str | None = None
    """Output folder; None for ``runs/recognition/<data>``."""
    device: str = "auto"
    batch_size: int = 64
    seed: int = 0
    cache_dir: str | None = None
    """Feature cache folder; None for ``vlm.pretrained.cache_dir()/recognition/features``."""
    use_cache: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"RecognitionConfig.protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        self.ks = tuple(int(k) for k in self.ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"RecognitionConfig.ks must be positive integers, got {self.ks}")
        for name in ("draws", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"RecognitionConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_per_class", "test_per_class"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"RecognitionConfig.{name} must be >= 1 or None, got {v}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"RecognitionConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"RecognitionConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        self.baselines = tuple(self.baselines)
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"RecognitionConfig.baselines: unknown {bad}; known: {BASELINES}")
        if self.baselines and self.protocol != "linear-probe":
            raise ValueError("RecognitionConfig.baselines run beside the linear-probe protocol only")
        if self.feature_kind not in ("pooled", "spatial-mean"):
            raise ValueError(f"RecognitionConfig.feature_kind must be 'pooled' or 'spatial-mean', got "
                             f"{self.feature_kind!r}")
        self.templates = tuple(self.templates)
        if not self.templates:
            raise ValueError("RecognitionConfig.templates must hold at least one template")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_")[:80] or "data"


def run_recognition(config: RecognitionConfig, *, data: Any = None, encoder: Any = None, retriever: Any = None,
                    vlm: Any = None) -> dict:
    """Run ``config.protocol`` and write the report; components passed in win over the config's names.

    Args:
        config: the run's settings.
        data: a :class:`~benchmarks.recognition.data.RecognitionData` (default: ``load_recognition_data(config.data)``).
        encoder: an image encoder for the probes (default: ``load_image_encoder(config.encoder)``).
        retriever: any object with ``encode_images`` / ``encode_texts`` (zero-shot).
        vlm: any object with ``generate(images, prompts, *, max_new_tokens)`` (generative).

    Returns:
        The results dict (also written to ``<out>/recognition-<protocol>.json``), with ``"files"`` added.
    """
    import torch

    from benchmarks.recognition.data import load_recognition_data, subsample_per_class
    from benchmarks.recognition.metrics import classification_metrics, plot_confusion_matrix
    from benchmarks.report import resolve_device, write_results

    start = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if data is None:
        data = load_recognition_data(config.data, seed=config.seed)
    out = Path(config.out) if config.out else Path("runs") / "recognition" / _slug(data.name)
    center_crop = data.center_crop if config.center_crop is None else config.center_crop
    test_idx = subsample_per_class(data.test.labels, config.test_per_class, seed=config.seed)
    test_y = data.test.labels[test_idx]
    names, n_classes = data.class_names, data.n_classes
    results: dict[str, Any] = {"protocol": config.protocol, "data": data.name, "n_classes": n_classes,
                               "n_test": int(len(test_idx))}
    timings: dict[str, float] = {}
    figures = []
    cache_dir: Any = config.cache_dir if config.use_cache else False

    def features(enc, split, idx, desc):
        from benchmarks.recognition.features import extract_features

        t = time.perf_counter()
        f = extract_features(enc, split, idx, kind=config.feature_kind, center_crop=center_crop,
                             batch_size=config.batch_size, cache_dir=cache_dir, progress=config.progress, desc=desc)
        timings[f"features_{desc}_s"] = round(time.perf_counter() - t, 2)
        return f

    def score(pred, title, stem):
        m = classification_metrics(test_y, pred, n_classes, names)
        fig = plot_confusion_matrix(m["confusion_matrix"], names, out / f"{stem}.png",
                                    title=f"{data.name}: {title} (top-1 {m['top1']:.3f})")
        figures.append(fig)
        return m

    if config.protocol in ("linear-probe", "k-shot"):
        from vlm.pretrained import load_image_encoder

        if encoder is None:
            encoder = load_image_encoder(config.encoder, device=device)
        results["encoder"] = getattr(encoder, "name", config.encoder)
        test_x = features(encoder, data.test, test_idx, "test")

    if config.protocol == "linear-probe":
        from benchmarks.recognition.protocols import linear_probe_predict

        train_idx = subsample_per_class(data.train.labels, config.train_per_class, seed=config.seed)
        train_y = data.train.labels[train_idx]
        train_x = features(encoder, data.train, train_idx, "train")
        t = time.perf_counter()
        pred, info = linear_probe_predict(train_x, train_y, test_x, n_classes=n_classes,
                                          weight_decay=config.weight_decay, val_fraction=config.val_fraction,
                                          seed=config.seed)
        timings["probe_s"] = round(time.perf_counter() - t, 2)
        results.update(feature_dim=int(train_x.shape[1]), **info)
        results.update(score(pred, f"linear probe on {results['encoder']}", "confusion-linear-probe"))
        if "raw-pixels" in config.baselines:
            from benchmarks.recognition.features import raw_pixel_features

            side, grey = data.pixel_baseline
            t = time.perf_counter()
            px_train = raw_pixel_features(data.train, train_idx, size=side, grayscale=grey)
            px_test = raw_pixel_features(data.test, test_idx, size=side, grayscale=grey)
            bpred, binfo = linear_probe_predict(px_train, train_y, px_test, n_classes=n_classes,
                                                weight_decay=config.weight_decay, val_fraction=config.val_fraction,
                                                seed=config.seed)
            timings["baseline_raw_pixels_s"] = round(time.perf_counter() - t, 2)
            bm = score(bpred, f"logistic regression on raw pixels ({side}x{side}{' grey' if grey else ''})",
                       "confusion-raw-pixels")
            results["baseline_raw_pixels"] = {
                "top1": bm["top1"], "mean_per_class_accuracy": bm["mean_per_class_accuracy"],
                "weight_decay": binfo["weight_decay"], "feature_dim": int(px_train.shape[1]),
                "input": f"{side}x{side}{' grey' if grey else ' RGB'}",
            }
            results["baseline_raw_pixels_confusion_matrix"] = bm["confusion_matrix"]
            results["beats_raw_pixels"] = bool(results["top1"] > bm["top1"])

    elif config.protocol == "k-shot":
        from benchmarks.recognition.protocols import k_shot_probe

        wd = K_SHOT_WEIGHT_DECAY if config.weight_decay is None else config.weight_decay
        pool = data.train
        t = time.perf_counter()
        ks = k_shot_probe(pool.labels, lambda idx: features(encoder, pool, idx, "train"), test_x, test_y,
                          ks=config.ks, n_draws=config.draws, seed=config.seed, weight_decay=wd,
                          n_classes=n_classes, class_names=names)
        timings["k_shot_s"] = round(time.perf_counter() - t, 2)
        results.update(weight_decay=wd, per_k=ks["per_k"], draws=ks["draws"])
        for row in ks["per_k"]:
            results[f"top1@{row['k']}-shot"] = row["top1_mean"]
            results[f"top1_std@{row['k']}-shot"] = row["top1_std"]
        m = score(ks["predictions"], f"{max(config.ks)}-shot linear probe, draw 0", "confusion-k-shot")
        results["confusion_matrix"] = m["confusion_matrix"]
        results["per_class_accuracy"] = m["per_class_accuracy"]

    elif config.protocol == "zero-shot":
        from benchmarks.recognition.loaders import load_retriever
        from benchmarks.recognition.protocols import zero_shot_predict

        if retriever is None:
            if not config.retriever:
                raise ValueError("the zero-shot protocol needs a retriever: --retriever open_clip:MODEL:PRETRAINED "
                                 "or py:MODULE:FACTORY (Python: run_recognition(..., retriever=obj))")
            retriever = load_retriever(config.retriever, device=device)
        results["retriever"] = getattr(retriever, "name", config.retriever or type(retriever).__name__)
        t = time.perf_counter()
        pred, _ = zero_shot_predict(retriever, data.test.subset(test_idx).images, names,
                                    templates=config.templates, batch_size=config.batch_size,
                                    progress=config.progress)
        timings["zero_shot_s"] = round(time.perf_counter() - t, 2)
        results["templates"] = list(config.templates)
        results.update(score(pred, "zero-shot", "confusion-zero-shot"))

    elif config.protocol == "generative":
        from benchmarks.recognition.loaders import load_vlm
        from benchmarks.recognition.protocols import generative_predict

        if vlm is None:
            if not config.vlm:
                raise ValueError("the generative protocol needs a VLM: --vlm py:MODULE:FACTORY "
                                 "(Python: run_recognition(..., vlm=obj))")
            vlm = load_vlm(config.vlm)
        results["vlm"] = getattr(vlm, "name", config.vlm or type(vlm).__name__)
        t = time.perf_counter()
        pred, answers, info = generative_predict(vlm, data.test.subset(test_idx).images, names,
                                                 prompt=config.prompt, max_new_tokens=config.max_new_tokens,
                                                 batch_size=config.batch_size,
                                                 progress=config.progress)
        timings["generative_s"] = round(time.perf_counter() - t, 2)
        results.update(info)
        results.update(score(pred, "generative", "confusion-generative"))
        results["answers_sample"] = [
            {"label": names[int(y)], "answer": a, "parsed": names[int(p)] if p >= 0 else None}
            for y, a, p in list(zip(test_y, answers, pred))[:20]
        ]

    results["timings"] = timings
    wall = time.perf_counter() - start
    resolved = dataclasses.asdict(config)
    resolved.update(out=str(out), center_crop=center_crop, data_info=data.info)
    paths = write_results(out, f"recognition-{config.protocol}", results, config=resolved, seed=config.seed,
                          figures=figures, wall_time_s=wall, device=device)
    results["files"] = {k: str(v) for k, v in paths.items()} | {"figures": [str(f) for f in figures]}
    results["wall_time_s"] = round(wall, 2)
    return results


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4,8,16, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks recognition", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help="fashion-mnist | world-finegrained[:n=1200,size=64,seed=0] | cub:ROOT | folders:ROOT | "
                        "imagefolder:ROOT")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--encoder", default="efficientnet_lite0",
                   help="image encoder of the probes: built-in name, timm folder or hub id "
                        "(default efficientnet_lite0)")
    p.add_argument("--features", dest="feature_kind", default="pooled", choices=("pooled", "spatial-mean"),
                   help="frozen features of the probes: the head's pooled pre-logits (default) or the last "
                        "feature map's mean (the same for average-pooling CNNs; differs for transformers)")
    p.add_argument("--retriever", help="zero-shot: open_clip:MODEL[:PRETRAINED] (online) or py:MODULE:FACTORY")
    p.add_argument("--vlm", help="generative: py:MODULE:FACTORY returning an object with generate()")
    p.add_argument("--k", dest="ks", type=_ints, default=(1, 2, 4, 8, 16), help="k-shot: shots per class (1,2,4,8,16)")
    p.add_argument("--draws", type=int, default=5, help="k-shot: seeded draws per k (default 5)")
    p.add_argument("--train-per-class", type=int, help="at most this many training images per class (seeded)")
    p.add_argument("--test-per-class", type=int, help="at most this many test images per class (default: all)")
    p.add_argument("--weight-decay", type=float,
                   help="probe L2 penalty (default: chosen on a validation split of train; k-shot: "
                        f"{K_SHOT_WEIGHT_DECAY})")
    p.add_argument("--baseline", dest="baselines", action="append", default=[], choices=BASELINES,
                   help="also run this baseline beside the linear probe")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--center-crop", dest="center_crop", action="store_true", default=None,
                      help="the encoder's centre crop (default for photos)")
    crop.add_argument("--no-center-crop", dest="center_crop", action="store_false",
                      help="resize whole images (default for Fashion-MNIST and the world)")
    p.add_argument("--template", dest="templates", action="append",
                   help="zero-shot prompt template with {name} (repeat; default: 4 photo templates)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", help="output folder (default runs/recognition/<data>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="feature cache folder (default $FINECAP_CACHE/recognition/features)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="neither read nor write the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line; prints the results as JSON and returns 0, or 2 with a one-line error."""
    from benchmarks.recognition.loaders import ComponentLoadError
    from vlm.pretrained import HubOfflineError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    kw = vars(args)
    kw["progress"] = not kw.pop("quiet")
    if kw["templates"] is None:
        kw.pop("templates")
    try:
        config = RecognitionConfig(**kw)
        results = run_recognition(config)
    except (ValueError, FileNotFoundError, ImportError, ComponentLoadError, HubOfflineError) as err:
        print(f"python -m benchmarks recognition: error: {err}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in results.items() if "confusion_matrix" not in k and k != "draws"}
    print(json.dumps(shown, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return 0
