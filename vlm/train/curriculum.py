"""Distractors and bag curricula (BagCurri) for self-retrieval training.

A *stage* says where a sampled caption's distractors come from and for how long:

* ``random``: the other images of the batch (RD-n, n = the batch size), as in classic SR training;
* ``easy``: a bag of ``bag_size`` images, the target plus neighbours drawn from a looser rank window of
  the retriever's image space (similar, not near-identical);
* ``hard``: the target plus its ``bag_size - 1`` nearest neighbours, kept only where all of them are at
  least ``threshold`` similar (near-duplicates);
* ``world``: the built-in world's own near-duplicate bags (records with a ``bag`` field): one random member of
  each drawn bag, or with ``whole_bags`` every member of each, so near-duplicates share a batch; with ``edits``
  (say ``[size]``), only members made by one of those edits are anchors, against the rest of their bag: a stage
  that trains one skill, where what tells the anchor from its bag is that detail.

With ``with_batch``, a bag stage's candidates are the bag plus the other images of the batch.

A curriculum is a list of stages, each lasting ``steps`` optimizer steps (or ``epochs`` passes, resolved
to steps by the trainer). :data:`DEFAULT_BAGCURRI` is random -> easy bags -> hard bags of size 3 -> 5 -> 10.

Bags are mined once per (retriever, dataset) and cached (:func:`mine_neighbours`).

Example:
    >>> c = Curriculum.from_list([{"source": "random", "steps": 2}, {"source": "hard", "bag_size": 3, "steps": 3}])
    >>> [c.stage_at(s).source for s in range(6)], c.total_steps
    (['random', 'random', 'hard', 'hard', 'hard', 'hard'], 5)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

SOURCES = ("random", "easy", "hard", "world")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage."""

    source: str = "random"
    """``random`` (in-batch), ``easy`` / ``hard`` (mined bags) or ``world`` (the world's bags)."""
    bag_size: int = 0
    """Images per bag, target included (bag sources; ``world`` uses the world's bag sizes when 0)."""
    steps: int = 0
    """Optimizer steps of this stage (the last stage also runs any steps left over)."""
    epochs: float = 0.0
    """Alternatively, passes over the training images (the trainer converts them to steps)."""
    threshold: float = 0.0
    """``hard``: the minimum cosine similarity of every neighbour to the target (0: none)."""
    window: int = 4
    """``easy``: neighbours are drawn from ranks ``bag_size .. window * bag_size`` of the target's list."""
    whole_bags: bool = False
    """``world``: fill the batch with complete bags, every member an anchor against the rest of its bag, so the
    captions of near-duplicates are rewarded side by side (default: one random member per drawn bag)."""
    edits: tuple[str, ...] = ()
    """``world``: anchor only bag members made by one of these edits (``vlm.world.EDITS``: colour, count, size,
    move, background, gender), each against the rest of its bag (empty: any member)."""
    with_batch: bool = False
    """Bag stages: each anchor's candidates are its bag plus the other anchors of the batch, the bag's
    near-duplicates added to the random in-batch distractors (as Gaur et al.'s released code adds nearest-neighbour
    hard negatives to the batch), so the reward still asks for what tells the image from random ones."""

    def __post_init__(self):
        if isinstance(self.edits, (list, str)):  # from YAML: a list, or one name
            object.__setattr__(self, "edits", tuple([self.edits] if isinstance(self.edits, str) else self.edits))
        if self.edits:
            from vlm.world import EDITS

            if self.source != "world":
                raise ValueError(f"curriculum stage {self.source!r}: edits are for world stages")
            if self.whole_bags:
                raise ValueError("curriculum stage world: edits pick anchors, whole_bags takes every member; "
                                 "give one or the other")
            unknown = sorted(set(self.edits) - set(EDITS))
            if unknown:
                raise ValueError(f"curriculum stage world: unknown edits {unknown}; choose from {list(EDITS)}")
        if self.source not in SOURCES:
            raise ValueError(f"curriculum stage: unknown source {self.source!r}; choose from {SOURCES}")
        if self.source in ("easy", "hard") and self.bag_size < 2:
            raise ValueError(f"curriculum stage {self.source!r}: bag_size must be >= 2, got {self.bag_size}")
        if self.whole_bags and self.source != "world":
            raise ValueError(f"curriculum stage {self.source!r}: whole_bags is for world stages")
        if self.with_batch and self.source == "random":
            raise ValueError("curriculum stage 'random': with_batch is for bag stages (random ones are the batch)")
        if self.steps < 0 or self.epochs < 0 or (self.steps and self.epochs):
            raise ValueError("curriculum stage: give steps or epochs (>= 0), not both")

    def describe(self) -> str:
        name = self.source if self.source == "random" else f"{self.source}{self.bag_size or ''}"
        return name + (f"[{'+'.join(self.edits)}]" if self.edits else "") + ("+batch" if self.with_batch else "")


@dataclass
class Curriculum:
    """Stages run in order; :meth:`stage_at` gives the stage of an optimizer step."""

    stages: list[Stage]

    def __post_init__(self):
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")

    @classmethod
    def from_list(cls, items: Sequence[dict | Stage]) -> Curriculum:
        """From YAML-style dicts; unknown keys are errors naming the stage."""
        stages = []
        names = {f.name for f in dataclasses.fields(Stage)}
        for k, it in enumerate(items):
            if isinstance(it, Stage):
                stages.append(it)
                continue
            if not isinstance(it, dict):
                raise ValueError(f"curriculum stage {k}: expected a mapping, got {type(it).__name__}")
            unknown = set(it) - names
            if unknown:
                raise ValueError(f"curriculum stage {k}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
            stages.append(Stage(**it))
        return cls(stages)

    def resolve(self, steps_per_epoch: int) -> Curriculum:
        """Stages given in epochs converted to steps."""
        return Curriculum([dataclasses.replace(s, steps=max(1, round(s.epochs * steps_per_epoch)), epochs=0.0)
                           if s.epochs else s for s in self.stages])

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_index(self, step: int) -> int:
        end = 0
        for i, s in enumerate(self.stages):
            end += s.steps
            if step < end:
                return i
        return len(self.stages) - 1

    def stage_at(self, step: int) -> Stage:
        """The stage that optimizer step ``step`` (0-based) belongs to."""
        return self.stages[self.stage_index(step)]


#: The default BagCurri schedule (fractions of a run): random warm-up, easy bags, then hard bags that grow.
DEFAULT_BAGCURRI = [
    {"source": "random", "steps": 40},
    {"source": "easy", "bag_size": 5, "steps": 40},
    {"source": "hard", "bag_size": 3, "steps": 40},
    {"source": "hard", "bag_size": 5, "steps": 40},
    {"source": "hard", "bag_size": 10, "steps": 40},
]


def mine_neighbours(image_emb: torch.Tensor, k: int, *, cache_key: str | None = None,
                    cache_dir: str | Path | None = None, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest neighbours of each image (itself excluded) by cosine similarity: ``(idx, sim)``.

    Exact (chunked matrix products); cached as safetensors under ``cache_dir`` when ``cache_key`` is given
    (use the retriever's name + fingerprint + the dataset's file identities).

    Example:
        >>> emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
        >>> idx, sim = mine_neighbours(emb, 1)
        >>> idx[:, 0].tolist()
        [1, 0, 1]
    """
    n = image_emb.shape[0]
    k = min(k, n - 1)
    path = None
    if cache_key is not None:
        from vlm.pretrained import cache_dir as default_cache

        root = Path(cache_dir) if cache_dir is not None else default_cache() / "neighbours"
        path = root / f"{hashlib.sha256(f'{cache_key}|k={k}'.encode()).hexdigest()[:20]}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            d = load_file(str(path))
            if d["idx"].shape == (n, k):
                return d["idx"], d["sim"]
    emb = image_emb.float()
    idx_out = torch.empty(n, k, dtype=torch.long)
    sim_out = torch.empty(n, k)
    for s in range(0, n, chunk):
        sim = emb[s:s + chunk] @ emb.T
        rows = torch.arange(s, min(s + chunk, n))
        sim[rows - s, rows] = -float("inf")
        v, i = sim.topk(k, dim=1)
        idx_out[s:s + chunk], sim_out[s:s + chunk] = i, v
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"idx": idx_out.contiguous(), "sim": sim_out.contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    return idx_out, sim_out


def step_candidates(stage: Stage, anchors: list[int], cands: list[list[int]] | None) -> list[list[int]]:
    """Each anchor's candidate list (target first) for one step: ``cands`` as :meth:`BagSampler.sample` drew them
    (None: a random stage, every anchor against the others of ``anchors``), with the rest of ``anchors`` appended
    to each bag when the stage has ``with_batch``.

    Example:
        >>> step_candidates(Stage("random"), [4, 7, 9], None)
        [[4, 7, 9], [7, 4, 9], [9, 4, 7]]
        >>> step_candidates(Stage("world", with_batch=True), [4, 7], [[4, 5, 6], [7, 8, 4]])
        [[4, 5, 6, 7], [7, 8, 4]]
    """
    if cands is None:
        return [[a] + [b for b in anchors if b != a] for a in anchors]
    if stage.with_batch:
        return [c + [b for b in anchors if b not in c] for c in cands]
    return [list(c) for c in cands]


class BagSampler:
    """Draws anchors and their candidate lists for each curriculum stage.

    Args:
        neighbours: ``(N, K)`` neighbour indices from :func:`mine_neighbours` (needed by easy/hard stages).
        similarities: ``(N, K)`` their cosine similarities.
        world_bags: lists of dataset indices forming the world's bags (needed by the ``world`` stage).
        world_edits: each dataset index's edits from its bag's first image (``record.extra["bag"]["edits"]``;
            needed by ``world`` stages with ``edits``).
        seed: the sampler's seed; draws depend only on (seed, step), so a resumed run sees the same bags.

    Example:
        >>> idx = torch.tensor([[1, 2], [0, 2], [1, 0]]); sim = torch.tensor([[0.9, 0.5], [0.9, 0.6], [0.6, 0.5]])
        >>> s = BagSampler(idx, sim)
        >>> anchors, cands = s.sample(Stage("hard", bag_size=2, threshold=0.8), batch=2, step=0)
        >>> sorted(anchors), all(c[0] == a for a, c in zip(anchors, cands))
        ([0, 1], True)
    """

    def __init__(self, neighbours: torch.Tensor | None = None, similarities: torch.Tensor | None = None, *,
                 n_images: int | None = None, world_bags: Sequence[Sequence[int]] = (),
                 world_edits: Sequence[Sequence[str]] | None = None, seed: int = 0):
        self.neighbours, self.similarities = neighbours, similarities
        self.n = n_images if n_images is not None else (len(neighbours) if neighbours is not None else 0)
        if self.n == 0:
            raise ValueError("BagSampler needs neighbours or n_images")
        self.world_bags = [list(b) for b in world_bags]
        self.world_edits = [list(e) for e in world_edits] if world_edits is not None else None
        self.seed = seed

    def eligible(self, stage: Stage) -> torch.Tensor:
        """Anchors a stage can use (hard: all bag neighbours above the threshold)."""
        if stage.source == "hard":
            self._need_neighbours(stage)
            k = stage.bag_size - 1
            return (self.similarities[:, k - 1] >= stage.threshold).nonzero()[:, 0]
        return torch.arange(self.n)

    def _need_neighbours(self, stage: Stage) -> None:
        if self.neighbours is None:
            raise ValueError(f"stage {stage.describe()} needs mined neighbours")
        need = stage.bag_size - 1 if stage.source == "hard" else stage.window * stage.bag_size
        if self.neighbours.shape[1] < min(need, self.n - 1):
            raise ValueError(f"stage {stage.describe()} needs {need} neighbours per image, "
                             f"{self.neighbours.shape[1]} were mined")

    def sample(self, stage: Stage, batch: int, step: int) -> tuple[list[int], list[list[int]] | None]:
        """``(anchors, candidates)``; candidates ``None`` means in-batch (random stage)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if stage.source == "world":
            bags = [b for b in self.world_bags if not stage.bag_size or len(b) == stage.bag_size]
            if not bags:
                raise ValueError(f"stage {stage.describe()}: the data has no world bags of that size")
            anchors, cands = [], []
            if stage.whole_bags:  # bags in a seeded random order until the batch is full (the last may be cut)
                for p in torch.randperm(len(bags), generator=g).tolist():
                    for a in bags[p][:batch - len(anchors)]:
                        anchors.append(a)
                        cands.append([a] + [x for x in bags[p] if x != a])
                    if len(anchors) >= batch:
                        break
                return anchors, cands
            if stage.edits:  # members made by one of the stage's edits, drawn at random, against their bag
                if self.world_edits is None:
                    raise ValueError(f"stage {stage.describe()} needs each image's edits (world_edits)")
                pool = [(a, bag) for bag in bags for a in bag if set(self.world_edits[a]) & set(stage.edits)]
                if not pool:
                    raise ValueError(f"stage {stage.describe()}: no bag member of the data was made by "
                                     f"{list(stage.edits)}")
                picks = torch.randint(len(pool), (batch,), generator=g).tolist()
                return ([pool[p][0] for p in picks],
                        [[pool[p][0]] + [x for x in pool[p][1] if x != pool[p][0]] for p in picks])
            for p in torch.randint(len(bags), (batch,), generator=g).tolist():
                bag = bags[p]
                a = bag[int(torch.randint(len(bag), (1,), generator=g))]
                anchors.append(a)
                cands.append([a] + [x for x in bag if x != a])
            return anchors, cands
        pool = self.eligible(stage)
        if len(pool) == 0:
            raise ValueError(f"stage {stage.describe()}: no anchor has {stage.bag_size - 1} neighbours above "
                             f"similarity {stage.threshold}; lower the threshold")
        anchors = pool[torch.randperm(len(pool), generator=g)[:batch]].tolist()
        if stage.source == "random":
            return anchors, None
        self._need_neighbours(stage)
        k = stage.bag_size - 1
        cands = []
        for a in anchors:
            if stage.source == "hard":
                nb = self.neighbours[a, :k].tolist()
            else:  # easy: k distinct neighbours from the rank window [k, window * bag_size)
                lo, hi = k, min(stage.window * stage.bag_size, self.neighbours.shape[1])
                if hi - lo < k:
                    lo = max(0, hi - k)
                pick = lo + torch.randperm(hi - lo, generator=g)[:k]
                nb = self.neighbours[a, pick].tolist()
            cands.append([a] + nb)
        return anchors, cands
