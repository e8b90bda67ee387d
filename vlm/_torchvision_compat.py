"""Make ``import torchvision`` work next to a CPU-only torch whose torchvision wheel is a CUDA build.

Why: PyPI's torchvision 0.28.0 is a CUDA build. Its compiled ``_C.so`` cannot be loaded by a CPU torch, and
``torchvision._meta_registrations`` then fails at import with "operator torchvision::nms does not exist"
(pytorch/vision#9085). timm, open_clip and several transformers image classes import torchvision, so the
whole stack breaks.

The fix runs *before* torchvision's own code: a meta-path finder sees the first ``import torchvision``,
tries ``torch.ops.load_library`` on its ``_C`` extension and, only if that fails, defines the two ops that
torchvision registers fake kernels for at import (``torchvision::nms`` and ``torchvision::qnms``) with
``torch.library`` and a plain-torch NMS. Where the extension loads natively nothing is defined. Loading
``torch`` is deferred to that first torchvision import, so ``import vlm`` stays fast.

Known limits of the fallback: torchvision's other compiled ops (``roi_align``, ``deform_conv2d``...) stay
unavailable and ``torchvision.io`` cannot decode images (finecap loads images with Pillow).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

#: "native" (extension loaded), "fallback" (ops defined here), or None (torchvision not imported yet).
STATE: str | None = None
_LIBRARY = None  # keeps the torch.library registration alive


def nms_reference(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression in plain torch, with torchvision's semantics.

    Boxes are ``(N, 4)`` as ``(x1, y1, x2, y2)``; returns the kept indices sorted by decreasing score.

    Example:
        >>> import torch
        >>> b = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
        >>> nms_reference(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
        [0, 2]
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _extension_path(package_dir: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = package_dir / f"_C{suffix}"
        if candidate.exists():
            return candidate
    return None


def _has_op(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_ops(package_dir: Path) -> str:
    """Load torchvision's compiled ops, or define the fallback ones. Returns "native" or "fallback"."""
    global STATE, _LIBRARY
    import torch

    ext = _extension_path(package_dir)
    if ext is not None:
        try:
            torch.ops.load_library(str(ext))
            STATE = "native"
            return STATE
        except (OSError, RuntimeError) as err:  # the CUDA build next to a CPU torch
            logger.debug("torchvision extension %s did not load (%s); defining fallback ops", ext, err)
    if not _has_op("nms"):
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.impl(op, nms_reference, "CompositeExplicitAutograd")
        _LIBRARY = lib
    STATE = "fallback"
    return STATE


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_ops` on the first ``import torchvision``, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        uninstall()
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.origin:
            ensure_ops(Path(spec.origin).parent)
        return spec


_FINDER = _TorchvisionFinder()


def install() -> None:
    """Arrange for the fix to run before torchvision is first imported (idempotent)."""
    if "torchvision" in sys.modules or _FINDER in sys.meta_path:
        return
    sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
