"""The four recognition protocols, each as a plain function from data (or features) to predictions.

- :func:`zero_shot_predict`: a retriever scores each image against class-name prompts (several templates
  averaged, as CLIP does); no training.
- :func:`linear_probe_predict`: logistic regression on frozen features, its L2 penalty chosen on a
  validation split carved from the training set (never the test set).
- :func:`k_shot_probe`: the same probe trained on exactly ``k`` examples per class, over several seeded
  draws, reported as mean and standard deviation.
- :func:`generative_predict`: a VLM answers a question that lists the class names; answers are parsed with
  :class:`~benchmarks.recognition.answers.AnswerParser`.

A *retriever* is any object with ``encode_images(list[PIL.Image]) -> (N, D)`` and
``encode_texts(list[str]) -> (N, D)``, L2-normalised; a *VLM* is any object with
``generate(images, prompts, *, max_new_tokens) -> list[str]``.

Example:
    >>> sample_k_shot([0, 1, 0, 1, 0, 1], 2, seed=0).tolist()
    [2, 3, 4, 5]
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from benchmarks.recognition.answers import AnswerParser
from benchmarks.recognition.metrics import classification_metrics

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: Prompt templates for zero-shot classification (``{name}``, ``{article}``: see ``vlm.data.class_caption``).
DEFAULT_TEMPLATES = (
    "a photo of {article} {name}.",
    "a photo of the {name}.",
    "a close-up photo of {article} {name}.",
    "a picture of {article} {name}.",
)

#: The question a VLM gets in generative classification; ``{options}`` lists the class names.
DEFAULT_GENERATIVE_PROMPT = "What is shown in this image? Choose one of: {options}. Answer with the name only."

#: Weight-decay grid that the linear probe searches on its validation split.
WEIGHT_DECAY_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

#: The k-shot probe's fixed L2 penalty (with one example per class there is nothing to validate on).
K_SHOT_WEIGHT_DECAY = 1e-2


def _batches(n: int, batch_size: int, progress: bool, desc: str):
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress)


# ------------------------------------------------------------------------------------------------ zero-shot


def zero_shot_weights(retriever: Any, class_names: Sequence[str],
                      templates: Sequence[str] = DEFAULT_TEMPLATES) -> "torch.Tensor":
    """One L2-normalised text embedding per class ``(C, D)``: the mean of its templates' embeddings.

    Example:
        >>> import torch
        >>> class Bag:  # bag-of-letters "retriever", enough to show the shapes
        ...     def encode_texts(self, texts):
        ...         counts = [[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]
        ...         e = torch.tensor(counts, dtype=torch.float)
        ...         return torch.nn.functional.normalize(e, dim=1)
        >>> zero_shot_weights(Bag(), ["cat", "dog"], ["a {name}", "the {name}"]).shape
        torch.Size([2, 26])
    """
    import torch

    from vlm.data import class_caption

    if not templates:
        raise ValueError("at least one prompt template is needed")
    prompts = [class_caption(name, t) for name in class_names for t in templates]
    emb = torch.as_tensor(retriever.encode_texts(prompts)).float().cpu()
    if emb.shape[0] != len(prompts):
        raise ValueError(f"encode_texts returned {emb.shape[0]} rows for {len(prompts)} prompts")
    emb = torch.nn.functional.normalize(emb, dim=-1).view(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def zero_shot_predict(retriever: Any, images: Sequence, class_names: Sequence[str], *,
                      templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 64,
                      progress: bool = False) -> tuple[np.ndarray, "torch.Tensor"]:
    """Zero-shot predictions ``(N,)`` and cosine scores ``(N, C)`` of ``images`` against the class prompts."""
    import torch

    weights = zero_shot_weights(retriever, class_names, templates)
    scores = []
    with torch.inference_mode():
        for start in _batches(len(images), batch_size, progress, "zero-shot"):
            batch = [images[i] for i in range(start, min(start + batch_size, len(images)))]
            emb = torch.as_tensor(retriever.encode_images(batch)).float().cpu()
            scores.append(torch.nn.functional.normalize(emb, dim=-1) @ weights.T)
    s = torch.cat(scores) if scores else torch.zeros(0, len(class_names))
    return s.argmax(1).numpy(), s


# --------------------------------------------------------------------------------------------- linear probe


def linear_probe_predict(train_x: "torch.Tensor", train_y: Sequence[int], test_x: "torch.Tensor", *,
                         n_classes: int, weight_decay: float | None = None,
                         grid: Sequence[float] = WEIGHT_DECAY_GRID, val_fraction: float = 0.1, seed: int = 0,
                         max_iter: int = 200) -> tuple[np.ndarray, dict]:
    """Fit the logistic-regression probe on ``train_x`` and predict ``test_x``.

    Args:
        weight_decay: the L2 penalty; None chooses it from ``grid`` on a stratified ``val_fraction`` of the
            training data (then refits on all of it).

    Returns:
        ``(predictions (N_test,), {"weight_decay", "validation_accuracy": {wd: acc} or None, "n_train"})``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(300, 5, generator=g); y = (x[:, 0] > 0).long()
        >>> pred, info = linear_probe_predict(x[:200], y[:200], x[200:], n_classes=2)
        >>> bool((torch.from_numpy(pred) == y[200:]).float().mean() > 0.9), info["weight_decay"] in WEIGHT_DECAY_GRID
        (True, True)
    """
    import torch

    from benchmarks.probe import fit_linear_classifier, select_weight_decay

    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    val = None
    if weight_decay is None:
        weight_decay, val = select_weight_decay(train_x, y, grid=tuple(grid), val_fraction=val_fraction, seed=seed,
                                                max_iter=max_iter, n_classes=n_classes)
        logger.info("probe weight decay %g chosen on validation (%s)", weight_decay, val)
    clf = fit_linear_classifier(train_x, y, n_classes=n_classes, weight_decay=weight_decay, max_iter=max_iter)
    with torch.no_grad():
        pred = clf.predict(test_x).numpy()
    return pred, {"weight_decay": weight_decay, "validation_accuracy": val, "n_train": int(len(y))}


# ------------------------------------------------------------------------------------------------- k-shot


def sample_k_shot(labels: Sequence[int], k: int, *, seed: int, n_classes: int | None = None) -> np.ndarray:
    """Exactly ``k`` indices of every class, drawn without replacement, seeded; sorted.

    Raises ``ValueError`` naming the class when one has fewer than ``k`` examples.

    Example:
        >>> idx = sample_k_shot([0, 0, 0, 1, 1, 1, 2, 2], 2, seed=3)
        >>> np.bincount(np.asarray([0, 0, 0, 1, 1, 1, 2, 2])[idx]).tolist()
        [2, 2, 2]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    # One stream per (seed, class): adding k or classes does not reshuffle the others' draws.
    out = []
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} training example(s), fewer than k={k}")
        rng = np.random.default_rng([seed, c])
        out.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(out))


def k_shot_probe(pool_labels: Sequence[int], features: "torch.Tensor | Callable[[np.ndarray], torch.Tensor]",
                 test_x: "torch.Tensor", test_y: Sequence[int], *, ks: Sequence[int] = (1, 2, 4, 8, 16),
                 n_draws: int = 5, seed: int = 0, weight_decay: float = K_SHOT_WEIGHT_DECAY, n_classes: int,
                 class_names: Sequence[str] | None = None, max_iter: int = 200) -> dict:
    """Linear probes on ``k`` examples per class drawn from a training pool, ``n_draws`` seeded draws per ``k``.

    Args:
        pool_labels: labels of the whole training pool (draws are made from these).
        features: the pool's features ``(N_pool, D)``, or a function giving the features of the pool indices
            it is passed (so that only the drawn images need encoding).
        test_x, test_y: the test features and labels (disjoint from the pool).
        ks: shots per class.
        n_draws: draws per ``k``; draw ``d`` uses seed ``seed + d``.

    Returns:
        ``{"per_k": [{"k", "top1_mean", "top1_std", "mean_per_class_mean", "mean_per_class_std",
        "n_train"}], "draws": [{"k", "draw", "seed", "top1", "mean_per_class_accuracy"}], "weight_decay"}``.
    """
    import torch

    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    draws = {(k, d): sample_k_shot(pool_labels, k, seed=seed + d, n_classes=n_classes)
             for k in ks for d in range(n_draws)}
    pool_y = np.asarray(pool_labels, dtype=np.int64)
    union = np.unique(np.concatenate(list(draws.values())))
    feats = features[torch.from_numpy(union)] if isinstance(features, torch.Tensor) else features(union)
    row = {int(i): r for r, i in enumerate(union)}
    rows, per_k, shown = [], [], None
    for k in ks:
        top1, mpc = [], []
        for d in range(n_draws):
            idx = draws[(k, d)]
            x = feats[torch.tensor([row[int(i)] for i in idx])]
            pred, _ = linear_probe_predict(x, pool_y[idx], test_x, n_classes=n_classes, weight_decay=weight_decay,
                                           max_iter=max_iter)
            m = classification_metrics(test_y, pred, n_classes, class_names)
            if k == max(ks) and d == 0:
                shown = pred
            top1.append(m["top1"])
            mpc.append(m["mean_per_class_accuracy"])
            rows.append({"k": k, "draw": d, "seed": seed + d, "top1": m["top1"],
                         "mean_per_class_accuracy": m["mean_per_class_accuracy"]})
        per_k.append({"k": k, "top1_mean": float(np.mean(top1)), "top1_std": float(np.std(top1)),
                      "mean_per_class_mean": float(np.mean(mpc)), "mean_per_class_std": float(np.std(mpc)),
                      "n_train": k * n_classes})
    return {"per_k": per_k, "draws": rows, "weight_decay": weight_decay, "predictions": shown}


# --------------------------------------------------------------------------------------------- generative


def generative_prompt(class_names: Sequence[str], template: str = DEFAULT_GENERATIVE_PROMPT) -> str:
    """The question listing the classes.

    Example:
        >>> generative_prompt(["cat", "dog"])
        'What is shown in this image? Choose one of: cat, dog. Answer with the name only.'
    """
    if "{options}" not in template:
        raise ValueError(f"the generative prompt template must contain '{{options}}', got {template!r}")
    return template.replace("{options}", ", ".join(class_names))


def generative_predict(vlm: Any, images: Sequence, class_names: Sequence[str], *,
                       prompt: str = DEFAULT_GENERATIVE_PROMPT, max_new_tokens: int = 16, batch_size: int = 8,
                       progress: bool = False) -> tuple[np.ndarray, list[str], dict]:
    """Ask ``vlm`` for each image's class and parse the answers.

    Returns:
        ``(predictions (N,) with -1 where unparseable, the raw answers, {"unparseable_rate", "parsed_by":
        {"exact": n, "contained": n, "overlap": n, "unparseable": n}, "prompt"})``.
    """
    parser = AnswerParser(class_names)
    question = generative_prompt(class_names, prompt)
    answers: list[str] = []
    for start in _batches(len(images), batch_size, progress, "generative"):
        batch = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        out = list(vlm.generate(batch, [question] * len(batch), max_new_tokens=max_new_tokens))
        if len(out) != len(batch):
            raise ValueError(f"the VLM returned {len(out)} answers for {len(batch)} images")
        answers += [str(a) for a in out]
    parsed = parser.parse_all(answers)
    pred = np.array([-1 if p.label is None else p.label for p in parsed], dtype=np.int64)
    how = {h: sum(p.how == h for p in parsed) for h in ("exact", "contained", "overlap", "unparseable")}
    return pred, answers, {"unparseable_rate": how["unparseable"] / max(1, len(parsed)), "parsed_by": how,
                           "prompt": question}
