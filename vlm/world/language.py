"""Describe scenes in English and ask questions about them.

Three registers, all true to the scene graph (every word that names a colour, count, gender or relation
is correct, so skill words in captions can be trusted by TIDA and by the skill-split metrics):

- :func:`dense_caption` — exhaustive: every group with count, size and colour, the background, and the
  relations between single things. The "dense description" source that Visual Caption Boosting fuses.
- :func:`human_captions` — several varied captions that, like human annotators, mention the salient
  things and omit details (sizes, some colours, exact counts, the background) at random.
- :func:`content_caption` — one true sentence with chosen content (how many groups, colours, sizes, exact or
  vague counts, the background): what a caption that says exactly that would score.
- :func:`questions` — counting, attribute, spatial, comparison and existence questions with answers.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Sequence

from vlm.world.scene import (BACKGROUND_PHRASES, BACKGROUND_VARIANTS, COLORS, COUNT_WORDS, FINE_CLASSES, PLURALS,
                             SYNONYMS, Scene, Thing, relation)

VOWELS = "aeiou"


def article(word: str) -> str:
    return "an" if word[:1].lower() in VOWELS else "a"


def plural(noun: str) -> str:
    if noun in PLURALS:
        return PLURALS[noun]
    return noun + "s"


def groups(scene: Scene) -> list[tuple[Thing, int]]:
    """Things grouped by identity (kind, shape/gender, colour, size, class), in first-seen order."""
    counts = Counter(t.key() for t in scene.things)
    seen, out = set(), []
    for t in scene.things:
        if t.key() not in seen:
            seen.add(t.key())
            out.append((t, counts[t.key()]))
    return out


def _salience(t: Thing) -> tuple:
    # People first (annotators mention them first), then larger things.
    return (t.kind != "person", t.kind != "badge", -t.radius)


def noun_phrase(t: Thing, count: int, *, color: bool = True, size: bool = True, exact: bool = True,
                rng: random.Random | None = None) -> str:
    """"two small red circles", "a woman in a yellow dress", "a blue spotted badge with black markings".

    ``exact=False`` lets a count above one become vague ("some", "a few", "several") as people write.

    Example:
        >>> from vlm.world.scene import Thing
        >>> noun_phrase(Thing("shape", "red", "small", 0, 0, shape="circle"), 2)
        'two small red circles'
    """
    noun = t.noun
    words = []
    if size and t.kind == "shape":
        words.append("medium-sized" if t.size == "medium" else t.size)
    if color and t.kind != "person":
        words.append(t.color)
    head = " ".join(words + [noun if count == 1 else plural(noun)])
    if count == 1:
        phrase = f"{article(head)} {head}"
    elif exact or rng is None:
        phrase = f"{COUNT_WORDS[count]} {head}"
    else:
        phrase = f"{rng.choice(['some', 'several', 'a few', 'a group of'] if count > 2 else ['two'])} {head}"
    if t.kind == "person" and color:
        garment = "dress" if t.gender == "woman" else "shirt"
        garments = garment if count == 1 else garment + ("es" if garment == "dress" else "s")
        phrase += f" in {article(t.color) if count == 1 else ''} {t.color} {garments}".replace("  ", " ")
    if t.kind == "badge" and color and t.marking_color:
        phrase += f" with {t.marking_color} markings"
    return phrase


def join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ref(t: Thing) -> str:
    """A definite reference to a single thing: "the small red circle", "the woman"."""
    if t.kind == "person":
        # The shirt colour keeps "the man" unambiguous when two men in different shirts are in the scene.
        return f"the {t.noun} in the {t.color} {'dress' if t.gender == 'woman' else 'shirt'}"
    if t.kind == "badge":
        return f"the {t.color} {t.noun}"
    size = "medium-sized" if t.size == "medium" else t.size
    return f"the {size} {t.color} {t.noun}"


def _single_relations(scene: Scene, limit: int, rng: random.Random | None = None) -> list[str]:
    """Sentences relating things that are alone in their group, so the reference is unambiguous."""
    singles = [t for t, c in groups(scene) if c == 1]
    pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1:]]
    if rng is not None:
        rng.shuffle(pairs)
    out = []
    for a, b in pairs[:limit]:
        rel = relation(a, b)
        if rel in ("left of", "right of"):
            rel = "to the " + rel
        out.append(f"{_ref(a)} is {rel} {_ref(b)}")
    return out


def capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def dense_caption(scene: Scene, *, max_relations: int = 2) -> str:
    """The exhaustive description of a scene.

    Example:
        >>> from vlm.world.scene import Scene, Thing
        >>> s = Scene("beach", [Thing("shape", "red", "small", 0.2, 0.5, shape="circle"),
        ...                     Thing("person", "blue", "large", 0.7, 0.5, gender="woman")])
        >>> dense_caption(s)
        'A woman in a blue dress and a small red circle on a beach. The small red circle is to the left of the woman in the blue dress.'
    """
    text = content_caption(scene)
    rels = _single_relations(scene, max_relations)
    if rels:
        text += " " + " ".join(capitalise(r) + "." for r in rels)
    return text


def content_caption(scene: Scene, *, max_groups: int | None = None, color: bool = True, size: bool = True,
                    exact_counts: bool = True, background: bool = True) -> str:
    """One true sentence about a scene with chosen content: what a caption that says exactly this would be.

    The groups are named in the annotators' order of salience (people first, then larger things), at most
    ``max_groups`` of them (all by default); ``color``/``size`` say whether each is qualified by its colour / its
    size; ``exact_counts=False`` makes counts above two vague ("several", "a few", ...; the choice is seeded, so
    the caption is always the same); ``background`` adds the setting. With the defaults it is the first sentence
    of :func:`dense_caption`. ``python -m benchmarks sr-headroom`` scores such captions under a judge: which
    details does the judge reward, and how much would a captioner that said them right gain?

    Example:
        >>> from vlm.world.scene import Scene, Thing
        >>> s = Scene("beach", [Thing("shape", "red", "small", 0.2, 0.5, shape="circle"),
        ...                     Thing("person", "blue", "large", 0.7, 0.5, gender="woman")])
        >>> content_caption(s, max_groups=1, background=False)
        'A woman in a blue dress.'
        >>> content_caption(s, size=False)
        'A woman in a blue dress and a red circle on a beach.'
    """
    if max_groups is not None and max_groups < 1:
        raise ValueError(f"content_caption: max_groups must be >= 1 or None, got {max_groups}")
    gs = sorted(groups(scene), key=lambda g: _salience(g[0]))[:max_groups]
    rng = None if exact_counts else random.Random(0)
    text = capitalise(join([noun_phrase(t, c, color=color, size=size, exact=exact_counts, rng=rng) for t, c in gs]))
    if background:
        text += " " + BACKGROUND_PHRASES[scene.background]
    return text + "."


_OPENERS = ["", "", "", "a picture of ", "an image of ", "there is ", "this is ", "a photo of "]


CAPTION_LEVELS = ("brief", "terse", "medium", "detailed")
#: The annotators of the default presets: two terse, two medium, one exhaustive caption per image.
DEFAULT_CAPTION_LEVELS = ("terse", "terse", "medium", "medium", "detailed")
#: COCO-like annotators (the ``*-brief`` presets): four brief captions and one medium one per image.
BRIEF_CAPTION_LEVELS = ("brief", "brief", "brief", "brief", "medium")


def human_caption(scene: Scene, rng: random.Random, detail: str) -> str:
    """One human-like caption at a detail level: "brief", "terse", "medium" or "detailed".

    ``brief`` is the COCO-like annotator: the salient thing, now and then a second one, its colour, an exact
    count or the setting, each by an independent choice made less often than not, never a size or a relation.
    Such captions are generic in the way that matters for self-retrieval: the likeliest caption of an image
    (what beam search writes) is the bare one, while samples state each detail some of the time.
    """
    gs = sorted(groups(scene), key=lambda g: _salience(g[0]))
    if detail == "brief":
        keep = gs[: 1 if rng.random() < 0.7 else 2]
        parts = [noun_phrase(t, c, color=rng.random() < 0.3, size=False, exact=rng.random() < 0.5, rng=rng)
                 for t, c in keep]
        with_bg = rng.random() < 0.3
        rels = []
    elif detail == "terse":
        keep = gs[: rng.choice([1, 1, 2])]
        parts = [noun_phrase(t, c, color=rng.random() < 0.5, size=False, exact=rng.random() < 0.4, rng=rng)
                 for t, c in keep]
        with_bg = rng.random() < 0.4
        rels = []
    elif detail == "medium":
        keep = gs[: rng.choice([2, 3])]
        parts = [noun_phrase(t, c, color=rng.random() < 0.85, size=rng.random() < 0.2,
                             exact=rng.random() < 0.8, rng=rng) for t, c in keep]
        with_bg = rng.random() < 0.6
        rels = []
    elif detail == "detailed":
        parts = [noun_phrase(t, c, size=rng.random() < 0.6) for t, c in gs]
        with_bg = rng.random() < 0.85
        rels = _single_relations(scene, 1, rng)
    else:
        raise ValueError(f"detail must be one of {CAPTION_LEVELS}, got {detail!r}")
    opener = rng.choice(_OPENERS)
    if opener in ("there is ", "this is ") and not parts[0].startswith(("a ", "an ")):
        opener = {"there is ": "there are ", "this is ": "these are "}[opener]
    text = opener + join(parts)
    if with_bg:
        text += " " + BACKGROUND_PHRASES[scene.background]
    text = capitalise(text) + "."
    if rels:
        text += " " + capitalise(rels[0]) + "."
    return text


#: How annotators word the details they state: ``fixed`` (one way each, the presets' default), ``varied``
#: (:func:`vary_wording`) or ``synonyms`` (varied, and other words for sizes, some shapes, colours and people).
WORDINGS = ("fixed", "varied", "synonyms")
_NOUN_WORDS = "|".join(sorted(set(PLURALS) | set(PLURALS.values()), key=len, reverse=True))
_COLOR_NOUN = re.compile(rf"\b({'|'.join(COLORS)}) ({_NOUN_WORDS})\b")
_COUNT_WORD = re.compile(rf"\b({'|'.join(COUNT_WORDS[2:7])})\b")
_ARTICLE = re.compile(r"\b([Aa]n?) (\w+)")
_SYNONYM = re.compile(rf"\b({'|'.join(sorted(SYNONYMS, key=len, reverse=True))})\b")
_TWO = re.compile(r"\btwo\b")


def vary_wording(caption: str, rng: random.Random, *, synonyms: bool = False) -> str:
    """A world caption as annotators who word each detail in several ways would write it: a colour after its noun
    half the time ("a hexagon in orange"), an exact count above one as a digit half the time ("3 stars"), and the
    setting in one of its :data:`~vlm.world.scene.BACKGROUND_VARIANTS`. ``synonyms=True`` also words each
    size, colour, shape or person that has :data:`~vlm.world.scene.SYNONYMS` by one of its words at random
    ("a tiny crimson disc"), and an exact "two" as "a pair of" a third of the time. The facts it states are the
    caption's (:func:`vlm.world.facts.caption_facts` reads every wording the same). With details worded one way, a
    length-normalised beam search strings together what each annotator states now and then; worded several ways,
    it does so less (docs/sr-experiments.md).

    Example:
        >>> vary_wording("A picture of two orange hexagons and a pink diamond on a beach.", random.Random(5))
        'A picture of 2 hexagons in orange and a diamond in pink on the sand.'
        >>> vary_wording("Two small red circles and a woman on a beach.", random.Random(0), synonyms=True)
        'Two tiny discs in crimson and a lady at the beach.'
    """
    text, sep, relations = caption.partition(". ")  # a relation sentence keeps its definite references as they are
    text = _COLOR_NOUN.sub(lambda m: m.group(0) if rng.random() < 0.5 else f"{m.group(2)} in {m.group(1)}", text)
    if synonyms:
        text = text[:1].lower() + text[1:]  # "Two stars." too
        text = _TWO.sub(lambda m: "a pair of" if rng.random() < 1 / 3 else "two", text)
    text = _COUNT_WORD.sub(lambda m: m.group(1) if rng.random() < 0.5 else str(COUNT_WORDS.index(m.group(1))), text)
    for bg, phrase in BACKGROUND_PHRASES.items():
        if phrase in text:
            text = text.replace(phrase, rng.choice(BACKGROUND_VARIANTS[bg]))
    if synonyms:
        text = _SYNONYM.sub(lambda m: rng.choice((m.group(1),) + SYNONYMS[m.group(1)]), text)
    text = _ARTICLE.sub(lambda m: article(m.group(2)).replace("a", m.group(1)[0], 1) + " " + m.group(2), text)
    return capitalise(text) + sep + relations


def human_captions(scene: Scene, rng: random.Random, n: int = 5,
                   levels: Sequence[str] = DEFAULT_CAPTION_LEVELS, wording: str = "fixed") -> list[str]:
    """``n`` varied captions, distinct where the scene allows it; caption ``k`` has detail ``levels[k % len]``;
    ``wording="varied"`` or ``"synonyms"`` rewords them (:func:`vary_wording`, with its own generator, so the
    choices of what to say are the fixed wording's)."""
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    out: list[str] = []
    for k in range(n):
        level = levels[k % len(levels)]
        cap = human_caption(scene, rng, level)
        for _ in range(4):  # prefer distinct captions, as five annotators would write
            if cap not in out:
                break
            cap = human_caption(scene, rng, level)
        out.append(cap)
    if wording != "fixed":
        wrng = random.Random(rng.getrandbits(64))
        out = [vary_wording(c, wrng, synonyms=wording == "synonyms") for c in out]
    return out


def fine_grained_captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """Captions for a fine-grained image: they name the class, which is the point of the image."""
    badge = next(t for t in scene.things if t.kind == "badge")
    name = FINE_CLASSES[badge.fine_class]
    templates = [
        f"a photo of {article(name)} {name}.",
        f"{article(name)} {name} {BACKGROUND_PHRASES[scene.background]}.",
        f"{article(badge.color)} {badge.color} {name}.",
        f"{article(name)} {name} with {badge.marking_color} markings.",
        f"a close-up of {article(name)} {name}.",
    ]
    rng.shuffle(templates)
    return [capitalise(t) for t in templates[:n]]


def _shape_desc(t: Thing) -> str:
    return f"{t.color} {t.noun}"


def questions(scene: Scene, rng: random.Random, n: int = 4) -> list[dict]:
    """Up to ``n`` question/answer pairs of mixed types, each answerable from the scene graph alone.

    Types: ``count`` ("How many red circles are there?" -> "2"), ``attribute`` ("What color is the
    star?" -> "blue"), ``spatial`` ("Is the red circle to the left of the woman?" -> "yes"),
    ``compare`` ("Are there more red things than blue things?"), ``exists`` ("Is there a green square?").
    Answers are lower-case strings; numbers are digits.
    """
    shapes = [t for t in scene.things if t.kind == "shape"]
    people = [t for t in scene.things if t.kind == "person"]
    cands: list[dict] = []
    # counting: by colour+shape, by shape, all shapes, people
    by_cs = Counter((t.color, t.shape) for t in shapes)
    by_s = Counter(t.shape for t in shapes)
    by_c = Counter(t.color for t in scene.things if t.kind != "person")
    for (c, s), k in by_cs.items():
        cands.append({"question": f"How many {c} {plural(s)} are there?", "answer": str(k), "type": "count"})
    for s, k in by_s.items():
        cands.append({"question": f"How many {plural(s)} are there?", "answer": str(k), "type": "count"})
    if shapes:
        cands.append({"question": "How many shapes are there?", "answer": str(len(shapes)), "type": "count"})
    if people:
        cands.append({"question": "How many people are there?", "answer": str(len(people)), "type": "count"})
    # attributes of uniquely identified things
    for s, k in by_s.items():
        if k == 1:
            t = next(x for x in shapes if x.shape == s)
            cands.append({"question": f"What color is the {s}?", "answer": t.color, "type": "attribute"})
    for c, k in Counter(t.color for t in shapes).items():
        if k == 1:
            t = next(x for x in shapes if x.color == c)
            cands.append({"question": f"What shape is the {c} object?", "answer": t.shape, "type": "attribute"})
    if len(people) == 1:
        p = people[0]
        garment = "dress" if p.gender == "woman" else "shirt"
        cands.append({"question": f"What color is the {p.noun}'s {garment}?", "answer": p.color,
                      "type": "attribute"})
    # spatial relations between uniquely identified shapes (by colour+shape)
    uniq = [t for t in shapes if by_cs[(t.color, t.shape)] == 1]
    for i, a in enumerate(uniq):
        for b in uniq[i + 1:]:
            rel = relation(a, b)
            asked = rng.choice(["left of", "right of", "above", "below"])
            phrase = {"left of": "to the left of", "right of": "to the right of"}.get(asked, asked)
            cands.append({"question": f"Is the {_shape_desc(a)} {phrase} the {_shape_desc(b)}?",
                          "answer": "yes" if asked == rel else "no", "type": "spatial"})
    # comparisons of colour counts (compositional: count twice, then compare)
    colors = sorted(by_c)
    if len(colors) >= 2:
        c1, c2 = rng.sample(colors, 2)
        if by_c[c1] != by_c[c2]:
            cands.append({"question": f"Are there more {c1} things than {c2} things?",
                          "answer": "yes" if by_c[c1] > by_c[c2] else "no", "type": "compare"})
    # existence, half of them absent
    for _ in range(2):
        c, s = rng.choice(sorted({t.color for t in shapes} | {"red", "blue"})), rng.choice(
            sorted({t.shape for t in shapes} | {"circle", "square"}))
        cands.append({"question": f"Is there {article(c)} {c} {s}?",
                      "answer": "yes" if by_cs.get((c, s), 0) > 0 else "no", "type": "exists"})
    # Sample across types so that each image contributes a mix.
    by_type: dict[str, list[dict]] = {}
    for q in cands:
        by_type.setdefault(q["type"], []).append(q)
    out, seen = [], set()
    types = sorted(by_type)
    rng.shuffle(types)
    while len(out) < n and any(by_type.values()):
        for ty in types:
            if by_type[ty] and len(out) < n:
                q = by_type[ty].pop(rng.randrange(len(by_type[ty])))
                if q["question"] not in seen:
                    seen.add(q["question"])
                    out.append(q)
    return out
