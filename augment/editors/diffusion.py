"""Diffusion editors (TIDA step 4): inpaint the phrase's region, follow an edit instruction, or regenerate.

Three ways to make an image show the counterfactual caption, all on Hugging Face diffusers pipelines:

- :class:`InpaintEditor`: repaint only the region of the edited noun phrase (a mask given, or found by a
  text-prompted segmenter such as CLIPSeg) with Stable Diffusion inpainting; pixels outside the mask are
  pasted back, so they stay exactly as they were.
- :class:`InstructPix2PixEditor`: InstructPix2Pix with an instruction built from the caption edit ("make the
  red car blue", "turn the man into a woman").
- :class:`RegenerateEditor`: a new image from the target caption alone (Stable Diffusion text-to-image;
  TIDA: SD 1.5, guidance 8).

A model is a hub id (online, or offline from the local hub cache) or a folder written by
``pipeline.save_pretrained``; an offline hub id that is not cached fails at once with
:class:`vlm.pretrained.HubOfflineError`. Noise comes from a CPU ``torch.Generator`` per image seeded with that
image's seed: an image gets the same noise whatever its batch and device, so a repeated call gives the same
pixels, and the same image in another batch differs only by float rounding (a grey level or two).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augment.editors.base import (EditItem, EditNotApplicable, EditResult, ImageEditor, as_mask, dilate,
                                  mask_image, paste_back, request_for, resolve_model)
from augment.editors.segment import Segmenter, as_segmenter

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
DEFAULT_PIX2PIX_MODEL = "timbrooks/instruct-pix2pix"
DEFAULT_TEXT2IMAGE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

_OFFLINE_ALTERNATIVE = "SceneEditor on the built-in world (exact, no model)"
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    import torch

    if dtype is None or dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {sorted(set(_DTYPES))}, a torch.dtype, or 'auto'")
    return getattr(torch, _DTYPES[str(dtype)])


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype`` in diffusers that have it (``torch_dtype`` is deprecated
    there), ``torch_dtype`` in older ones."""
    from diffusers.utils import deprecation_utils

    # The helper that maps torch_dtype onto dtype came with the dtype argument.
    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


class DiffusionEditor(ImageEditor):
    """What the diffusion editors share: loading, device and dtype, seeds, batching by image size.

    Args:
        model: a hub id, a folder written by ``save_pretrained``, or a loaded diffusers pipeline (moved to
            ``device``; it keeps its own dtype).
        device: "cpu", "cuda", "cuda:1" or "auto" (CUDA when present).
        dtype: "float16", "bfloat16", "float32", a ``torch.dtype``, or "auto" (float16 on CUDA, float32 on CPU):
            the dtype a model is loaded in.
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance of the text.
        negative_prompt: what images should not show (one string for all), or None.
        batch_size: images per pipeline call (images of one size are batched together).
        seed: the seed of edits without one.
    """

    name = "diffusion"
    default_model = ""
    _auto_class = ""

    def __init__(self, model: Any = None, *, device: str = "auto", dtype: Any = "auto",
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, negative_prompt: str | None = None,
                 batch_size: int = 4, seed: int = 0) -> None:
        from vlm.devices import resolve_device

        if num_inference_steps < 1:
            raise ValueError(f"{type(self).__name__}: num_inference_steps must be >= 1, got {num_inference_steps}")
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        self.batch_size = batch_size
        self.seed = seed
        model = self.default_model if model is None else model
        if isinstance(model, (str, Path)):
            self.model_name = str(model)
            self.pipeline = self._load(resolve_model(model, f"{type(self).__name__} model", _OFFLINE_ALTERNATIVE))
        else:  # a loaded pipeline keeps its dtype
            self.model_name = getattr(model, "name_or_path", None) or type(model).__name__
            self.pipeline = model
            self.dtype = getattr(model, "dtype", self.dtype)
        self.pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)

    def _load(self, path: str) -> Any:
        import diffusers

        return getattr(diffusers, self._auto_class).from_pretrained(path, **_dtype_kwarg(self.dtype))

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model_name, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "negative_prompt": self.negative_prompt,
                "dtype": str(self.dtype).replace("torch.", ""), **extra}

    def _work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The pipeline's size for an image: each side rounded to the VAE's multiple (8 for Stable Diffusion)."""
        m = int(getattr(self.pipeline, "vae_scale_factor", 8))
        return tuple(max(m, round(s / m) * m) for s in size)  # type: ignore[return-value]

    def _generate(self, jobs: list[dict[str, Any]], size: tuple[int, int], call: dict[str, Any]) -> list[Any]:
        """Run the pipeline over ``jobs`` (per-image keyword arguments) of one working size, in batches.

        Returns one PIL image per job, or None where the pipeline's safety checker flagged it.
        """
        import torch

        out: list[Any] = []
        for s in range(0, len(jobs), self.batch_size):
            chunk = jobs[s:s + self.batch_size]
            kw: dict[str, Any] = {k: [j[k] for j in chunk] for k in chunk[0] if k != "seed"}
            kw["generator"] = [torch.Generator("cpu").manual_seed(j["seed"]) for j in chunk]
            if self.negative_prompt is not None:
                kw["negative_prompt"] = [self.negative_prompt] * len(chunk)
            res = self.pipeline(num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                                output_type="pil", **call, **kw)
            flags = getattr(res, "nsfw_content_detected", None) or [False] * len(chunk)
            out.extend(None if flag else img for img, flag in zip(res.images, flags))
        return out

    def _by_size(self, entries: list[tuple[int, tuple[int, int], dict[str, Any]]]
                 ) -> dict[int, Any]:
        """Generate for ``(index, working size, job)`` entries grouped by size; ``{index: image or None}``."""
        sizes: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = {}
        for i, size, job in entries:
            sizes.setdefault(size, []).append((i, job))
        done: dict[int, Any] = {}
        for size, group in sizes.items():
            call = self._call_kwargs(size)
            for (i, _), img in zip(group, self._generate([j for _, j in group], size, call)):
                done[i] = img
        return done

    def _call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        return {}


class InpaintEditor(DiffusionEditor):
    """Repaint the region of the edited phrase with Stable Diffusion inpainting.

    Each image's mask is the one given in ``edit(masks=...)``, else the ``segmenter``'s region of the
    item's edit phrase in the source caption ("the red car"). The prompt is the new phrase ("the blue car",
    ``prompt="phrase"``) or the whole target caption (``prompt="caption"``). The result keeps the pixels
    outside the mask exactly (``paste_back``); its ``mask`` is the mask used.

    Args:
        model: an inpainting pipeline (``AutoPipelineForInpainting``: SD/SDXL inpainting; a plain SD model
            works too, blending latents); see :class:`DiffusionEditor` for the other settings.
        segmenter: a :class:`~augment.editors.Segmenter` (e.g. :class:`~augment.editors.CLIPSegSegmenter`)
            or a function ``(images, phrases) -> masks``; needed only for images without a mask.
        prompt: "phrase" (the edited noun phrase, falling back to the target caption) or "caption".
        strength: how much of the masked region's content is replaced (1.0: all of it).
        mask_dilate: pixels to grow every mask by before inpainting (segmenters dilate their own masks).
        paste_back: copy the unmasked pixels of the input into the output (the VAE changes them slightly).
        guidance_scale: 7.5 (Stable Diffusion's default).

    Example::

        editor = InpaintEditor("stable-diffusion-v1-5/stable-diffusion-inpainting",
                               segmenter=CLIPSegSegmenter(), num_inference_steps=30)
        [r] = editor.edit([image], ["A red car."], ["A blue car."], edit_phrases=["A red car"], seeds=[0])
    """

    name = "inpaint"
    default_model = DEFAULT_INPAINT_MODEL
    _auto_class = "AutoPipelineForInpainting"

    def __init__(self, model: Any = None, *, segmenter: Segmenter | Any = None, prompt: str = "phrase",
                 strength: float = 1.0, mask_dilate: int = 0, paste_back: bool = True, **kw: Any) -> None:
        if prompt not in ("phrase", "caption"):
            raise ValueError(f"InpaintEditor.prompt must be 'phrase' or 'caption', got {prompt!r}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"InpaintEditor.strength must be in (0, 1], got {strength}")
        super().__init__(model, **kw)
        self.segmenter = as_segmenter(segmenter) if segmenter is not None else None
        self.prompt = prompt
        self.strength = strength
        self.mask_dilate = mask_dilate
        self.paste_back = paste_back

    def _call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        return {"width": size[0], "height": size[1], "strength": self.strength}

    def _edit_items(self, items: list[EditItem]) -> list[EditResult]:
        from PIL import Image

        results: dict[int, EditResult] = {}
        masks: dict[int, tuple[np.ndarray, str]] = {}
        phrases: dict[int, str] = {}
        to_segment: list[int] = []
        for i, it in enumerate(items):
            try:
                if it.image is None:
                    raise EditNotApplicable("inpainting needs the input image")
                if it.mask is not None:
                    masks[i] = (it.mask, "given")
                    continue
                phrase = it.phrase or request_for(it).phrase
                if not phrase:
                    raise EditNotApplicable("no mask and no edit phrase to segment")
                if self.segmenter is None:
                    raise ValueError("InpaintEditor: an image has no mask and the editor has no segmenter; pass "
                                     "masks= to edit() or segmenter= (e.g. CLIPSegSegmenter) to the editor")
                phrases[i] = phrase
                to_segment.append(i)
            except EditNotApplicable as err:
                results[i] = EditResult(None, None, self.name, it.seed, self._params(), reason=str(err))
        if to_segment:
            found = self.segmenter.segment([items[i].image for i in to_segment], [phrases[i] for i in to_segment])
            for i, m in zip(to_segment, found):
                masks[i] = (as_mask(m, items[i].image.size), "segmenter")
        entries = []
        prompts: dict[int, str] = {}
        for i, (m, source) in list(masks.items()):
            it = items[i]
            m = dilate(m, self.mask_dilate)
            masks[i] = (m, source)
            if not m.any():
                what = f"the segmenter found no region for {phrases[i]!r}" if source == "segmenter" else "empty mask"
                results[i] = EditResult(None, mask_image(m), self.name, it.seed, self._params(), reason=what)
                continue
            try:
                prompts[i] = self._prompt(it)
            except EditNotApplicable as err:
                results[i] = EditResult(None, mask_image(m), self.name, it.seed, self._params(), reason=str(err))
                continue
            size = self._work_size(it.image.size)
            entries.append((i, size, {"prompt": prompts[i], "image": it.image.resize(size, Image.Resampling.BICUBIC),
                                      "mask_image": mask_image(m).resize(size, Image.Resampling.NEAREST),
                                      "seed": it.seed}))
        for i, img in self._by_size(entries).items():
            it, (m, source) = items[i], masks[i]
            params = self._params(prompt=prompts[i], strength=self.strength, mask_source=source,
                                  size=list(self._work_size(it.image.size)))
            if img is None:
                results[i] = EditResult(None, mask_image(m), self.name, it.seed, params,
                                        reason="the pipeline's safety checker flagged the image")
                continue
            img = img.resize(it.image.size, Image.Resampling.BICUBIC) if img.size != it.image.size else img
            if self.paste_back:
                img = paste_back(it.image, img, m)
            results[i] = EditResult(img, mask_image(m), self.name, it.seed, params,
                                    info={"mask_fraction": round(float(m.mean()), 6)})
        return [results[i] for i in range(len(items))]

    def _prompt(self, it: EditItem) -> str:
        if self.prompt == "caption":
            return it.target
        try:
            return request_for(it).new_phrase or it.target
        except EditNotApplicable:
            return it.target


class InstructPix2PixEditor(DiffusionEditor):
    """Edit by instruction with InstructPix2Pix: "make the red car blue", "turn the two dogs into three dogs".

    The instruction comes from the caption edit (:meth:`~augment.editors.EditRequest.instruction`), or from
    ``instruction_fn(request) -> str`` when given. With ``edit(masks=...)`` only the masked pixels change
    (the rest is pasted back); without, the whole image may change and the result has no mask.

    Args:
        model: a ``StableDiffusionInstructPix2PixPipeline`` (hub id, folder or loaded).
        image_guidance_scale: how closely the output follows the input image (1.5: the pipeline's default).
        guidance_scale: 7.5 (the pipeline's default); see :class:`DiffusionEditor` for the other settings.
        instruction_fn: builds the instruction from an :class:`~augment.editors.EditRequest`.

    Example::

        editor = InstructPix2PixEditor("timbrooks/instruct-pix2pix", num_inference_steps=20)
        [r] = editor.edit([image], ["A red car."], ["A blue car."], seeds=[0])
        r.params["instruction"]   # 'make the red car blue'
    """

    name = "instruct-pix2pix"
    default_model = DEFAULT_PIX2PIX_MODEL

    def __init__(self, model: Any = None, *, image_guidance_scale: float = 1.5, instruction_fn: Any = None,
                 **kw: Any) -> None:
        super().__init__(model, **kw)
        self.image_guidance_scale = image_guidance_scale
        self.instruction_fn = instruction_fn

    def _load(self, path: str) -> Any:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        return StableDiffusionInstructPix2PixPipeline.from_pretrained(path, **_dtype_kwarg(self.dtype))

    def _call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        return {"image_guidance_scale": self.image_guidance_scale}

    def _edit_items(self, items: list[EditItem]) -> list[EditResult]:
        from PIL import Image

        results: dict[int, EditResult] = {}
        instructions: dict[int, str] = {}
        entries = []
        for i, it in enumerate(items):
            try:
                if it.image is None:
                    raise EditNotApplicable("an instruction edit needs the input image")
                req = request_for(it)
                instructions[i] = self.instruction_fn(req) if self.instruction_fn else req.instruction()
            except EditNotApplicable as err:
                results[i] = EditResult(None, None, self.name, it.seed, self._params(), reason=str(err))
                continue
            size = self._work_size(it.image.size)
            entries.append((i, size, {"prompt": instructions[i], "seed": it.seed,
                                      "image": it.image.resize(size, Image.Resampling.BICUBIC)}))
        for i, img in self._by_size(entries).items():
            it = items[i]
            params = self._params(instruction=instructions[i], image_guidance_scale=self.image_guidance_scale,
                                  size=list(self._work_size(it.image.size)))
            if img is None:
                results[i] = EditResult(None, None, self.name, it.seed, params,
                                        reason="the pipeline's safety checker flagged the image")
                continue
            img = img.resize(it.image.size, Image.Resampling.BICUBIC) if img.size != it.image.size else img
            if it.mask is not None:
                img = paste_back(it.image, img, it.mask)
            results[i] = EditResult(img, mask_image(it.mask) if it.mask is not None else None, self.name, it.seed,
                                    params)
        return [results[i] for i in range(len(items))]


class RegenerateEditor(DiffusionEditor):
    """A new image from the target caption alone (TIDA's "regenerate" variant: SD 1.5, guidance 8).

    Nothing of the input image is kept (masks are not used); the output has the input's size, or
    ``image_size`` x ``image_size`` where no input image is given.

    Args:
        model: a text-to-image pipeline (``AutoPipelineForText2Image``).
        image_size: side of images generated without an input image (512 for SD 1.5).
        guidance_scale: 8.0, as in TIDA; see :class:`DiffusionEditor` for the other settings.

    Example::

        editor = RegenerateEditor(num_inference_steps=30)
        [r] = editor.edit([None], ["A red car."], ["A blue car."], seeds=[0])
    """

    name = "regenerate"
    default_model = DEFAULT_TEXT2IMAGE_MODEL
    _auto_class = "AutoPipelineForText2Image"

    def __init__(self, model: Any = None, *, image_size: int = 512, guidance_scale: float = 8.0, **kw: Any) -> None:
        super().__init__(model, guidance_scale=guidance_scale, **kw)
        self.image_size = image_size

    def _call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        return {"width": size[0], "height": size[1]}

    def _edit_items(self, items: list[EditItem]) -> list[EditResult]:
        from PIL import Image

        def out_size(it: EditItem) -> tuple[int, int]:
            return it.image.size if it.image is not None else (self.image_size, self.image_size)

        entries = [(i, self._work_size(out_size(it)), {"prompt": it.target, "seed": it.seed})
                   for i, it in enumerate(items)]
        results = []
        for i, img in sorted(self._by_size(entries).items()):
            it = items[i]
            params = self._params(prompt=it.target, size=list(self._work_size(out_size(it))))
            if img is None:
                results.append(EditResult(None, None, self.name, it.seed, params,
                                          reason="the pipeline's safety checker flagged the image"))
                continue
            if img.size != out_size(it):
                img = img.resize(out_size(it), Image.Resampling.BICUBIC)
            results.append(EditResult(img, None, self.name, it.seed, params))
        return results
