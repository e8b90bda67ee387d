"""Hugging Face image-to-text models behind finecap's captioner calls.

Any model that ``transformers.AutoModelForImageTextToText`` loads (BLIP, BLIP-2, GIT, LLaVA, PaliGemma,
Idefics3/SmolVLM, Qwen2-VL, ``VisionEncoderDecoderModel`` ...) together with its ``AutoProcessor``, from a
hub id (online) or a local folder. The common call is :meth:`HFCaptioner.generate`: batched, KV-cached,
greedy or beam search, optional text prompts, optional stop at the first '.'.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)


def truncate_at_period(text: str) -> str:
    """Cut a caption after its first sentence, as ClipCap-style decoding does.

    Example:
        >>> truncate_at_period("a red circle. a blue square")
        'a red circle.'
    """
    i = text.find(".")
    return text[: i + 1] if i >= 0 else text


class HFCaptioner:
    """A transformers image-to-text model and its processor.

    Args:
        model: an image-to-text ``PreTrainedModel`` in eval mode.
        processor: its ``ProcessorMixin`` (image processor + tokenizer).
        name: where it came from (hub id or folder).

    Example (online; offline, pass a folder saved with ``save_pretrained``)::

        cap = HFCaptioner.from_pretrained("Salesforce/blip-image-captioning-base")
        cap.generate([image], num_beams=3)  # ['a cat sitting on a couch']
    """

    def __init__(self, model: Any, processor: Any, *, name: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device: str = "cpu", dtype: Any = None) -> HFCaptioner:
        """Load model + processor from a local folder or (online) a hub id; offline hub ids fail fast."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

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
        kw = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForImageTextToText.from_pretrained(str(local), **kw).to(device)
        processor = AutoProcessor.from_pretrained(str(local))
        return cls(model, processor, name=str(name_or_path))

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def generate(self, images: Sequence[Any], prompts: Sequence[str] | None = None, *, num_beams: int = 1,
                 max_new_tokens: int = 20, do_sample: bool = False, batch_size: int = 16,
                 stop_at_period: bool = False, **generate_kw: Any) -> list[str]:
        """Caption (or answer ``prompts`` about) ``images``; one string per image, in order.

        Decoder-only models (GIT, LLaVA...) echo the prompt: only the new tokens are decoded.
        """
        import torch

        from vlm.devices import autocast

        if prompts is not None and len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        decoder_only = not getattr(self.model.config, "is_encoder_decoder", False)
        out: list[str] = []
        for start in range(0, len(images), batch_size):
            batch_images = [im.convert("RGB") for im in images[start:start + batch_size]]
            kw: dict[str, Any] = {"images": batch_images, "return_tensors": "pt"}
            if prompts is not None:
                kw["text"] = list(prompts[start:start + batch_size])
                kw["padding"] = True
            inputs = self.processor(**kw).to(self.device)
            with torch.inference_mode(), autocast(self.device):
                ids = self.model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                          do_sample=do_sample, **generate_kw)
            if decoder_only and "input_ids" in inputs:
                ids = ids[:, inputs["input_ids"].shape[1]:]
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            texts = [t.strip() for t in texts]
            out.extend(truncate_at_period(t) if stop_at_period else t for t in texts)
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
