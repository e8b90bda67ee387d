"""Hugging Face image-to-text models behind finecap's captioner calls.

Any model that ``transformers.AutoModelForImageTextToText`` loads (BLIP, GIT, LLaVA, PaliGemma,
Idefics3/SmolVLM, Qwen2-VL, ``VisionEncoderDecoderModel`` ...) together with its ``AutoProcessor``, from a
hub id (online) or a local folder, gets the same calls as :class:`vlm.models.PrefixCaptioner`:
:meth:`HFCaptioner.generate`, :meth:`HFCaptioner.loss` and :meth:`HFCaptioner.token_log_probs`.

Every family is fed one token sequence per image, ``[prompt ; caption ; eos]``, where the prompt is

* BLIP: ``[bos] + prompt`` into its text decoder (cross-attending to the image);
* GIT: ``[bos] + prompt`` after the image tokens the model prepends itself;
* encoder-decoder (``VisionEncoderDecoderModel``): ``[decoder_start] + prompt`` as decoder input;
* PaliGemma: the processor's ``<image>... bos prompt \\n`` (the prompt attends bidirectionally);
* other multimodal LLMs (LLaVA, Idefics3, Qwen2-VL): the processor's expansion of the chat template (or
  ``<image>`` + prompt without one), with the image placeholder tokens.

Only the caption and eos tokens are scored; prompt, image and padding positions are masked out.
:mod:`vlm.models.hf_tiny` builds tiny random-weight models of each family offline, for tests.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vlm.data.io import read_json

logger = logging.getLogger(__name__)

# Processor outputs that are per-token (same length as input_ids) rather than image tensors.
_TOKEN_FIELDS = ("token_type_ids", "mm_token_type_ids")
_TEXT_KEYS = ("input_ids", "attention_mask", "labels", *_TOKEN_FIELDS)
_META_FILE = "finecap_captioner.json"


def truncate_at_period(text: str) -> str:
    """Cut a caption after its first sentence, as ClipCap-style decoding does.

    Example:
        >>> truncate_at_period("a red circle. a blue square")
        'a red circle.'
    """
    i = text.find(".")
    return text[: i + 1] if i >= 0 else text


def model_family(config: Any) -> str:
    """How :class:`HFCaptioner` feeds a model: ``"blip"``, ``"git"``, ``"paligemma"``, ``"encoder-decoder"``
    or ``"decoder"`` (a multimodal LLM whose processor puts image tokens in the text).

    Example:
        >>> from transformers import GitConfig
        >>> model_family(GitConfig())
        'git'
    """
    kind = getattr(config, "model_type", "")
    if kind in ("blip", "git", "paligemma"):
        return kind
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    return "decoder"


@dataclass
class _Prompt:
    """One image's model inputs before the caption: token ids, per-token fields, image tensors."""

    ids: list[int]
    token_fields: dict[str, list[int]] = field(default_factory=dict)
    image_inputs: dict[str, Any] = field(default_factory=dict)


class HFCaptioner:
    """A transformers image-to-text model and its processor, with finecap's captioner calls.

    Args:
        model: an image-to-text ``PreTrainedModel`` (put in eval mode; call :meth:`train` to fine-tune).
        processor: its ``ProcessorMixin`` (image processor + tokenizer).
        name: where it came from (hub id or folder).
        max_caption_tokens: captions are truncated to this many tokens (before eos) in :meth:`loss` and
            :meth:`token_log_probs`.

    Example:
        >>> from vlm.models.hf_tiny import build_tiny_hf_captioner
        >>> from PIL import Image
        >>> cap = build_tiny_hf_captioner("git")
        >>> len(cap.generate([Image.new("RGB", (32, 32))], max_new_tokens=3))
        1
        >>> logp, mask = cap.token_log_probs(["a red circle."], images=[Image.new("RGB", (32, 32))])
        >>> bool((logp[mask] < 0).all())
        True

    Online, the same calls work on e.g. ``HFCaptioner.from_pretrained("Salesforce/blip-image-captioning-base")``.
    """

    def __init__(self, model: Any, processor: Any, *, name: str = "", max_caption_tokens: int = 64):
        if max_caption_tokens < 1:
            raise ValueError(f"HFCaptioner.max_caption_tokens must be >= 1, got {max_caption_tokens}")
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.max_caption_tokens = max_caption_tokens
        self.family = model_family(model.config)
        if self.family in ("decoder", "paligemma") and getattr(processor, "image_token", None) is None:
            raise ValueError(f"HFCaptioner: {type(processor).__name__} has no image_token, so images cannot be "
                             f"placed in the prompt of {type(model).__name__}; pass the model's own processor")
        if not hasattr(processor, "image_processor"):
            raise ValueError(f"HFCaptioner: {type(processor).__name__} has no image_processor; pass a processor with "
                             "one (e.g. TrOCRProcessor(image_processor, tokenizer) for a VisionEncoderDecoderModel)")

    # ---- loading and saving ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "cpu", dtype: Any = None) -> HFCaptioner:
        """Load model + processor from a local folder or (online) a hub id; offline hub ids fail fast.

        A folder written by :meth:`save_pretrained` also restores ``max_caption_tokens``.
        """
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        from vlm.pretrained import _hub_offline_reason

        local = Path(name_or_path)
        if not local.exists():
            if _hub_offline_reason() is not None:
                try:
                    from huggingface_hub import snapshot_download

                    local = Path(snapshot_download(str(name_or_path), local_files_only=True))
                except Exception as err:  # not in the local hub cache
                    raise FileNotFoundError(
                        f"captioner {name_or_path!r} is neither a local folder nor in the local hub cache, and "
                        "the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE). Pass a folder saved with "
                        "save_pretrained(), or go online.") from err
        src = str(local)  # a folder, or (online) a hub id that transformers downloads
        kw = {"dtype": dtype} if dtype is not None else {}
        config = AutoConfig.from_pretrained(src)
        if config.model_type == "vision-encoder-decoder":  # not every transformers maps it to ImageTextToText
            from transformers import VisionEncoderDecoderModel

            model = VisionEncoderDecoderModel.from_pretrained(src, **kw)
        else:
            model = AutoModelForImageTextToText.from_pretrained(src, **kw)
        processor = AutoProcessor.from_pretrained(src)
        if not hasattr(processor, "image_processor"):
            # Encoder-decoder checkpoints often ship an image processor and a tokenizer but no processor
            # class; TrOCRProcessor is transformers' generic pair of the two.
            from transformers import AutoImageProcessor, AutoTokenizer, TrOCRProcessor

            processor = TrOCRProcessor(image_processor=AutoImageProcessor.from_pretrained(src),
                                       tokenizer=AutoTokenizer.from_pretrained(src))
        meta = {}
        if local.is_dir() and (local / _META_FILE).is_file():
            meta = read_json(local / _META_FILE, "captioner settings file")
        return cls(model.to(device), processor, name=str(name_or_path),
                   max_caption_tokens=int(meta.get("max_caption_tokens", 64)))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Model (``config.json`` + ``model.safetensors``), processor files and finecap's settings (JSON).

        :meth:`from_pretrained` (and ``create_captioner(folder)``) reload it; so do transformers'
        ``AutoModelForImageTextToText`` and ``AutoProcessor``.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.processor.save_pretrained(str(folder))
        (folder / _META_FILE).write_text(json.dumps({"max_caption_tokens": self.max_caption_tokens}) + "\n")
        return folder

    # ---- torch passthroughs (training loops call these) --------------------------------------------------
    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def train(self, mode: bool = True) -> HFCaptioner:
        self.model.train(mode)
        return self

    def eval(self) -> HFCaptioner:
        return self.train(False)

    @property
    def training(self) -> bool:
        return self.model.training

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)

    def named_parameters(self, *args: Any, **kwargs: Any):
        return self.model.named_parameters(*args, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> HFCaptioner:
        self.model.to(*args, **kwargs)
        return self

    def __call__(self, batch: dict):
        return self.forward(batch)

    # ---- token ids ---------------------------------------------------------------------------------------
    @property
    def eos_token_id(self) -> int:
        """The token that ends a caption: what :meth:`generate` stops at and what targets end with."""
        cfg = self.model.config
        if self.family == "blip":  # BLIP's generate stops at the text config's [SEP]
            return cfg.text_config.sep_token_id
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = getattr(cfg.get_text_config(), "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if isinstance(eos, (list, tuple)):  # chat models stop at end-of-turn first, eos second
            eos = eos[0]
        if eos is None:
            raise ValueError(f"{self.name or type(self.model).__name__}: no eos token id in the generation config, "
                             "model config or tokenizer; set model.generation_config.eos_token_id")
        return int(eos)

    def _start_id(self) -> int:
        cfg = self.model.config
        if self.family == "blip":
            start = cfg.text_config.bos_token_id
        elif self.family == "git":
            start = cfg.bos_token_id
        else:  # encoder-decoder
            start = getattr(cfg, "decoder_start_token_id", None)
            if start is None:
                start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError(f"{self.name or type(self.model).__name__}: no start token id in its config "
                             "(bos_token_id / decoder_start_token_id)")
        return int(start)

    def _prompt_text(self, prompt: str) -> str:
        """The processor text of one prompt: the chat template's user turn, or ``<image>`` + prompt."""
        proc = self.processor
        if getattr(proc, "chat_template", None):
            content: list[dict] = [{"type": "image"}]
            if prompt:
                content.append({"type": "text", "text": prompt})
            return proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return proc.image_token + prompt  # PaliGemma's processor adds its bos and "\n" itself

    def _encode_prompts(self, images: Sequence[Any], prompts: Sequence[str] | None) -> list[_Prompt]:
        if prompts is not None and len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        images = [im.convert("RGB") for im in images]
        texts = list(prompts) if prompts is not None else [""] * len(images)
        tok = self.tokenizer
        if self.family in ("blip", "git", "encoder-decoder"):
            pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            start = self._start_id()
            return [_Prompt([start] + (tok(t, add_special_tokens=False)["input_ids"] if t else []), {},
                            {"pixel_values": pixels[i: i + 1]}) for i, t in enumerate(texts)]
        out = []
        for im, t in zip(images, texts):
            text = self._prompt_text(t)
            kw = {}
            if tok.bos_token is not None and text.startswith(tok.bos_token):
                kw["add_special_tokens"] = False  # the template already has it (as apply_chat_template does)
            enc = self.processor(images=[im], text=[text], return_tensors="pt", **kw)
            out.append(_Prompt(enc["input_ids"][0].tolist(),
                               {k: enc[k][0].tolist() for k in _TOKEN_FIELDS if k in enc},
                               {k: v for k, v in enc.items() if k not in _TEXT_KEYS and hasattr(v, "shape")}))
        return out

    def _encode_targets(self, texts: Sequence[str], *, add_eos: bool) -> list[list[int]]:
        tok, eos = self.tokenizer, self.eos_token_id
        out = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"][: self.max_caption_tokens]
            out.append(ids + [eos] if add_eos else ids)
        return out

    def _image_batch(self, prompts: list[_Prompt]) -> dict:
        """Concatenate the images' tensors along dim 0, zero-padding other dims where sizes differ
        (Idefics3 patch counts); Qwen2-VL's flattened patches concatenate as they are."""
        import torch

        dtype = next(self.model.parameters()).dtype
        out = {}
        for key in prompts[0].image_inputs:
            ts = [p.image_inputs[key] for p in prompts]
            if len({tuple(t.shape[1:]) for t in ts}) > 1:
                shape = [max(t.shape[d] for t in ts) for d in range(1, ts[0].ndim)]
                padded = []
                for t in ts:
                    z = t.new_zeros((t.shape[0], *shape))
                    z[(slice(None), *(slice(0, s) for s in t.shape[1:]))] = t
                    padded.append(z)
                ts = padded
            v = torch.cat(ts, 0).to(self.device)
            out[key] = v.to(dtype) if v.is_floating_point() else v
        return out

    def _assemble(self, prompts: list[_Prompt], targets: list[list[int]]):
        """Right-padded ``[prompt ; target]`` ids, attention mask, labels (-100 off-target), per-token fields."""
        import torch

        b = len(prompts)
        seqs = [p.ids + t for p, t in zip(prompts, targets)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id
        ids = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros(b, width, dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        fields = {}
        for key in prompts[0].token_fields:
            # PaliGemma: type 1 = the causal suffix (caption); pads too, so they never join the prefix block.
            fill = 1 if (self.family == "paligemma" and key == "token_type_ids") else 0
            fields[key] = torch.full((b, width), fill, dtype=torch.long)
        for i, (p, t) in enumerate(zip(prompts, targets)):
            n = len(p.ids)
            ids[i, : n + len(t)] = torch.tensor(seqs[i], dtype=torch.long)
            mask[i, : n + len(t)] = 1
            if t:
                labels[i, n: n + len(t)] = torch.tensor(t, dtype=torch.long)
            for key, vals in p.token_fields.items():
                fields[key][i, :n] = torch.tensor(vals, dtype=torch.long)
        dev = self.device
        return ids.to(dev), mask.to(dev), labels.to(dev), {k: v.to(dev) for k, v in fields.items()}

    def _logits(self, images: Sequence[Any], prompts: Sequence[str] | None, targets: list[list[int]]):
        """``(logits (B, T, V), labels (B, T))`` over the assembled text positions (image positions dropped)."""
        enc = self._encode_prompts(images, prompts)
        ids, mask, labels, fields = self._assemble(enc, targets)
        image_inputs = self._image_batch(enc)
        if self.family == "encoder-decoder":
            out = self.model(**image_inputs, decoder_input_ids=ids, decoder_attention_mask=mask)
        else:
            out = self.model(**image_inputs, input_ids=ids, attention_mask=mask, **fields)
        # GIT returns logits for its prepended image tokens too; text positions are always the last T.
        return out.logits[:, -ids.shape[1]:], labels

    # ---- the common calls --------------------------------------------------------------------------------
    def forward(self, batch: dict):
        """Same as :meth:`loss` (what training wrappers call)."""
        return self.loss(batch)

    def loss(self, batch: dict):
        """Mean token cross-entropy of ``batch["captions"]`` (each + eos) given ``batch["images"]`` (PIL) and
        optional ``batch["prompts"]``; prompt, image and padding tokens are not scored. No label smoothing."""
        import torch

        if batch.get("images") is None or batch.get("captions") is None:
            raise ValueError("HFCaptioner.loss: batch needs 'images' (PIL) and 'captions' (list of str)")
        targets = self._encode_targets(batch["captions"], add_eos=True)
        logits, labels = self._logits(batch["images"], batch.get("prompts"), targets)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                 ignore_index=-100)

    def token_log_probs(self, texts: Sequence[str], *, images: Sequence[Any] | None = None,
                        prompts: Sequence[str] | None = None, add_eos: bool = True):
        """Log-probabilities of each token of ``texts`` given the images: ``(logp (B, T), mask (B, T))``.

        Differentiable (what REINFORCE and GRPO need). Row ``i`` holds text ``i``'s tokens in order (then eos
        when ``add_eos``), left-aligned; ``mask`` marks them. ``-(logp * mask).sum() / mask.sum()`` equals
        :meth:`loss` on the same batch.
        """
        import torch

        if images is None:
            raise ValueError("HFCaptioner.token_log_probs needs images=[PIL images]")
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts")
        targets = self._encode_targets(texts, add_eos=add_eos)
        logits, labels = self._logits(images, prompts, targets)
        tgt = labels[:, 1:]
        valid = tgt != -100
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        width = max(len(t) for t in targets)
        out = logp.new_zeros(len(targets), width)
        out_mask = torch.zeros(len(targets), width, dtype=torch.bool, device=logp.device)
        for i in range(len(targets)):
            cols = valid[i].nonzero()[:, 0]
            out[i, : len(cols)] = logp[i, cols]
            out_mask[i, : len(cols)] = True
        return out, out_mask

    def generate(self, images: Sequence[Any], prompts: Sequence[str] | None = None, *, num_beams: int = 1,
                 max_new_tokens: int = 20, do_sample: bool = False, batch_size: int = 16,
                 stop_at_period: bool = False, **generate_kw: Any) -> list[str]:
        """Caption (or answer ``prompts`` about) ``images``; one string per image (times
        ``num_return_sequences``, grouped by image), in order. Only new tokens are decoded.

        Images whose prompts have the same token length run together, so no prompt is padded (padding
        would shift the positions of models that do not derive them from the attention mask).
        """
        import torch

        from vlm.devices import autocast

        if prompts is not None and len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        tok = self.tokenizer
        reps = int(generate_kw.get("num_return_sequences", 1))
        out: list[str] = []
        for start in range(0, len(images), batch_size):
            sl = slice(start, start + batch_size)
            enc = self._encode_prompts(images[sl], prompts[sl] if prompts is not None else None)
            groups: dict[tuple, list[int]] = {}
            for i, p in enumerate(enc):
                key = (len(p.ids), tuple((k, tuple(v.shape[1:])) for k, v in p.image_inputs.items()))
                groups.setdefault(key, []).append(i)
            texts: list[list[str]] = [[] for _ in enc]
            for idx in groups.values():
                group = [enc[i] for i in idx]
                ids = torch.tensor([p.ids for p in group], dtype=torch.long, device=self.device)
                kw = dict(self._image_batch(group), num_beams=num_beams, max_new_tokens=max_new_tokens,
                          do_sample=do_sample, **generate_kw)
                if self.family == "encoder-decoder":
                    kw["decoder_input_ids"] = ids
                elif self.family == "blip":
                    # BLIP's generate drops the last prompt token (the tokenizer's [SEP]): give it one to drop.
                    kw["input_ids"] = torch.cat([ids, torch.full_like(ids[:, :1], self.eos_token_id)], 1)
                    kw["attention_mask"] = torch.ones_like(kw["input_ids"])
                else:
                    kw.update(input_ids=ids, attention_mask=torch.ones_like(ids))
                    kw.update({k: torch.tensor([p.token_fields[k] for p in group], device=self.device)
                               for k in group[0].token_fields})
                with torch.inference_mode(), autocast(self.device):
                    gen = self.model.generate(**kw)
                decoded = tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
                for j, i in enumerate(idx):
                    texts[i] = decoded[j * reps: (j + 1) * reps]
            for group_texts in texts:
                for t in group_texts:
                    t = t.strip()
                    out.append(truncate_at_period(t) if stop_at_period else t)
        return out


def load_captioner(spec: str | Path, *, device: str = "cpu"):
    """A trained captioner from a spec: a folder saved with ``save_pretrained`` (a finecap prefix captioner
    or a transformers model) or a transformers hub id (online). See also :func:`vlm.models.create_captioner`.

    Example:
        >>> load_captioner("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: captioner '/no/such/folder' is neither a local folder nor in the local hub cache...
    """
    from vlm.models.registry import create_captioner

    path = Path(spec)
    if path.is_dir():
        return create_captioner(str(path), device=device)
    return HFCaptioner.from_pretrained(spec, device=device)
