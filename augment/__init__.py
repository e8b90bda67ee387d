"""TIDA: skill-targeted counterfactual captions and image edits for captioner training.

Available now: skill detection in captions (:func:`find_skills`, :func:`detect_skills`, :data:`SKILL_WORDS`).

Example:
    >>> from augment import detect_skills
    >>> sorted(detect_skills("Two women in a red car."))
    ['color', 'counting', 'gender']
"""

import vlm  # noqa: F401  (installs the torchvision fix before any heavy import)
from augment.skills import SKILL_WORDS, SKILLS, SkillMatch, detect_skills, find_skills, tokenize

__all__ = ["SKILL_WORDS", "SKILLS", "SkillMatch", "detect_skills", "find_skills", "tokenize"]
