"""Image editors for TIDA (step 4): make an image show a counterfactual caption.

One interface, :class:`ImageEditor`: ``edit(images, source_captions, target_captions, *, masks=None,
edit_phrases=None, edits=None, scenes=None, seeds=None) -> list[EditResult]``, batched and seeded.

- :class:`SceneEditor` — the built-in world: edits the scene graph and renders it again, exactly, with a
  known mask; offline, no model.
- :class:`InpaintEditor` — Stable Diffusion inpainting of the edited phrase's region (mask given, or from a
  text-prompted :class:`Segmenter` such as :class:`CLIPSegSegmenter`).
- :class:`InstructPix2PixEditor` — InstructPix2Pix with an instruction built from the caption edit.
- :class:`RegenerateEditor` — Stable Diffusion text-to-image from the target caption.

An edit that cannot be applied comes back with ``result.ok`` False and ``result.reason``; a dataset job skips
it. Importing this package is cheap: diffusers and transformers load when an editor is built.

Example:
    >>> from vlm.world import Scene, Thing, render
    >>> scene = Scene("beach", [Thing("shape", "red", "large", 0.3, 0.6, shape="circle"),
    ...                         Thing("person", "blue", "large", 0.7, 0.5, gender="man")])
    >>> results = SceneEditor().edit(
    ...     [render(scene, 64)] * 2, ["A red circle and a man.", "A red circle and a man."],
    ...     ["A red circle and a woman.", "A red circle and a man."], scenes=[scene] * 2,
    ...     edits=[EditRequest("gender", "man", "woman", "a man"),
    ...            EditRequest("color", "green", "blue", "a green circle")])
    >>> results[0].ok, results[0].info["scene"]["things"][1]["gender"]
    (True, 'woman')
    >>> results[1].ok, results[1].reason
    (False, "nothing in the scene matches 'a green circle'")
"""

from augment.editors.base import (EditNotApplicable, EditRequest, EditResult, ImageEditor, as_mask, mask_image,
                                  stable_seed)
from augment.editors.diffusion import (DEFAULT_INPAINT_MODEL, DEFAULT_PIX2PIX_MODEL, DEFAULT_TEXT2IMAGE_MODEL,
                                       DiffusionEditor, InpaintEditor, InstructPix2PixEditor, RegenerateEditor)
from augment.editors.scene import (SCENE_SKILLS, SceneEditor, apply_scene_edit, dress_for_world, garment_clash,
                                   resolve_phrase, world_render_seed)
from augment.editors.segment import DEFAULT_CLIPSEG, CLIPSegSegmenter, Segmenter, as_segmenter

__all__ = [
    "CLIPSegSegmenter", "DEFAULT_CLIPSEG", "DEFAULT_INPAINT_MODEL", "DEFAULT_PIX2PIX_MODEL",
    "DEFAULT_TEXT2IMAGE_MODEL", "DiffusionEditor", "EditNotApplicable", "EditRequest", "EditResult",
    "ImageEditor", "InpaintEditor", "InstructPix2PixEditor", "RegenerateEditor", "SCENE_SKILLS", "SceneEditor",
    "Segmenter", "apply_scene_edit", "as_mask", "as_segmenter", "dress_for_world", "garment_clash", "mask_image",
    "resolve_phrase", "stable_seed", "world_render_seed",
]
