"""Skill detection in captions (TIDA step 1): which gender, colour and counting words a caption uses.

The word lists are TIDA's (Barriere, del Rio et al., 2023). Black and white are left out of the colour
skill on purpose: in photos they are too often background or clothing, and edits of them are unreliable.
Benchmarks split test sets by these same lists (captions whose references contain a skill word).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SKILL_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {"male": ("boy", "boys", "man", "men", "guy", "guys"),
               "female": ("girl", "girls", "woman", "women")},
    "color": {"color": ("red", "green", "blue", "yellow", "purple")},
    "counting": {"count": ("two", "three", "four", "five", "six")},
}
SKILLS = tuple(SKILL_WORDS)

_WORD_TO_SKILL = {w: skill for skill, groups in SKILL_WORDS.items() for ws in groups.values() for w in ws}
# Tokens are lower-cased runs of letters (digits and punctuation split words): "woman's" -> "woman", "s".
_TOKEN = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class SkillMatch:
    """One skill word in a caption: the skill, the word (lower-cased) and its character span."""

    skill: str
    word: str
    start: int
    end: int


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens.

    Example:
        >>> tokenize("Two Women, in red!")
        ['two', 'women', 'in', 'red']
    """
    return _TOKEN.findall(caption.lower())


def find_skills(caption: str) -> list[SkillMatch]:
    """All skill words of a caption with their positions, in order.

    Example:
        >>> [(m.skill, m.word) for m in find_skills("A woman holds two red balloons.")]
        [('gender', 'woman'), ('counting', 'two'), ('color', 'red')]
    """
    out = []
    for m in _TOKEN.finditer(caption.lower()):
        skill = _WORD_TO_SKILL.get(m.group())
        if skill is not None:
            out.append(SkillMatch(skill, m.group(), m.start(), m.end()))
    return out


def detect_skills(caption: str) -> set[str]:
    """The set of skills a caption exercises.

    Example:
        >>> sorted(detect_skills("Three guys on a beach."))
        ['counting', 'gender']
    """
    return {m.skill for m in find_skills(caption)}
