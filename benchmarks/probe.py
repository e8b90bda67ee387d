"""Linear read-outs of frozen features: a logistic-regression probe and a ridge map between embedding spaces."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ProbeResult:
    """Accuracy of a linear probe on held-out data, with the majority-class baseline beside it."""

    accuracy: float
    majority_baseline: float
    n_train: int
    n_test: int
    n_classes: int


_SMALL_PROBLEM = 4_000_000  # feature values (N * D) below which a probe is fitted on one thread


@dataclass
class LinearClassifier:
    """A fitted multinomial logistic regression on standardised features: ``logits = ((x - mean) / std) W^T + b``.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]]); y = torch.tensor([0, 0, 1, 1])
        >>> fit_linear_classifier(x, y).predict(torch.tensor([[0.5], [10.5]])).tolist()
        [0, 1]
    """

    mean: torch.Tensor
    """``(D,)`` feature means of the training set."""
    std: torch.Tensor
    """``(D,)`` feature standard deviations of the training set (clamped away from zero)."""
    weight: torch.Tensor
    """``(C, D)``."""
    bias: torch.Tensor
    """``(C,)``."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, C)`` for features ``(N, D)``."""
        return ((x.to(self.mean.dtype) - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class indices ``(N,)``."""
        return self.logits(x).argmax(1)


def fit_linear_classifier(train_x: torch.Tensor, train_y: torch.Tensor, *, n_classes: int | None = None,
                          weight_decay: float = 1e-3, max_iter: int = 200) -> LinearClassifier:
    """Fit multinomial logistic regression on standardised features (L-BFGS, full batch, from zero weights).

    The loss is the mean cross-entropy plus ``weight_decay * ||W||^2`` (the bias is not penalised). The fit
    is deterministic: zero initialisation, full-batch L-BFGS with a strong-Wolfe line search.

    Args:
        train_x: ``(N, D)`` features.
        train_y: ``(N,)`` class indices.
        n_classes: number of classes (default ``max(train_y) + 1``).
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(100, 4, generator=g); y = (x[:, 1] > 0).long()
        >>> clf = fit_linear_classifier(x, y, n_classes=3)
        >>> clf.weight.shape, bool((clf.predict(x) == y).float().mean() > 0.95)
        (torch.Size([3, 4]), True)
    """
    if train_x.ndim != 2 or train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"train_x must be (N, D) matching train_y (N,); got {tuple(train_x.shape)}, "
                         f"{tuple(train_y.shape)}")
    if train_x.shape[0] == 0:
        raise ValueError("fit_linear_classifier needs at least one training example")
    if weight_decay < 0 or max_iter < 1:
        raise ValueError(f"need weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}")
    n_classes = int(train_y.max()) + 1 if n_classes is None else int(n_classes)
    if int(train_y.max()) >= n_classes or int(train_y.min()) < 0:
        raise ValueError(f"train_y holds labels outside 0..{n_classes - 1}")
    # One example per class (1-shot) has no spread: unbiased std would be NaN, so fall back to 1.
    std = train_x.std(0) if train_x.shape[0] > 1 else torch.ones_like(train_x[0])
    mean, std = train_x.mean(0), std.nan_to_num(1.0).clamp_min(1e-6)
    xtr = (train_x - mean) / std
    torch.manual_seed(0)
    head = torch.nn.Linear(xtr.shape[1], n_classes, dtype=xtr.dtype)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xtr), train_y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    # L-BFGS runs hundreds of tiny sequential steps; on small problems thread hand-offs cost more than the
    # arithmetic (77x slower with 2 threads than 1 on a busy 2-core machine for 38 x 3072 features).
    if train_x.numel() < _SMALL_PROBLEM:
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():  # callers may sit inside torch.inference_mode()
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return LinearClassifier(mean=mean, std=std, weight=head.weight.detach().clone(),
                            bias=head.bias.detach().clone())


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 *, weight_decay: float = 1e-3, max_iter: int = 200) -> ProbeResult:
    """Fit multinomial logistic regression on standardised features (L-BFGS, full batch) and score it.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 8, generator=g); y = (x[:, 0] > 0).long()
        >>> linear_probe(x[:150], y[:150], x[150:], y[150:]).accuracy > 0.9
        True
    """
    if train_x.ndim != 2 or train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"train_x must be (N, D) matching train_y (N,); got {tuple(train_x.shape)}, "
                         f"{tuple(train_y.shape)}")
    if train_x.shape[0] == 0 or test_x.shape[0] == 0:
        raise ValueError("linear_probe needs at least one train and one test example")
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    clf = fit_linear_classifier(train_x, train_y, n_classes=n_classes, weight_decay=weight_decay,
                                max_iter=max_iter)
    with torch.no_grad():
        acc = (clf.predict(test_x) == test_y).float().mean().item()
    majority = torch.bincount(train_y, minlength=n_classes).argmax()
    return ProbeResult(accuracy=acc, majority_baseline=(test_y == majority).float().mean().item(),
                       n_train=len(train_y), n_test=len(test_y), n_classes=n_classes)


def select_weight_decay(train_x: torch.Tensor, train_y: torch.Tensor, *,
                        grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                        val_fraction: float = 0.2, seed: int = 0, max_iter: int = 200,
                        n_classes: int | None = None) -> tuple[float, dict[float, float]]:
    """Choose the probe's L2 penalty on a stratified validation split carved from the training data.

    The test set is never seen. Each class gives ``max(1, round(val_fraction * n_c))`` examples to the
    validation split (classes with a single example stay in training). Ties go to the larger penalty.

    Returns:
        ``(best weight_decay, {weight_decay: validation accuracy})``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 8, generator=g); y = (x[:, 0] > 0).long()
        >>> best, scores = select_weight_decay(x, y, grid=(1e-3, 1.0))
        >>> best in scores and len(scores) == 2
        True
    """
    if not grid:
        raise ValueError("grid must hold at least one weight_decay value")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_classes = int(train_y.max()) + 1 if n_classes is None else int(n_classes)
    g = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in range(n_classes):
        idx = torch.nonzero(train_y == c).flatten()
        if len(idx) < 2:
            continue
        n_val = min(len(idx) - 1, max(1, round(val_fraction * len(idx))))
        val_idx.append(idx[torch.randperm(len(idx), generator=g)[:n_val]])
    if not val_idx:
        raise ValueError("select_weight_decay needs a class with at least two examples")
    val = torch.cat(val_idx)
    keep = torch.ones(len(train_y), dtype=torch.bool)
    keep[val] = False
    scores: dict[float, float] = {}
    for wd in grid:
        clf = fit_linear_classifier(train_x[keep], train_y[keep], n_classes=n_classes, weight_decay=wd,
                                    max_iter=max_iter)
        with torch.no_grad():
            scores[wd] = (clf.predict(train_x[val]) == train_y[val]).float().mean().item()
    best = max(sorted(grid, reverse=True), key=lambda wd: scores[wd])  # max keeps the first of equals
    return best, scores


def ridge_map(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """The (D_x+1, D_y) matrix W minimising ||[x 1] W - y||^2 + alpha ||W||^2 (closed form, float64).

    Example:
        >>> x = torch.randn(50, 3, dtype=torch.float64); w = torch.randn(3, 2, dtype=torch.float64)
        >>> W = ridge_map(x, x @ w, alpha=1e-9)
        >>> torch.allclose(W[:3], w, atol=1e-6)
        True
    """
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    reg = alpha * torch.eye(xa.shape[1], dtype=torch.float64)
    reg[-1, -1] = 0.0  # do not shrink the intercept
    return torch.linalg.solve(xa.T @ xa + reg, xa.T @ y.double())


def apply_ridge(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1) @ w
