"""What every image editor shares: the edit description, the result, the batched ``edit`` call, masks, seeds.

An editor turns (image, source caption, target caption) into an edited image that the target caption
describes. Editors are batched and seeded: the same inputs and seed give the same image. An edit that cannot
be applied (nothing in the image matches the phrase, the phrase is ambiguous, the segmenter found no region)
is not an error: its :class:`EditResult` has ``image=None`` and a ``reason``, so a dataset job can skip it
and count why.
"""

from __future__ import annotations

import hashlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

logger = logging.getLogger(__name__)


class EditNotApplicable(ValueError):
    """An edit that cannot be applied to this input (ambiguous phrase, nothing matching, no room)."""


@dataclass(frozen=True)
class EditRequest:
    """A caption edit as an image editor needs it: which word of which skill becomes what, and where.

    :class:`augment.counterfactual.CaptionEdit` has these fields, so it can be passed wherever an
    ``EditRequest`` is expected (:meth:`from_any` reads any object or mapping with them).

    Example:
        >>> r = EditRequest("color", "red", "blue", "a red car")
        >>> r.new_phrase, r.instruction()
        ('a blue car', 'make the red car blue')
        >>> EditRequest("gender", "Man", "Woman", "A man").instruction()
        'turn the man into a woman'
    """

    skill: str
    """The skill of the edited word: "color", "counting", "gender" (TIDA's), or "size"."""
    word: str
    """The word as written in the source caption ("red", "Two", "man")."""
    new_word: str
    """What it becomes in the target caption ("blue", "Three", "woman")."""
    phrase: str = ""
    """The noun phrase of the source caption that holds ``word`` ("a red car"): what to edit. Empty when
    unknown: the scene editor then looks for the word alone, the inpainting editor needs a mask."""
    new_phrase: str | None = None
    """That phrase in the target caption ("a blue car"); derived from ``phrase`` when None."""

    def __post_init__(self) -> None:
        for name in ("skill", "word", "new_word"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"EditRequest.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.new_phrase is None:
            object.__setattr__(self, "new_phrase", _edit_phrase(self.phrase, self.word, self.new_word))

    @classmethod
    def from_any(cls, obj: Any) -> EditRequest:
        """An ``EditRequest`` from itself, a mapping, or an object with the same attribute names.

        Example:
            >>> EditRequest.from_any({"skill": "counting", "word": "two", "new_word": "three",
            ...                       "phrase": "two dogs"}).new_phrase
            'three dogs'
        """
        if isinstance(obj, cls):
            return obj
        get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
        missing = [k for k in ("skill", "word", "new_word") if get(k) is None]
        if missing:
            raise ValueError(f"edit description {obj!r} lacks the field(s) {missing}; it needs skill, word, "
                             "new_word and optionally phrase, new_phrase")
        return cls(get("skill"), get("word"), get("new_word"), get("phrase") or "", get("new_phrase"))

    @classmethod
    def from_captions(cls, source: str, target: str, phrase: str | None = None) -> EditRequest:
        """The edit that turns ``source`` into ``target``: the first word that differs, its skill and phrase
        as :func:`augment.skills.find_skills` reads them.

        Example:
            >>> r = EditRequest.from_captions("A man holds two red balloons.", "A man holds two blue balloons.")
            >>> r.skill, r.word, r.new_word, r.phrase, r.new_phrase
            ('color', 'red', 'blue', 'two red balloons', 'two blue balloons')
        """
        from augment.skills import find_skills, load_skills

        src, tgt = list(_WORD.finditer(source)), list(_WORD.finditer(target))
        changed = [(a, b) for a, b in zip(src, tgt) if a.group() != b.group()]
        if not changed:
            raise EditNotApplicable(f"captions {source!r} and {target!r} do not differ in a word")
        matches = find_skills(source, load_skills())
        # The first changed word may be a repair around the skill word ("a red" -> "an orange"): skip those.
        for old, new in changed:
            match = next((m for m in matches if m.start <= old.start() < m.end), None)
            if match is not None:
                return cls(match.skill, old.group(), new.group(), phrase if phrase is not None else match.phrase)
        raise EditNotApplicable(f"no word that changes from {source!r} to {target!r} is a skill word")

    def object_text(self) -> str:
        """The phrase without its leading article: "a red car" -> "red car", "Two dogs" -> "two dogs"."""
        text = self.phrase or self.word
        text = re.sub(r"^(a|an|the)\s+", "", text.strip(), flags=re.IGNORECASE)
        return text[:1].lower() + text[1:]

    def instruction(self) -> str:
        """An InstructPix2Pix-style instruction: "make the red car blue", "turn the two dogs into three dogs"."""
        if self.skill == "color":
            return f"make the {self.object_text()} {self.new_word.lower()}"
        new = self.new_phrase or self.new_word
        return f"turn the {self.object_text()} into {new[:1].lower() + new[1:]}"


_WORD = re.compile(r"[^\W_]+")


def replace_word(text: str, word: str, new: str) -> str:
    """``text`` with its first whole-word ``word`` (any case) replaced by ``new`` written in the same case.

    Example:
        >>> replace_word("Two red balloons", "two", "three")
        'Three red balloons'
    """
    m = re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE)
    if m is None:
        return text
    found = m.group()
    if len(found) > 1 and found.isupper():
        new = new.upper()
    elif found[:1].isupper():
        new = new[:1].upper() + new[1:]
    else:
        new = new[:1].lower() + new[1:]
    return text[:m.start()] + new + text[m.end():]


def _edit_phrase(phrase: str, word: str, new: str) -> str:
    """The phrase with ``word`` replaced, and "a"/"an" before it fixed ("a red apple" -> "an orange apple")."""
    if not phrase:
        return ""
    edited = replace_word(phrase, word, new)
    m = re.match(rf"(a|an)(\s+){re.escape(new)}\b", edited, flags=re.IGNORECASE)
    if m is None:
        return edited
    from augment.counterfactual import indefinite_article

    article = indefinite_article(new)
    article = article[:1].upper() + article[1:] if m.group(1)[:1].isupper() else article
    return article + edited[len(m.group(1)):]


@dataclass
class EditResult:
    """One edited image, or the reason there is none.

    Example:
        >>> r = EditResult(None, None, "scene", 0, reason="nothing in the scene matches 'a red circle'")
        >>> r.ok, r.metadata()["reason"]
        (False, "nothing in the scene matches 'a red circle'")
    """

    image: Image.Image | None
    """The edited RGB image, the size of the input; None when the edit was not applied."""
    mask: Image.Image | None
    """Mode "L", 255 where the editor changed (or was allowed to change) pixels; None when the whole image
    may change (regeneration, instruction edits without a mask)."""
    editor: str
    """The editor's name ("scene", "inpaint", "instruct-pix2pix", "regenerate")."""
    seed: int | None
    """The seed of this edit."""
    params: dict[str, Any] = field(default_factory=dict)
    """The settings that produced it (model, steps, guidance, prompt ...): JSON-serialisable."""
    reason: str | None = None
    """Why the edit was not applied (None when it was)."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the edit did, JSON-serialisable (the scene editor: things changed, the edited scene graph)."""

    @property
    def ok(self) -> bool:
        return self.image is not None

    def metadata(self) -> dict[str, Any]:
        """Everything but the pixels, for a dataset record."""
        return {"editor": self.editor, "seed": self.seed, "params": self.params, "reason": self.reason,
                "info": self.info}


@dataclass
class EditItem:
    """One input of a batched edit, validated (what :meth:`ImageEditor.edit` hands to its implementation)."""

    image: Image.Image | None
    source: str
    target: str
    mask: np.ndarray | None  # (H, W) bool, True = may change
    phrase: str | None
    request: EditRequest | None
    scene: Any
    seed: int


class ImageEditor(ABC):
    """The interface of every editor: ``edit(images, source_captions, target_captions, ...)``.

    Subclasses implement :meth:`_edit_items`. All sequences are per image and of one length; optional ones
    may be None (for all images) or hold None items.

    Example:
        >>> from PIL import Image
        >>> class Identity(ImageEditor):
        ...     name = "identity"
        ...     def _edit_items(self, items):
        ...         return [EditResult(it.image, None, self.name, it.seed) for it in items]
        >>> [r.seed for r in Identity().edit([Image.new("RGB", (4, 4))] * 2, ["a"] * 2, ["b"] * 2, seeds=[3, 4])]
        [3, 4]
    """

    name: str = "editor"
    seed: int = 0
    """Seed of every edit when ``edit`` gets no ``seeds``."""

    def edit(self, images: Sequence[Image.Image | None], source_captions: Sequence[str],
             target_captions: Sequence[str], *, masks: Sequence[Any] | None = None,
             edit_phrases: Sequence[str | None] | None = None, edits: Sequence[Any] | None = None,
             scenes: Sequence[Any] | None = None, seeds: Sequence[int] | None = None) -> list[EditResult]:
        """Edit a batch of images so that each shows its target caption instead of its source caption.

        Args:
            images: the input images (PIL; None only for editors that draw from a scene or from nothing).
            source_captions: what each image shows now.
            target_captions: what each edited image must show (the counterfactual caption).
            masks: where each image may change: PIL images (white = change), ``(H, W)`` bool/float arrays or
                tensors, or None. Editors that need a mask and get none ask their segmenter.
            edit_phrases: the noun phrase of the source caption to edit ("the red car"); defaults to the
                phrase of ``edits`` when given.
            edits: the caption edit of each image: :class:`EditRequest`,
                :class:`augment.counterfactual.CaptionEdit`, or a mapping with ``skill``, ``word``,
                ``new_word``, ``phrase``; derived from the two captions (:meth:`EditRequest.from_captions`)
                where an editor needs one and none is given.
            scenes: scene graphs of the built-in world (:class:`vlm.world.Scene` or its dict), for editors
                that edit scenes (:class:`~augment.editors.SceneEditor`); pixel editors ignore them.
            seeds: one seed per image; default: the editor's ``seed`` for all.

        Returns:
            One :class:`EditResult` per image, in order; ``result.ok`` is False where the edit was skipped.
        """
        return self._edit_items(self._make_items(images, source_captions, target_captions, masks=masks,
                                                 edit_phrases=edit_phrases, edits=edits, scenes=scenes,
                                                 seeds=seeds))

    def _make_items(self, images, source_captions, target_captions, *, masks, edit_phrases, edits, scenes,
                    seeds) -> list[EditItem]:
        """Validate the arguments of :meth:`edit` into one :class:`EditItem` per image."""
        n = len(source_captions)
        if len(target_captions) != n or len(images) != n:
            raise ValueError(f"{type(self).__name__}.edit: got {len(images)} images, {n} source captions and "
                             f"{len(target_captions)} target captions; pass one of each per edit")
        masks_, phrases, edits_, scenes_, seeds_ = (
            _per_item(x, n, name) for x, name in ((masks, "masks"), (edit_phrases, "edit_phrases"),
                                                  (edits, "edits"), (scenes, "scenes"), (seeds, "seeds")))
        items = []
        for i in range(n):
            image = images[i]
            if image is not None:
                image = image.convert("RGB")
            request = EditRequest.from_any(edits_[i]) if edits_[i] is not None else None
            phrase = phrases[i] if phrases[i] is not None else (request.phrase or None if request else None)
            mask = None
            if masks_[i] is not None:
                if image is None:
                    raise ValueError(f"{type(self).__name__}.edit: item {i} has a mask but no image")
                mask = as_mask(masks_[i], image.size)
            seed = int(seeds_[i]) if seeds_[i] is not None else self.seed
            items.append(EditItem(image, source_captions[i], target_captions[i], mask, phrase, request,
                                  scenes_[i], seed))
        return items

    @abstractmethod
    def _edit_items(self, items: list[EditItem]) -> list[EditResult]:
        """One result per item, in order."""


def _per_item(values: Sequence[Any] | None, n: int, name: str) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, (str, bytes)) or len(values) != n:
        raise ValueError(f"{name}: expected a sequence of {n} items (one per image), got "
                         f"{type(values).__name__} of length {len(values) if hasattr(values, '__len__') else '?'}")
    return list(values)


def request_for(item: EditItem) -> EditRequest:
    """The item's edit, derived from its captions when none was given (raises :class:`EditNotApplicable`);
    an edit phrase given apart from the edit replaces the edit's own."""
    if item.request is None:
        return EditRequest.from_captions(item.source, item.target, item.phrase)
    if item.phrase is not None and item.phrase != item.request.phrase:
        return replace(item.request, phrase=item.phrase, new_phrase=None)
    return item.request


# ---- masks ------------------------------------------------------------------------------------------------


def as_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """A ``(H, W)`` bool array (True = may change) from a PIL image (white = change), array or tensor.

    Arrays may be bool, float in [0, 1] (> 0.5 is True) or uint8 (> 127 is True). ``size`` is the image's
    (width, height); a mask of another size is an error (resize it yourself: which filter is right depends
    on the mask).

    Example:
        >>> import numpy as np
        >>> as_mask(np.array([[0.0, 0.9], [0.2, 1.0]]), (2, 2)).tolist()
        [[False, True], [False, True]]
    """
    import numpy as np

    if hasattr(mask, "getbands"):  # PIL
        arr = np.asarray(mask.convert("L")) > 127
    else:
        if hasattr(mask, "detach"):  # torch
            mask = mask.detach().cpu().numpy()
        arr = np.asarray(mask)
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        if arr.dtype == bool:
            pass
        elif arr.dtype == np.uint8:
            arr = arr > 127
        else:
            arr = arr.astype(np.float32) > 0.5
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {arr.shape}")
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        raise ValueError(f"mask is {arr.shape[1]}x{arr.shape[0]} but its image is {size[0]}x{size[1]}; "
                         "give a mask of the image's size")
    return arr


def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool ``(H, W)`` mask as a mode-"L" PIL image (255 = True)."""
    from PIL import Image

    return Image.fromarray(mask.astype("uint8") * 255, mode="L")


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a bool mask by ``pixels`` (a square neighbourhood): inpainting needs a margin around an object.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((5, 5), bool); m[2, 2] = True
        >>> int(dilate(m, 1).sum())
        9
    """
    if pixels <= 0:
        return mask
    from PIL import ImageFilter

    return _pil_to_bool(mask_image(mask).filter(ImageFilter.MaxFilter(2 * pixels + 1)))


def _pil_to_bool(img: Image.Image) -> np.ndarray:
    import numpy as np

    return np.asarray(img) > 127


def paste_back(original: Image.Image, generated: Image.Image, mask: np.ndarray) -> Image.Image:
    """``generated`` inside ``mask``, ``original`` elsewhere (pixels outside the mask are kept exactly)."""
    import numpy as np
    from PIL import Image

    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.BICUBIC)
    out = np.where(mask[..., None], np.asarray(generated.convert("RGB")), np.asarray(original.convert("RGB")))
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


# ---- seeds and model names -------------------------------------------------------------------------------


def stable_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) from any parts (a record id, a caption index, the new word), the same on every
    machine and in every process (unlike ``hash``).

    Example:
        >>> stable_seed("000017", 2, "blue") == stable_seed("000017", 2, "blue")
        True
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def resolve_model(name: str | Path, what: str, offline_alternative: str) -> str:
    """A local folder for ``name``, or the hub id itself when the hub can be reached.

    A hub id while the hub is offline resolves from the local hub cache, or fails at once with
    :class:`vlm.pretrained.HubOfflineError` naming ``offline_alternative`` (no retries).
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(name)):
        raise FileNotFoundError(f"{what} {str(name)!r} is not an existing folder nor a hub id ('owner/name')")
    from vlm.pretrained import HubOfflineError, _hub_offline_reason

    reason = _hub_offline_reason()
    if reason is None:
        return str(name)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(name), local_files_only=True)
    except Exception as err:  # not in the local hub cache, or not a valid repo id
        raise HubOfflineError(
            f"{what} {str(name)!r} is neither a local folder nor in the local hub cache, and the Hugging Face "
            f"Hub cannot be used ({reason}). Pass a folder saved with save_pretrained(), run where the hub is "
            f"reachable with HF_HUB_OFFLINE unset, or use {offline_alternative}.") from err
