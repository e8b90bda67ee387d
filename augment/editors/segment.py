"""Text-prompted segmenters: where in an image is "the red car"? The inpainting editor's source of masks.

A segmenter is anything with ``segment(images, phrases) -> list of (H, W) bool arrays`` (True = the phrase's
region, at the image's size); a plain function with that signature works too (:func:`as_segmenter`). TIDA
used CLIPSeg (Lüddecke & Ecker, 2022); :class:`CLIPSegSegmenter` runs it through transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from augment.editors.base import dilate, resolve_model

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_CLIPSEG = "CIDAS/clipseg-rd64-refined"
"""The CLIPSeg checkpoint of the hub that :class:`CLIPSegSegmenter` loads by default (online only)."""


@runtime_checkable
class Segmenter(Protocol):
    """Finds the region a phrase names in each image.

    Example:
        >>> import numpy as np
        >>> class Everything:
        ...     def segment(self, images, phrases):
        ...         return [np.ones((im.height, im.width), bool) for im in images]
        >>> isinstance(Everything(), Segmenter)
        True
    """

    def segment(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[np.ndarray]:
        """One ``(H, W)`` bool mask per image, True inside the phrase's region."""
        ...


class _FunctionSegmenter:
    def __init__(self, fn: Callable[[Sequence[Any], Sequence[str]], list[Any]]):
        self.fn = fn

    def segment(self, images, phrases):
        return self.fn(images, phrases)


def as_segmenter(obj: Segmenter | Callable[..., list[Any]]) -> Segmenter:
    """A :class:`Segmenter` from one, or from a function ``(images, phrases) -> masks``.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> seg = as_segmenter(lambda ims, ps: [np.zeros((im.height, im.width), bool) for im in ims])
        >>> seg.segment([Image.new("RGB", (3, 2))], ["a cat"])[0].shape
        (2, 3)
    """
    if isinstance(obj, Segmenter):
        return obj
    if callable(obj):
        return _FunctionSegmenter(obj)
    raise TypeError(f"a segmenter needs a segment(images, phrases) method or must be callable, "
                    f"got {type(obj).__name__}")


class CLIPSegSegmenter:
    """CLIPSeg (transformers ``CLIPSegForImageSegmentation``) as a :class:`Segmenter`.

    The model predicts a low-resolution logit map per (image, phrase); it is resized to the image,
    passed through a sigmoid, thresholded and grown by ``dilate`` pixels (an inpainting mask must cover the
    object's edge and shadow).

    Args:
        model: a hub id (online, or offline from the local hub cache), a local folder holding the model and
            its processor, or a loaded ``CLIPSegForImageSegmentation``.
        processor: the ``CLIPSegProcessor``; loaded from ``model``'s folder when None.
        threshold: probability above which a pixel belongs to the phrase (0.4: a common choice with
            clipseg-rd64-refined; TIDA's value is unverified).
        dilate: pixels to grow each mask by.
        device: "cpu", "cuda", ... or "auto".
        batch_size: (image, phrase) pairs per forward pass.

    Example::

        seg = CLIPSegSegmenter("CIDAS/clipseg-rd64-refined")   # online, or a local folder
        [mask] = seg.segment([image], ["the red car"])
    """

    def __init__(self, model: Any = DEFAULT_CLIPSEG, processor: Any = None, *, threshold: float = 0.4,
                 dilate: int = 4, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        from vlm.devices import resolve_device

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"CLIPSegSegmenter.threshold must be in (0, 1), got {threshold}")
        self.device = resolve_device(device)
        if isinstance(model, (str, Path)):
            path = resolve_model(model, "CLIPSeg model", "masks passed to edit(masks=...) (the built-in world's "
                                 "SceneEditor knows its masks exactly)")
            self.name = str(model)
            model = CLIPSegForImageSegmentation.from_pretrained(path)
            processor = processor if processor is not None else CLIPSegProcessor.from_pretrained(path)
        else:
            self.name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        if processor is None:
            raise ValueError("CLIPSegSegmenter: a loaded model needs its processor= (a CLIPSegProcessor)")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.threshold = threshold
        self.dilate = dilate
        self.batch_size = batch_size

    def probabilities(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[torch.Tensor]:
        """The per-pixel probability that each pixel shows its phrase: ``(H, W)`` float tensors in [0, 1]."""
        import torch
        import torch.nn.functional as F

        if len(images) != len(phrases):
            raise ValueError(f"got {len(images)} images and {len(phrases)} phrases; pass one phrase per image")
        out: list[torch.Tensor] = []
        for s in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[s:s + self.batch_size]]
            inputs = self.processor(text=list(phrases[s:s + self.batch_size]), images=ims, padding=True,
                                    return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**inputs).logits
            if logits.dim() == 2:  # CLIPSeg squeezes a batch of one
                logits = logits[None]
            for im, lg in zip(ims, logits.float().cpu()):
                lg = F.interpolate(lg[None, None], size=(im.height, im.width), mode="bilinear", align_corners=False)
                out.append(torch.sigmoid(lg[0, 0]))
        return out

    def segment(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[np.ndarray]:
        return [dilate(p.numpy() > self.threshold, self.dilate) for p in self.probabilities(images, phrases)]
