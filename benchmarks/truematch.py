"""TrueMatch: does each image's caption pick that image out of a bag of near-duplicates? (METHODS.md section 2)

Every image is captioned on its own. A frozen retriever then asks, for each image, whether its caption
is closer to it than to every other image of its bag: R@1 per bag size (3, 5, 7). Alongside:

* ``R@1/RD100``: the same question against 99 distractors drawn at random (seeded) from the whole pool of
  images, so 100 candidates (fewer only when the pool is smaller; ``counts["candidates/RD100"]`` says);
* ``CLIPScore``: ``100 * max(cos(image, its caption), 0)``, averaged over the pool.

Ties count as misses: a caption retrieves its image only when its similarity beats every distractor's by
more than ``TIE_TOL`` (1e-6, below what float32 embeddings resolve). A caption that says nothing
distinguishing -- equally close to two images of the bag -- therefore scores 0, not 1/2, and the score is
the same whichever order the images come in.

Data: the public layout (a JSON of bags of image ids per bag size, plus an image folder), or a world made
by ``python -m vlm world --preset truematch`` (records with ``bag: {"id", "size", "index"}``). Captions: a
captioner (anything with ``generate(images) -> list[str]``), a predictions JSON ``{image_id: caption}``
(or COCO-results style ``[{"image_id", "caption"}]``), or, on a world, its stored references
(``reference:dense_caption``, ``reference:first``) to calibrate a retriever.

Command line::

    python -m benchmarks truematch --retriever open_clip:ViT-B-32:openai \\
        --world data/truematch --captions reference:dense_caption --out runs/truematch

Example (embeddings given directly; caption 1 is as close to image 0 as to its own image 1, a tie, and
caption 2 describes image 1):
    >>> import torch
    >>> images = torch.eye(3)
    >>> texts = torch.tensor([[1.0, 0, 0], [0.5 ** 0.5, 0.5 ** 0.5, 0], [0, 1.0, 0]])
    >>> s = score_truematch(images, texts, {3: [[0, 1, 2]]})
    >>> s.bag_hits[3].tolist()
    [[True, False, False]]
    >>> s.metrics()["R@1/bag3"]
    0.3333333333333333
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vlm.data import DatasetFormatError, read_json, resolve_inside

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from vlm.data import Record
    from vlm.retrieval import Retriever

logger = logging.getLogger(__name__)

__all__ = [
    "BAG_SIZES",
    "EmbeddingCache",
    "TIE_TOL",
    "TrueMatchConfig",
    "TrueMatchData",
    "TrueMatchResult",
    "TrueMatchScores",
    "bag_difference_ci",
    "encode_image_files",
    "evaluate_truematch",
    "generate_captions",
    "load_bags_json",
    "load_world_bags",
    "main",
    "plot_truematch",
    "read_captions",
    "run_truematch",
    "sample_distractors",
    "score_truematch",
    "score_truematch_reference",
]

#: The bag sizes of the published benchmark; their keys are always in the results (None when absent).
BAG_SIZES = (3, 5, 7)
#: A caption must beat every distractor by more than this to count as a hit (see the module docstring).
TIE_TOL = 1e-6
#: Candidates of the random-distractor test: the target and 99 distractors.
RD_CANDIDATES = 100


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TrueMatchData:
    """The pool of images and its bags, whichever layout they came from.

    Example:
        >>> d = TrueMatchData(ids=["a", "b", "c"], paths=[Path("a.jpg"), Path("b.jpg"), Path("c.jpg")],
        ...                   bags={3: [[0, 1, 2]]}, source="demo")
        >>> d.n_images, d.counts()
        (3, {'images': 3, 'bags/bag3': 1, 'images/bag3': 3})
    """

    ids: list[str]
    """One id per pool image (what prediction files are keyed by)."""
    paths: list[Path]
    """Image file of each pool image."""
    bags: dict[int, list[list[int]]]
    """Bag size -> bags, each a list of pool indices (its members, in order)."""
    source: str
    """Where the data came from (for reports)."""
    records: list[Record] | None = None
    """The dataset records of a world (for ``reference:`` captions); None for the public layout."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.paths):
            raise ValueError(f"{len(self.ids)} ids but {len(self.paths)} paths")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("image ids must be unique")
        for size, bags in self.bags.items():
            for b, bag in enumerate(bags):
                if len(bag) != size or len(set(bag)) != size:
                    raise ValueError(f"bag {b} of size {size} must hold {size} distinct images, got {bag}")
                if any(not 0 <= i < len(self.ids) for i in bag):
                    raise ValueError(f"bag {b} of size {size} indexes outside the pool: {bag}")

    @property
    def n_images(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Image.Image:
        """Pool image ``i`` as RGB; an unreadable file raises ``DatasetFormatError`` naming it."""
        return _load_image(self.paths[i])

    def counts(self) -> dict[str, int]:
        """Numbers of images, and of bags and bag members per size."""
        out = {"images": self.n_images}
        for size in sorted(self.bags):
            out[f"bags/bag{size}"] = len(self.bags[size])
            out[f"images/bag{size}"] = len(self.bags[size]) * size
        return out


def _load_image(path: Path) -> Image.Image:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DatasetFormatError(f"image {path} does not exist", field="file_name") from None
    except Exception as e:  # Pillow reports bad files as OSError, SyntaxError, ValueError ...
        raise DatasetFormatError(f"image {path} is not a readable image (Pillow: {type(e).__name__}: {e})",
                                 field="file_name") from None


def load_bags_json(bags_file: str | os.PathLike, images_dir: str | os.PathLike, *,
                   image_ext: str = ".jpg") -> TrueMatchData:
    """The public layout: ``{"3": [[id, id, id], ...], "5": [...], "7": [...]}`` plus an image folder.

    The image of ``id`` is ``images_dir/id`` when that file exists, else ``images_dir/id + image_ext``.
    Ids may be strings or integers (COCO ids); an image may sit in several bags. Bad input raises
    ``DatasetFormatError`` naming the file and the bag (``field '5[12]'`` is bag 12 of size 5).

    Example:
        >>> import json, tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in "abc":
        ...     Image.new("RGB", (8, 8), "red").save(root / f"{name}.jpg")
        >>> _ = (root / "bags.json").write_text(json.dumps({"3": [["a", "b", "c"]]}))
        >>> data = load_bags_json(root / "bags.json", root)
        >>> data.ids, data.bags, data.paths[0].name
        (['a', 'b', 'c'], {3: [[0, 1, 2]]}, 'a.jpg')
    """
    bags_file, images_dir = Path(bags_file), Path(images_dir)
    if not bags_file.is_file():
        raise FileNotFoundError(f"bags file {bags_file} not found")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} not found")
    obj = read_json(bags_file, "bags file", error=DatasetFormatError)
    if not isinstance(obj, dict) or not obj:
        raise DatasetFormatError('must be a non-empty object {"3": [[id, id, id], ...], "5": ...} of bags per '
                                 f"bag size, got {type(obj).__name__}", file=bags_file)
    ids: list[str] = []
    paths: list[Path] = []
    index: dict[str, int] = {}
    bags: dict[int, list[list[int]]] = {}
    for key, bag_list in obj.items():
        try:
            size = int(key)
        except ValueError:
            size = 0
        if size < 2 or str(size) != key.strip():
            raise DatasetFormatError(f"key {key!r} is not a bag size (an integer >= 2)", file=bags_file)
        if size in bags:
            raise DatasetFormatError(f"bag size {size} appears twice", file=bags_file, field=key)
        if not isinstance(bag_list, list):
            raise DatasetFormatError(f"must be a list of bags, got {type(bag_list).__name__}", file=bags_file,
                                     field=key)
        bags[size] = []
        for b, bag in enumerate(bag_list):
            where = f"{key}[{b}]"
            if not isinstance(bag, list):
                raise DatasetFormatError(f"a bag must be a list of image ids, got {type(bag).__name__}",
                                         file=bags_file, field=where)
            if len(bag) != size:
                raise DatasetFormatError(f"a bag of size {size} must hold {size} image ids, got {len(bag)}",
                                         file=bags_file, field=where)
            members = []
            for image_id in bag:
                if isinstance(image_id, bool) or not isinstance(image_id, (str, int)) or image_id == "":
                    raise DatasetFormatError(f"image ids must be non-empty strings or integers, got {image_id!r}",
                                             file=bags_file, field=where)
                image_id = str(image_id)
                if image_id not in index:
                    index[image_id] = len(ids)
                    ids.append(image_id)
                    paths.append(_find_image(images_dir, image_id, image_ext, bags_file, where))
                members.append(index[image_id])
            if len(set(members)) != size:
                raise DatasetFormatError(f"a bag must not repeat an image: {bag}", file=bags_file, field=where)
            bags[size].append(members)
    if not ids:
        raise DatasetFormatError("holds no bags", file=bags_file)
    return TrueMatchData(ids=ids, paths=paths, bags=bags, source=f"bags:{bags_file}")


def _find_image(images_dir: Path, image_id: str, image_ext: str, bags_file: Path, where: str) -> Path:
    tried = []
    for name in dict.fromkeys([image_id, image_id + image_ext]):
        try:
            path = resolve_inside(images_dir, name)
        except DatasetFormatError as err:
            raise DatasetFormatError(f"image id {image_id!r}: {err.reason}", file=bags_file, field=where) from None
        if path.is_file():
            return path
        tried.append(str(path))
    raise DatasetFormatError(f"image {image_id!r} not found: tried {' and '.join(tried)} (set --image-ext if the "
                             "files have another extension)", file=bags_file, field=where)


def load_world_bags(root: str | os.PathLike, *, split: str | None = None) -> TrueMatchData:
    """The bags of a world dataset (``python -m vlm world --preset truematch``), read and validated.

    Records without a ``bag`` field are left out (with a warning); a bag whose members disagree with its
    ``size`` or ``index`` fields raises ``DatasetFormatError`` naming the bag.

    Example:
        >>> import tempfile
        >>> from vlm.world import generate_world
        >>> out = generate_world(tempfile.mkdtemp(), n=8, seed=0, preset="truematch", image_size=32)
        >>> data = load_world_bags(out)
        >>> data.counts()
        {'images': 8, 'bags/bag3': 1, 'images/bag3': 3, 'bags/bag5': 1, 'images/bag5': 5}
    """
    from vlm.data import METADATA_FILE, read_imagefolder

    root = Path(root)
    ds = read_imagefolder(root, split=split)
    meta = root / METADATA_FILE
    members: dict[str, list[tuple[int, int, int]]] = {}  # bag id -> (index in bag, size, record position)
    kept = []
    for r in ds:
        bag = r.extra.get("bag")
        if bag is None:
            continue
        name = f"record {r.id or r.file_name!r}"
        if not isinstance(bag, dict) or not all(k in bag for k in ("id", "size", "index")):
            raise DatasetFormatError(f"{name}: must be an object with 'id', 'size' and 'index'", file=meta,
                                     field="bag")
        if not all(isinstance(bag[k], int) and not isinstance(bag[k], bool) for k in ("size", "index")):
            raise DatasetFormatError(f"{name}: 'size' and 'index' must be integers", file=meta, field="bag")
        members.setdefault(str(bag["id"]), []).append((bag["index"], bag["size"], len(kept)))
        kept.append(r)
    if not kept:
        raise DatasetFormatError("no record has a 'bag' field: not a TrueMatch dataset (make one with "
                                 "'python -m vlm world --preset truematch')", file=meta)
    if len(kept) < len(ds):
        logger.warning("%s: %d of %d records have no 'bag' field and are left out", meta, len(ds) - len(kept),
                       len(ds))
    bags: dict[int, list[list[int]]] = {}
    for bag_id, entries in members.items():
        sizes = {size for _, size, _ in entries}
        indices = sorted(i for i, _, _ in entries)
        if len(sizes) != 1 or indices != list(range(next(iter(sizes)))):
            raise DatasetFormatError(
                f"bag {bag_id!r}: its records must share one 'size' and hold each 'index' 0..size-1 once; got sizes "
                f"{sorted(sizes)} and indices {indices}" + (f" (split {split!r} may cut the bag)" if split else ""),
                file=meta, field="bag")
        size = sizes.pop()
        if size < 2:
            raise DatasetFormatError(f"bag {bag_id!r}: size must be >= 2, got {size}", file=meta, field="bag")
        bags.setdefault(size, []).append([pos for _, _, pos in sorted(entries)])
    ids = [r.id or r.file_name for r in kept]
    return TrueMatchData(ids=ids, paths=[root / r.file_name for r in kept], bags=dict(sorted(bags.items())),
                         source=f"world:{root}" + (f"[{split}]" if split else ""), records=kept)


# ---------------------------------------------------------------------------------------------- captions


def read_captions(source: str | os.PathLike, data: TrueMatchData) -> list[str]:
    """One caption per pool image from a predictions file or, on a world, from its stored references.

    ``source`` is a JSON file -- ``{image_id: caption}`` or ``[{"image_id": ..., "caption": ...}]`` (ids
    compared as strings; ids not in the pool are ignored) -- or ``reference:first`` (each record's first
    human caption), ``reference:caption:K`` (its K-th, from 0: on the world, one annotator's level of detail)
    or ``reference:FIELD`` (a string field of every record, e.g. ``reference:dense_caption``).

    Example:
        >>> import json, tempfile
        >>> d = TrueMatchData(ids=["a", "b"], paths=[Path("a"), Path("b")], bags={2: [[0, 1]]}, source="demo")
        >>> f = Path(tempfile.mkdtemp()) / "pred.json"
        >>> _ = f.write_text(json.dumps({"b": "a blue ball", "a": "a red cube", "z": "unused"}))
        >>> read_captions(f, d)
        ['a red cube', 'a blue ball']
    """
    source = str(source)
    if source.startswith("reference:"):
        return _reference_captions(source[len("reference:"):], data)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} not found (or use reference:dense_caption / "
                                "reference:first on a world)")
    obj = read_json(path, "captions file", error=DatasetFormatError)
    if isinstance(obj, list):
        pairs = []
        for k, row in enumerate(obj):
            if not isinstance(row, dict) or "image_id" not in row or "caption" not in row:
                raise DatasetFormatError(f"item {k} must be an object with 'image_id' and 'caption'", file=path)
            pairs.append((str(row["image_id"]), row["caption"]))
        by_id = dict(pairs)
        if len(by_id) != len(pairs):
            raise DatasetFormatError("an image_id appears more than once", file=path)
    elif isinstance(obj, dict):
        by_id = {str(k): v for k, v in obj.items()}
    else:
        raise DatasetFormatError(f"must map image ids to captions, got {type(obj).__name__}", file=path)
    missing = [i for i in data.ids if i not in by_id]
    if missing:
        raise DatasetFormatError(f"no caption for {len(missing)} of {data.n_images} images, e.g. "
                                 f"{', '.join(map(repr, missing[:5]))}", file=path)
    captions = [by_id[i] for i in data.ids]
    for image_id, c in zip(data.ids, captions):
        if not isinstance(c, str) or not c.strip():
            raise DatasetFormatError(f"the caption must be a non-empty string, got {c!r}", file=path,
                                     field=image_id)
    unused = len(by_id) - data.n_images
    if unused:
        logger.info("%s: %d captions for images outside the pool are ignored", path, unused)
    return captions


def _reference_captions(name: str, data: TrueMatchData) -> list[str]:
    if data.records is None:
        raise ValueError(f"reference:{name} needs stored captions: use it with a world (--world); the public "
                         "bags layout has none")
    k = None
    if name == "first" or name.startswith("caption:"):
        k = 0 if name == "first" else name[len("caption:"):]
        if not str(k).isdigit():
            raise ValueError(f"reference:{name}: expected reference:caption:K with K a caption index (0, 1, ...)")
        k = int(k)
    out = []
    for r in data.records:
        if k is not None and len(r.captions) <= k:
            raise DatasetFormatError(f"record {r.id or r.file_name!r} has {len(r.captions)} captions, none at index "
                                     f"{k} for reference:{name}", field="captions")
        value = r.captions[k] if k is not None else r.extra.get(name)
        if not isinstance(value, str) or not value.strip():
            raise DatasetFormatError(f"record {r.id or r.file_name!r} has no non-empty string field {name!r} for "
                                     f"reference:{name}", field=name)
        out.append(value)
    return out


def generate_captions(captioner: Any, data: TrueMatchData, *, batch_size: int = 64,
                      progress: bool = False) -> list[str]:
    """Caption every pool image independently with ``captioner.generate(images) -> list[str]``, in batches.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 8), "red").save(root / "a.png")
        >>> class Says:
        ...     def generate(self, images):
        ...         return [f"a {im.size[0]}-pixel square" for im in images]
        >>> d = TrueMatchData(ids=["a"], paths=[root / "a.png"], bags={}, source="demo")
        >>> generate_captions(Says(), d)
        ['a 8-pixel square']
    """
    from tqdm.auto import tqdm

    captions: list[str] = []
    with tqdm(total=data.n_images, desc="caption", unit="img", disable=not progress) as bar:
        for start in range(0, data.n_images, batch_size):
            stop = min(start + batch_size, data.n_images)
            out = list(captioner.generate([data.image(i) for i in range(start, stop)]))
            if len(out) != stop - start or not all(isinstance(c, str) for c in out):
                raise ValueError(f"{type(captioner).__name__}.generate returned {len(out)} items for {stop - start} "
                                 "images; it must return one string per image")
            captions += out
            bar.update(stop - start)
    return captions


# ---------------------------------------------------------------------------------------------- embeddings


class EmbeddingCache:
    """Image embeddings on disk: one safetensors file per retriever, one entry per image file.

    The file is named by the retriever's ``name`` (its ``image_cache_name`` where it has one:
    :func:`vlm.retrieval.image_cache_name`) and ``fingerprint`` (weights and preprocessing, see
    :class:`vlm.retrieval.Retriever`); an entry is keyed by the image's real path (links resolved), size and
    modification time, so an edited or replaced image is encoded again and a linked world shares the entries. Files are replaced atomically; an unreadable
    cache file is ignored (and rewritten), never trusted.

    Example:
        >>> import tempfile, torch
        >>> class R:
        ...     name, fingerprint = "demo", "v1"
        >>> cache = EmbeddingCache(tempfile.mkdtemp())
        >>> _ = cache.save(R(), {"k": torch.ones(2)})
        >>> cache.load(R())["k"].tolist()
        [1.0, 1.0]
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path_for(self, retriever: Retriever) -> Path:
        from vlm.retrieval import image_cache_name

        name = image_cache_name(retriever)  # a wrapper reading texts otherwise shares its retriever's images
        key = f"{name}|{getattr(retriever, 'fingerprint', '')}"
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]
        return self.root / f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"

    def load(self, retriever: Retriever) -> dict[str, torch.Tensor]:
        path = self.path_for(retriever)
        if not path.is_file():
            return {}
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # a half-copied or foreign file: recompute rather than trust it
            logger.warning("ignoring unreadable embedding cache %s (%s: %s)", path, type(e).__name__, e)
            return {}

    def save(self, retriever: Retriever, entries: Mapping[str, torch.Tensor]) -> Path:
        """Add ``entries`` to the retriever's file (written to a temporary name, then renamed)."""
        from safetensors.torch import save_file

        path = self.path_for(retriever)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self.load(retriever), **{k: v.detach().float().cpu().contiguous().clone() for k, v in
                                             entries.items()}}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file(merged, str(tmp), metadata={"retriever": retriever.name,
                                              "fingerprint": str(getattr(retriever, "fingerprint", ""))})
        os.replace(tmp, path)
        return path


def _file_key(path: Path) -> str:
    from vlm.data import file_identity

    return hashlib.sha256(file_identity(path).encode()).hexdigest()[:32]


def _check_embeddings(emb: Any, n: int, what: str, retriever: Retriever) -> torch.Tensor:
    import torch

    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"retriever {retriever.name!r}: encode_{what} must return an (N, D) tensor for N={n} inputs, "
                         f"got {getattr(emb, 'shape', type(emb).__name__)}")
    emb = emb.detach().float().cpu()
    norms = emb.norm(dim=1)
    if n and not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise ValueError(f"retriever {retriever.name!r}: encode_{what} must return L2-normalised rows; norms range "
                         f"{norms.min():.4f}..{norms.max():.4f}")
    return emb


def encode_image_files(retriever: Retriever, paths: Sequence[str | os.PathLike], *, batch_size: int = 64,
                       cache: EmbeddingCache | None = None, progress: bool = False) -> torch.Tensor:
    """``(N, D)`` embeddings of image files, encoding only those the cache does not hold yet.

    Example:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4), "red").save(root / "a.png")
        >>> class Mean:
        ...     name = "mean-colour"
        ...     def encode_images(self, images, *, batch_size=64):
        ...         x = torch.tensor([im.resize((1, 1)).getpixel((0, 0)) for im in images], dtype=torch.float32)
        ...         return torch.nn.functional.normalize(x, dim=1)
        >>> encode_image_files(Mean(), [root / "a.png"], cache=EmbeddingCache(root / "cache")).tolist()
        [[1.0, 0.0, 0.0]]
    """
    import torch
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise DatasetFormatError(f"image {p} does not exist", field="file_name")
    keys = [_file_key(p) for p in paths]
    stored = cache.load(retriever) if cache is not None else {}
    todo = list(dict.fromkeys(k for k in keys if k not in stored))  # each file once, even if listed twice
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    new: dict[str, torch.Tensor] = {}
    with tqdm(total=len(todo), desc="encode images", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            emb = retriever.encode_images([_load_image(paths[first[k]]) for k in batch], batch_size=batch_size)
            emb = _check_embeddings(emb, len(batch), "images", retriever)
            new.update(zip(batch, emb))
            bar.update(len(batch))
    if cache is not None and new:
        cache.save(retriever, new)
    logger.info("%s: encoded %d images, %d from the cache", retriever.name, len(todo), len(keys) - len(todo))
    if not keys:
        return torch.empty(0, 0)
    out = torch.stack([new[k] if k in new else stored[k] for k in keys])
    return out


def _encode_texts(retriever: Retriever, texts: Sequence[str], *, batch_size: int, progress: bool) -> torch.Tensor:
    import torch
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(texts), desc="encode captions", unit="txt", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            out.append(_check_embeddings(retriever.encode_texts(batch, batch_size=batch_size), len(batch), "texts",
                                         retriever))
            bar.update(len(batch))
    return torch.cat(out) if out else torch.empty(0, 0)


# ---------------------------------------------------------------------------------------------- scoring


def sample_distractors(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """``(n, k)`` pool indices: row ``i`` holds ``k`` distinct distractors for target ``i``, never ``i`` itself.

    Uniform over the other ``n - 1`` images, the same for the same ``(n, k, seed)``.

    Example:
        >>> d = sample_distractors(5, 4, seed=0)
        >>> [sorted(row) for row in d.tolist()][:2]
        [[1, 2, 3, 4], [0, 2, 3, 4]]
    """
    import numpy as np
    import torch

    if not 0 <= k <= n - 1:
        raise ValueError(f"cannot draw {k} distinct distractors from the {max(n - 1, 0)} other images of a pool of {n}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        # Draw from the n-1 others, then shift past the target: uniform, distinct, and never the target.
        d = rng.choice(n - 1, size=k, replace=False)
        out[i] = d + (d >= i)
    return torch.from_numpy(out)


@dataclass
class TrueMatchScores:
    """Similarities and hits of one TrueMatch evaluation; ``metrics()`` turns them into the headline numbers."""

    bag_sims: dict[int, torch.Tensor]
    """Bag size -> ``(B, k, k)``: ``[b, i, j]`` = cos(caption of member i, image of member j)."""
    bag_hits: dict[int, torch.Tensor]
    """Bag size -> ``(B, k)`` bool: member i's caption retrieves member i."""
    rd_candidates: torch.Tensor
    """``(N, 1 + K)`` pool indices per target: column 0 is the target, then its K distractors."""
    rd_sims: torch.Tensor
    """``(N, 1 + K)`` cos(caption of the target, candidate image)."""
    rd_hits: torch.Tensor
    """``(N,)`` bool: the caption retrieves its image among the candidates."""
    own_sims: torch.Tensor
    """``(N,)`` cos(image, its own caption)."""

    def metrics(self) -> dict[str, float | None]:
        """``R@1/bag{k}`` for k in 3, 5, 7 (and any other size present), ``R@1/RD100``, ``CLIPScore``."""
        out: dict[str, float | None] = {}
        for size in sorted(set(BAG_SIZES) | set(self.bag_hits)):
            hits = self.bag_hits.get(size)
            out[f"R@1/bag{size}"] = int(hits.sum()) / hits.numel() if hits is not None and hits.numel() else None
        out["R@1/RD100"] = int(self.rd_hits.sum()) / self.rd_hits.numel() if self.rd_hits.numel() else None
        out["CLIPScore"] = float(100 * self.own_sims.double().clamp_min(0).mean()) if self.own_sims.numel() else None
        return out


def bag_difference_ci(hits_a: Sequence[Sequence[float]], hits_b: Sequence[Sequence[float]], *,
                      confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """How far apart two captioners' R@1 on the same bags is, and how sure: the mean difference ``a - b`` and its
    paired bootstrap confidence interval (``scipy.stats.bootstrap``, percentile), resampling *bags*, since the
    members of one bag are judged against each other and are not independent.

    ``hits_a`` / ``hits_b``: one row per run (e.g. per seed), one value per bag, the share of that bag's members
    whose caption retrieved them (the bags in the same order in every row); each side's runs are averaged per bag
    first. All bags of one size have the same number of members, so the mean over bags is R@1. The interval
    covers the sampling of the held-out bags only; the spread over seeds is reported beside it.

    Example (3 bags, two seeds of ``a`` against one ``b``):
        >>> m, lo, hi = bag_difference_ci([[1, .6, .8], [1, .8, .8]], [[.6, .6, .8]])
        >>> round(m, 4), lo <= m <= hi
        (0.1667, True)
    """
    import numpy as np
    from scipy.stats import bootstrap

    a, b = np.asarray(hits_a, dtype=float), np.asarray(hits_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.size or not b.size:
        raise ValueError(f"bag_difference_ci: both sides need rows of per-bag hit shares over the same bags, got "
                         f"shapes {a.shape} and {b.shape}")
    d = a.mean(axis=0) - b.mean(axis=0)
    mean = float(d.mean())
    if len(d) < 2 or np.ptp(d) < 1e-9:  # nothing to resample: every bag differs by the same amount
        return mean, mean, mean
    ci = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return mean, float(ci.low), float(ci.high)


def _as_bag_tensors(bags: Mapping[int, Sequence[Sequence[int]]]) -> dict[int, torch.Tensor]:
    import torch

    return {int(k): torch.as_tensor(v, dtype=torch.long).reshape(-1, int(k)) for k, v in sorted(bags.items())}


def _n_distractors(n: int, rd_candidates: int) -> int:
    if rd_candidates < 2:
        raise ValueError(f"rd_candidates must be >= 2 (the target and a distractor), got {rd_candidates}")
    k = min(rd_candidates - 1, n - 1)
    if 0 < k < rd_candidates - 1:
        logger.warning("pool of %d images: RD%d uses the target and %d distractors (all the others)", n,
                       rd_candidates, k)
    return max(k, 0)


def _check_pair(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must both be (N, D) with one caption per image; got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")


def score_truematch(image_emb: torch.Tensor, text_emb: torch.Tensor, bags: Mapping[int, Sequence[Sequence[int]]], *,
                    rd_candidates: int = RD_CANDIDATES, seed: int = 0, chunk_size: int = 512,
                    tie_tol: float = TIE_TOL) -> TrueMatchScores:
    """TrueMatch from embeddings, computed in chunks of ``chunk_size`` captions.

    Never builds the ``N x N`` similarity matrix: a chunk of captions meets only the images it is compared
    with (its bag-mates, or its own 100 RD candidates), so memory is ``chunk_size * 100 * D`` floats.
    Row ``i`` of ``image_emb`` and ``text_emb`` is pool image ``i`` and its caption; both L2-normalised.

    Args:
        image_emb, text_emb: ``(N, D)`` float embeddings.
        bags: bag size -> list of bags (lists of pool indices).
        rd_candidates: candidates of the random-distractor test (target included).
        seed: seed of the distractor draw.
        chunk_size: captions per chunk.
        tie_tol: a hit needs a margin above this over every distractor.
    """
    import torch

    _check_pair(image_emb, text_emb)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    img, txt = image_emb.float(), text_emb.float()
    n = img.shape[0]
    bag_sims, bag_hits = {}, {}
    for size, idx in _as_bag_tensors(bags).items():
        sims = torch.empty(idx.shape[0], size, size)
        step = max(1, chunk_size // size)
        for s in range(0, idx.shape[0], step):
            members = idx[s:s + step]                                          # (c, k)
            sims[s:s + step] = txt[members] @ img[members].transpose(1, 2)     # (c, k, D) @ (c, D, k)
        eye = torch.eye(size, dtype=torch.bool)
        target = sims.diagonal(dim1=1, dim2=2)                                 # (B, k)
        best_other = sims.masked_fill(eye, float("-inf")).amax(dim=2)          # (B, k)
        bag_sims[size], bag_hits[size] = sims, target > best_other + tie_tol

    own = (img * txt).sum(dim=1)
    k = _n_distractors(n, rd_candidates)
    if not k:  # a pool of one image has nothing to tell apart
        return TrueMatchScores(bag_sims, bag_hits, torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1),
                               torch.zeros(0, dtype=torch.bool), own)
    cands = torch.cat([torch.arange(n)[:, None], sample_distractors(n, k, seed)], dim=1)  # (N, 1 + K)
    rd_sims = torch.empty(n, k + 1)
    for s in range(0, n, chunk_size):
        c = cands[s:s + chunk_size]
        # (c, 1+K, D) . (c, D): einsum is ~2x faster than a batched matrix-vector bmm here (memory-bound gather)
        rd_sims[s:s + chunk_size] = torch.einsum("ckd,cd->ck", img[c], txt[s:s + chunk_size])
    rd_hits = rd_sims[:, 0] > rd_sims[:, 1:].amax(dim=1) + tie_tol
    return TrueMatchScores(bag_sims, bag_hits, cands, rd_sims, rd_hits, own)


def score_truematch_reference(image_emb: torch.Tensor, text_emb: torch.Tensor,
                              bags: Mapping[int, Sequence[Sequence[int]]], *, rd_candidates: int = RD_CANDIDATES,
                              seed: int = 0, tie_tol: float = TIE_TOL) -> TrueMatchScores:
    """The brute-force reference for :func:`score_truematch`: the full similarity matrix in float64 and plain
    loops. Slow and memory-hungry on purpose -- it is what the chunked version is tested against.

    Example:
        >>> import torch
        >>> e = torch.eye(3)
        >>> score_truematch_reference(e, e, {3: [[0, 1, 2]]}).metrics()["R@1/bag3"]
        1.0
    """
    import torch

    _check_pair(image_emb, text_emb)
    full = text_emb.double() @ image_emb.double().T                           # (N captions, N images)
    n = full.shape[0]
    bag_sims, bag_hits = {}, {}
    for size, bag_list in sorted(bags.items()):
        sims = torch.empty(len(bag_list), size, size, dtype=torch.float64)
        hits = torch.zeros(len(bag_list), size, dtype=torch.bool)
        for b, bag in enumerate(bag_list):
            for i, t in enumerate(bag):
                for j, other in enumerate(bag):
                    sims[b, i, j] = full[t, other]
                hits[b, i] = all(full[t, t] > full[t, o] + tie_tol for o in bag if o != t)
        bag_sims[size], bag_hits[size] = sims, hits
    k = _n_distractors(n, rd_candidates)
    if not k:
        empty = torch.zeros(0, dtype=torch.bool)
        return TrueMatchScores(bag_sims, bag_hits, torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1), empty,
                               full.diagonal().clone())
    distractors = sample_distractors(n, k, seed)
    cands = torch.cat([torch.arange(n)[:, None], distractors], dim=1)
    rd_sims = torch.empty(n, k + 1, dtype=torch.float64)
    rd_hits = torch.zeros(n, dtype=torch.bool)
    for t in range(n):
        for c in range(k + 1):
            rd_sims[t, c] = full[t, int(cands[t, c])]
        rd_hits[t] = all(full[t, t] > full[t, int(d)] + tie_tol for d in distractors[t])
    return TrueMatchScores(bag_sims, bag_hits, cands, rd_sims, rd_hits, full.diagonal().clone())


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass
class TrueMatchResult:
    """What :func:`evaluate_truematch` returns."""

    metrics: dict[str, float | None]
    """``R@1/bag3``, ``R@1/bag5``, ``R@1/bag7`` (+ other sizes present), ``R@1/RD100``, ``CLIPScore``."""
    counts: dict[str, int]
    """Images, bags and bag members per size, RD candidates per target."""
    captions: list[str]
    """The caption of each pool image."""
    scores: TrueMatchScores
    """Similarities and hits, for analysis."""
    data: TrueMatchData
    """The pool and its bags."""

    def by_edit(self) -> dict[str, dict[str, float | int]]:
        """Which details the captions and the retriever tell apart: for a world's bags (records with
        ``bag.edits``), per kind of edit (``"count"``, ``"color+size"`` ... the edits that made a member from
        its bag's first image, which is ``"none"``):

        - ``R@1``: the members' share of hits within their bags (the TrueMatch protocol);
        - ``vs_base``: over every member with that edit and its bag's first image, the share of the two
          one-against-one choices that are right (the member's caption prefers the member's image to the first
          image, and the first image's caption the first image to the member's), so one edit is judged alone;
        - ``n``: members.

        Empty when the data has no edit records (the public layout).

        Example:
            >>> import torch
            >>> from vlm.data import Record
            >>> recs = [Record("a.png", ["x"], extra={"bag": {"edits": e}}) for e in ([], ["count"], ["color"])]
            >>> sims = torch.tensor([[[.9, .1, .5], [.2, .8, .1], [.6, .1, .4]]])  # caption i vs image j
            >>> data = TrueMatchData(["a", "b", "c"], [Path("a"), Path("b"), Path("c")], {3: [[0, 1, 2]]}, "t",
            ...                      records=recs)
            >>> scores = TrueMatchScores({3: sims}, {3: torch.tensor([[True, True, False]])}, torch.zeros(0, 1),
            ...                          torch.zeros(0, 1), torch.zeros(0, dtype=torch.bool), torch.zeros(3))
            >>> TrueMatchResult({}, {}, ["x"] * 3, scores, data).by_edit()["color"]
            {'R@1': 0.0, 'vs_base': 0.5, 'n': 1}
        """
        if not self.data.records:
            return {}
        hits: dict[str, list[int]] = {}
        pairs: dict[str, list[float]] = {}
        for size, bag_list in sorted(self.data.bags.items()):
            sims, bag_hits = self.scores.bag_sims[size], self.scores.bag_hits[size]
            for b, bag in enumerate(bag_list):
                for i, t in enumerate(bag):
                    edits = (self.data.records[t].extra.get("bag") or {}).get("edits")
                    if edits is None:
                        return {}
                    kind = "+".join(sorted(edits)) or "none"
                    hits.setdefault(kind, []).append(int(bag_hits[b, i]))
                    if i and kind != "none":
                        own = float(sims[b, i, i] > sims[b, i, 0]) + float(sims[b, 0, 0] > sims[b, 0, i])
                        pairs.setdefault(kind, []).append(own / 2)
        return {k: {"R@1": sum(v) / len(v), "vs_base": (sum(pairs[k]) / len(pairs[k])) if pairs.get(k) else None,
                    "n": len(v)}
                for k, v in sorted(hits.items(), key=lambda kv: (-len(kv[1]), kv[0]))}

    def items(self) -> list[dict[str, Any]]:
        """One row per bag member: its caption, whether it hit, and the image it was closest to."""
        rows = []
        rd = {int(t): bool(h) for t, h in zip(self.scores.rd_candidates[:, 0], self.scores.rd_hits)}
        for size, bag_list in sorted(self.data.bags.items()):
            sims, hits = self.scores.bag_sims[size], self.scores.bag_hits[size]
            for b, bag in enumerate(bag_list):
                for i, t in enumerate(bag):
                    others = [j for j in range(size) if j != i]
                    j = max(others, key=lambda j: float(sims[b, i, j]))
                    rows.append({"image_id": self.data.ids[t], "bag_size": size, "bag": b, "member": i,
                                 "hit": bool(hits[b, i]), "caption": self.captions[t],
                                 "sim_target": round(float(sims[b, i, i]), 6),
                                 "sim_best_other": round(float(sims[b, i, j]), 6),
                                 "best_other_id": self.data.ids[bag[j]], "rd_hit": rd.get(t)})
        return rows


def evaluate_truematch(data: TrueMatchData, retriever: Retriever, *, captions: Sequence[str] | None = None,
                       captioner: Any = None, batch_size: int = 64, chunk_size: int = 512, seed: int = 0,
                       rd_candidates: int = RD_CANDIDATES, tie_tol: float = TIE_TOL,
                       cache: EmbeddingCache | None = None, progress: bool = False) -> TrueMatchResult:
    """Score captions of ``data``'s pool on TrueMatch with ``retriever``.

    Give exactly one of ``captions`` (one per pool image, e.g. from :func:`read_captions`) and
    ``captioner`` (its ``generate(images)`` captions each image independently). Images are encoded once
    for all bag sizes and RD100, through ``cache`` when given.

    Example:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for c in ("red", "lime", "blue"):
        ...     Image.new("RGB", (4, 4), c).save(root / f"{c}.png")
        >>> class RGB:  # embeds an image by its colour and a text by the colour words it names
        ...     name = "rgb"
        ...     words = {"red": 0, "lime": 1, "blue": 2}
        ...     def encode_images(self, images, *, batch_size=64):
        ...         x = torch.tensor([im.getpixel((0, 0)) for im in images], dtype=torch.float32)
        ...         return torch.nn.functional.normalize(x, dim=1)
        ...     def encode_texts(self, texts, *, batch_size=256):
        ...         x = torch.full((len(texts), 3), 0.01)
        ...         for r, t in enumerate(texts):
        ...             for w in t.split():
        ...                 if w in self.words: x[r, self.words[w]] = 1.0
        ...         return torch.nn.functional.normalize(x, dim=1)
        >>> data = TrueMatchData(["red", "lime", "blue"], [root / f"{c}.png" for c in ("red", "lime", "blue")],
        ...                      {3: [[0, 1, 2]]}, "demo")
        >>> r = evaluate_truematch(data, RGB(), captions=["a red square", "a lime square", "a square"])
        >>> r.metrics["R@1/bag3"], r.counts["candidates/RD100"]
        (0.6666666666666666, 3)
    """
    if (captions is None) == (captioner is None):
        raise ValueError("give exactly one of captions= and captioner=")
    if captions is None:
        captions = generate_captions(captioner, data, batch_size=batch_size, progress=progress)
    captions = list(captions)
    if len(captions) != data.n_images:
        raise ValueError(f"{len(captions)} captions for {data.n_images} pool images; give one per image")
    image_emb = encode_image_files(retriever, data.paths, batch_size=batch_size, cache=cache, progress=progress)
    text_emb = _encode_texts(retriever, captions, batch_size=max(batch_size, 256), progress=progress)
    scores = score_truematch(image_emb, text_emb, data.bags, rd_candidates=rd_candidates, seed=seed,
                             chunk_size=chunk_size, tie_tol=tie_tol)
    counts = {**data.counts(), "candidates/RD100": int(scores.rd_candidates.shape[1]) if scores.rd_hits.numel() else 0}
    return TrueMatchResult(scores.metrics(), counts, captions, scores, data)


def plot_truematch(metrics: Mapping[str, float | None], counts: Mapping[str, int], path: str | os.PathLike) -> Path:
    """Bar plot of R@1 per bag size and for RD100, each bar with its chance level (1/candidates) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"bag {k[len('R@1/bag'):]}", v, 1 / int(k[len("R@1/bag"):])) for k, v in metrics.items()
            if k.startswith("R@1/bag") and v is not None]
    if metrics.get("R@1/RD100") is not None and counts.get("candidates/RD100"):
        bars.append((f"RD{counts['candidates/RD100']}", metrics["R@1/RD100"], 1 / counts["candidates/RD100"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(bars) + 2, 3.6))
    for x, (label, value, chance) in enumerate(bars):
        ax.bar(x, value, color="tab:blue", width=0.6)
        ax.text(x, max(value, chance) + 0.02, f"{value:.3f}", ha="center", fontsize=9)  # clear of the chance line
        ax.hlines(chance, x - 0.4, x + 0.4, colors="tab:red", linestyles="--",
                  label="chance (1 / candidates)" if x == 0 else None)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("R@1")
    ax.set_title("TrueMatch: caption retrieves its image")
    if bars:
        ax.legend(loc="upper right", fontsize=8)
    from benchmarks.report import save_figure

    return save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------------------------------- the job


@dataclass
class TrueMatchConfig:
    """One TrueMatch run, as the command line resolves it (saved with the results).

    Example:
        >>> TrueMatchConfig(retriever="open_clip:ViT-B-32:openai", world="data/tm", captions="reference:first").out
        'runs/truematch'
        >>> TrueMatchConfig(retriever="x", world="w", bags="b.json", captions="c.json")
        Traceback (most recent call last):
        ...
        ValueError: TrueMatchConfig: give either world, or bags with images, not both
    """

    retriever: str
    """Retriever spec (``vlm.retrieval.load_retriever``), e.g. ``open_clip:ViT-B-32:openai``."""
    captions: str
    """Predictions JSON ``{image_id: caption}``, ``reference:dense_caption`` / ``reference:first`` on a world,
    or ``model:<captioner>`` (a trained folder or ``hf:<id>``) to caption every image independently with
    the protocol's decoding (beam 5, 20 tokens, stop at the first '.')."""
    num_beams: int = 5
    """``model:`` captions: beams of the decoding. 5 is the protocol; 1 decodes greedily (the likeliest token at
    each step), a diagnostic of how much of a captioner's R@1 beam search itself adds."""
    bags: str | None = None
    """Public layout: the bags JSON (with ``images``)."""
    images: str | None = None
    """Public layout: the image folder."""
    image_ext: str = ".jpg"
    """Public layout: extension appended to an id when ``images/id`` itself is not a file."""
    world: str | None = None
    """A world dataset folder (``python -m vlm world --preset truematch``) instead of the public layout."""
    split: str | None = None
    """World: evaluate only this split (default: every record with a bag)."""
    out: str = "runs/truematch"
    """Output folder for ``truematch.json``, ``truematch.md``, the plot and per-item rows."""
    device: str = "auto"
    """Retriever device: ``auto`` (CUDA when present), ``cpu``, ``cuda``."""
    batch_size: int = 64
    """Images per encoder batch."""
    chunk_size: int = 512
    """Captions per similarity chunk."""
    seed: int = 0
    """Seed of the RD100 distractor draw."""
    rd_candidates: int = RD_CANDIDATES
    """Candidates per target in the random-distractor test."""
    cache_dir: str | None = None
    """Image-embedding cache (default ``$FINECAP_CACHE/truematch_embeddings``)."""
    no_cache: bool = False
    """Encode every image afresh and write no cache."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if bool(self.world) == bool(self.bags or self.images):
            raise ValueError(f"{name}: give either world, or bags with images, not both" if self.world else
                             f"{name}: give world, or bags with images")
        if not self.world and not (self.bags and self.images):
            raise ValueError(f"{name}: bags and images go together")
        if self.split and not self.world:
            raise ValueError(f"{name}: split applies to a world only")
        if not self.retriever or not self.captions:
            raise ValueError(f"{name}: retriever and captions must be non-empty")
        for f in ("batch_size", "chunk_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"{name}.{f} must be >= 1, got {getattr(self, f)}")
        if self.rd_candidates < 2:
            raise ValueError(f"{name}.rd_candidates must be >= 2, got {self.rd_candidates}")
        if self.num_beams < 1:
            raise ValueError(f"{name}.num_beams must be >= 1, got {self.num_beams}")
        if self.num_beams != 5 and not self.captions.startswith("model:"):
            raise ValueError(f"{name}.num_beams applies to model: captions only, got captions={self.captions!r}")


class _ProtocolDecoding:
    """A captioner decoding as the TrueMatch protocol does: beam 5, at most 20 tokens, stop at the first '.'
    (``num_beams=1``: greedy, the same limits)."""

    def __init__(self, captioner: Any, num_beams: int = 5):
        self.captioner, self.num_beams = captioner, num_beams

    def generate(self, images: list) -> list[str]:
        return self.captioner.generate(images, num_beams=self.num_beams, max_new_tokens=20, stop_at_period=True)


def run_truematch(config: TrueMatchConfig) -> dict[str, Any]:
    """Load data, captions and retriever, evaluate, and write ``truematch.json`` / ``.md`` / ``.png`` and
    ``truematch_items.jsonl`` under ``config.out``. Returns the results dict written to the JSON."""
    from benchmarks.report import resolve_device, write_results
    from vlm.data import atomic_write_text
    from vlm.pretrained import cache_dir
    from vlm.retrieval import load_retriever

    t0 = time.perf_counter()
    if config.world:
        data = load_world_bags(config.world, split=config.split)
    else:
        data = load_bags_json(config.bags, config.images, image_ext=config.image_ext)
    device = resolve_device(config.device)
    captioner = None
    if config.captions.startswith("model:"):
        from vlm.models import load_captioner

        captioner = _ProtocolDecoding(load_captioner(config.captions[len("model:"):], device=device),
                                      num_beams=config.num_beams)
        captions = None
    else:
        captions = read_captions(config.captions, data)
    retriever = load_retriever(config.retriever, device=device)
    cache = None if config.no_cache else EmbeddingCache(config.cache_dir or cache_dir() / "truematch_embeddings")
    result = evaluate_truematch(data, retriever, captions=captions, captioner=captioner, batch_size=config.batch_size,
                                chunk_size=config.chunk_size, seed=config.seed, rd_candidates=config.rd_candidates,
                                cache=cache, progress=config.progress)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot_truematch(result.metrics, result.counts, out / "truematch.png")
    atomic_write_text(out / "truematch_items.jsonl", "".join(json.dumps(r) + "\n" for r in result.items()))
    n_rd = result.counts["candidates/RD100"]
    results = {**result.metrics, "counts": result.counts,
               "chance": {**{f"bag{k}": 1 / k for k in sorted(data.bags)}, "RD100": 1 / n_rd if n_rd else None}}
    by_edit = result.by_edit()
    if by_edit:
        results["by_edit"] = by_edit
    resolved = {**dataclasses.asdict(config), "retriever_name": retriever.name,
                "retriever_fingerprint": getattr(retriever, "fingerprint", None), "data": data.source,
                "tie_tol": TIE_TOL, "cache_dir": None if cache is None else str(cache.root)}
    write_results(out, "truematch", results, config=resolved, seed=config.seed, figures=[figure],
                  wall_time_s=time.perf_counter() - t0, device=device,
                  sections={"Protocol": "Each image is captioned independently; its caption must retrieve it among "
                            "the images of its bag (R@1), or among itself and random distractors from the whole "
                            f"pool (RD100). A tie with a distractor (margin <= {TIE_TOL:g}) counts as a miss. "
                            "CLIPScore = 100 * max(cos(image, caption), 0), averaged. Per-item rows: "
                            "truematch_items.jsonl.",
                            **({"By edit": _by_edit_table(by_edit)} if by_edit else {})})
    return results


def _by_edit_table(by_edit: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :meth:`TrueMatchResult.by_edit`.

    Example:
        >>> print(_by_edit_table({"count": {"R@1": 0.5, "vs_base": 0.625, "n": 8}}))
        The edits that made a member from its bag's first image: R@1 within bags, and the share of right one-against-one choices between the member and the first image (vs_base).
        <BLANKLINE>
        | edit | members | R@1 | vs_base |
        |---|---|---|---|
        | count | 8 | 0.500 | 0.625 |
    """
    rows = [f"| {k} | {v['n']} | {v['R@1']:.3f} | {'-' if v['vs_base'] is None else format(v['vs_base'], '.3f')} |"
            for k, v in by_edit.items()]
    return ("The edits that made a member from its bag's first image: R@1 within bags, and the share of right "
            "one-against-one choices between the member and the first image (vs_base).\n\n"
            "| edit | members | R@1 | vs_base |\n|---|---|---|---|\n" + "\n".join(rows))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks truematch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retriever", required=True, help="retriever spec, e.g. open_clip:ViT-B-32:openai")
    data = p.add_argument_group("data: --world DIR, or --bags BAGS.json with --images DIR")
    data.add_argument("--world", help="a world dataset (python -m vlm world --preset truematch)")
    data.add_argument("--split", help="world: evaluate only this split")
    data.add_argument("--bags", help='public layout: JSON {"3": [[id, id, id], ...], "5": ..., "7": ...}')
    data.add_argument("--images", help="public layout: image folder (file = DIR/id or DIR/id + --image-ext)")
    data.add_argument("--image-ext", default=".jpg", help="public layout: image file extension (default .jpg)")
    p.add_argument("--captions", required=True,
                   help="predictions JSON {image_id: caption}, reference:dense_caption / reference:first (world), "
                        "or model:<trained captioner folder or hf:id> to caption the images here")
    p.add_argument("--num-beams", type=int, default=5,
                   help="model: captions, beams of the decoding (default 5, the protocol; 1: greedy)")
    p.add_argument("--out", default="runs/truematch", help="output folder (default runs/truematch)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch (default 64)")
    p.add_argument("--chunk-size", type=int, default=512, help="captions per similarity chunk (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RD100 distractor draw (default 0)")
    p.add_argument("--rd-candidates", type=int, default=RD_CANDIDATES, help="RD candidates incl. target (100)")
    p.add_argument("--cache-dir", help="image-embedding cache (default $FINECAP_CACHE/truematch_embeddings)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks truematch ...``: prints the results as JSON; returns 0, or 2 on bad input."""
    from vlm.pretrained import HubOfflineError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = TrueMatchConfig(
            retriever=args.retriever, captions=args.captions, num_beams=args.num_beams, bags=args.bags,
            images=args.images,
            image_ext=args.image_ext, world=args.world, split=args.split, out=args.out, device=args.device,
            batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed, rd_candidates=args.rd_candidates,
            cache_dir=args.cache_dir, no_cache=args.no_cache, progress=not args.quiet)
        results = run_truematch(config)
    except (ValueError, FileNotFoundError, HubOfflineError) as err:  # DatasetFormatError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
