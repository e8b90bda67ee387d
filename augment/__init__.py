"""TIDA: skill-targeted counterfactual captions and image edits for captioner training.

Available now: skills in captions, defined as data files a user can extend (:func:`find_skills`,
:func:`detect_skills`, :func:`load_skills`, :data:`SKILL_WORDS`), and counterfactual caption edits with
morphology repair (:func:`counterfactuals`, :func:`sample_counterfactual`).

Example:
    >>> from augment import counterfactuals, detect_skills
    >>> sorted(detect_skills("Two women in a red car."))
    ['color', 'counting', 'gender']
    >>> counterfactuals("A woman and her dog.")[0].edited
    'A man and his dog.'
"""

import vlm  # noqa: F401  (installs the torchvision fix before any heavy import)
from augment.counterfactual import CaptionEdit, counterfactuals, sample_counterfactual
from augment.skills import (SKILL_WORDS, SKILLS, Skill, SkillMatch, detect_skills, find_skills, load_skill,
                            load_skills, tokenize)

__all__ = ["CaptionEdit", "SKILL_WORDS", "SKILLS", "Skill", "SkillMatch", "counterfactuals", "detect_skills",
           "find_skills", "load_skill", "load_skills", "sample_counterfactual", "tokenize"]
