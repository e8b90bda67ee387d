"""REINFORCE pieces shared by the RL trainers: baselines, advantages, the token-mean policy-gradient loss.

Baselines (what is subtracted from a sampled caption's reward to get its advantage):

* ``mean``: a running (exponential) mean of past rewards, :class:`RunningMeanBaseline`;
* ``greedy``: the reward of the image's greedy caption, self-critical sequence training (Rennie et al.,
  2017): :func:`self_critical_advantages`;
* ``loo``: leave-one-out over the n samples of one image, the mean reward of the other n-1 samples
  (Kool et al., 2019): :func:`leave_one_out_advantages`;
* ``group``: GRPO's group-normalised advantage, (r - mean) / (std + eps) over the n samples.

Example:
    >>> import torch
    >>> r = torch.tensor([[1.0, 2.0, 3.0]])  # one image, three sampled captions
    >>> leave_one_out_advantages(r).tolist()
    [[-1.5, 0.0, 1.5]]
"""

from __future__ import annotations

import torch

BASELINES = ("mean", "greedy", "loo", "group")


class RunningMeanBaseline:
    """An exponential moving average of rewards; the first batch sets it.

    Example:
        >>> b = RunningMeanBaseline(momentum=0.5)
        >>> b.advantages(torch.tensor([2.0, 4.0])).tolist(), b.value
        ([-1.0, 1.0], 3.0)
        >>> b.advantages(torch.tensor([5.0, 5.0])).tolist(), b.value  # uses the mean before this batch
        ([2.0, 2.0], 4.0)
    """

    def __init__(self, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.value: float | None = None

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        mean = float(rewards.float().mean())
        base = mean if self.value is None else self.value
        self.value = mean if self.value is None else self.momentum * self.value + (1 - self.momentum) * mean
        return rewards - base

    def state_dict(self) -> dict:
        return {"value": self.value, "momentum": self.momentum}

    def load_state_dict(self, d: dict) -> None:
        self.value, self.momentum = d["value"], d["momentum"]


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` rewards of n samples per image -> reward minus the mean of the image's other samples."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"leave-one-out needs (images, samples >= 2) rewards, got shape {tuple(rewards.shape)}")
    n = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    return rewards - others


def self_critical_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` sample rewards minus the ``(B,)`` reward of each image's greedy caption.

    Example:
        >>> self_critical_advantages(torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])).tolist()
        [[0.5, -0.5]]
    """
    if greedy_rewards.shape != rewards.shape[:1]:
        raise ValueError(f"one greedy reward per image: got {tuple(greedy_rewards.shape)} for "
                         f"{tuple(rewards.shape)} sample rewards")
    return rewards - greedy_rewards[:, None]


def group_normalised_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages: per image, (r - mean) / (std + eps) over its n samples.

    Example:
        >>> [round(x, 3) for x in group_normalised_advantages(torch.tensor([[0.0, 2.0]]))[0].tolist()]
        [-0.707, 0.707]
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def policy_gradient_loss(logp: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE loss with token-mean log-probabilities: ``-mean_i(A_i * mean_t logp_it)``.

    ``logp``/``mask``: ``(N, T)`` token log-probabilities of N sampled texts and their real-token mask;
    ``advantages``: ``(N,)`` (treated as constants).

    Example:
        >>> logp = torch.tensor([[-1.0, -3.0], [-2.0, 0.0]], requires_grad=True)
        >>> mask = torch.tensor([[True, True], [True, False]])
        >>> policy_gradient_loss(logp, mask, torch.tensor([2.0, -1.0])).item()  # -(2*-2 + -1*-2)/2
        1.0
    """
    tok_mean = (logp * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return -(advantages.detach().to(tok_mean.dtype) * tok_mean).mean()


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean k3 estimate of KL(policy || reference) on sampled tokens (Schulman's unbiased, >= 0 form).

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> kl_penalty(lp, lp, torch.ones(1, 2, dtype=torch.bool)).item()
        0.0
    """
    d = (ref_logp.detach() - logp)
    k3 = torch.exp(d) - d - 1
    return ((k3 * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
