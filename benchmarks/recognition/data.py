"""Classification data for the recognition benchmark: one train and one test split, images loaded lazily.

:func:`load_recognition_data` reads a ``--data`` spec:

==============================  ===========================================================================
``fashion-mnist[:ROOT]``        the Debian Fashion-MNIST idx files (60,000 train / 10,000 test, 28x28 grey)
``world-finegrained[:k=v,...]`` the built-in world's ``finegrained`` preset (12 badge classes), generated once
                                into the cache; options ``n`` (default 1200), ``size`` (64), ``seed`` (0)
``cub:ROOT``                    CUB-200-2011 (``images.txt``, ``train_test_split.txt`` ...)
``folders:ROOT``                a class-per-folder tree, ``ROOT/<class>/`` or ``ROOT/<split>/<class>/``
``imagefolder:ROOT``            the package's format (``metadata.jsonl`` with integer ``label``)
==============================  ===========================================================================

Splits: ``train`` and ``test`` where the source has them (``val`` stands in for a missing ``test``); a
source without splits is divided per class, seeded (:func:`stratified_split`). Every split carries an
``identity``: a hash of its content (pixels for Fashion-MNIST, path + size + mtime for image files) that
keys the feature cache.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for c in ("cat", "dog"):
    ...     (root / c).mkdir()
    ...     for i in range(5):
    ...         Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / c / f"{i}.png")
    >>> data = load_recognition_data(f"folders:{root}", seed=0)
    >>> data.class_names, len(data.train), len(data.test), data.train.images[0].size
    (['cat', 'dog'], 8, 2, (8, 8))
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from vlm.data import CaptionDataset

logger = logging.getLogger(__name__)

#: Defaults of the ``world-finegrained`` spec: 100 images per class on average, small enough to make in seconds.
WORLD_DEFAULTS = {"n": 1200, "size": 64, "seed": 0}


class ArrayImages:
    """A lazy image sequence over a ``(N, H, W)`` or ``(N, H, W, 3)`` uint8 array; items are RGB PIL images."""

    def __init__(self, array: np.ndarray):
        if array.ndim not in (3, 4) or array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array (N, H, W) or (N, H, W, 3), got {array.dtype} {array.shape}")
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> "Image.Image":
        from PIL import Image

        return Image.fromarray(self.array[i]).convert("RGB")

    def identity(self, i: int) -> bytes:
        return self.array[i].tobytes()


class DatasetImages:
    """A lazy image sequence over some records of a ``CaptionDataset``; items are RGB PIL images."""

    def __init__(self, dataset: "CaptionDataset", indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> "Image.Image":
        from vlm.data import DatasetFormatError

        path = self.dataset.path(self.indices[i])
        try:
            return self.dataset.image(self.indices[i])
        except (OSError, ValueError) as err:  # Pillow's errors do not say which file
            raise DatasetFormatError(f"cannot read the image ({err})", file=path) from None

    def identity(self, i: int) -> bytes:
        path = self.dataset.path(self.indices[i])
        try:
            st = path.stat()
            return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
        except OSError:
            return f"{path}|missing".encode()


@dataclass
class RecognitionSplit:
    """Images (lazy, RGB PIL) and their integer labels; ``identity`` hashes the content, for caching."""

    images: Any
    """A sequence of RGB ``PIL.Image`` (:class:`ArrayImages`, :class:`DatasetImages` or a list)."""
    labels: np.ndarray
    """``(N,)`` int64 class indices."""
    identity: str = ""
    """Hex digest of the split's content; computed from the images when left empty."""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        if not self.identity:
            h = hashlib.sha256(self.labels.tobytes())
            ident = getattr(self.images, "identity", None)
            for i in range(len(self.images)):
                h.update(ident(i) if ident else self.images[i].tobytes())
            self.identity = h.hexdigest()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> RecognitionSplit:
        """The split restricted to ``indices`` (in that order), with its own identity.

        Example:
            >>> s = RecognitionSplit(ArrayImages(np.zeros((4, 2, 2), np.uint8)), [0, 1, 0, 1])
            >>> sub = s.subset([3, 1])
            >>> sub.labels.tolist(), len(sub.images), sub.identity != s.identity
            ([1, 1], 2, True)
        """
        idx = np.asarray(indices, dtype=np.int64)
        ident = hashlib.sha256(f"{self.identity}|subset|".encode() + idx.tobytes()).hexdigest()
        return RecognitionSplit(_Subset(self.images, idx), self.labels[idx], identity=ident)


class _Subset:
    def __init__(self, images: Any, indices: np.ndarray):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> "Image.Image":
        return self.images[int(self.indices[i])]


@dataclass
class RecognitionData:
    """A classification benchmark: class names, a train and a test split, and how to preprocess its images."""

    name: str
    """The spec it was read from (``"fashion-mnist"``, ``"cub:/data/CUB_200_2011"`` ...)."""
    class_names: list[str]
    """Names in label order, as the source spells them."""
    train: RecognitionSplit
    test: RecognitionSplit
    center_crop: bool = True
    """Whether the encoder's centre crop suits these images (False for small images whose every pixel counts:
    Fashion-MNIST, the world)."""
    pixel_baseline: tuple[int, bool] = (32, False)
    """``(side, grayscale)`` of the raw-pixel baseline's input (Fashion-MNIST: its native 28 px grey)."""
    info: dict = field(default_factory=dict)
    """Where the data came from (paths, world options), for the results' config."""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def stratified_split(labels: Sequence[int], fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class, seeded: ``(rest, held_out)`` with ``round(fraction * n_c)`` of each class held out.

    Every class with at least two items keeps at least one on each side. Both index arrays are sorted.

    Example:
        >>> rest, held = stratified_split([0, 0, 0, 0, 1, 1], 0.5, seed=0)
        >>> len(rest), len(held), sorted(np.asarray([0, 0, 0, 0, 1, 1])[held].tolist())
        (3, 3, [0, 0, 1])
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        n = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.append(rng.permutation(idx)[:n])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), held_idx)
    return rest, held_idx


def subsample_per_class(labels: Sequence[int], n: int | None, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``n`` items of every class, drawn without replacement (all when ``n`` is None).

    Example:
        >>> subsample_per_class([0, 0, 0, 1], 2, seed=0).tolist()
        [1, 2, 3]
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n is None:
        return np.arange(len(labels))
    if n < 1:
        raise ValueError(f"per-class count must be >= 1, got {n}")
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c)])
        out.append(idx if len(idx) <= n else rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------- the sources


def fashion_mnist_data(root: str | os.PathLike | None = None) -> RecognitionData:
    """Fashion-MNIST from the Debian package (or ``root``): 60,000 train and 10,000 test images.

    Example:
        >>> d = fashion_mnist_data()
        >>> len(d.train), len(d.test), d.class_names[9], d.test.images[0].size
        (60000, 10000, 'Ankle boot', (28, 28))
    """
    from vlm.data import read_fashion_mnist

    splits = {}
    for name in ("train", "test"):
        fm = read_fashion_mnist(name, root=root)
        # The pixels themselves are the identity: 47 MB hash in ~0.1 s, and exact.
        ident = hashlib.sha256(fm.images.tobytes() + fm.labels.tobytes()).hexdigest()
        splits[name] = RecognitionSplit(ArrayImages(fm.images), fm.labels, identity=ident)
        class_names = list(fm.class_names)
    return RecognitionData("fashion-mnist" if root is None else f"fashion-mnist:{root}", class_names,
                           splits["train"], splits["test"], center_crop=False, pixel_baseline=(28, True),
                           info={"root": str(root) if root else None})


def _dataset_splits(ds: "CaptionDataset", source: str, *, seed: int, test_fraction: float = 0.2
                    ) -> tuple[RecognitionSplit, RecognitionSplit, str]:
    """Train/test splits of a labelled dataset; a source without splits is divided per class."""
    from vlm.data import DatasetFormatError

    labels = []
    for i, rec in enumerate(ds):
        if not isinstance(rec.label, int):
            raise DatasetFormatError(f"record {i} ({rec.file_name}) has label {rec.label!r}; an integer class "
                                     "index is needed", file=source, field="label")
        labels.append(rec.label)
    labels_arr = np.asarray(labels, dtype=np.int64)
    splits = [r.split for r in ds]
    present = sorted({s for s in splits if s})
    if "train" in present and ("test" in present or "val" in present):
        test_name = "test" if "test" in present else "val"
        tr = [i for i, s in enumerate(splits) if s == "train"]
        te = [i for i, s in enumerate(splits) if s == test_name]
        how = f"splits train/{test_name}"
    else:
        if present:
            logger.warning("%s: splits %s have no train/test pair; dividing all records per class", source, present)
        tr_arr, te_arr = stratified_split(labels_arr, test_fraction, seed=seed)
        tr, te = tr_arr.tolist(), te_arr.tolist()
        how = f"stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split, seed {seed}"
    if not tr or not te:
        raise ValueError(f"{source}: need images in both train and test, got {len(tr)} and {len(te)}")
    return (RecognitionSplit(DatasetImages(ds, tr), labels_arr[tr]),
            RecognitionSplit(DatasetImages(ds, te), labels_arr[te]), how)


def cub_data(root: str | os.PathLike, *, seed: int = 0) -> RecognitionData:
    """CUB-200-2011 from its extracted folder, with its official train/test split."""
    from vlm.data import read_cub

    ds = read_cub(root, check_images=False)
    train, test, how = _dataset_splits(ds, str(root), seed=seed)
    return RecognitionData(f"cub:{root}", list(ds.class_names), train, test, center_crop=True,
                           info={"root": str(root), "split": how})


def class_folders_data(root: str | os.PathLike, *, seed: int = 0, test_fraction: float = 0.2) -> RecognitionData:
    """A class-per-folder tree; ``train``/``test`` folders are used when present, else a seeded split per class."""
    from vlm.data import read_class_folders

    ds = read_class_folders(root, check_images=False)
    train, test, how = _dataset_splits(ds, str(root), seed=seed, test_fraction=test_fraction)
    return RecognitionData(f"folders:{root}", [n.replace("_", " ") for n in ds.class_names], train, test,
                           center_crop=True, info={"root": str(root), "split": how})


def imagefolder_data(root: str | os.PathLike, *, seed: int = 0, class_names: Sequence[str] | None = None,
                     center_crop: bool = True, name: str | None = None) -> RecognitionData:
    """A dataset in the package's format with integer ``label``; names from ``extra["class_name"]`` if not given."""
    from vlm.data import DatasetFormatError, read_imagefolder

    ds = read_imagefolder(root, check_images=False)
    if class_names is None:
        seen: dict[int, str] = {}
        for rec in ds:
            if isinstance(rec.label, int):
                seen.setdefault(rec.label, str(rec.extra.get("class_name", rec.label)))
        if not seen:
            raise DatasetFormatError("no record has an integer label", file=Path(root) / "metadata.jsonl",
                                     field="label")
        class_names = [seen.get(k, str(k)) for k in range(max(seen) + 1)]
    train, test, how = _dataset_splits(ds, str(Path(root) / "metadata.jsonl"), seed=seed)
    return RecognitionData(name or f"imagefolder:{root}", list(class_names), train, test, center_crop=center_crop,
                           info={"root": str(root), "split": how})


def world_finegrained_data(*, n: int = 1200, size: int = 64, seed: int = 0,
                           cache: str | os.PathLike | None = None) -> RecognitionData:
    """The built-in world's ``finegrained`` preset, generated once into ``cache`` and reused.

    Example:
        >>> import tempfile
        >>> d = world_finegrained_data(n=24, size=32, cache=tempfile.mkdtemp())
        >>> d.n_classes, len(d.train) + len(d.test) <= 24, d.train.images[0].size
        (12, True, (32, 32))
    """
    from vlm.world import FINE_CLASSES, generate_world, resolve_config, world_settings

    if n < 24:
        raise ValueError(f"world-finegrained needs n >= 24 (two images per class on average), got {n}")
    base = Path(cache) if cache is not None else _cache_root() / "worlds"
    folder = base / f"finegrained-n{n}-s{size}-seed{seed}"
    if not (folder / "world.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        generate_world(tmp, n=n, seed=seed, config=resolve_config("finegrained", image_size=size))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: keep its folder
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "world.json").is_file():
                raise
        logger.info("generated world-finegrained (n=%d, size=%d, seed=%d) in %s", n, size, seed, folder)
    meta = world_settings(folder) or {}
    if (meta.get("n"), meta.get("image_size"), meta.get("seed")) != (n, size, seed):
        raise ValueError(f"{folder}/world.json describes n={meta.get('n')}, size={meta.get('image_size')}, "
                         f"seed={meta.get('seed')}, not n={n}, size={size}, seed={seed}; delete the folder")
    spec = "world-finegrained" + ("" if (n, size, seed) == tuple(WORLD_DEFAULTS.values())
                                  else f":n={n},size={size},seed={seed}")
    return imagefolder_data(folder, seed=seed, class_names=list(FINE_CLASSES), center_crop=False, name=spec)


def _cache_root() -> Path:
    from vlm.pretrained import cache_dir

    return cache_dir() / "recognition"


def _world_options(arg: str) -> dict[str, int]:
    opts = dict(WORLD_DEFAULTS)
    for part in filter(None, arg.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in opts:
            raise ValueError(f"world-finegrained option {part!r}: expected k=v with k in {', '.join(opts)}")
        try:
            opts[key.strip()] = int(value)
        except ValueError:
            raise ValueError(f"world-finegrained option {key}={value!r} must be an integer") from None
    return opts


_SPEC_HELP = ("fashion-mnist[:ROOT], world-finegrained[:n=1200,size=64,seed=0], cub:ROOT, folders:ROOT, "
              "imagefolder:ROOT")


def load_recognition_data(spec: str, *, seed: int = 0, cache: str | os.PathLike | None = None) -> RecognitionData:
    """Read the data named by a ``--data`` spec (see the module docstring).

    Args:
        spec: ``fashion-mnist``, ``world-finegrained[:n=..,size=..,seed=..]``, ``cub:ROOT``, ``folders:ROOT``
            or ``imagefolder:ROOT``.
        seed: seeds the per-class split of sources without train/test splits.
        cache: where generated worlds go (default ``vlm.pretrained.cache_dir()/recognition/worlds``).

    Example:
        >>> load_recognition_data("mnist")
        Traceback (most recent call last):
        ...
        ValueError: unknown --data 'mnist'; expected one of fashion-mnist[:ROOT], ...
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "fashion-mnist":
        return fashion_mnist_data(arg or None)
    if kind == "world-finegrained":
        opts = _world_options(arg)
        return world_finegrained_data(n=opts["n"], size=opts["size"], seed=opts["seed"], cache=cache)
    if kind in ("cub", "folders", "imagefolder"):
        if not arg:
            raise ValueError(f"--data {spec!r}: give the folder, e.g. {kind}:/data/...")
        if kind == "cub":
            return cub_data(arg, seed=seed)
        if kind == "folders":
            return class_folders_data(arg, seed=seed)
        return imagefolder_data(arg, seed=seed)
    raise ValueError(f"unknown --data {spec!r}; expected one of {_SPEC_HELP}")
