"""Scene graphs of the built-in world: what is in an image, independent of how it is drawn or described.

A :class:`Scene` is a background ("context") plus a list of :class:`Thing` (shapes, person pictograms,
fine-grained badges) at normalised positions. Everything downstream is a pure function of the scene graph:
the renderer draws it, the language module describes it and asks questions about it, the TIDA scene
editor changes it and re-renders exactly. Scenes round-trip through JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace

# TIDA's five skill colours come first; the rest make the task less trivial and give distractors.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (34, 139, 34),
    "blue": (31, 90, 200),
    "yellow": (240, 200, 20),
    "purple": (128, 50, 160),
    "orange": (245, 125, 15),
    "pink": (240, 120, 180),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
TIDA_COLORS = ("red", "green", "blue", "yellow", "purple")

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "hexagon": "hexagons", "diamond": "diamonds", "man": "men", "woman": "women", "boy": "boys",
           "girl": "girls", "badge": "badges"}

# Radius as a fraction of the image side. Three clearly separable steps: a captioner must be able to see
# the difference between "small" and "large" at 224 px and below.
SIZES: dict[str, float] = {"small": 0.055, "medium": 0.08, "large": 0.11}

# Backgrounds are the "context" of TIDA: captioners learn who/what appears where.
BACKGROUNDS = ("grass", "beach", "street", "kitchen", "snow", "night")
# The ways annotators name each setting: the first always, the others too in ``wording="varied"`` worlds.
BACKGROUND_VARIANTS: dict[str, tuple[str, ...]] = {
    "grass": ("on the grass", "on grass", "on a lawn"), "beach": ("on a beach", "at the beach", "on the sand"),
    "street": ("on a street", "in the street", "on a road"), "kitchen": ("in a kitchen", "in the kitchen"),
    "snow": ("in the snow", "on snow", "in snow"), "night": ("at night", "in the night", "in the dark")}
BACKGROUND_PHRASES = {bg: phrases[0] for bg, phrases in BACKGROUND_VARIANTS.items()}
# Other words annotators use for some of the world's words, in ``wording="synonyms"`` worlds: each alternative in
# the form of the word it stands for (a plural for a plural); the fact reader reads each as that word.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("little", "tiny"), "large": ("big",), "medium-sized": ("mid-sized",),
    "circle": ("disc",), "circles": ("discs",), "diamond": ("rhombus",), "diamonds": ("rhombuses",),
    "red": ("crimson",), "yellow": ("golden",), "purple": ("violet",), "orange": ("amber",),
    "woman": ("lady",), "women": ("ladies",), "man": ("guy",), "men": ("guys",),
}

GENDERS = ("man", "woman")
# A small person pictogram is a child: this gives TIDA's gender list its boy/girl words too.
CHILD = {"man": "boy", "woman": "girl"}

# Fine-grained classes: one super-category ("badge") whose 12 sub-categories differ only in their
# marking, a few of them subtly (two vs three bands, one vs two rings, sparse vs dense spots). The body
# colour and the marking colour are nuisance variables, drawn independently of the class.
FINE_CLASSES: tuple[str, ...] = (
    "two-banded badge", "three-banded badge", "diagonal-banded badge", "ringed badge",
    "double-ringed badge", "spotted badge", "dense-spotted badge", "crossed badge", "saltire badge",
    "half-moon badge", "quartered badge", "starred badge",
)
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MAX_COUNT = 6


@dataclass
class Thing:
    """One object in a scene.

    kind: "shape", "person" or "badge". For a shape, ``shape`` names it; for a person ``gender`` is
    "man"/"woman" (a small person is drawn as a child: boy/girl) and ``color`` is the shirt colour;
    for a badge ``fine_class`` indexes :data:`FINE_CLASSES` and ``marking_color`` colours the marking.
    ``x``, ``y`` are the centre in [0, 1] (y grows downwards), ``size`` a key of :data:`SIZES`.
    """

    kind: str
    color: str
    size: str
    x: float
    y: float
    shape: str | None = None
    gender: str | None = None
    fine_class: int | None = None
    marking_color: str | None = None

    @property
    def radius(self) -> float:
        r = SIZES[self.size]
        # People are drawn taller than wide; they need more room than a shape of the same size class.
        return r * 1.35 if self.kind == "person" else r * (1.6 if self.kind == "badge" else 1.0)

    @property
    def noun(self) -> str:
        """The head noun a caption uses for this thing ("circle", "woman", "girl", "badge")."""
        if self.kind == "shape":
            return self.shape
        if self.kind == "person":
            return CHILD[self.gender] if self.size == "small" else self.gender
        return FINE_CLASSES[self.fine_class] if self.fine_class is not None else "badge"

    def key(self) -> tuple:
        """Identity for grouping in captions: things with the same key are counted together."""
        return (self.kind, self.shape, self.gender, self.color, self.size, self.fine_class)


@dataclass
class Scene:
    """A background plus things; the stored scene graph of every world image."""

    background: str
    things: list[Thing] = field(default_factory=list)

    def to_dict(self) -> dict:
        things = []
        for t in self.things:
            d = {k: v for k, v in asdict(t).items() if v is not None}
            d["x"], d["y"] = round(t.x, 4), round(t.y, 4)
            things.append(d)
        return {"background": self.background, "things": things, "relations": relations(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        if "background" not in d or "things" not in d:
            raise ValueError("scene dict needs 'background' and 'things' fields")
        if d["background"] not in BACKGROUNDS:
            raise ValueError(f"scene field 'background': unknown background {d['background']!r}; "
                             f"choose one of {BACKGROUNDS}")
        allowed = set(Thing.__dataclass_fields__)
        things = []
        for i, t in enumerate(d["things"]):
            unknown = set(t) - allowed
            if unknown:
                raise ValueError(f"scene field 'things[{i}]': unknown keys {sorted(unknown)}")
            things.append(Thing(**t))
        return cls(background=d["background"], things=things)

    def copy(self) -> Scene:
        return Scene(self.background, [replace(t) for t in self.things])

    def signature(self) -> tuple:
        """Order-free identity of what is visible, used to keep near-duplicate bags distinct."""
        items = sorted((t.key(), round(t.x, 2), round(t.y, 2)) for t in self.things)
        return (self.background, tuple(items))


def relation(a: Thing, b: Thing) -> str:
    """Spatial relation of ``a`` to ``b`` along the dominant axis: "left of", "right of", "above", "below"."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def relations(scene: Scene) -> list[dict]:
    """``{"subject": i, "relation": r, "object": j}`` for each pair i < j of things.

    Dicts rather than ``[i, r, j]`` triples: pyarrow (hence ``datasets``) refuses lists that mix types.
    """
    out = []
    for i, a in enumerate(scene.things):
        for j in range(i + 1, len(scene.things)):
            out.append({"subject": i, "relation": relation(a, scene.things[j]), "object": j})
    return out


def place(rng: random.Random, things: list[Thing], *, margin: float = 0.03, tries: int = 200) -> bool:
    """Give every thing a non-overlapping position, largest first. Returns False if it did not fit."""
    placed: list[Thing] = []
    for t in sorted(things, key=lambda t: -t.radius):
        r = t.radius
        for _ in range(tries):
            x = rng.uniform(r + margin, 1 - r - margin)
            y = rng.uniform(r + margin, 1 - r - margin)
            if all(math.hypot(x - p.x, y - p.y) > r + p.radius + margin for p in placed):
                t.x, t.y = x, y
                placed.append(t)
                break
        else:
            return False
    return True


def fits(thing: Thing, others: list[Thing], margin: float = 0.03) -> bool:
    """Whether ``thing`` lies inside the canvas and overlaps none of ``others``."""
    r = thing.radius
    if not (r <= thing.x <= 1 - r and r <= thing.y <= 1 - r):
        return False
    return all(math.hypot(thing.x - o.x, thing.y - o.y) > r + o.radius + margin
               for o in others if o is not thing)
