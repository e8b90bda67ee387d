"""Image-text retrievers: one protocol, an open_clip-backed implementation, and a loader from a spec string.

A retriever embeds images and texts into one space where the cosine similarity says how well a text
describes an image. TrueMatch and the self-retrieval reward only need that, so they accept any object
that follows :class:`Retriever`.

Specs name a retriever on the command line, ``KIND:REST``:

* ``open_clip:ViT-B-32:openai`` -- an open_clip architecture and a pretrained tag (tags download weights:
  they work online, or offline once the weights are in the local cache; otherwise they fail at once with
  :class:`vlm.pretrained.HubOfflineError`);
* ``open_clip:ViT-B-32:/path/weights.pt`` -- the architecture with a local checkpoint;
* ``open_clip:hf-hub:org/repo`` / ``open_clip:local-dir:/path`` -- open_clip's own schemas;
* ``open_clip:/path/config.json:random`` -- an architecture from a JSON config file (open_clip's format),
  random weights (seeded): for tests and demos; ``random`` works with any architecture;
* ``finecap:lit`` -- the package's own offline retriever: EfficientNet-Lite0 + MiniLM towers with learned
  projections, contrastively trained on the built-in world (trained on first use, then cached);
  ``finecap:/path`` loads a folder written by ``python -m vlm train-retriever``.
* ``world-words:SPEC`` -- the retriever of ``SPEC`` reading each caption in the built-in world's own words
  (:class:`WorldWordsRetriever`): the judge of worlds whose annotators use synonyms (``wording: synonyms``).

Example (a tiny random-weight CLIP from :data:`TINY_OPEN_CLIP_CONFIG`, built in a fraction of a second):
    >>> import json, os, tempfile
    >>> cfg = os.path.join(tempfile.mkdtemp(), "finecap-doctest-clip.json")
    >>> with open(cfg, "w") as f:
    ...     json.dump(TINY_OPEN_CLIP_CONFIG, f)
    >>> retriever = load_retriever(f"open_clip:{cfg}:random")
    >>> emb = retriever.encode_texts(["a red cube", "two blue balls"])
    >>> tuple(emb.shape), round(float(emb.norm(dim=1)[0]), 4)
    ((2, 16), 1.0)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

from vlm.data import file_identity, read_json
from vlm.devices import autocast

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "OpenCLIPRetriever",
    "Retriever",
    "TINY_OPEN_CLIP_CONFIG",
    "WorldWordsRetriever",
    "image_cache_name",
    "load_retriever",
    "register_retriever",
]

#: A CLIP small enough to build and run in milliseconds on a CPU (about 1.6M parameters, most of them the
#: 49,408-token embedding table, which must match open_clip's bundled BPE). Random weights only: its
#: embeddings mean nothing, but every code path of a real CLIP runs through it.
TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@runtime_checkable
class Retriever(Protocol):
    """What a retriever must offer: a name and two encoders into one L2-normalised embedding space.

    Both encoders return float32 tensors on the CPU, one row per input, each row of unit L2 norm, so that
    ``texts @ images.T`` is the cosine similarity. Optional attributes that callers read with ``getattr``:

    * ``logit_scale`` (float): the temperature the retriever was trained with (CLIP: 100);
    * ``fingerprint`` (str): changes whenever the image embedding of a given file would change (weights,
      preprocessing); embedding caches key on ``name`` + ``fingerprint``.

    Example:
        >>> import torch
        >>> class Constant:
        ...     name = "constant"
        ...     def encode_images(self, images, *, batch_size=64):
        ...         return torch.ones(len(images), 2) / 2 ** 0.5
        ...     def encode_texts(self, texts, *, batch_size=256):
        ...         return torch.ones(len(texts), 2) / 2 ** 0.5
        >>> isinstance(Constant(), Retriever)
        True
    """

    name: str

    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
        """``(N, D)`` float32 CPU tensor of unit-norm image embeddings."""
        ...

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """``(N, D)`` float32 CPU tensor of unit-norm text embeddings."""
        ...


def _resolve_device(device: str | torch.device) -> torch.device:
    import torch

    from vlm.devices import resolve_device

    return torch.device(resolve_device(str(device)))


class OpenCLIPRetriever:
    """A CLIP-style model from open_clip as a :class:`Retriever`.

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``: ``"ViT-B-32"``, ``"RN50"`` ...),
            a path to a JSON model config in open_clip's format (registered under the file's stem), or one
            of open_clip's schemas ``"hf-hub:org/repo"`` / ``"local-dir:/path"`` (their own weights).
        pretrained: a pretrained tag of that architecture (``open_clip.list_pretrained_tags_by_model``),
            a checkpoint file, or ``None`` for random weights drawn with ``seed``. Tags need the weights:
            online they download; offline they load from the local cache or fail at once with
            :class:`vlm.pretrained.HubOfflineError` (no retries).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``. On CUDA the encoders run under bf16
            autocast; outputs are float32 on the CPU either way.
        seed: seed for random weights (``pretrained=None``), so that a random retriever is reproducible.

    Example:
        >>> import json, os, tempfile
        >>> from PIL import Image
        >>> cfg = os.path.join(tempfile.mkdtemp(), "finecap-doctest-clip.json")
        >>> with open(cfg, "w") as f:
        ...     json.dump(TINY_OPEN_CLIP_CONFIG, f)
        >>> r = OpenCLIPRetriever(cfg)
        >>> r.encode_images([Image.new("RGB", (40, 30), "red")]).shape
        torch.Size([1, 16])
        >>> r.name
        'open_clip:finecap-doctest-clip:random'
    """

    def __init__(self, model_name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        import open_clip  # build_open_clip imports vlm first (the torchvision fix)

        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        self.device = _resolve_device(device)
        model, preprocess, arch, identity = build_open_clip(model_name, pretrained, seed=seed, device=self.device)
        schema = model_name.split(":", 1)[0] if model_name.startswith(("hf-hub:", "local-dir:")) else None
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.name = f"open_clip:{model_name}" if schema is not None else \
            f"open_clip:{arch}:{'random' if pretrained is None else pretrained}"
        # Everything that decides what an image file embeds to: weights, architecture, preprocessing.
        self.fingerprint = hashlib.sha256(json.dumps({**identity, "preprocess": repr(preprocess)},
                                                     sort_keys=True).encode()).hexdigest()[:16]
        # The embedding width where the model states it; only the shape of an empty output needs it.
        self.dim: int | None = getattr(getattr(model, "visual", None), "output_dim", None)

    @property
    def logit_scale(self) -> float:
        """The learnt inverse temperature ``exp(logit_scale)`` (100 for trained CLIPs)."""
        return float(self.model.logit_scale.detach().exp())

    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 CPU embeddings of PIL images (any mode: converted to RGB)."""
        import torch

        return self._encode(
            [im if im.mode == "RGB" else im.convert("RGB") for im in images], batch_size,
            lambda batch: self.model.encode_image(torch.stack([self.preprocess(im) for im in batch]).to(self.device)))

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 CPU embeddings of texts (longer than the context: truncated)."""
        texts = list(texts)
        for k, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{k}] must be a str, got {type(t).__name__}")
        return self._encode(texts, batch_size,
                            lambda batch: self.model.encode_text(self.tokenizer(batch).to(self.device)))

    def _encode(self, items: list, batch_size: int, encode: Callable[[list], torch.Tensor]) -> torch.Tensor:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        with torch.inference_mode(), autocast(self.device):
            for start in range(0, len(items), batch_size):
                emb = encode(items[start:start + batch_size]).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        if not out:
            return torch.empty(0, self.dim or 0)
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"OpenCLIPRetriever({self.name!r}, device={str(self.device)!r})"


def _register_config_file(model_name: str) -> tuple[str, str | None]:
    """A ``.json`` path becomes an open_clip architecture named after the file; anything else passes through."""
    if not model_name.endswith(".json"):
        return model_name, None
    path = Path(model_name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config {path} not found")
    import open_clip

    cfg = read_json(path, "open_clip model config")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(f"{path}: an open_clip model config needs the keys {missing} (see open_clip's "
                         "model_configs/*.json)")
    existing = open_clip.get_model_config(path.stem)
    if existing is not None and existing != cfg:
        raise ValueError(f"{path}: open_clip already has a different architecture named {path.stem!r}; rename "
                         "the file")
    if existing is None:
        open_clip.add_model_config(path)
    return path.stem, hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


# open_clip's preprocessing fields that a pretrained tag may set (mean/std differ between CLIP families).
_PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def _resolve_pretrained(arch: str, pretrained: str) -> tuple[dict[str, Any], str]:
    """``create_model`` keyword arguments for a tag or a checkpoint file, without touching the network offline."""
    import open_clip

    path = Path(pretrained).expanduser()
    if path.is_file():
        return {"pretrained": str(path)}, file_identity(path)
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ValueError(f"{pretrained!r} is neither a pretrained tag of open_clip {arch!r} nor a file; tags: "
                         f"{', '.join(tags) or 'none'} (or pass pretrained=None for random weights)")
    # The tag knows its activation: OpenAI's weights need QuickGELU, which the plain 'ViT-B-32' config
    # lacks; open_clip only warns about the mismatch, and the model then quietly computes wrong embeddings.
    base = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    identity = f"tag:{arch}:{pretrained}"
    from vlm.pretrained import _endpoint_unreachable, _hub_offline_reason

    hf_hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hf_hub:
        reason = _hub_offline_reason()
        if reason is None:
            return {**base, "pretrained": pretrained}, identity
        cached = _hf_cached_weights(hf_hub)
        where = f"the Hugging Face Hub ({hf_hub.rstrip('/')})"
    elif url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)  # open_clip's own cache
        if target.is_file():
            cached = str(target)
            reason = "already downloaded"
        else:
            reason = _endpoint_unreachable(url)
            if reason is None:
                return {**base, "pretrained": pretrained}, identity
            cached = None
        where = url
    else:
        return {**base, "pretrained": pretrained}, identity
    if cached is None:
        from vlm.pretrained import HubOfflineError

        raise HubOfflineError(
            f"open_clip {arch}:{pretrained} needs weights from {where}, which cannot be reached ({reason}) and "
            "are not in the local cache. Run once where it is reachable, pass a checkpoint file as pretrained, "
            "or use random weights (pretrained=None; spec 'open_clip:ARCH:random') for a smoke test.")
    logger.info("open_clip %s:%s: loading cached weights %s (%s)", arch, pretrained, cached, reason)
    preprocess = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
    return {**base, "pretrained": cached, "force_preprocess_cfg": preprocess}, identity


def _hf_cached_weights(hf_hub: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    repo, filename = os.path.split(hf_hub)
    filename = filename or "open_clip_pytorch_model.bin"
    # open_clip prefers a .safetensors sibling when the repo has one.
    candidates = [filename[: -len(Path(filename).suffix)] + ".safetensors", filename] \
        if filename.endswith((".bin", ".pth", ".pt")) else [filename]
    if filename == "open_clip_pytorch_model.bin":
        candidates = ["open_clip_model.safetensors", *candidates]
    for name in candidates:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str):
            return hit
    return None


def _resolve_schema(arch: str) -> str:
    """``hf-hub:`` ids that cannot be fetched now become ``local-dir:`` of their cached snapshot, or fail fast."""
    if arch.startswith("local-dir:"):
        return arch
    from vlm.pretrained import HubOfflineError, _hub_offline_reason

    reason = _hub_offline_reason()
    if reason is None:
        return arch
    from huggingface_hub import try_to_load_from_cache

    repo = arch[len("hf-hub:"):]
    hit = try_to_load_from_cache(repo, "open_clip_config.json")
    if isinstance(hit, str):
        return f"local-dir:{Path(hit).parent}"
    raise HubOfflineError(f"open_clip {arch} needs the Hugging Face Hub, which cannot be used ({reason}), and "
                          f"{repo} is not in the local hub cache; use 'local-dir:/path' with a downloaded copy")


# ---------------------------------------------------------------------------------------------- specs


def parse_open_clip_spec(rest: str, *, what: str) -> tuple[str, str | None]:
    """``REST`` of an ``open_clip:REST`` spec -> ``(model name, pretrained tag or None)``.

    ``ARCH:TAG`` (``TAG`` ``random`` gives None: seeded random weights), ``CONFIG.json:TAG``, or
    ``hf-hub:org/repo`` / ``local-dir:/path`` (the model brings its weights: None). ``what`` names the spec in
    the error a missing tag raises.

    Example:
        >>> parse_open_clip_spec("ViT-B-32:openai", what="retriever")
        ('ViT-B-32', 'openai')
        >>> parse_open_clip_spec("hf-hub:org/repo", what="retriever")
        ('hf-hub:org/repo', None)
        >>> parse_open_clip_spec("ViT-B-32", what="retriever 'open_clip:ViT-B-32'")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: retriever 'open_clip:ViT-B-32' needs a pretrained tag: 'open_clip:ARCH:TAG' (e.g. ...
    """
    if rest.startswith(("hf-hub:", "local-dir:")):
        return rest, None
    model, sep, tag = rest.rpartition(":")
    if not sep or not model or not tag:
        raise ValueError(f"{what} needs a pretrained tag: 'open_clip:ARCH:TAG' (e.g. 'open_clip:ViT-B-32:openai'), "
                         "'open_clip:ARCH:/path/weights.pt', 'open_clip:hf-hub:org/repo', or "
                         "'open_clip:ARCH_OR_CONFIG.json:random' for random weights")
    return model, None if tag == "random" else tag


def build_open_clip(model_name: str, pretrained: str | None, *, seed: int = 0,
                    device: str | torch.device = "cpu") -> tuple[Any, Any, str, dict[str, Any]]:
    """Resolve and build an open_clip model offline-first: ``(model, eval preprocess, arch, identity)``.

    ``model_name`` is an open_clip architecture, a model config ``.json`` (registered under the file's stem), or
    ``hf-hub:`` / ``local-dir:`` (which bring their own weights: ``pretrained`` must be None). ``pretrained`` is
    a tag or a weights file (resolved from the local cache when offline, else :class:`vlm.pretrained.HubOfflineError`
    at once); None draws random weights from ``seed`` without touching the caller's RNG. ``identity`` (arch,
    config and weights identities) is what a fingerprint of the model's outputs must hash; the retriever and
    the captioner's image encoder (:func:`vlm.pretrained.load_image_encoder`) both build through here, so the
    same spec gives the same weights.
    """
    import torch

    import vlm  # noqa: F401  (the torchvision fix must be in place before open_clip imports torchvision)
    import open_clip

    arch, config_identity = _register_config_file(model_name)
    kwargs: dict[str, Any] = {}
    if arch.startswith(("hf-hub:", "local-dir:")):
        if pretrained:
            raise ValueError(f"model {model_name!r} brings its own weights; do not also pass pretrained="
                             f"{pretrained!r}")
        arch = _resolve_schema(arch)  # offline: the cached snapshot, or HubOfflineError at once
        weights_identity = arch
    elif arch not in open_clip.list_models():
        raise ValueError(f"{model_name!r} is not an open_clip architecture, a JSON config file or an "
                         f"'hf-hub:' / 'local-dir:' name; architectures: {', '.join(open_clip.list_models())}")
    elif pretrained is not None:
        kwargs, weights_identity = _resolve_pretrained(arch, pretrained)
    else:
        weights_identity = f"random(seed={seed})"
        logger.warning("open_clip %s: random weights (seed %d); its outputs mean nothing", arch, seed)
    with torch.random.fork_rng(devices=[]):  # random init must not disturb the caller's RNG stream
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device, **kwargs)
    model.eval()
    return model, preprocess, arch, {"arch": arch, "config": config_identity, "weights": weights_identity}


def _open_clip_from_spec(rest: str, *, device: str = "cpu") -> OpenCLIPRetriever:
    model, pretrained = parse_open_clip_spec(rest, what=f"retriever spec 'open_clip:{rest}'")
    return OpenCLIPRetriever(model, pretrained, device=device)


def image_cache_name(retriever: Retriever) -> str:
    """The name that keys a retriever's cached image embeddings: its ``image_cache_name`` where it has one (a
    wrapper that changes only how texts are read shares its inner retriever's), else its ``name``."""
    return getattr(retriever, "image_cache_name", None) or retriever.name


class WorldWordsRetriever:
    """A retriever that reads captions in the built-in world's own words.

    Each text goes through :func:`vlm.world.facts.canonical_wording` (every synonym of
    :data:`vlm.world.scene.SYNONYMS`, and "a pair of", replaced by the word it stands for) before ``inner`` encodes
    it; images go to ``inner`` unchanged, and their cached embeddings are ``inner``'s (:func:`image_cache_name`).
    In a world whose annotators use synonyms, such a judge scores what a caption states as ``inner`` scores the
    fixed wording, so a captioner is not rewarded or penalised for which synonym it writes. Spec
    ``world-words:SPEC``, e.g. ``world-words:finecap:lit-v4``. Other attributes are ``inner``'s.

    Example:
        >>> class Echo:
        ...     name = "echo"
        ...     def encode_texts(self, texts, *, batch_size=256):
        ...         return list(texts)
        >>> WorldWordsRetriever(Echo()).encode_texts(["A tiny crimson disc.", "A pair of ladies."])
        ['A small red circle.', 'Two women.']
    """

    def __init__(self, inner: Retriever) -> None:
        self.inner = inner
        self.name = f"world-words:{inner.name}"
        self.image_cache_name = image_cache_name(inner)

    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
        return self.inner.encode_images(images, batch_size=batch_size)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        from vlm.world.facts import canonical_wording

        return self.inner.encode_texts([canonical_wording(t) for t in texts], batch_size=batch_size)

    def __getattr__(self, attr: str) -> Any:  # logit_scale, fingerprint, config, ... of the wrapped retriever
        if attr == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"WorldWordsRetriever({self.inner!r})"


def _world_words_from_spec(rest: str, *, device: str = "cpu") -> WorldWordsRetriever:
    return WorldWordsRetriever(load_retriever(rest, device=device))


#: ``KIND`` of a spec ``KIND:REST`` -> factory ``(rest, *, device) -> Retriever``.
def _finecap_from_spec(rest: str, *, device: str = "cpu") -> Retriever:
    # The package's own offline retriever (LiT on the built-in world); imported on use: it needs torch.
    from vlm.models.lit import load_lit_retriever

    return load_lit_retriever(rest, device=device)


_FACTORIES: dict[str, Callable[..., Retriever]] = {"open_clip": _open_clip_from_spec, "finecap": _finecap_from_spec,
                                                   "world-words": _world_words_from_spec}


def register_retriever(kind: str, factory: Callable[..., Retriever]) -> None:
    """Make ``load_retriever("KIND:...")`` call ``factory(rest, device=...)``; replaces an existing kind.

    Example:
        >>> register_retriever("demo", lambda rest, device="cpu": rest)
        >>> load_retriever("demo:anything")
        'anything'
        >>> del _FACTORIES["demo"]
    """
    if not kind or ":" in kind:
        raise ValueError(f"retriever kind must be a non-empty name without ':', got {kind!r}")
    _FACTORIES[kind] = factory


def load_retriever(spec: str, *, device: str = "cpu") -> Retriever:
    """A retriever from a spec ``KIND:REST`` (see the module docstring for the open_clip forms).

    Example:
        >>> load_retriever("nope:x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown retriever spec 'nope:x': start it with one of open_clip:, finecap:, world-words: (e.g. ...)
    """
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in _FACTORIES or not rest:
        kinds = ", ".join(f"{k}:" for k in _FACTORIES)
        raise ValueError(f"unknown retriever spec {spec!r}: start it with one of {kinds} (e.g. "
                         "'open_clip:ViT-B-32:openai')")
    return _FACTORIES[kind](rest, device=device)
