"""Prefix captioner (ClipCap-style), also the package's small multimodal LLM.

    image --(image encoder, usually frozen)--> features (B, C) or (B, N, C)
          --(mapper: MLP or small transformer)--> K prefix embeddings (B, K, D)
          --[prefix ; optional prompt tokens ; caption tokens]--> causal LM --> next-token logits

The language model is any Hugging Face causal LM: SmolLM2-135M-Instruct offline, GPT-2 / Qwen / Llama
online, or a small Llama trained from scratch with a byte-level BPE learned from the captions (the fast CPU
recipe). A text prompt after the prefix lets the same model answer questions (VPD) or classify (RFT).
Each part is ``frozen``, ``lora`` (peft) or ``full``-ly trained.

The common calls every training method uses: :meth:`PrefixCaptioner.generate` (batched, KV-cached, beam
search, stop at the first '.'), :meth:`PrefixCaptioner.loss` and :meth:`PrefixCaptioner.token_log_probs`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from vlm.data.io import read_json

logger = logging.getLogger(__name__)

_TRAINING_MODES = ("frozen", "lora", "full")


@dataclass
class PrefixCaptionerConfig:
    """Architecture and trainability of a :class:`PrefixCaptioner`. Unknown keys are errors."""

    image_encoder: str = "efficientnet_lite0"
    """A :func:`vlm.pretrained.load_image_encoder` name: built-in, timm folder/hub id, ``scratch:<arch>``, or
    an open_clip image tower (``open_clip:ViT-B-32:openai``, ``open_clip:/path/config.json:random`` ...)."""
    feature_kind: str = "pooled"
    """``"pooled"`` (B, C) image features, ``"spatial"`` (B, H*W, C) tokens of the last feature map, or
    ``"level:<k>"`` tokens of the encoder's k-th intermediate map (:meth:`vlm.pretrained.ImageEncoder.feature_level`;
    ``"level:3"`` is EfficientNet-Lite0's (112, 14, 14), which still sees counts and sizes that the ImageNet top
    layers discard). Tokens need the transformer mapper."""
    spatial_pool: int = 1
    """Average-pool the feature map by this factor before it becomes tokens (2: a 14x14 map gives 49 tokens,
    a quarter of the mapper's attention cost)."""
    center_crop: bool = False
    """Centre-crop in preprocessing (ImageNet eval style); False keeps objects near the border."""
    language_model: str = "scratch"
    """``"scratch"`` (a small Llama built from ``scratch_lm``), ``"SmolLM2-135M-Instruct"``, or a folder/hub id."""
    scratch_lm: dict = field(default_factory=lambda: {
        "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 128})
    """``LlamaConfig`` fields of the from-scratch LM (vocabulary and special ids come from the tokenizer)."""
    mapper: str = "mlp"
    """``"mlp"`` (ClipCap's MLP) or ``"transformer"`` (learned queries attending to the image features)."""
    prefix_length: int = 10
    """K, the number of prefix embeddings (ClipCap uses 10)."""
    mapper_hidden: int = 512
    """Hidden width of the MLP mapper / model width of the transformer mapper."""
    mapper_layers: int = 2
    """Layers of the transformer mapper."""
    mapper_positions: bool = False
    """Add fixed 2-D sine-cosine position codes (:func:`grid_positions`) to the image tokens in the transformer
    mapper. Without them the mapper sees the map cells as an unordered set: it cannot tell one large thing over
    two neighbouring cells from two things, nor left from right."""
    image_encoder_training: str = "frozen"
    """``frozen`` | ``lora`` | ``full``. Frozen encoders let training run on cached features."""
    lm_training: str = "full"
    """``frozen`` | ``lora`` | ``full`` (``full`` is the default for a from-scratch LM)."""
    lora_r: int = 32
    """LoRA rank (the self-retrieval reference configs use 32)."""
    lora_alpha: int = 64
    """LoRA scaling numerator."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names LoRA adapts in the LM."""
    max_caption_tokens: int = 40
    """Captions are truncated to this many tokens in training."""

    def __post_init__(self):
        if self.feature_kind not in ("pooled", "spatial") and not self.feature_kind.startswith("level:"):
            raise ValueError(f"PrefixCaptionerConfig.feature_kind must be 'pooled', 'spatial' or 'level:<k>', "
                             f"got {self.feature_kind!r}")
        if self.feature_kind.startswith("level:"):
            from vlm.pretrained import feature_level_index

            try:
                feature_level_index(self.feature_kind)
            except ValueError as err:
                raise ValueError(f"PrefixCaptionerConfig.feature_kind: {err}") from None
        if self.mapper not in ("mlp", "transformer"):
            raise ValueError(f"PrefixCaptionerConfig.mapper must be 'mlp' or 'transformer', got {self.mapper!r}")
        if self.feature_kind != "pooled" and self.mapper == "mlp":
            raise ValueError(f"PrefixCaptionerConfig: {self.feature_kind!r} features are tokens and need "
                             "mapper='transformer'")
        if not isinstance(self.spatial_pool, int) or self.spatial_pool < 1:
            raise ValueError(f"PrefixCaptionerConfig.spatial_pool must be an integer >= 1, got {self.spatial_pool!r}")
        if self.spatial_pool > 1 and self.feature_kind == "pooled":
            raise ValueError("PrefixCaptionerConfig.spatial_pool pools a feature map: use it with feature_kind "
                             "'spatial' or 'level:<k>'")
        for f in ("image_encoder_training", "lm_training"):
            if getattr(self, f) not in _TRAINING_MODES:
                raise ValueError(f"PrefixCaptionerConfig.{f} must be one of {_TRAINING_MODES}, "
                                 f"got {getattr(self, f)!r}")
        if self.image_encoder_training == "full" and self.image_encoder.startswith("finecap:"):
            raise ValueError("PrefixCaptionerConfig: a LiT retriever's tower (image_encoder='finecap:...') is locked "
                             "(its backbone runs without gradients); use image_encoder_training='frozen'")
        if self.image_encoder_training == "lora":
            raise ValueError("PrefixCaptionerConfig.image_encoder_training='lora' is not supported; use frozen or full")
        if self.mapper_positions and self.mapper != "transformer":
            raise ValueError("PrefixCaptionerConfig.mapper_positions needs mapper='transformer'")
        if self.mapper_positions and self.mapper_hidden % 4:
            raise ValueError(f"PrefixCaptionerConfig.mapper_positions needs mapper_hidden divisible by 4, "
                             f"got {self.mapper_hidden}")
        if self.prefix_length < 1:
            raise ValueError(f"PrefixCaptionerConfig.prefix_length must be >= 1, got {self.prefix_length}")
        self.lora_targets = tuple(self.lora_targets)

    @classmethod
    def from_dict(cls, d: dict) -> PrefixCaptionerConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"PrefixCaptionerConfig: unknown keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d


class MLPMapper(nn.Module):
    """ClipCap's mapper: (B, C) -> (B, K, D) through one hidden layer."""

    def __init__(self, in_dim: int, out_dim: int, k: int, hidden: int):
        super().__init__()
        self.k, self.out_dim = k, out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, k * out_dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim == 3:  # spatial tokens: average them (the config forbids this pairing, but be safe)
            feats = feats.mean(1)
        return self.net(feats).view(feats.shape[0], self.k, self.out_dim)  # (B, K, D)


@functools.lru_cache(maxsize=8)
def grid_positions(n: int, width: int) -> torch.Tensor:
    """Fixed sine-cosine position codes ``(n, width)`` for ``n`` tokens of a square map read row by row (a
    non-square count is treated as one row). Half the channels code the column, half the row, each at
    ``width / 4`` frequencies, as in MAE's 2-D sin-cos embedding; no parameters, so any map size works.
    Cached per ``(n, width)`` (the mapper asks every step); callers must not modify the result in place.

    Example:
        >>> pe = grid_positions(49, 8)
        >>> same_column, same_row = torch.equal(pe[0, :4], pe[7, :4]), torch.equal(pe[0, 4:], pe[1, 4:])
        >>> pe.shape, same_column, same_row, torch.equal(pe[0], pe[1])  # tokens 0, 7 share a column; 0, 1 a row
        (torch.Size([49, 8]), True, True, False)
    """
    if width % 4:
        raise ValueError(f"grid_positions: width must be a multiple of 4, got {width}")
    side = math.isqrt(n)
    rows, cols = (side, side) if side * side == n else (1, n)
    r = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)  # (n,) row of each token
    c = torch.arange(cols, dtype=torch.float32).repeat(rows)  # (n,) column of each token
    freqs = 1.0 / (10000 ** (torch.arange(width // 4, dtype=torch.float32) / (width // 4)))  # (width/4,)

    def code(x: torch.Tensor) -> torch.Tensor:
        a = x[:, None] * freqs[None]  # (n, width/4)
        return torch.cat([a.sin(), a.cos()], 1)  # (n, width/2)

    return torch.cat([code(c), code(r)], 1)  # (n, width): column half, then row half


class TransformerMapper(nn.Module):
    """K learned queries, concatenated with the projected image tokens, through a small transformer.

    ``positions``: add :func:`grid_positions` to the image tokens (a feature map's cells, row by row)."""

    def __init__(self, in_dim: int, out_dim: int, k: int, width: int, layers: int, positions: bool = False):
        super().__init__()
        self.k = k
        self.positions = positions
        self.proj_in = nn.Linear(in_dim, width)
        self.queries = nn.Parameter(torch.randn(k, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, nhead=max(1, width // 64), dim_feedforward=2 * width,
                                           batch_first=True, norm_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim == 2:
            feats = feats[:, None]  # (B, 1, C)
        x = self.proj_in(feats)  # (B, N, W)
        if self.positions and x.shape[1] > 1:
            x = x + grid_positions(x.shape[1], x.shape[2]).to(x.device, x.dtype)
        q = self.queries.expand(x.shape[0], -1, -1)  # (B, K, W)
        h = self.encoder(torch.cat([q, x], 1))[:, : self.k]  # (B, K, W)
        return self.proj_out(h)  # (B, K, D)


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class PrefixCaptioner(nn.Module):
    """Image encoder -> mapper -> prefix embeddings -> causal LM. Build with :func:`build_prefix_captioner`.

    Example:
        >>> from vlm.models.prefix import PrefixCaptionerConfig, build_prefix_captioner
        >>> from vlm.models.tokenizer import train_caption_tokenizer
        >>> tok = train_caption_tokenizer(["a red circle.", "two blue squares."] * 10, vocab_size=280)
        >>> cfg = PrefixCaptionerConfig(image_encoder="scratch:test_efficientnet", prefix_length=2,
        ...     scratch_lm=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
        >>> model = build_prefix_captioner(cfg, tokenizer=tok, seed=0)
        >>> from PIL import Image
        >>> len(model.generate([Image.new("RGB", (64, 64))], max_new_tokens=3))
        1
    """

    def __init__(self, config: PrefixCaptionerConfig, image_encoder: nn.Module, lm: nn.Module, tokenizer: Any):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.lm = lm
        self.tokenizer = tokenizer
        d_lm = lm.get_input_embeddings().weight.shape[1]
        c = image_encoder.num_features
        if config.feature_kind == "spatial":  # an open_clip ViT's tokens are wider than its pooled embedding
            c = getattr(image_encoder, "num_spatial_features", c)
        elif config.feature_kind.startswith("level:"):
            from vlm.pretrained import feature_level_index

            info = getattr(image_encoder.model, "feature_info", None)
            level = feature_level_index(config.feature_kind)
            if not info or level >= len(info):
                raise ValueError(f"PrefixCaptionerConfig.feature_kind={config.feature_kind!r}: the image encoder "
                                 f"has {len(info or [])} feature levels")
            c = int(info[level]["num_chs"])
        if config.mapper == "mlp":
            self.mapper = MLPMapper(c, d_lm, config.prefix_length, config.mapper_hidden)
        else:
            self.mapper = TransformerMapper(c, d_lm, config.prefix_length, config.mapper_hidden, config.mapper_layers,
                                            positions=config.mapper_positions)
        _set_trainable(self.image_encoder, config.image_encoder_training == "full")
        if config.lm_training == "frozen":
            _set_trainable(self.lm, False)

    def train(self, mode: bool = True) -> PrefixCaptioner:
        """Like ``nn.Module.train``, but frozen parts stay in eval mode: a frozen encoder's BatchNorm
        statistics must not drift with the training batches (and cached features must stay valid)."""
        super().train(mode)
        if self.config.image_encoder_training == "frozen":
            self.image_encoder.eval()
        if self.config.lm_training == "frozen":
            self.lm.eval()
        return self

    # ---- images ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.mapper.parameters()).device

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images -> ``pixel_values`` for the image encoder."""
        return self.image_encoder.preprocess(list(images), center_crop=self.config.center_crop)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C) pooled or (B, H*W, C) spatial features; no grad unless the encoder is trained."""
        grad = self.config.image_encoder_training == "full" and self.training
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            f = self.image_encoder.features(pixel_values.to(self.device), kind=self.config.feature_kind)
        if f.ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            if self.config.spatial_pool > 1:
                f = nn.functional.avg_pool2d(f, self.config.spatial_pool, ceil_mode=True)
            f = f.flatten(2).transpose(1, 2)
        return f.float()

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, D) prefix embeddings in the LM's dtype."""
        return self.mapper(features.to(self.device)).to(self.lm.get_input_embeddings().weight.dtype)

    # ---- text --------------------------------------------------------------------------------------------
    def _encode_texts(self, texts: Sequence[str], *, add_eos: bool, max_len: int | None) -> list[list[int]]:
        tok = self.tokenizer
        out = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            if max_len is not None:
                ids = ids[:max_len]
            if add_eos:
                ids = ids + [tok.eos_token_id]
            out.append(ids)
        return out

    def _assemble(self, prefix: torch.Tensor, prompts: list[list[int]] | None, targets: list[list[int]] | None):
        """Right-padded [prefix ; prompt ; target] embeddings, attention mask, labels (-100 off-target)."""
        b, k, _ = prefix.shape
        emb_layer = self.lm.get_input_embeddings()
        prompts = prompts or [[] for _ in range(b)]
        targets = targets or [[] for _ in range(b)]
        lengths = [k + len(p) + len(t) for p, t in zip(prompts, targets)]
        t_max = max(lengths)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((b, t_max - k), pad, dtype=torch.long)
        labels = torch.full((b, t_max), -100, dtype=torch.long)
        mask = torch.zeros(b, t_max, dtype=torch.long)
        for i, (p, t) in enumerate(zip(prompts, targets)):
            seq = p + t
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            labels[i, k + len(p): k + len(seq)] = torch.tensor(t, dtype=torch.long)
            mask[i, : lengths[i]] = 1
        embeds = torch.cat([prefix, emb_layer(ids.to(self.device))], 1)  # (B, T, D)
        return embeds, mask.to(self.device), labels.to(self.device)

    # ---- the common calls --------------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """Same as :meth:`loss`: training wrappers (DDP, FSDP) synchronise gradients through ``forward``."""
        return self.loss(batch)

    def loss(self, batch: dict) -> torch.Tensor:
        """Mean token cross-entropy of ``batch["captions"]`` given the images.

        ``batch``: ``features`` (cached image features) or ``pixel_values`` or ``images`` (PIL), plus
        ``captions`` (list of str) and optional ``prompts`` (list of str).
        """
        feats = self._batch_features(batch)
        prompts = self._encode_texts(batch["prompts"], add_eos=False, max_len=None) if batch.get("prompts") else None
        targets = self._encode_texts(batch["captions"], add_eos=True, max_len=self.config.max_caption_tokens)
        embeds, mask, labels = self._assemble(self.prefix(feats), prompts, targets)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits  # (B, T, V)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                           ignore_index=-100)

    def token_log_probs(self, texts: Sequence[str], *, images: Sequence[Any] | None = None,
                        features: torch.Tensor | None = None, prompts: Sequence[str] | None = None,
                        add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of each token of ``texts`` given the images: ``(logp (B, T), mask (B, T))``.

        Differentiable (what REINFORCE and GRPO need). ``mask`` marks real tokens; sum or average over it.
        """
        feats = self._batch_features({"images": images, "features": features})
        p = self._encode_texts(prompts, add_eos=False, max_len=None) if prompts else None
        t = self._encode_texts(texts, add_eos=add_eos, max_len=self.config.max_caption_tokens)
        embeds, mask, labels = self._assemble(self.prefix(feats), p, t)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        tgt = labels[:, 1:]
        valid = tgt != -100
        logp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        logp = logp * valid
        # Align to the text tokens: drop the prefix/prompt columns, keep per-sample token order.
        width = max(len(x) for x in t)
        out = torch.zeros(len(t), width, device=logp.device, dtype=logp.dtype)
        out_mask = torch.zeros(len(t), width, device=logp.device, dtype=torch.bool)
        for i, ids in enumerate(t):
            cols = valid[i].nonzero()[:, 0]
            out[i, : len(cols)] = logp[i, cols]
            out_mask[i, : len(cols)] = True
        return out, out_mask

    @torch.inference_mode()
    def generate(self, images: Sequence[Any] | None = None, prompts: Sequence[str] | None = None, *,
                 features: torch.Tensor | None = None, num_beams: int = 1, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 num_return_sequences: int = 1, batch_size: int = 64, stop_at_period: bool = False,
                 generator_seed: int | None = None) -> list[str]:
        """Captions (or answers to ``prompts``) for a batch of images, KV-cached, greedy/beam/sampled.

        Returns ``len(images) * num_return_sequences`` strings, grouped by image.
        """
        from vlm.devices import autocast
        from vlm.models.hf import truncate_at_period

        n = len(images) if images is not None else len(features)
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"got {n} images but {len(prompts)} prompts")
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        tok = self.tokenizer
        out: list[str] = []
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            feats = self._batch_features({"images": images[sl] if images is not None else None,
                                          "features": features[sl] if features is not None else None})
            p = self._encode_texts(prompts[sl], add_eos=False, max_len=None) if prompts is not None else None
            embeds, mask, _ = self._assemble(self.prefix(feats), p, None)
            embeds, mask = _left_pad(embeds, mask)
            kw = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                      num_beams=num_beams, do_sample=do_sample, num_return_sequences=num_return_sequences,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            if do_sample:
                kw.update(temperature=temperature, top_p=top_p)
            if stop_at_period:
                period = tok(".", add_special_tokens=False)["input_ids"]
                if len(period) == 1:
                    kw["eos_token_id"] = [tok.eos_token_id, period[0]]
            with autocast(self.device):
                ids = self.lm.generate(**kw)
            texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
            out.extend(truncate_at_period(t) if stop_at_period else t for t in texts)
        return out

    def _batch_features(self, batch: dict) -> torch.Tensor:
        if batch.get("features") is not None:
            return batch["features"].to(self.device).float()
        if batch.get("pixel_values") is not None:
            return self.image_features(batch["pixel_values"])
        if batch.get("images") is not None:
            return self.image_features(self.preprocess(batch["images"]))
        raise ValueError("batch needs 'features', 'pixel_values' or 'images'")

    # ---- adapters for fine-tuning (self-retrieval's ``finetune: lora``) ----------------------------------------
    def add_lora_adapters(self, r: int = 32, alpha: int = 64, targets: Sequence[str] = ("q_proj", "k_proj",
                          "v_proj", "o_proj"), *, train_mapper: bool = False) -> int:
        """Freeze the captioner and put fresh LoRA adapters (peft) on its LM; returns the trainable parameter count.

        Only for a captioner whose LM weights are saved in full (a from-scratch LM, or ``lm_training: full``):
        :meth:`merge_lora_adapters` folds the adapters back into those weights, so the fine-tuned captioner is
        saved and loaded like its start. A captioner with ``lm_training: lora`` already trains adapters; one with
        a frozen pretrained LM saves no LM weights to fold them into.
        """
        if not (self.config.language_model == "scratch" or self.config.lm_training == "full"):
            raise ValueError(f"LoRA fine-tuning needs a captioner whose LM weights are saved in full (a from-scratch "
                             f"LM or lm_training: full); this one's LM is {self.config.language_model!r} with "
                             f"lm_training: {self.config.lm_training!r}"
                             + (" (its own LoRA adapters are what full fine-tuning trains)"
                                if self.config.lm_training == "lora" else ""))
        if r < 1 or alpha <= 0:
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0, got r={r}, alpha={alpha}")
        names = {n.rsplit(".", 1)[-1] for n, _ in self.lm.named_modules()}
        missing = [t for t in targets if t not in names]
        if not targets or missing:
            raise ValueError(f"LoRA targets {missing or list(targets)} are not modules of the LM; it has e.g. "
                             f"{sorted(n for n in names if n and not n.isdigit())[:12]}")
        _set_trainable(self, False)
        self.lm = _with_lora(self.lm, r, alpha, targets)
        _set_trainable(self.mapper, train_mapper)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def merge_lora_adapters(self) -> None:
        """Fold adapters added by :meth:`add_lora_adapters` into the LM weights (a no-op without them)."""
        if self._has_added_adapters():
            self.lm = self.lm.merge_and_unload()
            _set_trainable(self.lm, self.config.lm_training != "frozen")  # trainable again as its config says
            _set_trainable(self.mapper, True)

    def _has_added_adapters(self) -> bool:
        # a peft wrapper on an LM whose config trains no adapters of its own (peft is imported only if in use)
        return type(self.lm).__module__.startswith("peft.") and self.config.lm_training != "lora"

    # ---- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` (everything not reloadable from a package) + tokenizer."""
        from safetensors.torch import save_file

        if self._has_added_adapters():
            raise ValueError("save_pretrained: the LM carries LoRA adapters added for fine-tuning; fold them into its "
                             "weights with merge_lora_adapters() first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        aliases = self._aliased_keys()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                 if self._must_save(k) and k not in aliases}
        tmp = folder / "model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        if self.config.language_model == "scratch":
            self.tokenizer.save_pretrained(str(folder / "tokenizer"))
        return folder

    def _aliased_keys(self) -> set[str]:
        """Keys whose tensor is another key's (tied embeddings): saved once, restored by the tie."""
        seen: dict[int, str] = {}
        aliases = set()
        for k, v in self.state_dict(keep_vars=True).items():
            ptr = v.data_ptr()
            if ptr in seen:
                aliases.add(k)
            else:
                seen[ptr] = k
        return aliases

    def _must_save(self, key: str) -> bool:
        if key.startswith("mapper."):
            return True
        if key.startswith("image_encoder."):
            return self.config.image_encoder_training == "full" or self.config.image_encoder.startswith("scratch:")
        if key.startswith("lm."):
            if self.config.language_model == "scratch" or self.config.lm_training == "full":
                return True
            return self.config.lm_training == "lora" and "lora_" in key
        return True

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str = "cpu") -> PrefixCaptioner:
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found: not a saved PrefixCaptioner folder")
        cfg = PrefixCaptionerConfig.from_dict(read_json(cfg_file, "PrefixCaptioner config"))
        tok = None
        if cfg.language_model == "scratch":
            from vlm.models.tokenizer import load_caption_tokenizer

            tok = load_caption_tokenizer(folder / "tokenizer")
        model = build_prefix_captioner(cfg, tokenizer=tok, seed=0)
        state = load_file(str(folder / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{folder / 'model.safetensors'}: unexpected tensors {unexpected[:5]}")
        aliases = model._aliased_keys()
        must = [k for k in missing if model._must_save(k) and k not in aliases]
        if must:
            raise ValueError(f"{folder / 'model.safetensors'}: missing tensors {must[:5]}")
        return model.to(device).eval()


def _left_pad(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move right padding to the left, as decoder-only generation needs (new tokens follow the last real one)."""
    if bool(mask.all()):
        return embeds, mask
    lengths = mask.sum(1)
    t = mask.shape[1]
    out_e = torch.zeros_like(embeds)
    out_m = torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):
        out_e[i, t - n:] = embeds[i, :n]
        out_m[i, t - n:] = 1
    return out_e, out_m


def _with_lora(lm: nn.Module, r: int, alpha: int, targets: Sequence[str]) -> nn.Module:
    """``lm`` wrapped by peft with fresh LoRA adapters on ``targets`` (its base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(lm, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))


def _build_lm(cfg: PrefixCaptionerConfig, tokenizer: Any):
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.language_model == "scratch":
        if tokenizer is None:
            raise ValueError("a from-scratch LM needs a tokenizer: train one with "
                             "vlm.models.tokenizer.train_caption_tokenizer(captions)")
        lm_cfg = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             tie_word_embeddings=True, **cfg.scratch_lm)
        return LlamaForCausalLM(lm_cfg), tokenizer
    from vlm.pretrained import load_language_model

    loaded = load_language_model(cfg.language_model)
    tok = tokenizer or loaded.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return loaded.model, tok


def build_prefix_captioner(config: PrefixCaptionerConfig | None = None, *, tokenizer: Any = None,
                           seed: int = 0, device: str = "cpu") -> PrefixCaptioner:
    """Build a prefix captioner from its config (random mapper, pretrained or scratch parts as configured)."""
    from vlm.pretrained import load_image_encoder

    cfg = config or PrefixCaptionerConfig()
    torch.manual_seed(seed)
    enc = load_image_encoder(cfg.image_encoder)
    lm, tok = _build_lm(cfg, tokenizer)
    if cfg.lm_training == "lora":
        lm = _with_lora(lm, cfg.lora_r, cfg.lora_alpha, cfg.lora_targets)
    model = PrefixCaptioner(cfg, enc, lm, tok)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("prefix captioner: %.2fM trainable of %.2fM parameters", n_train / 1e6,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model.to(device)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        {'trainable': 8, 'total': 8}
    """
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}

