"""Edit verification (TIDA step 5): keep an edited image only if it shows the new caption, not the old one.

Checks, each with a configurable threshold (:class:`VerifyConfig`), on embeddings of any
:class:`vlm.retrieval.Retriever` (cosine similarities of unit vectors):

- ``margin``: the edited image matches the target caption better than the source caption:
  ``cos(edited, target) - cos(edited, source) >= margin``;
- ``gain`` (optional, needs the original images): the edit moved the image toward the target caption by at
  least this much: ``margin(edited) - margin(original) >= gain``;
- ``direction`` (optional, needs the originals): the directional similarity of Gal et al. (2022), as
  InstructPix2Pix filters its data: ``cos(E(edited) - E(original), E(target) - E(source)) >= direction``;
- ``unmasked``: where a mask and the original exist, the pixels outside the mask were preserved: their mean
  absolute difference (0-1 scale) is at most ``max_unmasked_diff``.

An edit that was not applied (an :class:`~augment.editors.EditResult` with ``ok`` False) is rejected by the
``applied`` check. :func:`acceptance_stats` counts decisions per skill and which checks failed.

Example:
    >>> import torch
    >>> class Toy:  # images and texts embed by a colour word: red -> e0, blue -> e1
    ...     name = "toy"
    ...     def encode_images(self, images, *, batch_size=64):
    ...         return torch.tensor([[1.0, 0.0] if im.getpixel((0, 0))[0] > 128 else [0.0, 1.0] for im in images])
    ...     def encode_texts(self, texts, *, batch_size=256):
    ...         return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])
    >>> from PIL import Image
    >>> blue, red = Image.new("RGB", (4, 4), "blue"), Image.new("RGB", (4, 4), "red")
    >>> d = EditVerifier(Toy()).verify([blue, red], ["a red car"] * 2, ["a blue car"] * 2, skills=["color"] * 2)
    >>> [x.accepted for x in d], d[1].reasons
    ([True, False], ('margin: cos(edited, target) - cos(edited, source) = -1.000 < 0.000',))
    >>> acceptance_stats(d)["color"]
    {'n': 2, 'accepted': 1, 'rate': 0.5, 'failed': {'margin': 1}}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

CHECKS = ("applied", "margin", "gain", "direction", "unmasked")
"""The checks a decision may run, in the order they are run."""


@dataclass(frozen=True)
class VerifyConfig:
    """Thresholds of :class:`EditVerifier`; a threshold of None turns its check off."""

    margin: float | None = 0.0
    """Least ``cos(edited, target) - cos(edited, source)``: 0 means "closer to the new caption than to the old"."""
    gain: float | None = None
    """Least rise of that margin from the original image to the edited one (needs the originals)."""
    direction: float | None = None
    """Least directional similarity ``cos(E(edited) - E(original), E(target) - E(source))`` (needs the
    originals); 0.2 is a common choice with CLIP ViT-L (InstructPix2Pix), unverified for other retrievers."""
    max_unmasked_diff: float | None = 0.02
    """Largest mean absolute pixel difference (0-1 scale) outside the mask, where a mask and the original
    exist. The scene editor leaves 0 there; diffusion editors with paste-back leave 0 too."""
    batch_size: int = 64
    """Images per ``encode_images`` call."""

    def __post_init__(self) -> None:
        for name in ("margin", "gain", "direction"):
            v = getattr(self, name)
            if v is not None and not -2.0 <= v <= 2.0:
                raise ValueError(f"VerifyConfig.{name} is a difference of cosines, in [-2, 2]; got {v}")
        if self.max_unmasked_diff is not None and not 0.0 <= self.max_unmasked_diff <= 1.0:
            raise ValueError(f"VerifyConfig.max_unmasked_diff must be in [0, 1], got {self.max_unmasked_diff}")
        if self.batch_size < 1:
            raise ValueError(f"VerifyConfig.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class EditDecision:
    """Whether an edit is kept, with every score computed and every check run."""

    accepted: bool
    skill: str | None
    scores: dict[str, float] = field(default_factory=dict)
    """``sim_target``, ``sim_source``, ``margin``; with originals ``orig_margin``, ``gain``, ``direction``; with a
    mask ``unmasked_diff``."""
    checks: dict[str, bool] = field(default_factory=dict)
    """Each check run (see :data:`CHECKS`) and whether it passed."""
    reasons: tuple[str, ...] = ()
    """One line per failed check: which, the value and the threshold."""

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "skill": self.skill, "scores": self.scores, "checks": self.checks,
                "reasons": list(self.reasons)}


class EditVerifier:
    """Decide which edits to keep, by a retriever's image-text similarities and by pixel preservation.

    Args:
        retriever: any :class:`vlm.retrieval.Retriever` (``load_retriever("finecap:lit")`` on the built-in
            world, a CLIP elsewhere).
        config: thresholds (:class:`VerifyConfig`); the defaults keep edits whose image is closer to the new
            caption than to the old one and whose unmasked pixels moved by at most 2 %.
    """

    def __init__(self, retriever: Any, config: VerifyConfig | None = None) -> None:
        self.retriever = retriever
        self.config = config or VerifyConfig()

    def verify(self, edited: Sequence[Any], source_captions: Sequence[str], target_captions: Sequence[str], *,
               originals: Sequence[Image.Image] | None = None, masks: Sequence[Any] | None = None,
               skills: Sequence[str | None] | None = None) -> list[EditDecision]:
        """One :class:`EditDecision` per edit.

        Args:
            edited: edited PIL images, or :class:`~augment.editors.EditResult` (their image, their mask when
                ``masks`` is None, and their ``params["skill"]`` when ``skills`` is None).
            source_captions: the caption of each original image.
            target_captions: the counterfactual caption each edit should show.
            originals: the images before editing (needed by ``gain``, ``direction`` and the unmasked check).
            masks: where each edit was allowed to change pixels (PIL, arrays, tensors or None).
            skills: the skill of each edit, for :func:`acceptance_stats`.
        """
        from augment.editors.base import as_mask

        cfg = self.config
        n = len(edited)
        for name, seq in (("source_captions", source_captions), ("target_captions", target_captions),
                          ("originals", originals), ("masks", masks), ("skills", skills)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"EditVerifier.verify: {name} has {len(seq)} items for {n} edits")
        if originals is None and (cfg.gain is not None or cfg.direction is not None):
            raise ValueError("EditVerifier.verify: the gain and direction checks need originals=; pass the images "
                             "before editing or set VerifyConfig(gain=None, direction=None)")
        images, mask_list, skill_list = [], [], []
        for i, e in enumerate(edited):
            is_result = hasattr(e, "ok") and hasattr(e, "params")
            images.append(e.image if is_result else e)
            mask_list.append(masks[i] if masks is not None else (e.mask if is_result else None))
            skill_list.append(skills[i] if skills is not None else
                              (e.params.get("skill") if is_result else None))
        done = [i for i, im in enumerate(images) if im is not None]

        texts = sorted(set(source_captions) | set(target_captions))
        t_emb = _unit(self.retriever.encode_texts(texts))
        t_of = {t: t_emb[k] for k, t in enumerate(texts)}
        e_emb = _unit(self.retriever.encode_images([images[i] for i in done], batch_size=cfg.batch_size)) \
            if done else None
        o_emb = None
        if originals is not None and done and (cfg.gain is not None or cfg.direction is not None):
            o_emb = _unit(self.retriever.encode_images([originals[i] for i in done], batch_size=cfg.batch_size))

        out: list[EditDecision | None] = [None] * n
        for i in range(n):
            if images[i] is None:
                why = getattr(edited[i], "reason", None) or "no edited image"
                out[i] = EditDecision(False, skill_list[i], {}, {"applied": False}, (f"applied: {why}",))
        for k, i in enumerate(done):
            src, tgt = t_of[source_captions[i]], t_of[target_captions[i]]
            scores: dict[str, float] = {}
            checks: dict[str, bool] = {"applied": True}
            reasons: list[str] = []
            e = e_emb[k]
            scores["sim_target"], scores["sim_source"] = float(e @ tgt), float(e @ src)
            scores["margin"] = scores["sim_target"] - scores["sim_source"]
            if cfg.margin is not None:
                checks["margin"] = scores["margin"] >= cfg.margin
                if not checks["margin"]:
                    reasons.append(f"margin: cos(edited, target) - cos(edited, source) = {scores['margin']:.3f} "
                                   f"< {cfg.margin:.3f}")
            if o_emb is not None:
                o = o_emb[k]
                scores["orig_margin"] = float(o @ tgt - o @ src)
                scores["gain"] = scores["margin"] - scores["orig_margin"]
                d_img, d_txt = e - o, tgt - src
                denom = float(d_img.norm() * d_txt.norm())
                scores["direction"] = float(d_img @ d_txt) / denom if denom > 1e-12 else 0.0
                if cfg.gain is not None:
                    checks["gain"] = scores["gain"] >= cfg.gain
                    if not checks["gain"]:
                        reasons.append(f"gain: the margin rose by {scores['gain']:.3f} < {cfg.gain:.3f}")
                if cfg.direction is not None:
                    checks["direction"] = scores["direction"] >= cfg.direction
                    if not checks["direction"]:
                        reasons.append(f"direction: directional similarity {scores['direction']:.3f} "
                                       f"< {cfg.direction:.3f}")
            if cfg.max_unmasked_diff is not None and originals is not None and mask_list[i] is not None:
                m = as_mask(mask_list[i], originals[i].size)
                diff = _unmasked_diff(originals[i], images[i], m)
                if diff is not None:
                    scores["unmasked_diff"] = diff
                    checks["unmasked"] = diff <= cfg.max_unmasked_diff
                    if not checks["unmasked"]:
                        reasons.append(f"unmasked: mean pixel change outside the mask {diff:.4f} > "
                                       f"{cfg.max_unmasked_diff:.4f}")
            out[i] = EditDecision(all(checks.values()), skill_list[i], scores, checks, tuple(reasons))
        return out  # type: ignore[return-value]


def _unit(x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.normalize(x.float(), dim=-1)


def _unmasked_diff(original: Image.Image, edited: Image.Image, mask: np.ndarray) -> float | None:
    """Mean absolute difference (0-1) of the pixels outside ``mask``; None when the mask covers everything."""
    import numpy as np

    if edited.size != original.size:
        raise ValueError(f"an edited image is {edited.size[0]}x{edited.size[1]} but its original is "
                         f"{original.size[0]}x{original.size[1]}: the unmasked check needs the same size")
    keep = ~mask
    if not keep.any():
        return None
    a = np.asarray(original.convert("RGB"), dtype=np.float32)
    b = np.asarray(edited.convert("RGB"), dtype=np.float32)
    return float(np.abs(a - b)[keep].mean() / 255.0)


def acceptance_stats(decisions: Sequence[EditDecision]) -> dict[str, dict[str, Any]]:
    """Per skill (and ``"all"``): how many edits, how many kept, the rate, and how often each check failed.

    Edits without a skill count under ``"unknown"``.

    Example:
        >>> stats = acceptance_stats([EditDecision(True, "gender"),
        ...                           EditDecision(False, "gender", checks={"margin": False})])
        >>> stats["gender"]
        {'n': 2, 'accepted': 1, 'rate': 0.5, 'failed': {'margin': 1}}
        >>> stats["all"] == stats["gender"]
        True
    """
    out: dict[str, dict[str, Any]] = {}
    for key in ["all"] + sorted({d.skill or "unknown" for d in decisions}):
        ds = [d for d in decisions if key == "all" or (d.skill or "unknown") == key]
        failed: dict[str, int] = {}
        for d in ds:
            for check in CHECKS:
                if d.checks.get(check) is False:
                    failed[check] = failed.get(check, 0) + 1
        accepted = sum(d.accepted for d in ds)
        out[key] = {"n": len(ds), "accepted": accepted, "rate": round(accepted / len(ds), 6) if ds else 0.0,
                    "failed": failed}
    return out
