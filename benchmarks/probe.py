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
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
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

    opt.step(closure)
    with torch.no_grad():
        acc = (head(xte).argmax(1) == test_y).float().mean().item()
    majority = torch.bincount(train_y, minlength=n_classes).argmax()
    return ProbeResult(accuracy=acc, majority_baseline=(test_y == majority).float().mean().item(),
                       n_train=len(train_y), n_test=len(test_y), n_classes=n_classes)


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
