"""Frozen image features for the probes, batched and cached on disk; raw pixels for the baseline.

The cache is one safetensors file per (encoder, images, preprocessing): the key hashes the encoder's name and
weights, the split's content identity and the chosen indices, the encoder's input size, normalisation and
interpolation, the crop choice and the feature kind. Changing any of them misses the cache; nothing else
does, so a rerun of a benchmark skips the slow extraction (20,000 Fashion-MNIST images at 224 px take
several minutes on two CPU cores, and a few seconds from the cache).

Example:
    >>> import numpy as np
    >>> from benchmarks.recognition.data import ArrayImages, RecognitionSplit
    >>> split = RecognitionSplit(ArrayImages(np.full((3, 4, 4), 255, np.uint8)), [0, 1, 1])
    >>> raw_pixel_features(split, size=2, grayscale=True).tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from benchmarks.recognition.data import RecognitionSplit

logger = logging.getLogger(__name__)

_CACHE_FORMAT = "v1"  # bump when what a cached file holds changes
FEATURE_KINDS = ("pooled", "spatial-mean")


def default_cache_dir() -> Path:
    """``vlm.pretrained.cache_dir()/recognition/features`` (``$FINECAP_CACHE`` moves it)."""
    from vlm.pretrained import cache_dir

    return cache_dir() / "recognition" / "features"


def encoder_fingerprint(encoder: Any) -> str:
    """A hash of the encoder's name, weights and preprocessing: what its features depend on.

    Hashing every weight (19 MB for EfficientNet-Lite0, ~30 ms) keeps two encoders that share a name but not
    their weights (a fine-tuned copy, two random test models) from sharing cache entries.
    """
    import torch

    h = hashlib.sha256(f"{_CACHE_FORMAT}|{getattr(encoder, 'name', type(encoder).__name__)}".encode())
    cfg = getattr(encoder, "data_config", {})
    h.update(json.dumps({k: cfg.get(k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct",
                                                  "crop_mode")}, sort_keys=True, default=str).encode())
    for key, tensor in sorted(encoder.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 1-d: 0-d tensors cannot be viewed as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _pool(encoder: Any, pixels: "torch.Tensor", kind: str) -> "torch.Tensor":
    if kind == "pooled":
        return encoder.features(pixels, kind="pooled")
    if kind == "spatial-mean":  # the last feature map averaged over positions, without the head's pre-logits
        fmap = encoder.features(pixels, kind="spatial")
        return fmap.mean(dim=(2, 3)) if fmap.ndim == 4 else fmap.mean(dim=1)
    raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")


def extract_features(encoder: Any, split: "RecognitionSplit", indices: Sequence[int] | None = None, *,
                     kind: str = "pooled", center_crop: bool = True, batch_size: int = 64,
                     cache_dir: str | os.PathLike | None | bool = None, progress: bool = True,
                     desc: str = "features") -> "torch.Tensor":
    """Frozen features ``(N, D)`` float32 on the CPU of ``split``'s images (or of ``indices`` of them, in order).

    Args:
        encoder: an ``ImageEncoder`` (``vlm.pretrained.load_image_encoder``) or any module with ``name``,
            ``preprocess(images, center_crop=)``, ``features(pixels, kind=)`` and parameters.
        split: the images.
        indices: which images (default: all).
        kind: ``"pooled"`` (the backbone's pooled pre-logits) or ``"spatial-mean"`` (the last feature map
            averaged over positions).
        center_crop: the encoder's centre crop (True) or a resize of the whole image (False, for small images).
        batch_size: images per forward pass.
        cache_dir: the cache folder; None for :func:`default_cache_dir`, False to neither read nor write.
        progress: show a tqdm bar.
        desc: the bar's label.

    Example:
        >>> import numpy as np, timm, torch
        >>> from vlm.pretrained import ImageEncoder
        >>> from benchmarks.recognition.data import ArrayImages, RecognitionSplit
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> enc = ImageEncoder(timm.create_model("test_efficientnet", num_classes=0), name="tiny", data_config={
        ...     "input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}).eval()
        >>> split = RecognitionSplit(ArrayImages(np.zeros((5, 8, 8), np.uint8)), [0] * 5)
        >>> extract_features(enc, split, [4, 0], cache_dir=False, progress=False).shape
        torch.Size([2, 256])
    """
    import torch
    from tqdm import tqdm

    from benchmarks.report import autocast

    idx = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        key = hashlib.sha256(
            f"{encoder_fingerprint(encoder)}|{split.identity}|{kind}|crop={center_crop}".encode() + idx.tobytes()
        ).hexdigest()[:24]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(encoder, "name", "encoder")))[-60:] or "encoder"
        path = folder / f"{safe}-{key}.safetensors"
        cached = _read_cache(path, len(idx))
        if cached is not None:
            logger.info("features of %d images read from %s", len(idx), path)
            return cached
    device = next(encoder.parameters()).device
    out = []
    with torch.inference_mode(), autocast(str(device)):
        for start in tqdm(range(0, len(idx), batch_size), desc=desc, unit="batch", disable=not progress):
            images = [split.images[int(i)] for i in idx[start:start + batch_size]]
            pixels = encoder.preprocess(images, center_crop=center_crop).to(device)
            out.append(_pool(encoder, pixels, kind).float().cpu())
    # clone(): leave inference mode's tensors behind, so that probes can train on these features.
    feats = (torch.cat(out) if out else torch.zeros(0, 0)).clone()
    if path is not None and len(idx):
        _write_cache(path, feats, {"encoder": str(getattr(encoder, "name", "")), "identity": split.identity,
                                   "kind": kind, "center_crop": str(center_crop), "n": str(len(idx))})
    return feats


def _read_cache(path: Path, n: int) -> "torch.Tensor | None":
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        feats = load_file(str(path))["features"]
    except (SafetensorError, KeyError, OSError) as err:  # a damaged file is recomputed, never trusted
        logger.warning("ignoring unreadable feature cache %s (%s)", path, err)
        return None
    return feats if feats.shape[0] == n else None


def _write_cache(path: Path, feats: "torch.Tensor", meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"features": feats.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache entry
    logger.info("cached features of %d images in %s", feats.shape[0], path)


def raw_pixel_features(split: "RecognitionSplit", indices: Sequence[int] | None = None, *, size: int = 32,
                       grayscale: bool = False) -> "torch.Tensor":
    """Pixels in [0, 1], resized to ``size x size`` (bilinear; untouched at the native size), flattened.

    The input of the raw-pixel baseline: ``(N, size * size)`` for grey, ``(N, 3 * size * size)`` for RGB.
    """
    import torch
    from PIL import Image

    idx = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
    rows = np.empty((len(idx), size * size * (1 if grayscale else 3)), dtype=np.float32)
    for r, i in enumerate(idx):
        img = split.images[int(i)].convert("L" if grayscale else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        rows[r] = np.asarray(img, dtype=np.float32).reshape(-1) / 255.0
    return torch.from_numpy(rows)
