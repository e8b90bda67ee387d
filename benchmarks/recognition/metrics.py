"""Scores of a classifier's predictions: top-1, mean per-class accuracy, the confusion matrix and its plot.

Predictions are class indices; ``-1`` marks an item with no prediction (an unparseable VLM answer). Such an
item counts as wrong in every accuracy and is left out of the confusion matrix's cells (its row total still
includes it, via ``n_unparsed``).

Example:
    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, -1], n_classes=2)
    >>> m["top1"], m["mean_per_class_accuracy"], m["n_unparsed"]
    (0.5, 0.5, 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], n_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of items of true class ``i`` predicted as ``j`` (``-1`` predictions left out).

    Example:
        >>> confusion_matrix([0, 0, 1, 2], [0, 2, 1, -1], 3).tolist()
        [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if len(y) and (y.min() < 0 or y.max() >= n_classes or p.max() >= n_classes or p.min() < -1):
        raise ValueError(f"labels must be in 0..{n_classes - 1} and predictions in -1..{n_classes - 1}")
    keep = p >= 0
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y[keep], p[keep]), 1)
    return cm


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], n_classes: int,
                           class_names: Sequence[str] | None = None) -> dict:
    """Top-1, mean per-class accuracy (over classes present in ``labels``), per-class accuracy, confusion.

    Returns:
        ``{"top1", "mean_per_class_accuracy", "n", "n_unparsed", "per_class_accuracy": {name: acc},
        "confusion_matrix": [[...]]}``; classes absent from ``labels`` get ``None`` and do not count.

    Example:
        >>> m = classification_metrics([0, 0, 0, 1], [0, 0, 0, 0], 3, ["a", "b", "c"])
        >>> m["top1"], m["mean_per_class_accuracy"], m["per_class_accuracy"]
        (0.75, 0.5, {'a': 1.0, 'b': 0.0, 'c': None})
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("no items to score")
    cm = confusion_matrix(y, p, n_classes)
    support = np.bincount(y, minlength=n_classes)
    names = list(class_names) if class_names is not None else [str(k) for k in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    per_class = {names[k]: (float(cm[k, k] / support[k]) if support[k] else None) for k in range(n_classes)}
    present = [v for v in per_class.values() if v is not None]
    return {
        "top1": float((y == p).mean()),
        "mean_per_class_accuracy": float(np.mean(present)),
        "n": int(len(y)),
        "n_unparsed": int((p < 0).sum()),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | Path, *, title: str = "") -> Path:
    """Save the row-normalised confusion matrix as a PNG, class names on both axes, counts in the cells.

    Rows are true classes, columns predictions; the colour is the fraction of the row. Counts are written in
    the cells when there are at most 30 classes; beyond ~60 classes the tick labels shrink to stay legible.

    Example:
        >>> import tempfile, os
        >>> p = plot_confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"], os.path.join(tempfile.mkdtemp(), "cm.png"))
        >>> p.stat().st_size > 1000
        True
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} class names")
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    side = min(40.0, max(5.0, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=100)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = 9 if n <= 30 else max(3, int(9 - (n - 30) / 25))
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticklabels(class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    from benchmarks.report import save_figure

    return save_figure(fig, path, dpi=100)
