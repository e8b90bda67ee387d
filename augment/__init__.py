"""TIDA: skill-targeted counterfactual captions and image edits for captioner training.

- Skills in captions, defined as data files a user can extend (:func:`find_skills`, :func:`detect_skills`,
  :func:`load_skills`, :data:`SKILL_WORDS`), and counterfactual caption edits with morphology repair
  (:func:`counterfactuals`, :func:`sample_counterfactual`).
- Image editors that make an image show a counterfactual caption (:class:`SceneEditor` for the built-in
  world; :class:`InpaintEditor`, :class:`InstructPix2PixEditor`, :class:`RegenerateEditor` on diffusers).
- Edit verification by a retriever (:class:`EditVerifier`, :class:`VerifyConfig`, :func:`acceptance_stats`).
- The dataset job (:class:`TIDAConfig`, :func:`run_tida`, :func:`merge_tida`; ``python -m augment tida``).

Importing ``augment`` is cheap: torch, diffusers and transformers load when an editor or retriever is built.

Example:
    >>> from augment import counterfactuals, detect_skills
    >>> sorted(detect_skills("Two women in a red car."))
    ['color', 'counting', 'gender']
    >>> counterfactuals("A woman and her dog.")[0].edited
    'A man and his dog.'
"""

import vlm  # noqa: F401  (installs the torchvision fix before any heavy import)
from augment.counterfactual import CaptionEdit, counterfactuals, sample_counterfactual
from augment.editors import (CLIPSegSegmenter, EditNotApplicable, EditRequest, EditResult, ImageEditor,
                             InpaintEditor, InstructPix2PixEditor, RegenerateEditor, SceneEditor, Segmenter,
                             stable_seed, world_render_seed)
from augment.skills import (SKILL_WORDS, SKILLS, Skill, SkillMatch, detect_skills, find_skills, load_skill,
                            load_skills, tokenize)
from augment.tida import PlannedEdit, TIDAConfig, merge_tida, plan_edits, run_tida
from augment.verify import EditDecision, EditVerifier, VerifyConfig, acceptance_stats

__all__ = ["CLIPSegSegmenter", "CaptionEdit", "EditDecision", "EditNotApplicable", "EditRequest", "EditResult",
           "EditVerifier", "ImageEditor", "InpaintEditor", "InstructPix2PixEditor", "PlannedEdit", "RegenerateEditor",
           "SKILL_WORDS", "SKILLS", "SceneEditor", "Segmenter", "Skill", "SkillMatch", "TIDAConfig", "VerifyConfig",
           "acceptance_stats", "counterfactuals", "detect_skills", "find_skills", "load_skill", "load_skills",
           "merge_tida", "plan_edits", "run_tida", "sample_counterfactual", "stable_seed", "tokenize",
           "world_render_seed"]
