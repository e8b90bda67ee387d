"""CLIP-S and RefCLIP-S (Hessel et al., 2021) with any retriever.

A retriever is any object with ``encode_images(list[PIL.Image]) -> Tensor (N, D)`` and
``encode_texts(list[str]) -> Tensor (N, D)``, both L2-normalised (a CLIP model, or this package's
retrievers). With ``w = 2.5`` and the paper's prompt ``"A photo depicts "`` before every caption:

* ``CLIP-S(c, v) = w * max(cos(E_v, E_c), 0)``;
* ``RefCLIP-S(c, R, v) = H-Mean(CLIP-S(c, v), max(max_r cos(E_c, E_r), 0))``, the harmonic mean of the
  (w-scaled) image-text score and the best candidate-reference text similarity (as in the paper and its
  reference implementation, only the image-text term carries ``w``).

Corpus values are means over images. Some papers report CLIP-S x 100, or with ``w = 1``; pass ``w`` to match.

Example:
    >>> import torch
    >>> class Toy:  # two "concepts": red things and blue things
    ...     def encode_images(self, images):
    ...         return torch.tensor([[1.0, 0.0] if im.getpixel((0, 0))[0] > 128 else [0.0, 1.0] for im in images])
    ...     def encode_texts(self, texts):
    ...         v = torch.tensor([[1.0, 0.2] if "red" in t else [0.2, 1.0] for t in texts])
    ...         return v / v.norm(dim=1, keepdim=True)
    >>> from PIL import Image
    >>> imgs = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    >>> out = clip_score(Toy(), imgs, ["a red ball", "a red car"], references=[["red"], ["blue"]])
    >>> [round(x, 4) for x in out["per_image"]["CLIP-S"]]
    [2.4515, 0.4903]
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["clip_score", "CLIP_PROMPT"]

#: The prompt Hessel et al. put before every caption.
CLIP_PROMPT = "A photo depicts "


def _encode(fn, items: list, batch_size: int, what: str):
    import torch

    chunks = []
    for i in range(0, len(items), batch_size):
        out = fn(items[i:i + batch_size])
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(items[i:i + batch_size]):
            raise ValueError(f"clip_score: the retriever's {what} must return a (N, D) tensor for N inputs, got "
                             f"{getattr(out, 'shape', type(out).__name__)} for {len(items[i:i + batch_size])}")
        chunks.append(out.detach().float().cpu())
    emb = torch.cat(chunks)
    norms = emb.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(f"clip_score: the retriever's {what} must return L2-normalised rows "
                         f"(norms range {norms.min().item():.4f}..{norms.max().item():.4f})")
    return emb


def clip_score(retriever, images: Sequence, candidates: Sequence[str], *,
               references: Sequence[Sequence[str]] | None = None, w: float = 2.5,
               prompt: str | None = CLIP_PROMPT, batch_size: int = 64) -> dict:
    """CLIP-S (and RefCLIP-S when ``references`` are given) of ``candidates`` for ``images``.

    Args:
        retriever: object with ``encode_images`` / ``encode_texts`` returning L2-normalised (N, D) tensors.
        images: PIL images (or anything ``encode_images`` takes), one per candidate.
        candidates: one caption per image.
        references: optional reference captions per image, for RefCLIP-S.
        w: CLIP-S scale (2.5 in the paper).
        prompt: text put before every caption (the paper's ``"A photo depicts "``; None for none).
        batch_size: items per encoder call.

    Returns:
        ``{"CLIP-S": mean, "RefCLIP-S": mean (with references), "per_image": {"CLIP-S": [...], ...}}``.
    """
    import torch

    if len(images) != len(candidates):
        raise ValueError(f"clip_score: {len(images)} images but {len(candidates)} candidates")
    if not candidates:
        raise ValueError("clip_score: no candidates")
    if references is not None and len(references) != len(candidates):
        raise ValueError(f"clip_score: {len(references)} reference lists but {len(candidates)} candidates")
    p = prompt or ""
    with torch.inference_mode():
        img = _encode(retriever.encode_images, list(images), batch_size, "encode_images")
        cand = _encode(retriever.encode_texts, [p + c for c in candidates], batch_size, "encode_texts")
        cos = (img * cand).sum(dim=1)                                          # (N,)
        clip_s = w * cos.clamp_min(0)
        out = {"CLIP-S": clip_s.mean().item(), "per_image": {"CLIP-S": clip_s.tolist()}}
        if references is not None:
            if any(len(r) == 0 for r in references):
                raise ValueError("clip_score: every image needs at least one reference for RefCLIP-S")
            flat = [p + r for refs in references for r in refs]
            ref = _encode(retriever.encode_texts, flat, batch_size, "encode_texts")
            owner = torch.repeat_interleave(torch.arange(len(references)), torch.tensor([len(r) for r in references]))
            sims = (ref * cand[owner]).sum(dim=1)                              # (R,)
            best = torch.full((len(references),), -float("inf")).scatter_reduce(0, owner, sims, "amax")
            text_term = best.clamp_min(0)
            denom = clip_s + text_term
            ref_clip = torch.where(denom > 0, 2 * clip_s * text_term / denom.clamp_min(1e-12), torch.zeros_like(denom))
            out["RefCLIP-S"] = ref_clip.mean().item()
            out["per_image"]["RefCLIP-S"] = ref_clip.tolist()
    return out
