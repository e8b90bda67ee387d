"""Frozen-encoder features, computed once and cached on disk for every later epoch and run.

The cache key covers everything that changes the numbers: the encoder's name, the feature kind, the
preprocessing (centre crop or not, input size) and the identity of every image file (path, size, mtime).
Files are safetensors written atomically under ``$FINECAP_CACHE/features/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

logger = logging.getLogger(__name__)


def feature_cache_key(encoder_name: str, kind: str, preprocessing: dict, files: Sequence[str | os.PathLike]) -> str:
    """A stable hex key for (encoder, feature kind, preprocessing, image files).

    Example:
        >>> k1 = feature_cache_key("efficientnet_lite0", "pooled", {"center_crop": False}, [])
        >>> k1 == feature_cache_key("efficientnet_lite0", "spatial", {"center_crop": False}, [])
        False
    """
    h = hashlib.sha256()
    h.update(json.dumps({"encoder": encoder_name, "kind": kind, "pre": preprocessing}, sort_keys=True).encode())
    from vlm.data import file_identity

    for f in files:
        h.update((file_identity(f) + "\n").encode())
    return h.hexdigest()[:24]


def cached_features(key: str, n: int, compute: Callable[[Sequence[int]], torch.Tensor], *,
                    batch_size: int = 64, cache_dir: str | Path | None = None, progress: bool = True,
                    desc: str = "features", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Features of items ``0..n-1``: read from the cache, or computed in batches by ``compute(indices)``.

    ``dtype`` is what is kept in memory and on disk (``torch.float16`` halves large token or feature-map
    tables; put it in ``key`` too).

    Example:
        >>> import tempfile
        >>> f = cached_features("demo", 3, lambda idx: torch.tensor(idx, dtype=torch.float32)[:, None],
        ...                     cache_dir=tempfile.mkdtemp(), progress=False)
        >>> f[:, 0].tolist()
        [0.0, 1.0, 2.0]
    """
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    if cache_dir is None:
        from vlm.pretrained import cache_dir as default_cache

        cache_dir = default_cache() / "features"
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        feats = load_file(str(path))["features"]
        if feats.shape[0] == n:
            logger.info("features from cache %s", path)
            return feats.to(dtype)
        logger.warning("feature cache %s has %d rows, expected %d: recomputing", path, feats.shape[0], n)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress):
        with torch.inference_mode():
            chunks.append(compute(list(range(start, min(start + batch_size, n)))).to(dtype).cpu())
    feats = torch.cat(chunks) if chunks else torch.empty(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file({"features": feats.contiguous()}, str(tmp))
    os.chmod(tmp, 0o644)  # safetensors creates 0600 files; a shared cache must be readable by others
    os.replace(tmp, path)
    return feats
