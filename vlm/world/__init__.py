"""The built-in world: procedural scenes with known scene graphs, captions, questions, bags and classes.

Example:
    >>> import tempfile
    >>> from vlm.world import generate_world
    >>> out = generate_world(tempfile.mkdtemp(), n=4, seed=0, preset="vqa", image_size=64)
"""

from vlm.world.generate import (EDITS, PRESETS, TIDA_CORRELATIONS, Correlation, WorldConfig, WorldItem,
                                edit_scene, generate_world, iter_world, resolve_config, sample_bag,
                                sample_scene, world_matches, world_settings)
from vlm.world.language import (content_caption, dense_caption, fine_grained_captions, human_captions, noun_phrase,
                                questions)
from vlm.world.render import render
from vlm.world.scene import (BACKGROUNDS, COLORS, COUNT_WORDS, FINE_CLASSES, GENDERS, SHAPES, SIZES,
                             TIDA_COLORS, Scene, Thing, relation, relations)

__all__ = [
    "BACKGROUNDS", "COLORS", "COUNT_WORDS", "Correlation", "EDITS", "FINE_CLASSES", "GENDERS", "PRESETS",
    "SHAPES", "SIZES", "Scene", "TIDA_COLORS", "TIDA_CORRELATIONS", "Thing", "WorldConfig", "WorldItem",
    "content_caption", "dense_caption", "edit_scene", "fine_grained_captions", "generate_world", "human_captions",
    "iter_world", "noun_phrase", "questions", "relation", "relations", "render", "resolve_config", "sample_bag",
    "sample_scene", "world_matches", "world_settings",
]
