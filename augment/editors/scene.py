"""Exact edits of built-in world images: change the scene graph, render it again, know the changed pixels.

The world's images are pure functions of their scene graphs (:func:`vlm.world.render`), so a caption edit
("a red circle" -> "a blue circle") can be made exactly: find the things the noun phrase refers to, change
them, render the scene again with the same render seed. The mask is the set of pixels that differ.

What the phrase refers to is read the way the world's captions are written (:func:`vlm.world.noun_phrase`):
a phrase names one *group* of identical things, with its count ("a" = 1, "two" = 2, a plural without a
number = 2 or more), colour and size when stated. A phrase that fits several groups is ambiguous and the edit
is skipped, as TIDA skips ambiguous phrases; so are edits whose target caption would state something the
edited scene does not show (another sentence of the caption still names the old colour, say).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

from augment.editors.base import (EditItem, EditNotApplicable, EditRequest, EditResult, ImageEditor, _per_item,
                                  dilate, mask_image, request_for)

logger = logging.getLogger(__name__)

SCENE_SKILLS = ("color", "counting", "gender", "size")
"""The skills :class:`SceneEditor` can apply."""

# word -> (kind, shape or gender, plural, age); age "adult"/"child" for people (a small person is a child).
_NOUNS: dict[str, tuple[str, str | None, bool, str | None]] = {}
_PERSONS = {"man": ("man", "adult"), "guy": ("man", "adult"), "woman": ("woman", "adult"), "boy": ("man", "child"),
            "girl": ("woman", "child"), "person": (None, None), "child": (None, "child")}
_PERSON_PLURALS = {"men": "man", "guys": "guy", "women": "woman", "boys": "boy", "girls": "girl",
                   "people": "person", "children": "child", "persons": "person"}
# A garment names the person who wears it ("a man in a purple shirt": "a purple shirt" is the man).
_GARMENTS = {"shirt": ("man", False), "shirts": ("man", True), "dress": ("woman", False), "dresses": ("woman", True)}
_SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "medium": "medium", "medium-sized": "medium",
               "large": "large", "big": "large", "huge": "large"}
_VAGUE_PLURAL = {"some", "several", "few", "many", "group", "these", "those", "both", "all"}
_ONE = {"a", "an"}
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*|\d+")


def _nouns() -> dict[str, tuple[str, str | None, bool, str | None]]:
    if not _NOUNS:
        from vlm.world.scene import PLURALS, SHAPES

        for s in SHAPES:
            _NOUNS[s] = ("shape", s, False, None)
            _NOUNS[PLURALS[s]] = ("shape", s, True, None)
        for w, (g, age) in _PERSONS.items():
            _NOUNS[w] = ("person", g, False, age)
        for w, single in _PERSON_PLURALS.items():
            g, age = _PERSONS[single]
            _NOUNS[w] = ("person", g, True, age)
        _NOUNS["badge"] = ("badge", None, False, None)
        _NOUNS["badges"] = ("badge", None, True, None)
    return _NOUNS


def _count_value(word: str) -> int | None:
    from vlm.world.scene import COUNT_WORDS

    if word.isdigit():
        return int(word)
    return COUNT_WORDS.index(word) if word in COUNT_WORDS else None


@dataclass
class _Ref:
    """What a noun phrase says about the things it names; None = not stated."""

    text: str
    kind: str | None = None
    value: str | None = None  # shape, or gender for people
    age: str | None = None
    fine_class: int | None = None
    color: str | None = None
    size: str | None = None
    count: int | None = None
    plural: bool | None = None

    def matches(self, t) -> bool:
        return ((self.kind is None or t.kind == self.kind)
                and (self.value is None or (t.shape if t.kind == "shape" else t.gender) == self.value)
                and (self.age is None or (t.size == "small") == (self.age == "child"))
                and (self.fine_class is None or t.fine_class == self.fine_class)
                and (self.color is None or t.color == self.color)
                and (self.size is None or t.size == self.size))

    def fits_count(self, n: int) -> bool:
        if self.count is not None:
            return n == self.count
        if self.plural is not None:
            return (n >= 2) == self.plural
        return True


def _parse(tokens: list[str], text: str) -> _Ref:
    """Read count, size, colour and head noun off a phrase's tokens (lower-case)."""
    from vlm.world.scene import COLORS, FINE_CLASSES

    ref = _Ref(text)
    # "a few", "a group of": the article is not a count there.
    vague = any(w in _VAGUE_PLURAL for w in tokens)
    joined = " ".join(tokens)
    for k, name in sorted(enumerate(FINE_CLASSES), key=lambda kn: -len(kn[1])):
        if re.search(rf"\b{re.escape(name)}s?\b", joined):
            ref.kind, ref.fine_class = "badge", k
            joined = joined.replace(name, "badge")
            tokens = joined.split()
            break
    colors = []
    for i, w in enumerate(tokens):
        if w == "with":  # "a blue spotted badge with black markings": the rest is the marking
            break
        n = _count_value(w)
        if n is not None:
            if ref.count is not None and ref.count != n:
                raise EditNotApplicable(f"phrase {text!r} states two counts")
            ref.count = n
        elif w in _ONE:
            if not vague and ref.count is None:
                ref.count = 1
        elif w in _VAGUE_PLURAL:
            ref.plural = True
        elif w in _SIZE_WORDS:
            ref.size = _SIZE_WORDS[w]
        elif w in COLORS:
            colors.append(w)
        elif w in _nouns():
            kind, value, plural, age = _nouns()[w]
            ref.kind, ref.value, ref.age = kind, value if kind != "badge" else None, age
            ref.plural = plural or bool(ref.plural)
    if len(set(colors)) > 1:
        raise EditNotApplicable(f"phrase {text!r} names several colours {colors}; which one is meant is unclear")
    ref.color = colors[0] if colors else None
    if ref.count is not None and ref.count >= 2:
        ref.plural = True
    return ref


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def resolve_phrase(scene, phrase: str, caption: str | None = None) -> list[int]:
    """Indices of the things of ``scene`` that a noun phrase names: one group of identical things.

    A garment phrase ("a purple shirt") names the person wearing it; the person phrase before it in
    ``caption`` ("two men in purple shirts") narrows it down. Raises :class:`EditNotApplicable` when
    nothing matches or several groups do.

    Example:
        >>> from vlm.world import Scene, Thing
        >>> s = Scene("grass", [Thing("shape", "red", "small", 0.2, 0.2, shape="circle"),
        ...                     Thing("shape", "red", "small", 0.8, 0.2, shape="circle"),
        ...                     Thing("shape", "red", "large", 0.5, 0.7, shape="circle")])
        >>> resolve_phrase(s, "two red circles"), resolve_phrase(s, "a red circle")
        ([0, 1], [2])
    """
    ref = _reference(phrase, caption)
    return _resolve(scene, ref)


def _reference(phrase: str, caption: str | None) -> _Ref:
    tokens = _tokens(phrase)
    garment = next((w for w in reversed(tokens) if w in _GARMENTS), None)
    if garment is None:
        return _parse(tokens, phrase)
    gender, plural = _GARMENTS[garment]
    ref = _parse([w for w in tokens if w != garment and w not in _ONE and _count_value(w) is None], phrase)
    ref.kind, ref.value, ref.plural = "person", gender, plural
    person = _wearer(tokens, caption) if caption else None
    if person is not None:
        ref.count, ref.age = person.count, person.age
        ref.plural = person.plural if person.plural is not None else ref.plural
        if person.value is not None and person.value != gender:
            raise EditNotApplicable(f"{person.text!r} wears {phrase!r}: the world dresses only women")
    return ref


def _wearer(phrase_tokens: list[str], caption: str) -> _Ref | None:
    """The person phrase right before "in <phrase>" in the caption: "two women" of "two women in red dresses"."""
    cap = _tokens(caption)
    n = len(phrase_tokens)
    for start in range(len(cap) - n + 1):
        if cap[start:start + n] != phrase_tokens:
            continue
        k = start - 1
        if k >= 0 and cap[k] in ("a", "an", "the") and phrase_tokens[0] not in ("a", "an", "the"):
            k -= 1
        if k < 1 or cap[k] != "in" or cap[k - 1] not in _nouns() or _nouns()[cap[k - 1]][0] != "person":
            continue
        j = k - 1
        while j > 0 and (cap[j - 1] in _ONE or cap[j - 1] in _VAGUE_PLURAL or cap[j - 1] in _SIZE_WORDS
                         or _count_value(cap[j - 1]) is not None or cap[j - 1] in ("the", "of")):
            j -= 1
        return _parse(cap[j:k], " ".join(cap[j:k]))
    return None


def _garment_wearers(caption: str):
    """``(token span, garment word, garment phrase, wearer ref)`` of each "<person> in <garment>" of a caption."""
    low = caption.lower()
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(low)]
    tokens = [low[a:b] for a, b in spans]
    for t, word in enumerate(tokens):
        if word not in _GARMENTS:
            continue
        k = next((k for k in range(t - 1, max(t - 5, 0), -1) if tokens[k] == "in"), None)
        if k is None:
            continue
        phrase = tokens[k + 1:t + 1]
        try:
            person = _wearer(phrase, caption)
        except EditNotApplicable:
            continue
        if person is not None and person.value is not None:
            yield spans[t], word, " ".join(phrase), person


def garment_clash(caption: str) -> str | None:
    """What is wrong when a caption dresses a person in the other gender's garment, else None.

    The world draws women in dresses and men in shirts, and a gender edit swaps the person noun only ("A woman
    in a red dress" -> "A man in a red dress"); the fact checker reads colours, not garments, so this catches it.

    Example:
        >>> garment_clash("Two men in red dresses and a circle."), garment_clash("A man in a red shirt.")
        ("dresses 'two men' in 'red dresses' (the world draws men in shirts)", None)
    """
    for _, word, phrase, person in _garment_wearers(caption):
        if person.value != _GARMENTS[word][0]:
            who, worn = ("men", "shirts") if person.value == "man" else ("women", "dresses")
            return f"dresses {person.text!r} in {phrase!r} (the world draws {who} in {worn})"
    return None


_WORLD_GARMENT = {("man", False): "shirt", ("man", True): "shirts", ("woman", False): "dress",
                  ("woman", True): "dresses"}


def dress_for_world(caption: str) -> str:
    """The caption with each garment its wearer cannot wear in the world swapped for the right one, in the same
    case: what a gender edit of a world caption needs (see :func:`garment_clash`).

    Example:
        >>> dress_for_world("Two men in white dresses and a girl in a red dress.")
        'Two men in white shirts and a girl in a red dress.'
    """
    out, pos = [], 0
    for (a, b), word, _, person in _garment_wearers(caption):
        right = _WORLD_GARMENT[(person.value, _GARMENTS[word][1])]
        if right != word:
            old = caption[a:b]
            out += [caption[pos:a], right.upper() if old.isupper() and len(old) > 1 else
                    right[:1].upper() + right[1:] if old[:1].isupper() else right]
            pos = b
    return "".join(out) + caption[pos:]


def _groups(scene) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = {}
    for i, t in enumerate(scene.things):
        out.setdefault(t.key(), []).append(i)
    return out


def _describe(scene, idx: list[int]) -> str:
    from vlm.world.language import noun_phrase

    return noun_phrase(scene.things[idx[0]], len(idx))


def _resolve(scene, ref: _Ref) -> list[int]:
    cands = [idx for idx in _groups(scene).values() if ref.matches(scene.things[idx[0]])]
    fitting = [idx for idx in cands if ref.fits_count(len(idx))]
    if not fitting:
        seen = f" (the scene has {', '.join(_describe(scene, idx) for idx in cands)})" if cands else ""
        raise EditNotApplicable(f"nothing in the scene matches {ref.text!r}{seen}")
    if len(fitting) > 1:
        raise EditNotApplicable(f"{ref.text!r} is ambiguous: it matches "
                                f"{', '.join(_describe(scene, idx) for idx in fitting)}")
    return fitting[0]


def apply_scene_edit(scene, edit: Any, *, caption: str | None = None, seed: int = 0, allow_merge: bool = False,
                     margin: float = 0.03, tries: int = 200):
    """The scene after a caption edit, and the indices (in the new scene) of the things that changed.

    Args:
        scene: a :class:`vlm.world.Scene` (or its dict).
        edit: an :class:`~augment.editors.EditRequest`, a :class:`augment.counterfactual.CaptionEdit`, or a
            mapping with ``skill``, ``word``, ``new_word``, ``phrase``:

            * color: ``phrase`` names the things (or a garment of a person), ``word`` is their colour, which
              becomes ``new_word`` (any colour of :data:`vlm.world.COLORS`);
            * counting: ``word`` is the count of the group ``phrase`` names; things are added (copies at free
              positions drawn with ``seed``) or removed (drawn with ``seed``) to make ``new_word``;
            * gender: ``word`` is the person noun (man, women, girl, ...), ``new_word`` its counterpart of the
              same age (man <-> woman, boy <-> girl); the pictograms change;
            * size: ``word``/``new_word`` are size words (small/little/tiny, medium, large/big/huge) of shapes.
        caption: the source caption; it resolves garment phrases ("a man in a purple shirt").
        seed: draws the things to remove and the positions of new ones.
        allow_merge: let the edited things become identical to another group (a red circle turned blue next
            to a blue circle); off by default, because the target caption would then miscount.
        margin, tries: free-space margin (fraction of the side) and attempts when placing a new thing.

    Returns:
        ``(new_scene, changed)``: ``changed`` indexes the edited or added things in ``new_scene``, or the removed
        ones in ``scene``. Raises :class:`~augment.editors.EditNotApplicable` with the reason when the
        edit cannot be applied.

    Example:
        >>> from vlm.world import Scene, Thing
        >>> s = Scene("grass", [Thing("shape", "red", "large", 0.3, 0.5, shape="circle")])
        >>> new, changed = apply_scene_edit(s, EditRequest("color", "red", "blue", "a large red circle"))
        >>> new.things[0].color, changed
        ('blue', [0])
    """
    from vlm.world.scene import COLORS, Scene, fits

    if isinstance(scene, dict):
        scene = Scene.from_dict(scene)
    req = EditRequest.from_any(edit)
    skill, word, new_word = req.skill, req.word.lower(), req.new_word.lower()
    if skill not in SCENE_SKILLS:
        raise EditNotApplicable(f"the scene editor cannot apply {skill!r} edits (it knows {SCENE_SKILLS})")
    ref = _reference(req.phrase or word, caption)
    # The edited word says what the referent is now, whether or not the phrase repeats it.
    if skill == "color":
        if word not in COLORS:
            raise EditNotApplicable(f"{req.word!r} is not a colour of the world")
        if ref.color not in (None, word):
            raise EditNotApplicable(f"colour {req.word!r} is not the colour of {req.phrase!r}")
        ref.color = word
    elif skill == "counting":
        old_n = _count_value(word)
        if old_n is None:
            raise EditNotApplicable(f"{req.word!r} is not a count word")
        ref.count, ref.plural = old_n, old_n >= 2
    elif skill == "gender":
        if word not in _nouns() or _nouns()[word][0] != "person":
            raise EditNotApplicable(f"{req.word!r} is not a person noun of the world")
        _, ref.value, plural, ref.age = _nouns()[word]
        ref.kind, ref.plural = "person", plural if ref.count is None else ref.plural
    elif skill == "size":
        if word not in _SIZE_WORDS:
            raise EditNotApplicable(f"{req.word!r} is not a size word of the world")
        ref.size = _SIZE_WORDS[word]
    idx = _resolve(scene, ref)

    new = scene.copy()
    things = [new.things[i] for i in idx]
    rng = random.Random(seed)
    changed = list(idx)
    if skill == "color":
        if new_word not in COLORS:
            raise EditNotApplicable(f"the world cannot draw the colour {req.new_word!r}")
        for t in things:
            t.color = new_word
    elif skill == "gender":
        info = _nouns().get(new_word)
        if info is None or info[0] != "person" or info[1] is None:
            raise EditNotApplicable(f"{req.new_word!r} is not a gendered person noun of the world")
        if info[3] is not None and ref.age is not None and info[3] != ref.age:
            raise EditNotApplicable(f"{req.word!r} -> {req.new_word!r} changes age, not gender (the world draws a "
                                    "small person as a child)")
        for t in things:
            t.gender = info[1]
    elif skill == "size":
        if things[0].kind != "shape":
            raise EditNotApplicable(f"size edits apply to shapes only (a small person is a child): {req.phrase!r}")
        if new_word not in _SIZE_WORDS:
            raise EditNotApplicable(f"{req.new_word!r} is not a size word of the world")
        for t in things:
            t.size = _SIZE_WORDS[new_word]
        if not all(fits(t, new.things, margin) for t in things):
            raise EditNotApplicable(f"{_describe(new, idx)} would overlap other things or leave the picture")
    else:  # counting
        new_n = _count_value(new_word)
        if new_n is None or new_n < 1:
            raise EditNotApplicable(f"{req.new_word!r} is not a count the scene editor can make")
        if new_n < len(idx):
            drop = set(rng.sample(idx, len(idx) - new_n))
            new.things = [t for i, t in enumerate(new.things) if i not in drop]
            changed = sorted(drop)  # indices in the *old* scene: these are gone
        else:
            changed = []
            for _ in range(new_n - len(idx)):
                t = replace(things[0])
                r = t.radius
                for _ in range(tries):
                    t.x, t.y = rng.uniform(r + margin, 1 - r - margin), rng.uniform(r + margin, 1 - r - margin)
                    if fits(t, new.things, margin):
                        break
                else:
                    raise EditNotApplicable(f"no free place for another {things[0].noun} in {tries} tries")
                new.things.append(t)
                changed.append(len(new.things) - 1)
    if skill != "counting" and not allow_merge:
        key = things[0].key()
        others = [i for i, t in enumerate(new.things) if t.key() == key and i not in idx]
        if others:
            raise EditNotApplicable(f"the edited things would join {_describe(new, others)} already in the scene, "
                                    "so the target caption would miscount them")
    return new, changed


def world_render_seed(record_id: str, world_seed: int) -> int:
    """The render seed (``jitter_seed`` of :func:`vlm.world.render`) of a record of
    :func:`vlm.world.generate_world`: needed to re-render its image exactly.

    Example:
        >>> world_render_seed("000017", 0), world_render_seed("000017", 1)
        (17, 1000020)
    """
    return int(record_id) + world_seed * 1_000_003


class SceneEditor(ImageEditor):
    """Exact caption-driven edits of built-in world images (see :func:`apply_scene_edit` for the skills).

    Each edit needs the image's scene graph (``scenes=``), its caption edit (``edits=``, or derived from the
    captions), and the seed the image was rendered with (``render_seeds=``, see :func:`world_render_seed`).
    The input image, when given, must be what the scene renders to (checked up to the edge noise of stored
    positions: a wrong render seed or a stale scene graph would give a wrong edit). The output is the input
    with the edited scene's rendering pasted where the edit changes pixels; the result's mask is exactly the
    set of pixels that differ from the input. ``masks`` are not used: the editor knows which pixels change.

    Skips (``result.ok`` False, ``result.reason`` says why): unsupported skill, nothing matching, ambiguous
    phrase, no room for another thing, a group merge (see ``allow_merge``), an edit that changes no pixel, and
    with ``check_captions`` a target caption that states facts the edited scene does not support (beyond
    those the source caption already got wrong about the original scene).

    Args:
        image_size: side of the rendered images when no input image is given.
        render_seed: render seed of images without an entry in ``render_seeds``.
        supersample: as in :func:`vlm.world.render` (the world's datasets use 2).
        allow_merge: see :func:`apply_scene_edit`.
        check_captions: skip edits after which the target caption is untrue of the edited scene
            (:func:`vlm.world.facts.score_caption`).
        check_garments: also skip edits whose target caption dresses a person in the other gender's garment
            ("A man in a red dress": the world draws men in shirts; see :func:`garment_clash`). The TIDA job
            turns it on; off by default.
        seed: the seed of edits without one (positions of added things, which things to remove).

    Example:
        >>> from vlm.world import Scene, Thing, render
        >>> s = Scene("grass", [Thing("shape", "red", "large", 0.3, 0.5, shape="circle")])
        >>> [r] = SceneEditor().edit([render(s, 64)], ["A red circle."], ["A blue circle."], scenes=[s])
        >>> r.ok, r.info["scene"]["things"][0]["color"], r.image.getpixel((19, 32))
        (True, 'blue', (31, 90, 200))
    """

    name = "scene"

    def __init__(self, *, image_size: int = 224, render_seed: int | None = 0, supersample: int = 2,
                 allow_merge: bool = False, check_captions: bool = True, check_garments: bool = False,
                 seed: int = 0) -> None:
        self.image_size = image_size
        self.render_seed = render_seed
        self.supersample = supersample
        self.allow_merge = allow_merge
        self.check_captions = check_captions
        self.check_garments = check_garments
        self.seed = seed

    def edit(self, images: Sequence[Any], source_captions: Sequence[str], target_captions: Sequence[str], *,
             masks: Sequence[Any] | None = None, edit_phrases: Sequence[str | None] | None = None,
             edits: Sequence[Any] | None = None, scenes: Sequence[Any] | None = None,
             seeds: Sequence[int] | None = None, render_seeds: Sequence[int | None] | None = None
             ) -> list[EditResult]:
        """:meth:`ImageEditor.edit`, plus ``render_seeds``: the render seed of each input image."""
        if scenes is None:
            raise ValueError("SceneEditor.edit needs scenes= (the scene graph of each image, e.g. a world "
                             "record's extra['scene'])")
        items = self._make_items(images, source_captions, target_captions, masks=masks, edit_phrases=edit_phrases,
                                 edits=edits, scenes=scenes, seeds=seeds)
        rs = _per_item(render_seeds, len(items), "render_seeds")
        return [self._edit_one(it, self.render_seed if r is None else int(r)) for it, r in zip(items, rs)]

    def _edit_items(self, items: list[EditItem]) -> list[EditResult]:
        return [self._edit_one(it, self.render_seed) for it in items]

    def _edit_one(self, item: EditItem, render_seed: int | None) -> EditResult:
        import numpy as np
        from PIL import Image

        from vlm.world import Scene, render
        from vlm.world.facts import caption_facts, check_fact

        params = {"render_seed": render_seed, "supersample": self.supersample, "allow_merge": self.allow_merge}
        try:
            if item.scene is None:
                raise EditNotApplicable("no scene graph for this image")
            scene = Scene.from_dict(item.scene) if isinstance(item.scene, dict) else item.scene
            size = item.image.size[0] if item.image is not None else self.image_size
            params["image_size"] = size
            before = np.asarray(render(scene, size, supersample=self.supersample, jitter_seed=render_seed))
            given = np.asarray(item.image) if item.image is not None else before
            if given.shape != before.shape or not _reproduces(given, before):
                raise EditNotApplicable(
                    f"the scene graph does not render to the input image (render seed {render_seed}, {size} px): "
                    "pass render_seeds=[world_render_seed(record.id, world_seed)] and the record's own scene")
            req = request_for(item)
            params.update(skill=req.skill, word=req.word, new_word=req.new_word, phrase=req.phrase)
            edited, changed = apply_scene_edit(scene, req, caption=item.source, seed=item.seed,
                                               allow_merge=self.allow_merge)
            if self.check_captions:
                wrong_before = {f for f in caption_facts(item.source) if not check_fact(f, scene)}
                wrong_after = [f for f in caption_facts(item.target) if not check_fact(f, edited)
                               and f not in wrong_before]
                if wrong_after:
                    raise EditNotApplicable(f"the target caption would be untrue of the edited scene: {wrong_after}")
                clash = garment_clash(item.target) if self.check_garments else None
                if clash:
                    raise EditNotApplicable(f"the target caption {clash}")
            after = np.asarray(render(edited, size, supersample=self.supersample, jitter_seed=render_seed))
            # Stored scenes round positions to 1e-4, so a re-render may differ from the input on a few edge
            # pixels: keep the input everywhere but where the edit changed something (and a 1 px rim).
            out = np.where(dilate((after != before).any(axis=-1), 1)[..., None], after, given)
            mask = (out != given).any(axis=-1)
            if not mask.any():
                raise EditNotApplicable("the edit changes no pixel")
        except EditNotApplicable as err:
            return EditResult(None, None, self.name, item.seed, params, reason=str(err))
        info = {"scene": edited.to_dict(), "changed": changed, "mask_fraction": round(float(mask.mean()), 6)}
        return EditResult(Image.fromarray(out.astype(np.uint8), mode="RGB"), mask_image(mask), self.name, item.seed,
                          params, info=info)


def _reproduces(given: np.ndarray, rendered: np.ndarray) -> bool:
    """Whether an image is a re-render of a scene up to edge noise: no 3x3 block of pixels differs.

    Rounded positions move edges by a fraction of a pixel, which changes isolated pixels along them; another
    scene or another background crop changes solid regions.
    """
    import numpy as np
    from PIL import Image, ImageFilter

    differ = (given != rendered).any(axis=-1)
    if not differ.any():
        return True
    solid = Image.fromarray(differ.astype(np.uint8) * 255, mode="L").filter(ImageFilter.MinFilter(3))
    return not np.asarray(solid).any()
