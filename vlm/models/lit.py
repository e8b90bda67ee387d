"""LiT: the package's offline image-text retriever (locked-image tuning on the built-in world).

No CLIP weights can be installed offline, so the package trains its own retriever from the two pretrained
towers it does have: EfficientNet-Lite0 (ImageNet-1k, locked) for images and all-MiniLM-L6-v2 for text.
Only small heads into a shared space (and, optionally, MiniLM's top layers) are learnt, contrastively,
on the world's images and captions (:func:`vlm.train.train_lit`), as in LiT (Zhai et al., 2022): a locked
image tower keeps what ImageNet taught it and the text side learns to read it.

::

    image (PIL) -> preprocess (no centre crop, image_size px) -> EfficientNet-Lite0, frozen
        image_pool="mean":      -> global average pool (B, 1280) -> standardise (training-set mean/std)
        image_pool="attention": -> feature map (B, 1280, 7, 7) in fp16 -> standardise per channel
                                -> (B, 49, 1280) -> Linear -> (B, 49, W) + position embeddings
                                -> image_head_layers transformer layers -> attention pool (a learnt query) (B, W)
        image_pool="conv":      -> feature map at image_level, e.g. level 3 (B, 112, 14, 14) in fp16 -> standardise
                                -> conv 3x3 -> conv 3x3 stride 2 (B, W/2, 7, 7) -> flatten -> Linear (B, W)
                   (image_conv_pool="mean": mean and max over the 7x7 cells -> Linear; "both": the sum)
                -> image_proj -> (B, D) -> L2 norm
    text  -> MiniLM (frozen, or top k layers trained)
        text_pool="mean":       -> mean pool, L2 norm (B, 384)
        text_pool="attention":  -> token states (B, T<=text_max_tokens, 384) in fp16 -> Linear -> (B, T, W)
                                -> text_head_layers transformer layers -> attention pool (a learnt query) (B, W)
          -> text_proj -> (B, D) -> L2 norm
    logits = min(exp(log_scale), max_logit_scale) * text @ image.T

Why the attention options: pooling throws away what the world's hard cases hinge on. A mean of MiniLM's token
states barely tells "a red circle left of a blue square" from "a blue circle left of a red square", and a
global average of EfficientNet's map loses where things are and how many there are (locked, mean-pooled:
exact dense captions reach R@1 0.60 within TrueMatch bags of 5). The token states and the tower's maps still
hold that information, and both towers stay locked, so their outputs are computed once and cached: only the
small heads train. On the image side it is the mid-level maps that hold it: ImageNet's top layers keep little
of how many shapes a world image has or how big they are (see ``LiTConfig.image_level``).

It follows :class:`vlm.retrieval.Retriever` (``name``, ``encode_images``, ``encode_texts``; float32, CPU, unit
norm), and :meth:`LiTRetriever.save_pretrained` writes only what was trained (config JSON + safetensors): the
frozen towers always come from their packages.

Example (random projections; the real towers load in ~2 s):
    >>> from PIL import Image
    >>> from vlm.models.lit import LiTConfig, LiTRetriever
    >>> model = LiTRetriever(LiTConfig(embed_dim=32, image_size=64))
    >>> model.encode_images([Image.new("RGB", (64, 64), "red")]).shape
    torch.Size([1, 32])
    >>> round(float(model.encode_texts(["a red circle"]).norm()), 4)
    1.0
    >>> heads = LiTRetriever(LiTConfig(embed_dim=32, image_size=64, text_pool="attention", image_pool="attention"))
    >>> heads.encode_texts(["a red circle left of a blue square"]).shape
    torch.Size([1, 32])
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from vlm.data.io import read_json
from vlm.pretrained import ImageEncoder

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from vlm.pretrained import TextEncoder

logger = logging.getLogger(__name__)

__all__ = ["AttentionPoolHead", "LiTConfig", "LiTImageTower", "LiTRetriever", "PACKAGE_RETRIEVERS",
           "load_lit_retriever"]

#: ``format`` written into ``config.json``; bump when the saved layout changes.
LIT_FORMAT = "finecap-lit-v1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LiTConfig:
    """The architecture of a :class:`LiTRetriever`. Saved as ``config.json`` next to its weights.

    Example:
        >>> LiTConfig(embed_dim=128).image_proj
        'mlp'
        >>> LiTConfig(image_proj="conv")
        Traceback (most recent call last):
        ...
        ValueError: LiTConfig.image_proj must be 'linear' or 'mlp', got 'conv'
    """

    image_encoder: str = "efficientnet_lite0"
    """The locked image tower: a :func:`vlm.pretrained.load_image_encoder` name (pooled features are used)."""
    text_encoder: str = "all-MiniLM-L6-v2"
    """The text tower: a :func:`vlm.pretrained.load_text_encoder` name."""
    image_size: int = 224
    """Side in pixels the whole image is resized to (no centre crop: objects near the border count).
    Measured on the world (RD100 R@1, dense / human captions): 224 px 0.96 / 0.74, 160 px 0.94 / 0.70,
    128 px 0.89 / 0.67; 160 px takes 0.4x of 224 px's encoder time, 128 px 0.2x."""
    embed_dim: int = 256
    """Width D of the shared embedding space."""
    image_proj: str = "mlp"
    """``"linear"`` or ``"mlp"`` (Linear -> GELU -> Linear) from the image features to D."""
    text_proj: str = "mlp"
    """``"linear"`` or ``"mlp"`` from the pooled text embedding to D."""
    proj_hidden: int = 512
    """Hidden width of the ``"mlp"`` projections (1024 measured no better on the world)."""
    proj_dropout: float = 0.2
    """Dropout inside the ``"mlp"`` projections, training only: a few thousand images overfit otherwise."""
    unfreeze_text_layers: int = 0
    """How many of MiniLM's top transformer layers are trained (0: the text tower is locked too, and its
    pooled embeddings can be computed once per caption, which makes training take seconds on a CPU)."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log inverse temperature (CLIP's ``log(1/0.07)``)."""
    max_logit_scale: float = 100.0
    """Upper bound of the inverse temperature ``exp(log_scale)`` (CLIP's 100)."""
    text_pool: str = "mean"
    """How a caption becomes one vector before ``text_proj``. ``"mean"``: MiniLM's own sentence embedding (the
    mean of its token states, L2-normalised; 384 numbers per caption). ``"attention"``: a trained head over
    MiniLM's last token states (padded to ``text_max_tokens``, cached in fp16 when the tower is locked): a
    Linear to ``head_width``, ``text_head_layers`` transformer layers and attention pooling by a learnt query.
    Word order survives in the contextual token states, and the trained layers can bind attributes to
    objects ("red circle and blue square" vs "blue circle and red square"), which the mean blurs."""
    image_pool: str = "mean"
    """How an image becomes one vector before ``image_proj``. ``"mean"``: the tower's global average pool
    (1280 numbers). ``"attention"``: a trained head over a feature map of the tower (``image_level``; the
    last one is ``(1280, 7, 7)`` at 224 px, ``ceil(image_size / 32)`` a side; cached in fp16): per-channel
    standardisation, a Linear to ``head_width``, learnt position embeddings (one per map cell),
    ``image_head_layers`` transformer layers and attention pooling by a learnt query. ``"conv"``: a trained
    convolutional head over that map (:class:`ConvPoolHead`: two 3x3 convolutions, the second with stride 2,
    then the whole downsampled grid flattened into a Linear to ``head_width``), cheap enough for the 14x14
    mid-level maps. Where things are and how many survive; the average loses both."""
    head_width: int = 256
    """Width W of the attention heads (both pools): the tower outputs are projected to it first, so a layer
    costs about ``8 W^2`` multiply-adds per token (feed-forward ``2 W``; a CPU budget, not a tuned value)."""
    head_heads: int = 4
    """Attention heads in the heads' transformer layers and in the attention pooling; divides ``head_width``."""
    text_head_layers: int = 2
    """Transformer layers of the ``"attention"`` text head (0: attention pooling alone)."""
    image_head_layers: int = 1
    """Transformer layers of the ``"attention"`` image head (0: attention pooling alone)."""
    head_dropout: float = 0.1
    """Dropout inside the heads' transformer layers, training only."""
    image_level: int = -1
    """Which of the image tower's feature maps the ``"conv"`` or ``"attention"`` image head reads: -1 the last
    one (``forward_features``: ``(1280, 7, 7)`` for EfficientNet-Lite0 at 224 px), ``k >= 0`` the tower's
    ``k``-th feature level (timm's ``feature_info``; EfficientNet-Lite0: 0 ``(16, 112, 112)``, 1 ``(24, 56, 56)``,
    2 ``(40, 28, 28)``, 3 ``(112, 14, 14)``, 4 ``(320, 7, 7)``). Only the blocks up to that level run; why
    mid-level maps: :meth:`vlm.pretrained.ImageEncoder.feature_level`."""
    image_conv_pool: str = "flatten"
    """How the ``"conv"`` image head turns its downsampled grid into one vector (:data:`CONV_POOLS`).
    ``"flatten"``: the whole grid into one Linear, so where each thing is survives, but every position learns
    its own weights (on the world's 30k training images it still fits its training bags far better than
    held-out ones). ``"mean"``: the mean and the max over the grid cells (translation-invariant: a star
    counts the same anywhere; positions are lost). ``"both"``: the sum of the two paths."""
    text_max_tokens: int = 80
    """Token states kept per caption by the ``"attention"`` text head (MiniLM reads the whole caption; the
    states of later tokens are dropped). The world's dense captions run to 67 tokens (truematch; 99th
    percentile 66, median 30) and end with the relation sentence, so 48 would cut exactly the hard part;
    80 costs 21.6k captions x 80 x 384 x 2 bytes = 1.3 GB of fp16 cache (in memory during training)."""

    def __post_init__(self) -> None:
        for name in ("image_proj", "text_proj"):
            if getattr(self, name) not in ("linear", "mlp"):
                raise ValueError(f"LiTConfig.{name} must be 'linear' or 'mlp', got {getattr(self, name)!r}")
        if self.text_pool not in ("mean", "attention"):
            raise ValueError(f"LiTConfig.text_pool must be 'mean' or 'attention', got {self.text_pool!r}")
        if self.image_pool not in IMAGE_POOLS:
            raise ValueError(f"LiTConfig.image_pool must be one of {IMAGE_POOLS}, got {self.image_pool!r}")
        if not isinstance(self.image_level, int) or isinstance(self.image_level, bool) or self.image_level < -1:
            raise ValueError(f"LiTConfig.image_level must be -1 (the last map) or a feature level >= 0, "
                             f"got {self.image_level!r}")
        if self.image_conv_pool not in CONV_POOLS:
            raise ValueError(f"LiTConfig.image_conv_pool must be one of {CONV_POOLS}, got {self.image_conv_pool!r}")
        if self.image_level != -1 and self.image_pool == "mean":
            raise ValueError("LiTConfig.image_level selects a feature map for a trained image head: set "
                             "image_pool='conv' or 'attention' with it (the 'mean' pool reads the pooled features)")
        for name in ("image_size", "embed_dim", "proj_hidden", "head_width", "head_heads", "text_max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LiTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("text_head_layers", "image_head_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LiTConfig.{name} must be an integer >= 0, got {value!r}")
        if self.head_width % self.head_heads:
            raise ValueError(f"LiTConfig.head_width ({self.head_width}) must be a multiple of head_heads "
                             f"({self.head_heads})")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"LiTConfig.head_dropout must be in [0, 1), got {self.head_dropout}")
        if self.image_size < 32:
            raise ValueError(f"LiTConfig.image_size must be >= 32 (EfficientNet downsamples 32x), "
                             f"got {self.image_size}")
        if not 0.0 <= self.proj_dropout < 1.0:
            raise ValueError(f"LiTConfig.proj_dropout must be in [0, 1), got {self.proj_dropout}")
        if not isinstance(self.unfreeze_text_layers, int) or self.unfreeze_text_layers < 0:
            raise ValueError(f"LiTConfig.unfreeze_text_layers must be an integer >= 0, "
                             f"got {self.unfreeze_text_layers!r}")
        if self.max_logit_scale <= 0 or not math.isfinite(self.init_logit_scale):
            raise ValueError("LiTConfig: max_logit_scale must be > 0 and init_logit_scale finite")
        if math.exp(self.init_logit_scale) > self.max_logit_scale:
            raise ValueError(f"LiTConfig.init_logit_scale exp({self.init_logit_scale}) exceeds max_logit_scale "
                             f"{self.max_logit_scale}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What :attr:`LiTRetriever.fingerprint` hashes: :meth:`to_dict` without the pooling fields that were
        added later (:data:`POOLING_FIELDS`) while they hold their defaults, so that models saved before them
        keep their fingerprints (and every embedding cache keyed on one stays valid).

        Example:
            >>> sorted(set(LiTConfig().to_dict()) - set(LiTConfig().identity())) == sorted(POOLING_FIELDS)
            True
            >>> "text_pool" in LiTConfig(text_pool="attention").identity()
            True
        """
        defaults = LiTConfig.__dataclass_fields__
        return {k: v for k, v in self.to_dict().items()
                if not (k in POOLING_FIELDS and v == defaults[k].default)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "LiTConfig") -> LiTConfig:
        """Build from a dict; unknown keys raise ``ValueError`` naming ``source``.

        Example:
            >>> LiTConfig.from_dict({"embed_dim": 64}).embed_dim
            64
        """
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a mapping of LiTConfig fields, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{source}: unknown LiTConfig fields {sorted(unknown)}")
        return cls(**d)


#: The package's own retrievers: spec ``finecap:<key>`` -> cache folder name (recipes:
#: :func:`vlm.train.contrastive.retriever_recipe`). ``lit`` is the default.
PACKAGE_RETRIEVERS = {"lit": "lit-world-v1", "lit-v2": "lit-world-v2", "lit-v3": "lit-world-v3",
                      "lit-v4": "lit-world-v4"}

#: LiTConfig fields added with the attention pools; :meth:`LiTConfig.identity` leaves them out at their defaults.
POOLING_FIELDS = ("text_pool", "image_pool", "head_width", "head_heads", "text_head_layers", "image_head_layers",
                  "head_dropout", "text_max_tokens", "image_level", "image_conv_pool")
IMAGE_POOLS = ("mean", "attention", "conv")
"""The ways :class:`LiTConfig` turns the image tower's output into one vector (see ``LiTConfig.image_pool``)."""
CONV_POOLS = ("flatten", "mean", "both")
"""How the ``"conv"`` image head pools its grid (see ``LiTConfig.image_conv_pool``)."""


def _projection(kind: str, d_in: int, d_out: int, hidden: int, dropout: float) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class AttentionPoolHead(nn.Module):
    """Tokens ``(B, N, C)`` -> one vector ``(B, W)``: a Linear to width W, optional learnt position embeddings,
    pre-norm transformer layers, and attention pooling by one learnt query (then a LayerNorm).

    The trainable part of the ``"attention"`` pools of :class:`LiTConfig`; the tokens are a locked tower's
    outputs (MiniLM's token states, EfficientNet's map cells). ``mask`` ``(B, N)`` marks real tokens (None:
    all real); padded tokens are neither attended to nor pooled.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> head = AttentionPoolHead(6, width=8, heads=2, layers=1, dropout=0.0).eval()
        >>> x = torch.randn(2, 3, 6)
        >>> head(x).shape
        torch.Size([2, 8])
        >>> mask = torch.tensor([[True, True, False], [True, True, True]])
        >>> bool(torch.allclose(head(x, mask)[0], head(x[:1, :2], mask[:1, :2])[0], atol=1e-5))  # padding ignored
        True
    """

    def __init__(self, d_in: int, *, width: int, heads: int, layers: int, dropout: float,
                 num_positions: int = 0) -> None:
        super().__init__()
        self.proj_in = nn.Linear(d_in, width)
        # One embedding per token position (image map cells: a 2-D grid flattened row by row). Text needs none:
        # MiniLM's states already carry their positions.
        self.pos = nn.Parameter(0.02 * torch.randn(num_positions, width)) if num_positions else None
        self.blocks = None
        if layers:
            layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.query = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj_in(tokens)  # (B, N, W)
        if self.pos is not None:
            if x.shape[1] != self.pos.shape[0]:
                raise ValueError(f"AttentionPoolHead: {x.shape[1]} tokens, but the head has {self.pos.shape[0]} "
                                 "position embeddings (was the image size changed?)")
            x = x + self.pos
        pad = None if mask is None else ~mask  # (B, N): True where padding
        if self.blocks is not None:
            x = self.blocks(x, src_key_padding_mask=pad)
        q = self.query.expand(len(x), -1, -1)  # (B, 1, W)
        pooled, _ = self.attn(q, x, x, key_padding_mask=pad, need_weights=False)  # (B, 1, W)
        return self.norm(pooled[:, 0])  # (B, W)


class ConvPoolHead(nn.Module):
    """A feature map ``(B, C, H, W)`` -> one vector ``(B, W)``: the ``"conv"`` image pool of :class:`LiTConfig`.

    ``Conv3x3(C -> W/2)`` -> GELU -> ``Conv3x3(W/2 -> W/2, stride 2)`` -> GELU, then the
    ``(W/2, ceil(H/2), ceil(W/2))`` grid is pooled (``pool``, :data:`CONV_POOLS`):

    - ``"flatten"``: flatten -> Dropout -> Linear to W -> LayerNorm. Keeps where each thing is
      (left/right/above); the convolutions count and measure locally.
    - ``"mean"``: the mean and the max over the cells (2 x W/2) -> Linear to W -> LayerNorm: the same for a
      thing anywhere in the image, so what is learnt at one position holds at all of them.
    - ``"both"``: the sum of the two.

    Example:
        >>> import torch
        >>> head = ConvPoolHead(6, width=8, grid=(5, 5), dropout=0.0)
        >>> head(torch.randn(2, 6, 5, 5)).shape
        torch.Size([2, 8])
        >>> inv = ConvPoolHead(6, width=8, grid=(12, 12), dropout=0.0, pool="mean").eval()
        >>> x = torch.zeros(1, 6, 12, 12)
        >>> x[0, :, 4, 4] = 1.0  # one "thing" ...
        >>> y = torch.roll(x, shifts=(4, 4), dims=(2, 3))  # ... moved by two downsampled cells
        >>> bool(torch.allclose(inv(x), inv(y), atol=1e-6))  # the same vector (away from the zero padding)
        True
    """

    def __init__(self, d_in: int, *, width: int, grid: tuple[int, int], dropout: float,
                 pool: str = "flatten") -> None:
        super().__init__()
        if pool not in CONV_POOLS:
            raise ValueError(f"ConvPoolHead: pool must be one of {CONV_POOLS}, got {pool!r}")
        half = max(width // 2, 1)
        self.grid = tuple(grid)
        self.convs = nn.Sequential(nn.Conv2d(d_in, half, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(half, half, 3, stride=2, padding=1), nn.GELU())
        cells = ((grid[0] + 1) // 2) * ((grid[1] + 1) // 2)
        # The flatten path keeps its module name ("out") so that heads saved before ``pool`` load unchanged.
        self.out = (nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(half * cells, width),
                                  nn.LayerNorm(width)) if pool in ("flatten", "both") else None)
        self.glob = (nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * half, width), nn.LayerNorm(width))
                     if pool in ("mean", "both") else None)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.pool(self.cells(maps))

    def cells(self, maps: torch.Tensor) -> torch.Tensor:
        """The grid the pools read: ``(B, C, H, W)`` -> ``(B, W/2, ceil(H/2), ceil(W/2))`` after both convs."""
        if tuple(maps.shape[2:]) != self.grid:
            raise ValueError(f"ConvPoolHead: a {tuple(maps.shape[2:])} map, but the head was built for {self.grid} "
                             "(was the image size changed?)")
        return self.convs(maps)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """The grid of :meth:`cells` -> one vector ``(B, W)``."""
        y = self.out(h) if self.out is not None else 0.0
        if self.glob is not None:
            cells = h.flatten(2)  # (B, W/2, h'*w')
            y = y + self.glob(torch.cat([cells.mean(-1), cells.amax(-1)], dim=-1))
        return y


class LiTRetriever(nn.Module):
    """A locked EfficientNet-Lite0 image tower and a MiniLM text tower with learnt projections into one space.

    Args:
        config: the architecture (default :class:`LiTConfig`).
        image_encoder: an already loaded :class:`vlm.pretrained.ImageEncoder` to use instead of loading
            ``config.image_encoder`` (shared read-only; the model wraps it with its own ``image_size``).
        text_encoder: likewise, a :class:`vlm.pretrained.TextEncoder` for ``config.text_encoder`` (copied
            when ``config.unfreeze_text_layers > 0``, so that training never changes the caller's).
        name: what :attr:`name` reports (:func:`from_pretrained` sets ``finecap:lit:<folder>``).

    The model starts in eval mode (embeddings are deterministic; a trainer calls ``train()``), and the image
    tower stays in eval mode and frozen even then: its BatchNorm statistics never move. ``image_mean``/``image_std``
    (buffers, saved with the weights) standardise the 1280 channels of the image features (pooled, or each
    map cell with the ``"attention"`` and ``"conv"`` pools); the trainer sets them from the training set.

    What the locked towers give (:meth:`image_features`, :meth:`text_features`) is what the trainer caches and
    what the trained part reads (:meth:`embed_image_features`, :meth:`embed_text_features`); with the
    ``"attention"`` pools those are fp16 token tensors, so a cached table and a fresh encoding give the same
    embeddings.

    Example:
        >>> import torch
        >>> model = LiTRetriever(LiTConfig(embed_dim=16, image_proj="linear", text_proj="linear"))
        >>> model.embed_image_features(torch.zeros(2, 1280)).shape
        torch.Size([2, 16])
        >>> sorted(model.trainable_state_dict())[:3]
        ['image_mean', 'image_proj.bias', 'image_proj.weight']
    """

    def __init__(self, config: LiTConfig | None = None, *, image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None, name: str = "finecap:lit") -> None:
        super().__init__()
        from vlm.pretrained import load_image_encoder, load_text_encoder

        self.config = config = config or LiTConfig()
        self.name = name
        if image_encoder is None:
            image_encoder = load_image_encoder(config.image_encoder)
        if text_encoder is None:
            text_encoder = load_text_encoder(config.text_encoder)
        elif config.unfreeze_text_layers:
            # Training would change the caller's encoder (shared, perhaps, with other models): own a copy.
            text_encoder = copy.deepcopy(text_encoder)
        # A wrapper of our own around the (shared, read-only) backbone: the input size is ours to set.
        # The whole image is squashed to image_size x image_size (see LiTConfig.image_size).
        data_config = {**image_encoder.data_config, "input_size": (3, config.image_size, config.image_size)}
        image_encoder = type(image_encoder)(image_encoder.model, data_config=data_config,
                                            class_names=image_encoder.class_names, name=image_encoder.name)
        self.image_encoder = image_encoder.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        layers = self._text_layers()
        if config.unfreeze_text_layers > len(layers):
            raise ValueError(f"LiTConfig.unfreeze_text_layers={config.unfreeze_text_layers} but "
                             f"{config.text_encoder} has only {len(layers)} layers")
        for layer in layers[len(layers) - config.unfreeze_text_layers:]:
            layer.requires_grad_(True)
        d_img, d_txt = self.image_encoder.num_features, self.text_encoder.dim
        head = dict(width=config.head_width, heads=config.head_heads, dropout=config.head_dropout)
        if config.image_pool == "attention":
            d_img, self.image_grid = self._probe_feature_map()
            self.image_pooler = AttentionPoolHead(d_img, layers=config.image_head_layers,
                                                  num_positions=self.image_grid[0] * self.image_grid[1], **head)
        elif config.image_pool == "conv":
            d_img, self.image_grid = self._probe_feature_map()
            self.image_pooler = ConvPoolHead(d_img, width=config.head_width, grid=self.image_grid,
                                             dropout=config.head_dropout, pool=config.image_conv_pool)
        if config.text_pool == "attention":
            self.text_pooler = AttentionPoolHead(d_txt, layers=config.text_head_layers, **head)
        self.register_buffer("image_mean", torch.zeros(d_img))  # (1280,)
        self.register_buffer("image_std", torch.ones(d_img))  # (1280,)
        w = config.head_width
        self.image_proj = _projection(config.image_proj, d_img if config.image_pool == "mean" else w,
                                      config.embed_dim, config.proj_hidden, config.proj_dropout)
        self.text_proj = _projection(config.text_proj, w if config.text_pool == "attention" else d_txt,
                                     config.embed_dim, config.proj_hidden, config.proj_dropout)
        self.log_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.eval()  # a retriever is built to embed: deterministic until a trainer calls train()

    # ---- pieces ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _probe_feature_map(self) -> tuple[int, tuple[int, int]]:
        """Channels and ``(H, W)`` of the feature map the image head reads at ``image_size`` (one blank image)."""
        s = self.config.image_size
        fmap = self._feature_map(torch.zeros(1, 3, s, s))
        if fmap.ndim != 4:
            raise ValueError(f"LiTConfig.image_pool={self.config.image_pool!r} needs a convolutional feature map "
                             f"(B, C, H, W); {self.config.image_encoder} gives shape {tuple(fmap.shape)}")
        return int(fmap.shape[1]), (int(fmap.shape[2]), int(fmap.shape[3]))

    def _feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image tower's map at ``image_level`` (-1: the last, ``forward_features``), float32."""
        level = self.config.image_level
        kind = "spatial" if level == -1 else f"level:{level}"
        try:
            return self.image_encoder.features(pixel_values, kind=kind)
        except ValueError as err:
            raise ValueError(f"LiTConfig.image_level={level}: {err}") from None

    def _text_layers(self) -> nn.ModuleList:
        encoder = getattr(self.text_encoder.model, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            if self.config.unfreeze_text_layers:
                raise ValueError(f"{self.config.text_encoder}: cannot find its transformer layers "
                                 "(model.encoder.layer) to unfreeze; use unfreeze_text_layers=0")
            return nn.ModuleList()
        return layers

    @property
    def text_trainable(self) -> bool:
        """Whether any text-tower weight is trained (then text features cannot be cached)."""
        return self.config.unfreeze_text_layers > 0

    def train(self, mode: bool = True) -> LiTRetriever:
        """Like ``nn.Module.train``, except that the locked image tower (and the frozen part of the text tower:
        MiniLM's dropout stays on only in trained layers) stay in eval mode."""
        super().train(mode)
        self.image_encoder.eval()
        if self.text_encoder is None:  # an image tower only (LiTImageTower(..., drop_text_tower=True))
            return self
        self.text_encoder.eval()
        if mode:
            layers = self._text_layers()
            for layer in layers[len(layers) - self.config.unfreeze_text_layers:]:
                layer.train()
        return self

    @property
    def logit_scale(self) -> float:
        """The inverse temperature ``min(exp(log_scale), max_logit_scale)`` as a float."""
        return float(self.scale().detach())

    def scale(self) -> torch.Tensor:
        """The inverse temperature as a differentiable scalar tensor, clamped at ``max_logit_scale``."""
        return self.log_scale.exp().clamp(max=self.config.max_logit_scale)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> ``(B, 3, image_size, image_size)`` pixel values (whole image, no centre crop)."""
        return self.image_encoder.preprocess(images, center_crop=False)

    @torch.no_grad()
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Locked tower: pixel values ``(B, 3, H, W)`` -> what :meth:`embed_image_features` reads.

        ``image_pool="mean"``: pooled features ``(B, 1280)`` float32. ``"attention"`` or ``"conv"``: the feature
        map at ``image_level`` (the last: ``(B, 1280, h, w)``) in float16, the precision it is cached in (the
        last map holds ReLU6 outputs in [0, 6], which fp16 keeps to 3 significant digits; mid-level maps are
        of order 10).
        """
        if self.config.image_pool != "mean":
            return self._feature_map(pixel_values.to(self.device)).half()
        return self.image_encoder.features(pixel_values.to(self.device), kind="pooled").float()

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """MiniLM on ``texts`` -> what :meth:`embed_text_features` reads; differentiable through trained layers only.

        ``text_pool="mean"``: pooled embeddings ``(B, 384)`` float32 (un-normalised). ``"attention"``: the
        last hidden states of the first ``text_max_tokens`` tokens, ``(B, text_max_tokens, 384)`` float16,
        with the rows of padding positions exactly zero: that is the attention mask (a real token's state
        is never all zeros: it leaves a LayerNorm with a bias), so one tensor is all a cache has to keep.
        """
        tokens = self.text_encoder.tokenize(list(texts))  # sentence-transformers' truncation and casing
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_trainable):
            if self.config.text_pool == "mean":
                return self.text_encoder(**tokens).float()
            t = self.config.text_max_tokens
            states = self.text_encoder.model(**tokens).last_hidden_state[:, :t]  # (B, <=T, 384)
            mask = tokens["attention_mask"][:, :t, None].to(states.dtype)  # (B, <=T, 1)
            states = nn.functional.pad(states * mask, (0, 0, 0, t - states.shape[1]))  # (B, T, 384)
            return states.half()

    def embed_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """Image features -> unit-norm embeddings ``(B, D)`` (differentiable): pooled ``(B, 1280)``, or with
        ``image_pool="attention"`` or ``"conv"`` feature maps ``(B, C, h, w)`` (any float dtype)."""
        x = features.to(self.image_mean.device).float()
        if self.config.image_pool == "attention":
            x = x.flatten(2).transpose(1, 2)  # (B, h*w, C): map cells row by row
            x = self.image_pooler((x - self.image_mean) / self.image_std)  # (B, W)
        elif self.config.image_pool == "conv":
            x = self.image_pooler.pool(self.image_cells(x))  # (B, W)
        else:
            x = (x - self.image_mean) / self.image_std  # (B, 1280)
        return nn.functional.normalize(self.image_proj(x), dim=-1)  # (B, D)

    def image_cells(self, features: torch.Tensor) -> torch.Tensor:
        """Conv-head retrievers (``image_pool="conv"``): feature maps ``(B, C, h, w)`` -> the head's grid
        ``(B, W/2, h', w')``, standardised and through both convolutions (what its pools read)."""
        if self.config.image_pool != "conv":
            raise ValueError(f"{self.name}: image_cells needs image_pool='conv', not {self.config.image_pool!r}")
        x = features.to(self.image_mean.device).float()
        return self.image_pooler.cells((x - self.image_mean[:, None, None]) / self.image_std[:, None, None])

    def embed_text_features(self, features: torch.Tensor) -> torch.Tensor:
        """Text features -> unit-norm embeddings ``(B, D)`` (differentiable).

        ``text_pool="mean"``: pooled embeddings ``(B, 384)``, L2-normalised first, as all-MiniLM-L6-v2's own
        last module does (its sentence embeddings are meant to be compared by direction). ``"attention"``:
        token states ``(B, T, 384)`` from :meth:`text_features` (zero rows: padding), read by the text head;
        the batch is cut to its longest caption first, so short batches cost little.
        """
        x = features.to(self.log_scale.device).float()
        if self.config.text_pool == "attention":
            mask = x.ne(0).any(-1)  # (B, T): real tokens
            keep = int(mask.sum(1).max()) if len(x) else 0  # right padding: the longest caption's length
            x = self.text_pooler(x[:, :keep], mask[:, :keep])  # (B, W)
        else:
            x = nn.functional.normalize(x, dim=-1)  # (B, 384)
        return nn.functional.normalize(self.text_proj(x), dim=-1)  # (B, D)

    @property
    def device(self) -> torch.device:
        return self.log_scale.device

    # ---- the Retriever protocol ------------------------------------------------------------------------

    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 CPU embeddings of PIL images (any mode: converted to RGB)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = list(images)
        out = [torch.empty(0, self.config.embed_dim)]
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                feats = self.image_features(self.preprocess(images[start:start + batch_size]))
                out.append(self.embed_image_features(feats).float().cpu())
        return torch.cat(out)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
        """``(N, D)`` unit-norm float32 CPU embeddings of texts (beyond MiniLM's 256 tokens: cut)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings; wrap a single text in a list")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        for k, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{k}] must be a str, got {type(t).__name__}")
        # Longest first, so each batch pads little (as sentence-transformers does); results in input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.config.embed_dim)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                out[idx] = self.embed_text_features(self.text_features([texts[i] for i in idx])).float().cpu()
        return out

    # ---- saving ----------------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes, and all that :meth:`save_pretrained` writes: projections, attention heads, log
        scale, the feature standardisation and the unfrozen MiniLM layers (the rest comes from the packages)."""
        prefixes = ["image_proj.", "text_proj.", "log_scale", "image_mean", "image_std", "image_pooler.",
                    "text_pooler."]
        n_layers = len(self._text_layers())
        for i in range(n_layers - self.config.unfreeze_text_layers, n_layers):
            prefixes.append(f"text_encoder.model.encoder.layer.{i}.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(tuple(prefixes))}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "state") -> None:
        """Load :meth:`trainable_state_dict` tensors; missing, unexpected or mis-shaped keys raise ``ValueError``."""
        own = self.trainable_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{source}: weights do not match the config (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); was it saved with another LiTConfig?")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the config needs {tuple(own[k].shape)}")
        self.load_state_dict(state, strict=False)

    @property
    def fingerprint(self) -> str:
        """Changes whenever an embedding would: a hash of the config (:meth:`LiTConfig.identity`) and the
        trained weights."""
        h = hashlib.sha256(json.dumps(self.config.identity(), sort_keys=True).encode())
        for k, v in sorted(self.trainable_state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (trained weights only) into ``folder``.

        Each file is written under a temporary name and renamed, so a killed save leaves the old files or the
        new ones, never half of one. Returns the folder.

        Example:
            >>> import tempfile
            >>> model = LiTRetriever(LiTConfig(embed_dim=8, image_proj="linear", text_proj="linear"))
            >>> out = model.save_pretrained(tempfile.mkdtemp())
            >>> sorted(p.name for p in out.iterdir())
            ['config.json', 'model.safetensors']
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config_tmp = folder / f".{CONFIG_FILE}.{os.getpid()}.tmp"
        config_tmp.write_text(json.dumps({"format": LIT_FORMAT, "config": self.config.to_dict()}, indent=2) + "\n")
        weights_tmp = folder / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        save_file(state, str(weights_tmp), metadata={"format": LIT_FORMAT})
        # safetensors creates files private to their owner (0600); give the weights the mode the umask gives
        # any other file, so that a shared cache (ensure_default_retriever) is readable by its other users.
        os.chmod(weights_tmp, stat.S_IMODE(config_tmp.stat().st_mode))
        os.replace(weights_tmp, folder / WEIGHTS_FILE)
        os.replace(config_tmp, folder / CONFIG_FILE)  # last: a folder with a config.json is complete
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                        image_encoder: ImageEncoder | None = None,
                        text_encoder: TextEncoder | None = None) -> LiTRetriever:
        """Rebuild a model saved with :meth:`save_pretrained` (towers from their packages), in eval mode.

        Example:
            >>> import tempfile
            >>> model = LiTRetriever(LiTConfig(embed_dim=8, image_proj="linear", text_proj="linear"))
            >>> back = LiTRetriever.from_pretrained(model.save_pretrained(tempfile.mkdtemp()))
            >>> back.fingerprint == model.fingerprint
            True
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_file.is_file() or not weights_file.is_file():
            raise FileNotFoundError(f"{folder} is not a saved LiT retriever: it needs {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE} (write them with LiTRetriever.save_pretrained)")
        saved = read_json(config_file, "LiT retriever config")
        if not isinstance(saved, dict) or saved.get("format") != LIT_FORMAT:
            raise ValueError(f"{config_file}: field 'format' must be {LIT_FORMAT!r}, got "
                             f"{saved.get('format') if isinstance(saved, dict) else saved!r}")
        config = LiTConfig.from_dict(saved.get("config"), source=f"{config_file}: field 'config'")
        model = cls(config, image_encoder=image_encoder, text_encoder=text_encoder,
                    name=f"finecap:lit:{folder}")
        model.load_trainable_state_dict(load_file(str(weights_file)), source=str(weights_file))
        return model.to(device).eval()

    def __repr__(self) -> str:
        c = self.config
        return (f"LiTRetriever({self.name!r}, {c.image_encoder}@{c.image_size}px ({c.image_pool} pool) + "
                f"{c.text_encoder} (top {c.unfreeze_text_layers} layers trained, {c.text_pool} pool) "
                f"-> {c.embed_dim}-d)")


class LiTImageTower(ImageEncoder):
    """A LiT retriever's image side (locked backbone + trained image head) as an image encoder, so that a
    captioner reads what the retriever learnt to tell apart: ``load_image_encoder("finecap:lit-v3")``, as
    ClipCap reads CLIP's image tower. Same interface as :class:`vlm.pretrained.ImageEncoder`:

    * ``features(x, kind="pooled")``: the retriever's unit-norm image embedding ``(B, D)``;
    * ``features(x, kind="spatial")``: conv-head retrievers (``image_pool="conv"``): the head's grid after its
      two convolutions, ``(B, head_width / 2, 7, 7)`` for a level-3 map, the cells its pools read;
    * ``features(x, kind="level:<k>")``: the locked backbone's maps, as for the plain encoder.

    ``fingerprint`` is the retriever's (it changes with the trained weights: feature caches stay right).
    ``drop_text_tower=True`` frees the retriever's MiniLM (about 22M parameters), which a captioner never runs;
    the retriever can then no longer embed texts (``load_image_encoder`` does this: it loads its own copy).

    Example:
        >>> import torch
        >>> from PIL import Image
        >>> lit = LiTRetriever(LiTConfig(embed_dim=16, image_size=64, image_pool="conv", image_level=2,
        ...                              head_width=8))
        >>> tower = LiTImageTower(lit)
        >>> x = tower.preprocess([Image.new("RGB", (64, 64), "red")], center_crop=False)
        >>> tuple(tower.features(x, kind="spatial").shape), tower.num_spatial_features
        ((1, 4, 4, 4), 4)
        >>> bool(torch.allclose(tower.features(x), lit.embed_image_features(lit.image_features(x)), atol=1e-5))
        True
    """

    def __init__(self, retriever: LiTRetriever, *, drop_text_tower: bool = False):
        enc = retriever.image_encoder
        super().__init__(enc.model, data_config=enc.data_config, class_names=None, name=retriever.name)
        self.fingerprint = retriever.fingerprint  # before any text tower is dropped: it hashes the text head too
        if drop_text_tower:
            retriever.text_encoder = None
        self.retriever = retriever.eval().requires_grad_(False)

    @property
    def num_features(self) -> int:
        """Width D of the pooled features: the retriever's embedding width."""
        return int(self.retriever.config.embed_dim)

    @property
    def num_spatial_features(self) -> int:
        """Channels of the conv head's grid (``head_width / 2``)."""
        self._need_conv()
        return max(self.retriever.config.head_width // 2, 1)

    def _need_conv(self) -> None:
        if self.retriever.config.image_pool != "conv":
            raise ValueError(f"{self.name}: spatial features are the conv head's grid, but this retriever pools "
                             f"with image_pool={self.retriever.config.image_pool!r}; use feature_kind 'pooled' "
                             "or 'level:<k>'")

    def features(self, pixel_values: torch.Tensor, kind: str = "pooled") -> torch.Tensor:
        if kind.startswith("level:") or (pixel_values.device.type == "cpu" and self.cpu_chunk
                                         and len(pixel_values) > self.cpu_chunk):
            return super().features(pixel_values, kind)  # splits big CPU batches, calls this per chunk
        lit = self.retriever
        if kind == "pooled":
            return lit.embed_image_features(lit.image_features(pixel_values))
        if kind != "spatial":
            raise ValueError(f"kind must be 'pooled', 'spatial' or 'level:<k>', got {kind!r}")
        self._need_conv()
        return lit.image_cells(lit.image_features(pixel_values))  # (B, W/2, h', w')


def load_lit_retriever(rest: str = "lit", *, device: str = "cpu") -> LiTRetriever:
    """The retriever of a spec ``finecap:REST``: ``lit`` (the package's default, trained on first use by
    :func:`vlm.train.ensure_default_retriever`, 2.5-5 min on 2 CPU cores, then cached), ``lit-v2`` (the
    mid-level conv-head recipe, better on near-duplicates, about 17 min the first time), ``lit-v3`` (v2 with the
    conv head's grid pooled both ways: better still), ``lit-v4`` (v3 also taught the scene graph's counts, sizes
    and colours: the best on near-duplicates) or a folder saved with
    :meth:`LiTRetriever.save_pretrained`. Register it with ``register_retriever("finecap", load_lit_retriever)``.

    Example::

        retriever = load_lit_retriever("runs/lit")   # a folder written by `python -m vlm train-retriever`
    """
    short = {v: k for k, v in PACKAGE_RETRIEVERS.items()}.get(rest, rest)  # "lit-world-v2" -> "lit-v2"
    if short in PACKAGE_RETRIEVERS:
        from vlm.train.contrastive import ensure_default_retriever

        folder = ensure_default_retriever(name=PACKAGE_RETRIEVERS[short])
        model = LiTRetriever.from_pretrained(folder, device=device)
        model.name = f"finecap:{short}"
        return model
    path = Path(rest).expanduser()
    if path.is_dir():
        return LiTRetriever.from_pretrained(path, device=device)
    raise ValueError(f"retriever spec 'finecap:{rest}': expected 'finecap:lit' (the package's default LiT "
                     f"retriever), 'finecap:lit-v2', 'finecap:lit-v3', 'finecap:lit-v4' or "
                     f"'finecap:/path/to/folder' saved by LiTRetriever.save_pretrained; {rest!r} is neither")
