"""Sample scenes, captions, questions and bags, and write a world dataset.

Every image ``i`` gets its own ``random.Random(f"{seed}/{preset}/{i}")`` (string seeds hash with SHA-512,
so they are stable across processes and platforms): the same seed gives byte-identical output, and any
single record can be regenerated without the others.

Presets (:data:`PRESETS`), one per use in the package:

=============  ==============================================================================================
captioning     1-3 groups of shapes, people 35 % of the time, 5 human-like captions + a dense caption
tida-biased    skill correlations in train/val (woman->kitchen, man->street, circle->red, square->blue,
               triangle->yellow, stars come in twos) with p=0.9; ``test`` is i.i.d.; ``test_cf`` breaks them
               (the woman on the street, the man in the kitchen, a circle of another colour, ...)
truematch      bags of 3, 5 and 7 near-duplicates that differ in one or two details (colour, count, size,
               position, background, gender)
vqa            busier scenes with 4 questions each (count, attribute, spatial, compare, exists)
finegrained    one "badge" per image from 12 classes that differ only in their marking; colours are nuisance
=============  ==============================================================================================
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vlm.world.language import (BRIEF_CAPTION_LEVELS, CAPTION_LEVELS, DEFAULT_CAPTION_LEVELS, WORDINGS, dense_caption,
                                fine_grained_captions, human_captions, questions)
from vlm.world.render import render
from vlm.world.scene import (BACKGROUNDS, COLORS, FINE_CLASSES, GENDERS, MAX_COUNT, SHAPES, SIZES, Scene,
                             Thing, fits, place)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Correlation:
    """In biased splits, things with ``if_attr == if_value`` get ``then_attr = then_value`` with prob. ``p``.

    ``if_attr``: "shape" or "gender"; ``then_attr``: "color", "count" (size of the group) or "background".
    In the counterfactual split the rule is broken on purpose: every matching group gets another value (a
    background rule's scene gets a sibling rule's background: the man goes into the kitchen).
    """

    if_attr: str
    if_value: str
    then_attr: str
    then_value: str | int
    p: float = 0.9

    def __post_init__(self):
        if self.if_attr not in ("shape", "gender"):
            raise ValueError(f"Correlation.if_attr must be 'shape' or 'gender', got {self.if_attr!r}")
        if self.then_attr not in ("color", "count", "background"):
            raise ValueError(f"Correlation.then_attr must be 'color', 'count' or 'background', got {self.then_attr!r}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"Correlation.p must be in [0, 1], got {self.p}")

    def describe(self) -> str:
        return f"{self.if_attr}={self.if_value} -> {self.then_attr}={self.then_value} (p={self.p})"


TIDA_CORRELATIONS = (
    Correlation("gender", "woman", "background", "kitchen"),
    Correlation("gender", "man", "background", "street"),
    Correlation("shape", "circle", "color", "red"),
    Correlation("shape", "square", "color", "blue"),
    Correlation("shape", "triangle", "color", "yellow"),
    Correlation("shape", "star", "count", 2),
)


@dataclass(frozen=True)
class WorldConfig:
    """What a world dataset contains. Presets are instances of this; every field can be overridden."""

    preset: str = "captioning"
    """Name written into every record (and part of the per-image seed)."""
    image_size: int = 224
    """Side of the square images in pixels."""
    min_groups: int = 1
    """Fewest groups (a group = identical things, e.g. "two red circles") in a scene."""
    max_groups: int = 3
    """Most groups in a scene."""
    max_things: int = 7
    """Most things in a scene, all groups together."""
    p_person: float = 0.35
    """Probability that a scene contains a group of people (man/woman, small ones are boy/girl)."""
    n_captions: int = 5
    """Human-like captions per image (a dense caption is stored besides)."""
    caption_levels: tuple[str, ...] = DEFAULT_CAPTION_LEVELS
    """Detail level of each annotator's caption ("brief", "terse", "medium" or "detailed"), cycled over
    ``n_captions``."""
    wording: str = "fixed"
    """How annotators word the details they state: "fixed" (one way each), "varied" (a colour after its noun,
    digits, other phrases for the setting; :func:`vlm.world.language.vary_wording`) or "synonyms" (varied, and
    other words for sizes, some shapes, colours and people: :data:`vlm.world.scene.SYNONYMS`)."""
    n_questions: int = 0
    """Question/answer pairs per image (field ``qa``)."""
    bag_sizes: tuple[int, ...] = ()
    """Near-duplicate bag sizes, cycled; empty for independent images."""
    fine_grained: bool = False
    """One badge of a fine-grained class per image (field ``label``)."""
    correlations: tuple[Correlation, ...] = ()
    """Skill correlations of the biased splits."""
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    """Split names and fractions; "test_cf" is counterfactual, every name else with correlations is biased
    except "test" (i.i.d.)."""

    def __post_init__(self):
        if not 1 <= self.min_groups <= self.max_groups:
            raise ValueError("WorldConfig: need 1 <= min_groups <= max_groups")
        if self.image_size < 16:
            raise ValueError(f"WorldConfig.image_size must be >= 16, got {self.image_size}")
        if abs(sum(f for _, f in self.splits) - 1.0) > 1e-6:
            raise ValueError(f"WorldConfig.splits fractions must sum to 1, got {self.splits}")
        if not self.caption_levels or not set(self.caption_levels) <= set(CAPTION_LEVELS):
            raise ValueError(f"WorldConfig.caption_levels must be a non-empty tuple of {CAPTION_LEVELS}, got "
                             f"{self.caption_levels}")
        if self.wording not in WORDINGS:
            raise ValueError(f"WorldConfig.wording must be one of {WORDINGS}, got {self.wording!r}")
        for b in self.bag_sizes:
            if b < 2:
                raise ValueError(f"WorldConfig.bag_sizes must be >= 2, got {b}")


PRESETS: dict[str, WorldConfig] = {
    "captioning": WorldConfig(preset="captioning"),
    "tida-biased": WorldConfig(
        preset="tida-biased", p_person=0.6, correlations=TIDA_CORRELATIONS,
        splits=(("train", 0.7), ("val", 0.1), ("test", 0.1), ("test_cf", 0.1))),
    # COCO-like annotators: they name the salient things and never list everything (no exhaustive caption),
    # the generic MLE targets that self-retrieval fine-tuning starts from (METHODS.md section 2).
    "captioning-generic": WorldConfig(preset="captioning-generic",
                                      caption_levels=("terse", "terse", "medium", "medium", "medium")),
    # Four brief annotators and one medium: the likeliest caption names the salient thing and little else (as
    # COCO's do), so what separates near-duplicates is mostly left unsaid; the SR issue's starting point.
    "captioning-brief": WorldConfig(preset="captioning-brief", caption_levels=BRIEF_CAPTION_LEVELS),
    "truematch": WorldConfig(preset="truematch", min_groups=2, max_groups=3, p_person=0.4,
                             bag_sizes=(3, 5, 7)),
    "vqa": WorldConfig(preset="vqa", min_groups=2, max_groups=4, max_things=8, p_person=0.25, n_questions=4),
    "finegrained": WorldConfig(preset="finegrained", fine_grained=True, n_captions=5),
}
# The truematch scenes with the brief annotators' captions: the SR training world of a brief captioner.
PRESETS["truematch-brief"] = replace(PRESETS["truematch"], preset="truematch-brief",
                                     caption_levels=BRIEF_CAPTION_LEVELS)
# The brief annotators, each detail worded in several ways (as COCO's are): a length-normalised beam search over a
# captioner trained on them strings their details together less (docs/sr-experiments.md).
PRESETS["captioning-brief-varied"] = replace(PRESETS["captioning-brief"], preset="captioning-brief-varied",
                                             wording="varied")
PRESETS["truematch-brief-varied"] = replace(PRESETS["truematch-brief"], preset="truematch-brief-varied",
                                            wording="varied")
# Varied, and other words for sizes, some shapes, colours and people; with the default annotators too, so that a
# captioner pretrained on them (and its tokenizer) knows every word the brief ones use.
for _name in ("captioning", "captioning-brief", "truematch-brief"):
    PRESETS[f"{_name}-synonyms"] = replace(PRESETS[_name], preset=f"{_name}-synonyms", wording="synonyms")
del _name


def _count(rng: random.Random) -> int:
    # Mostly single things, but every count 1..6 is common enough to learn (the counting skill).
    return rng.choices(range(1, MAX_COUNT + 1), weights=[8, 4, 3, 2, 2, 1])[0]


def _group(rng: random.Random, kind: str, **fixed) -> dict:
    g = {"kind": kind, "color": rng.choice(list(COLORS)), "size": rng.choice(list(SIZES)), "count": _count(rng)}
    if kind == "shape":
        g["shape"] = rng.choice(SHAPES)
    else:
        g["gender"] = rng.choice(GENDERS)
        g["count"] = rng.choice([1, 1, 1, 2, 2, 3])
        # People stay off small/medium mostly; a small person is a child.
        g["size"] = rng.choice(["small", "large", "large"])
    g.update(fixed)
    return g


def _apply_correlations(groups: list[dict], scene_attrs: dict, rng: random.Random,
                        correlations: tuple[Correlation, ...], mode: str) -> list[str]:
    """Impose (mode="biased") or break (mode="counterfactual") the correlations. Returns the rules broken.

    Breaking a rule about the scene's background (``gender=woman -> background=kitchen``) puts the scene in the
    background that a sibling rule ties to another value (the street of ``gender=man -> background=street``):
    the context that, in the biased splits, says the *other* gender. A neutral background (a beach) would not
    test whether a captioner reads the person or the context. Where every sibling background is ruled out
    (a woman and a man in one scene), any background no applicable rule names is drawn. Group attributes
    (colour, count) break to any other value.
    """
    broken = []
    if mode == "counterfactual":
        applicable = [c for c in correlations if c.then_attr == "background"
                      and any(g.get(c.if_attr) == c.if_value for g in groups)]
        if applicable:
            forbidden = {c.then_value for c in applicable}
            siblings = sorted({c.then_value for c in correlations if c.then_attr == "background"
                               and c.if_attr in {a.if_attr for a in applicable}} - forbidden)
            scene_attrs["background"] = rng.choice(siblings or [b for b in BACKGROUNDS if b not in forbidden])
            broken.extend(c.describe() for c in applicable)
    for c in correlations:
        for g in groups:
            if g.get(c.if_attr) != c.if_value:
                continue
            target = scene_attrs if c.then_attr == "background" else g
            if mode == "biased":
                if rng.random() < c.p:
                    target[c.then_attr] = c.then_value
            elif mode == "counterfactual" and c.then_attr != "background":
                if c.then_attr == "color":
                    choices = [k for k in COLORS if k != c.then_value]
                else:
                    choices = [k for k in range(1, MAX_COUNT + 1) if k != c.then_value]
                if target[c.then_attr] == c.then_value:
                    target[c.then_attr] = rng.choice(choices)
                broken.append(c.describe())
    return broken


def _things(groups: list[dict]) -> list[Thing]:
    out = []
    for g in groups:
        for _ in range(g["count"]):
            out.append(Thing(g["kind"], g["color"], g["size"], 0.0, 0.0, shape=g.get("shape"),
                             gender=g.get("gender")))
    return out


def sample_scene(rng: random.Random, cfg: WorldConfig, mode: str = "iid") -> tuple[Scene, dict]:
    """Sample one scene under a config. ``mode``: "iid", "biased" or "counterfactual".

    Returns the scene and a dict of facts about its sampling (e.g. which correlations it breaks).
    """
    if cfg.fine_grained:
        return _sample_fine(rng, cfg), {}
    for _attempt in range(50):
        n_groups = rng.randint(cfg.min_groups, cfg.max_groups)
        groups: list[dict] = []
        if rng.random() < cfg.p_person:
            groups.append(_group(rng, "person"))
        while len(groups) < n_groups:
            groups.append(_group(rng, "shape"))
        scene_attrs = {"background": rng.choice(BACKGROUNDS)}
        facts: dict = {}
        if cfg.correlations and mode == "counterfactual":
            # A counterfactual image must contain the condition of at least one rule, or it breaks nothing.
            c = rng.choice(cfg.correlations)
            kind = "person" if c.if_attr == "gender" else "shape"
            cands = [g for g in groups if g["kind"] == kind]
            if cands:
                cands[0][c.if_attr] = c.if_value
            elif kind == "person":
                groups.insert(0, _group(rng, "person", gender=c.if_value))
            else:
                groups.append(_group(rng, "shape", shape=c.if_value))
        if cfg.correlations and mode != "iid":
            broken = _apply_correlations(groups, scene_attrs, rng, cfg.correlations, mode)
            if mode == "counterfactual":
                facts["counterfactual"] = sorted(set(broken))
        # Merge groups that became identical (e.g. two "red circle" groups) so counts stay truthful.
        merged: dict[tuple, dict] = {}
        for g in groups:
            k = (g["kind"], g.get("shape"), g.get("gender"), g["color"], g["size"])
            if k in merged:
                merged[k]["count"] += g["count"]
            else:
                merged[k] = dict(g)
        groups = list(merged.values())
        if any(g["count"] > MAX_COUNT for g in groups) or sum(g["count"] for g in groups) > cfg.max_things:
            continue
        things = _things(groups)
        if place(rng, things):
            # Shuffle so that object order in the scene graph carries no information.
            rng.shuffle(things)
            return Scene(scene_attrs["background"], things), facts
    raise RuntimeError("could not place a scene in 50 attempts; lower max_things or max_groups")


def _sample_fine(rng: random.Random, cfg: WorldConfig) -> Scene:
    k = rng.randrange(len(FINE_CLASSES))
    body, mark = rng.sample(list(COLORS), 2)
    things = [Thing("badge", body, rng.choice(["medium", "large"]), 0.0, 0.0, fine_class=k, marking_color=mark)]
    for _ in range(rng.choice([0, 0, 1, 2])):  # small distractors, as clutter in real photos
        things.append(Thing("shape", rng.choice(list(COLORS)), "small", 0.0, 0.0, shape=rng.choice(SHAPES)))
    if not place(rng, things):
        things = things[:1]
        place(rng, things)
    return Scene(rng.choice(BACKGROUNDS), things)


# ---- near-duplicate bags (TrueMatch) -------------------------------------------------------------------

EDITS = ("color", "count", "size", "move", "background", "gender")


def edit_scene(scene: Scene, rng: random.Random, kind: str) -> Scene | None:
    """One visible, describable change to a scene; None if this edit does not apply to it."""
    s = scene.copy()
    from vlm.world.language import groups as group_things

    gs = group_things(s)
    if kind == "background":
        s.background = rng.choice([b for b in BACKGROUNDS if b != s.background])
        return s
    if kind == "gender":
        people = [t for t in s.things if t.kind == "person"]
        if not people:
            return None
        key = rng.choice(people).key()
        for t in s.things:
            if t.key() == key:
                t.gender = "woman" if t.gender == "man" else "man"
        return s
    if kind == "color":
        t0, _ = rng.choice(gs)
        new = rng.choice([c for c in COLORS if c != t0.color])
        for t in s.things:
            if t.key() == t0.key():
                t.color = new
        return s
    if kind == "size":
        t0, _ = rng.choice([g for g in gs if g[0].kind == "shape"] or gs)
        new = rng.choice([z for z in SIZES if z != t0.size])
        for t in s.things:
            if t.key() == t0.key():
                t.size = new
        return s if all(fits(t, s.things) for t in s.things) else None
    if kind == "count":
        t0, c = rng.choice(gs)
        members = [t for t in s.things if t.key() == t0.key()]
        if c > 1 and (c == MAX_COUNT or rng.random() < 0.5):
            s.things.remove(rng.choice(members))
            return s
        if len(s.things) >= 8:
            return None
        new = Thing(**{**asdict(t0), "x": 0.0, "y": 0.0})
        for _ in range(100):
            new.x, new.y = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
            if fits(new, s.things):
                s.things.append(new)
                return s
        return None
    if kind == "move":
        singles = [t for t, c in gs if c == 1]
        if len(singles) < 2:
            return None
        a, b = rng.sample(singles, 2)
        ia, ib = s.things.index(a), s.things.index(b)
        s.things[ia].x, s.things[ib].x = b.x, a.x
        s.things[ia].y, s.things[ib].y = b.y, a.y
        return s if all(fits(t, s.things) for t in s.things) else None
    raise ValueError(f"unknown edit {kind!r}; choose from {EDITS}")


def sample_bag(rng: random.Random, cfg: WorldConfig, size: int) -> list[tuple[Scene, list[str]]]:
    """A base scene and ``size - 1`` variants, each one or two edits away from the base, all distinct.

    Distinct means different scene graphs *and* different dense captions, so that a perfect describer can
    always single out each member of its bag.
    """
    for _attempt in range(50):
        base, _ = sample_scene(rng, cfg)
        members = [(base, [])]
        sigs = {base.signature()}
        caps = {dense_caption(base)}
        tries = 0
        while len(members) < size and tries < 200:
            tries += 1
            edits = rng.sample(EDITS, rng.choice([1, 1, 2]))
            s: Scene | None = base
            for e in edits:
                s = edit_scene(s, rng, e) if s is not None else None
            if s is None:
                continue
            cap = dense_caption(s)
            if s.signature() in sigs or cap in caps:
                continue
            sigs.add(s.signature())
            caps.add(cap)
            members.append((s, edits))
        if len(members) == size:
            return members
    raise RuntimeError(f"could not build a bag of {size} distinct near-duplicates in 50 attempts")


# ---- records and the dataset writer --------------------------------------------------------------------


def _split_of(rng: random.Random, cfg: WorldConfig) -> str:
    r, acc = rng.random(), 0.0
    for name, frac in cfg.splits:
        acc += frac
        if r < acc:
            return name
    return cfg.splits[-1][0]


def _mode(split: str, cfg: WorldConfig) -> str:
    if not cfg.correlations:
        return "iid"
    return {"test": "iid", "test_cf": "counterfactual"}.get(split, "biased")


@dataclass
class WorldItem:
    """One generated image with everything known about it."""

    id: str
    split: str
    scene: Scene
    captions: list[str]
    dense_caption: str
    image: object = None  # PIL.Image, filled by render_items
    label: int | None = None
    extra: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        d = {"id": self.id, "split": self.split, "captions": self.captions, "dense_caption": self.dense_caption,
             "scene": self.scene.to_dict()}
        if self.label is not None:
            d["label"] = self.label
        d.update(self.extra)
        return d


def _describe(scene: Scene, rng: random.Random, cfg: WorldConfig) -> tuple[list[str], str]:
    if cfg.fine_grained:
        return fine_grained_captions(scene, rng, cfg.n_captions), dense_caption(scene)
    return (human_captions(scene, rng, cfg.n_captions, levels=cfg.caption_levels, wording=cfg.wording),
            dense_caption(scene))


def iter_world(cfg: WorldConfig, n: int, seed: int):
    """Yield ``n`` :class:`WorldItem` (without images) for a config. Bags are whole (n counts images)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if cfg.bag_sizes:
        i = b = 0
        while True:
            size = cfg.bag_sizes[b % len(cfg.bag_sizes)]
            if i + size > n:
                break
            rng = random.Random(f"{seed}/{cfg.preset}/bag/{b}")
            split = _split_of(rng, cfg)
            for k, (scene, edits) in enumerate(sample_bag(rng, cfg, size)):
                caps, dense = _describe(scene, rng, cfg)
                yield WorldItem(f"{i:06d}", split, scene, caps, dense, extra={
                    "bag": {"id": f"bag{b:05d}", "size": size, "index": k, "edits": edits}})
                i += 1
            b += 1
        return
    for i in range(n):
        rng = random.Random(f"{seed}/{cfg.preset}/{i}")
        split = _split_of(rng, cfg)
        scene, facts = sample_scene(rng, cfg, _mode(split, cfg))
        caps, dense = _describe(scene, rng, cfg)
        item = WorldItem(f"{i:06d}", split, scene, caps, dense, extra=dict(facts))
        if cfg.fine_grained:
            badge = next(t for t in scene.things if t.kind == "badge")
            item.label = badge.fine_class
            item.extra["class_name"] = FINE_CLASSES[badge.fine_class]
        if cfg.n_questions:
            item.extra["qa"] = questions(scene, rng, cfg.n_questions)
        yield item


def resolve_config(preset: str = "captioning", **overrides) -> WorldConfig:
    """The config of a preset with fields overridden; unknown presets or fields raise ``ValueError``.

    Example:
        >>> resolve_config("vqa", image_size=64).n_questions
        4
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown world preset {preset!r}; choose from {sorted(PRESETS)}")
    base = PRESETS[preset]
    unknown = set(overrides) - set(WorldConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown WorldConfig fields {sorted(unknown)}")
    return WorldConfig(**{**asdict(base), "correlations": base.correlations, **overrides})


WORLD_FILE = "world.json"


def world_settings(folder: str | Path) -> dict | None:
    """The settings a finished world in ``folder`` was generated with (its ``world.json``: the resolved
    :class:`WorldConfig` plus ``seed`` and ``n``), or ``None`` where no world was finished there.

    ``generate_world`` writes the file last, so a folder with it holds every image; a damaged file raises
    ``ValueError`` naming it.

    Example:
        >>> import tempfile
        >>> out = generate_world(tempfile.mkdtemp(), n=2, seed=3, preset="vqa", image_size=32)
        >>> s = world_settings(out)
        >>> s["preset"], s["n"], s["seed"], world_settings(out / "images")
        ('vqa', 2, 3, None)
    """
    from vlm.data.io import read_json

    marker = Path(folder) / WORLD_FILE
    if not marker.is_file():
        return None
    settings = read_json(marker, "world marker", fix="delete the folder to generate the world anew")
    if not isinstance(settings, dict):
        raise ValueError(f"{marker}: not a world marker (a JSON object), got {type(settings).__name__}")
    return settings


def world_matches(folder: str | Path, **want) -> bool:
    """Whether ``folder`` holds a finished world generated with these settings (say ``preset=``, ``n=``,
    ``seed=``), so that a job can reuse it instead of generating it again.

    Example:
        >>> import tempfile
        >>> out = generate_world(tempfile.mkdtemp(), n=2, seed=3, preset="vqa", image_size=32)
        >>> world_matches(out, preset="vqa", n=2, seed=3), world_matches(out, preset="vqa", n=4, seed=3)
        (True, False)
    """
    settings = world_settings(folder)
    return settings is not None and all(settings.get(k) == v for k, v in want.items())


def generate_world(out: str | Path, n: int, seed: int = 0, preset: str = "captioning", *,
                   config: WorldConfig | None = None, overwrite: bool = False, progress: bool = False,
                   **overrides) -> Path:
    """Generate ``n`` images of a world preset and write them as an imagefolder dataset.

    Args:
        out: output folder (``images/`` + ``metadata.jsonl`` + ``world.json`` with the resolved config).
        n: number of images (for bag presets: bags are whole, so possibly fewer).
        seed: the world seed; same seed, same bytes.
        preset: one of :data:`PRESETS`.
        config: a full :class:`WorldConfig` instead of ``preset`` + ``overrides``.
        overwrite: allow writing into a non-empty folder (its metadata is replaced).
        progress: show a tqdm progress bar.

    Returns:
        The output folder.

    Example:
        >>> import tempfile
        >>> out = generate_world(tempfile.mkdtemp(), n=3, seed=0, image_size=32)
        >>> sorted(p.name for p in out.iterdir())
        ['images', 'metadata.jsonl', 'world.json']
    """
    import json

    from vlm.data import ImageFolderWriter, Record

    cfg = config or resolve_config(preset, **overrides)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    items = iter_world(cfg, n, seed)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=n, desc=f"world[{cfg.preset}]", unit="img")
    with ImageFolderWriter(out) as writer:
        for item in items:
            image = render(item.scene, cfg.image_size, jitter_seed=int(item.id) + seed * 1_000_003)
            meta = item.metadata()
            writer.add(image, Record(file_name=f"images/{item.id}.png", captions=meta.pop("captions"),
                                     id=meta.pop("id"), split=meta.pop("split"), label=meta.pop("label", None),
                                     extra=meta))
    cfg_dict = asdict(cfg)
    cfg_dict.update(seed=seed, n=n)
    tmp = out / f"{WORLD_FILE}.tmp"
    tmp.write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / WORLD_FILE)
    logger.info("wrote %d images of world preset %r to %s", n, cfg.preset, out)
    return out
