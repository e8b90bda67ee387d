"""Is the skill word of a caption right? Colour, counting and gender words checked against world scene graphs.

TIDA's claim (``METHODS.md`` section 1) is that counterfactual training pairs make a captioner name the
colour, the count and the gender it sees rather than the one its training set correlates with the context.
On the built-in world this can be checked exactly: the fact parser (:mod:`vlm.world.facts`) reads what a
caption states, and the scene graph says whether it is true.

Per caption and skill (the words are TIDA's lists, :data:`augment.SKILL_WORDS`):

- ``color``: every colour fact ``("color", noun, c)`` with ``c`` a skill colour (red green blue yellow purple:
  "a red circle", "a woman in a red dress") must hold: a thing of that noun has that colour;
- ``counting``: every count fact with a skill number (two .. six: "three stars", "two blue squares") must hold
  (:func:`vlm.world.facts.check_fact`: that many things of the noun, with the stated colour and size);
- ``gender``: every person noun (man, woman, boy, girl and plurals) must name the gender of a person of the
  scene (man/boy male, woman/girl female; the age word is a size fact, not a gender one).

Colour and count facts about people are checked without their gender ("a man in a red shirt" under a woman in
a red dress has the right colour and the wrong gender), so one error counts against one skill.

A caption *mentions* the skill when it states at least one such fact, and is *right* for it when it mentions
it and every one of those facts holds. The scene *has* the skill when it shows a skill colour (a shape or a
garment), a group of two to six identical things, or a person.

How an omission counts: the headline number, ``accuracy``, is ``right / relevant`` over the *relevant*
images: those whose scene has the skill plus those whose caption mentions it anyway. A caption that says
nothing about a colour the image shows counts as not right (a captioner cannot win by omitting skill words),
and one that says "two stars" under a single star counts as wrong although the scene has no group to count
(the typical error of a captioner trained on "stars come in twos"). ``precision`` is ``right / mentioned``
(right among the captions that use the skill), ``mention_rate`` is the fraction of images with the skill
whose caption mentions it.

Example:
    >>> from vlm.world import Scene, Thing
    >>> s = Scene("street", [Thing("person", "red", "large", 0.3, 0.5, gender="woman"),
    ...                      Thing("shape", "blue", "small", 0.7, 0.5, shape="circle")])
    >>> v = skill_verdicts("A man in a red shirt and a blue circle.", s)
    >>> v["color"]["right"], v["gender"]["right"], v["gender"]["wrong"], v["counting"]["relevant"]
    (True, False, ['man'], False)
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

SKILLS = ("color", "counting", "gender")
"""The skills scored, TIDA's three."""

_GENDER_OF = {"man": "man", "boy": "man", "woman": "woman", "girl": "woman"}
_OTHER_GENDER = {"man": "woman", "woman": "man", "boy": "girl", "girl": "boy"}


def _holds(fact: tuple, scene: Any) -> bool:
    """``check_fact``, except that a colour or count fact about a person may hold for the other gender."""
    from vlm.world.facts import check_fact

    if check_fact(fact, scene):
        return True
    other = _OTHER_GENDER.get(fact[1])
    return other is not None and check_fact((fact[0], other, *fact[2:]), scene)


def _words(skill: str) -> set[str]:
    from augment import SKILL_WORDS

    return {w for group in SKILL_WORDS[skill].values() for w in group}


def skill_verdicts(caption: str, scene: Any) -> dict[str, dict]:
    """Per skill: whether the scene has it (``present``), the skill words the caption states (``words``), the
    wrong ones (``wrong``), ``mentioned``, ``right`` (mentioned, nothing wrong) and ``relevant`` (present or
    mentioned). ``scene`` is a :class:`vlm.world.Scene`.

    Example:
        >>> from vlm.world import Scene, Thing
        >>> s = Scene("grass", [Thing("shape", "red", "small", 0.2, 0.5, shape="star") for _ in range(3)])
        >>> v = skill_verdicts("Two red stars on the grass.", s)
        >>> v["counting"]["words"], v["counting"]["right"], v["color"]["right"]
        (['two'], False, True)
    """
    from vlm.world.facts import caption_facts
    from vlm.world.scene import COUNT_WORDS

    colors, numbers = _words("color"), _words("counting")
    facts = caption_facts(caption)
    stated: dict[str, list[tuple[str, bool]]] = {s: [] for s in SKILLS}
    for f in facts:
        if f[0] == "color" and f[2] in colors:
            stated["color"].append((f[2], _holds(f, scene)))
        elif f[0] == "count" and COUNT_WORDS[f[2]] in numbers:
            stated["counting"].append((COUNT_WORDS[f[2]], _holds(f, scene)))
        elif f[0] == "thing" and f[1] in _GENDER_OF:
            gender = _GENDER_OF[f[1]]
            stated["gender"].append((f[1], any(t.kind == "person" and t.gender == gender for t in scene.things)))
    groups = Counter(t.key() for t in scene.things)
    present = {
        "color": any(t.color in colors for t in scene.things),
        "counting": any(COUNT_WORDS[k] in numbers for k in groups.values() if k < len(COUNT_WORDS)),
        "gender": any(t.kind == "person" for t in scene.things),
    }
    out = {}
    for s in SKILLS:
        words = [w for w, _ in stated[s]]
        wrong = [w for w, ok in stated[s] if not ok]
        mentioned = bool(words)
        out[s] = {"present": present[s], "words": words, "wrong": wrong, "mentioned": mentioned,
                  "right": mentioned and not wrong, "relevant": present[s] or mentioned}
    return out


def skill_scores(captions: Mapping[str, str], scenes: Mapping[str, Any]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Skill correctness of ``{id: caption}`` against ``{id: Scene}``: ``(per skill summary, per id verdicts)``.

    The summary of a skill: ``relevant``, ``present``, ``mentioned`` and ``right`` counts, ``accuracy`` =
    right / relevant (omissions count as not right; the headline number), ``precision`` = right / mentioned,
    ``mention_rate`` = present images whose caption mentions the skill / present images. Rates are None
    when their denominator is 0.

    Example:
        >>> from vlm.world import Scene, Thing
        >>> scenes = {"0": Scene("grass", [Thing("shape", "red", "small", 0.2, 0.5, shape="circle")]),
        ...           "1": Scene("grass", [Thing("shape", "blue", "small", 0.2, 0.5, shape="circle")])}
        >>> summary, _ = skill_scores({"0": "A red circle.", "1": "A circle."}, scenes)
        >>> summary["color"]["accuracy"], summary["color"]["precision"], summary["color"]["mention_rate"]
        (0.5, 1.0, 0.5)
    """
    missing = [k for k in captions if k not in scenes]
    if missing:
        raise KeyError(f"no scene for caption id(s) {missing[:5]}; give a scene for every caption")
    per_item = {k: skill_verdicts(c, scenes[k]) for k, c in captions.items()}
    summary = {}
    for s in SKILLS:
        rows = [v[s] for v in per_item.values()]
        n = {key: sum(r[key] for r in rows) for key in ("relevant", "present", "mentioned", "right")}
        present_mentioned = sum(r["present"] and r["mentioned"] for r in rows)
        summary[s] = {**n,
                      "accuracy": round(n["right"] / n["relevant"], 6) if n["relevant"] else None,
                      "precision": round(n["right"] / n["mentioned"], 6) if n["mentioned"] else None,
                      "mention_rate": round(present_mentioned / n["present"], 6) if n["present"] else None}
    return summary, per_item


__all__ = ["SKILLS", "skill_scores", "skill_verdicts"]
