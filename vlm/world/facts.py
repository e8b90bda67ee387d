"""Read the facts a caption states about a world scene, and check them against the scene graph.

The world's vocabulary is closed, so a caption can be parsed into atomic facts:

- ``("thing", noun)``                 a circle / a woman / a spotted badge is present
- ``("color", noun, color)``          a red circle
- ``("size", noun, size)``            a small circle
- ``("count", noun, k, color, size)`` two small circles (exact numbers and a/an; "some" states no count;
  ``color``/``size`` qualify what is counted, None when the caption does not say)
- ``("background", name)``            on a beach
- ``("relation", a, rel, b)``         the red circle is to the left of the woman

The varied wordings of :func:`vlm.world.language.vary_wording` read the same: a colour after its noun ("two
hexagons in orange"), digits for counts ("3 stars"), every phrase of :data:`~vlm.world.scene.BACKGROUND_VARIANTS`
for the setting, each word of :data:`~vlm.world.scene.SYNONYMS` as the word it stands for ("a tiny crimson disc"
is "a small red circle") and "a pair of" as "two".

A fact is *supported* when the scene makes it true. Captions of any captioner can be scored this way:
how many facts they state (detail) and what fraction is unsupported (hallucination).

Example:
    >>> from vlm.world import Scene, Thing
    >>> s = Scene("beach", [Thing("shape", "red", "small", 0.2, 0.5, shape="circle")])
    >>> [f for f in caption_facts("A small red circle on a beach.")]
    [('thing', 'circle'), ('color', 'circle', 'red'), ('size', 'circle', 'small'), ('count', 'circle', 1, 'red', 'small'), ('background', 'beach')]
    >>> [check_fact(f, s) for f in caption_facts("Two blue circles on a beach.")]
    [True, False, False, True]
"""

from __future__ import annotations

import re

from vlm.world.scene import (BACKGROUND_VARIANTS, COLORS, COUNT_WORDS, FINE_CLASSES, PLURALS, SHAPES, SYNONYMS,
                             Scene, Thing, relation)

_SINGULAR = {p: s for s, p in PLURALS.items()}
_NOUNS = sorted(set(SHAPES) | {"man", "woman", "boy", "girl"} | set(FINE_CLASSES) | {"badge"}
                | set(PLURALS.values()), key=len, reverse=True)
_COLOR = "|".join(COLORS)
_SIZE = "small|medium-sized|medium|large"
_NUM = "|".join(COUNT_WORDS[1:7]) + "|[1-6]|an|a|some|several|a few|a group of"
_NOUN = "|".join(re.escape(n) for n in _NOUNS)
_PHRASE = re.compile(
    rf"\b(?:(?P<num>{_NUM})\s+)?(?:(?P<size>{_SIZE})\s+)?(?:(?P<color>{_COLOR})\s+)?(?P<noun>{_NOUN})\b"
    rf"(?:\s+in\s+(?:an?\s+)?(?P<garment_color>{_COLOR})\s+(?:dress|dresses|shirt|shirts)"
    rf"|\s+in\s+(?P<post_color>{_COLOR})\b)?")  # "a hexagon in orange": a varied wording's colour after its noun
_REF = rf"(?:(?:{_SIZE})\s+)?(?:(?:{_COLOR})\s+)?(?:{_NOUN})(?:\s+in\s+the\s+(?:{_COLOR})\s+(?:dress|shirt))?"
_REL = re.compile(
    rf"\bthe\s+(?P<a>{_REF})\s+is\s+(?:to\s+the\s+)?(?P<rel>left of|right of|above|below)\s+the\s+(?P<b>{_REF})")
_REF_PARTS = re.compile(
    rf"(?:(?P<size>{_SIZE})\s+)?(?:(?P<color>{_COLOR})\s+)?(?P<noun>{_NOUN})"
    rf"(?:\s+in\s+the\s+(?P<garment_color>{_COLOR})\s+(?:dress|shirt))?")
_BG = {phrase.split(" ", 1)[1]: bg for bg, phrases in BACKGROUND_VARIANTS.items() for phrase in phrases}
_CANON = {alt: word for word, alts in SYNONYMS.items() for alt in alts} | {"a pair of": "two"}
_ALT = re.compile(rf"\b(?:{'|'.join(re.escape(a) for a in sorted(_CANON, key=len, reverse=True))})\b",
                  re.IGNORECASE)


def canonical_wording(caption: str) -> str:
    """``caption`` with each word of :data:`~vlm.world.scene.SYNONYMS` (and "a pair of") replaced by the word it
    stands for, the rest as written: a ``wording="synonyms"`` caption in the world's own words, as the fact reader
    reads it. A judge that reads captions through it (``world-words:`` retrievers, :mod:`vlm.retrieval`) scores what
    a caption states, not which of the annotators' words it uses.

    Example:
        >>> canonical_wording("A pair of tiny discs in crimson and a lady at the beach.")
        'Two small circles in red and a woman at the beach.'
    """
    def canon(m: re.Match) -> str:
        word = _CANON[m.group(0).lower()]
        return word[:1].upper() + word[1:] if m.group(0)[:1].isupper() else word

    return _ALT.sub(canon, caption)


def _size(word: str | None) -> str | None:
    return "medium" if word == "medium-sized" else word


def _noun_of(word: str) -> str:
    return _SINGULAR.get(word, word)


def _kind_matches(t: Thing, noun: str) -> bool:
    return t.noun == noun or (noun == "badge" and t.kind == "badge")


def caption_facts(caption: str) -> list[tuple]:
    """The atomic facts a caption states, in reading order, without duplicates."""
    text = canonical_wording(caption).lower()
    facts: list[tuple] = []
    rel_spans = []
    for m in _REL.finditer(text):
        rel_spans.append(m.span())
        facts.append(("relation", m.group("a"), m.group("rel"), m.group("b")))
    for m in _PHRASE.finditer(text):
        if any(a <= m.start() < b for a, b in rel_spans):
            continue  # "the red circle" inside a relation refers back; it states nothing new
        noun = _noun_of(m.group("noun"))
        facts.append(("thing", noun))
        color = m.group("color") or m.group("garment_color") or m.group("post_color")
        if color:
            facts.append(("color", noun, color))
        if m.group("size"):
            facts.append(("size", noun, _size(m.group("size"))))
        num = m.group("num")
        # a garment colour ("a woman in a red dress") does not qualify the count; a colour after the noun does
        qual = m.group("color") or m.group("post_color")
        if num in COUNT_WORDS[1:7] or (num or "").isdigit():
            k = int(num) if num.isdigit() else COUNT_WORDS.index(num)
            facts.append(("count", noun, k, qual, _size(m.group("size"))))
        elif num in ("a", "an") and m.group("noun") == noun:
            facts.append(("count", noun, 1, qual, _size(m.group("size"))))
    for phrase, bg in _BG.items():
        if re.search(rf"\b{re.escape(phrase)}\b", text):
            facts.append(("background", bg))
    out, seen = [], set()
    for f in facts:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


def _resolve(ref: str, scene: Scene) -> list[Thing]:
    m = _REF_PARTS.fullmatch(ref)
    if m is None:
        return []
    noun = _noun_of(m.group("noun"))
    size = _size(m.group("size"))
    color = m.group("color") or m.group("garment_color")
    return [t for t in scene.things if _kind_matches(t, noun) and (color is None or t.color == color)
            and (size is None or t.size == size)]


def check_fact(fact: tuple, scene: Scene) -> bool:
    """Whether the scene makes ``fact`` true."""
    kind = fact[0]
    if kind == "thing":
        return any(_kind_matches(t, fact[1]) for t in scene.things)
    if kind == "color":
        return any(_kind_matches(t, fact[1]) and t.color == fact[2] for t in scene.things)
    if kind == "size":
        return any(_kind_matches(t, fact[1]) and t.size == fact[2] for t in scene.things)
    if kind == "count":
        noun, k, color, size = fact[1], fact[2], fact[3], fact[4]
        match = [t for t in scene.things if _kind_matches(t, noun) and (color is None or t.color == color)
                 and (size is None or t.size == size)]
        # "a hexagon and two orange hexagons": an unqualified count may name one group of identical things.
        groups: dict[tuple, int] = {}
        for t in match:
            groups[t.key()] = groups.get(t.key(), 0) + 1
        return len(match) == k or k in groups.values()
    if kind == "background":
        return scene.background == fact[1]
    if kind == "relation":
        a, b = _resolve(fact[1], scene), _resolve(fact[3], scene)
        return len(a) == 1 and len(b) == 1 and relation(a[0], b[0]) == fact[2]
    raise ValueError(f"unknown fact kind {kind!r}")


def score_caption(caption: str, scene: Scene) -> dict:
    """Facts stated, supported and unsupported (hallucinated) by one caption.

    Example:
        >>> from vlm.world import Scene, Thing
        >>> s = Scene("grass", [Thing("person", "red", "large", 0.5, 0.5, gender="woman")])
        >>> score_caption("A woman in a blue dress on the grass.", s)
        {'facts': 4, 'supported': 3, 'unsupported': 1}
    """
    facts = caption_facts(caption)
    ok = sum(check_fact(f, scene) for f in facts)
    return {"facts": len(facts), "supported": ok, "unsupported": len(facts) - ok}


FACT_KINDS = ("thing", "color", "count", "size", "background", "relation")
"""The kinds of atomic fact :func:`caption_facts` finds (the first element of each fact)."""


def fact_scores(captions: dict[str, str], scenes: dict[str, object], *, by_kind: bool = False) -> dict:
    """Facts per caption and hallucination rate of ``{id: caption}`` against ``{id: Scene}``.

    ``by_kind=True`` adds ``by_kind``: for each kind of fact stated at least once (:data:`FACT_KINDS` order),
    ``stated`` (how many), ``per_caption`` and its own ``hallucination_rate``: which details a captioner gets
    wrong (a self-retrieval reward that cannot see counts makes counts hallucinate, say).

    Example:
        >>> from vlm.world import Scene, Thing
        >>> s = {"0": Scene("grass", [Thing("shape", "red", "large", 0.5, 0.5, shape="circle")])}
        >>> fact_scores({"0": "A large blue circle on the grass."}, s)
        {'captions': 1, 'facts_per_caption': 5.0, 'hallucination_rate': 0.4}
        >>> fact_scores({"0": "Two blue circles on the grass."}, s, by_kind=True)["by_kind"]["count"]
        {'stated': 1, 'per_caption': 1.0, 'hallucination_rate': 1.0}
    """
    stated: dict[str, int] = {}
    wrong: dict[str, int] = {}
    for k, cap in captions.items():
        for fact in caption_facts(cap):
            stated[fact[0]] = stated.get(fact[0], 0) + 1
            if not check_fact(fact, scenes[k]):
                wrong[fact[0]] = wrong.get(fact[0], 0) + 1
    n, total = len(captions), sum(stated.values())
    out: dict = {"captions": n, "facts_per_caption": round(total / max(n, 1), 4),
                 "hallucination_rate": round(sum(wrong.values()) / max(total, 1), 4)}
    if by_kind:
        out["by_kind"] = {kind: {"stated": stated[kind], "per_caption": round(stated[kind] / max(n, 1), 4),
                                 "hallucination_rate": round(wrong.get(kind, 0) / stated[kind], 4)}
                          for kind in FACT_KINDS if stated.get(kind)}
    return out
