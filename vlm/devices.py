"""Device choice and mixed precision, shared by every model and benchmark."""

from __future__ import annotations

import contextlib


def resolve_device(device: str | None = None) -> str:
    """``"cuda"`` when one is present and nothing else was asked for, else ``"cpu"``; validates the rest.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine; use 'cpu'")
    return device


def autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA, a no-op context elsewhere (CPU inference stays fp32 for exactness).

    Example:
        >>> with autocast("cpu"):
        ...     pass
    """
    import torch

    if enabled and str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
