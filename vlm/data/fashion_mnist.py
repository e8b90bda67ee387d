"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: idx files parsed with numpy.

The one set of real, fine-grained-ish images that installs offline (shirt, T-shirt/top, pullover and coat
are genuinely close). ``read_fashion_mnist`` gives arrays; ``export_fashion_mnist`` writes a subset in the
package's dataset format with captions such as "a photo of a pullover".
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlm.data.io import ImageFolderWriter
from vlm.data.records import DatasetFormatError, Record

logger = logging.getLogger(__name__)

#: Where ``apt-get install dataset-fashion-mnist`` puts the four ``*-ubyte.gz`` files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Class names in label order, as Zalando publishes them.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# What a caption calls each class ("a photo of a T-shirt/top" reads badly; one trouser is a pair).
_CAPTION_NOUNS = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
)

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

# idx type codes (third magic byte) -> big-endian numpy dtypes, from LeCun's MNIST page.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Parse an idx file (gzipped when its name ends in ``.gz``) into a native-endian numpy array.

    Checks the magic number (two zero bytes, a known type code, the number of dimensions, ``ndim`` if
    given) and that the payload holds exactly the declared number of values; a ``DatasetFormatError``
    names the file.

    Example:
        >>> import tempfile, struct
        >>> p = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
        >>> _ = p.write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 3) + bytes([7, 8, 9]))
        >>> read_idx(p, ndim=1).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DatasetFormatError(
            f"not a complete gzip file ({e}); re-download it (for the Debian files: "
            "apt-get install --reinstall dataset-fashion-mnist)",
            file=path,
        ) from None
    if len(data) < 4:
        raise DatasetFormatError(f"only {len(data)} bytes, too short for an idx header", file=path)
    magic = int.from_bytes(data[:4], "big")
    zero, type_code, n_dims = data[:2], data[2], data[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES or n_dims == 0:
        raise DatasetFormatError(
            f"magic number 0x{magic:08X} is not an idx header (expected 0x0000TTDD: type code TT in "
            f"{{{', '.join(f'0x{c:02X}' for c in _IDX_DTYPES)}}}, DD dimensions)",
            file=path, field="magic number",
        )
    if ndim is not None and n_dims != ndim:
        raise DatasetFormatError(
            f"magic number 0x{magic:08X} declares {n_dims} dimension(s), expected {ndim} "
            f"(0x{(0x08 << 8) | ndim:08X} for a {'label' if ndim == 1 else 'image'} file); wrong file?",
            file=path, field="magic number",
        )
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise DatasetFormatError(f"file ends inside the header ({len(data)} bytes)", file=path, field="dimensions")
    dims = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(n_dims))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetFormatError(
            f"dimensions {dims} need {expected} bytes of data but the file holds {len(data) - header}; "
            "the file is truncated or corrupt",
            file=path, field="dimensions",
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class FashionMNIST:
    """One split of Fashion-MNIST as arrays.

    Example:
        >>> fm = read_fashion_mnist("test")
        >>> fm.images.shape, fm.class_names[fm.labels[0]]
        ((10000, 28, 28), 'Ankle boot')
    """

    images: np.ndarray
    """``(N, 28, 28)`` uint8, white garment on black."""
    labels: np.ndarray
    """``(N,)`` int64 class indices into ``class_names``."""
    split: str
    """``"train"`` (60,000 images) or ``"test"`` (10,000)."""
    class_names: tuple[str, ...] = FASHION_MNIST_CLASSES
    """The ten class names in label order."""

    def __len__(self) -> int:
        return len(self.labels)


def read_fashion_mnist(split: str = "train", *, root: str | os.PathLike | None = None) -> FashionMNIST:
    """Load a Fashion-MNIST split from the idx files (default: the Debian package's folder).

    Args:
        split: ``"train"`` (``train-*``, 60,000 images) or ``"test"`` (``t10k-*``, 10,000).
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``; ``FASHION_MNIST_DIR`` if None.

    Example:
        >>> fm = read_fashion_mnist("test")
        >>> len(fm), fm.images.dtype, sorted(set(fm.labels.tolist())) == list(range(10))
        (10000, dtype('uint8'), True)
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = FASHION_MNIST_DIR if root is None else Path(root)
    prefix = _SPLIT_PREFIX[split]
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found; install the Debian package with 'apt-get install dataset-fashion-mnist' "
                f"(files go to {FASHION_MNIST_DIR}) or pass root= a folder holding the four *-ubyte.gz files"
            )
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        bad = images_path if images.dtype != np.uint8 else labels_path
        raise DatasetFormatError("expected unsigned bytes (type code 0x08)", file=bad, field="magic number")
    if images.shape[1:] != (28, 28):
        raise DatasetFormatError(
            f"images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST's are 28x28", file=images_path,
            field="dimensions",
        )
    if len(images) != len(labels):
        raise DatasetFormatError(
            f"{len(labels)} labels for {len(images)} images in {images_path.name}; the pair does not match",
            file=labels_path, field="dimensions",
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DatasetFormatError(
            f"label {int(labels.max())} is out of range 0-9", file=labels_path, field="labels"
        )
    return FashionMNIST(images=images, labels=labels.astype(np.int64), split=split)


def export_fashion_mnist(
    out_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    per_class: int | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write Fashion-MNIST (or the first ``per_class`` images of each class per split) as a dataset folder.

    Images are 28x28 grayscale PNGs named ``images/000000.png`` ... (numbered across splits, since split
    words in file names would confuse ``datasets``); records carry ``split``, ``label``, ``id``
    (``"test/17"`` = index 17 of the test file), ``extra["class_name"]`` and one caption such as "a photo of
    a pullover". Deterministic: the same arguments give byte-identical files. Returns ``metadata.jsonl``'s path.

    Example:
        >>> import tempfile
        >>> from vlm.data import read_imagefolder
        >>> out = Path(tempfile.mkdtemp())
        >>> _ = export_fashion_mnist(out, splits=("test",), per_class=1)
        >>> read_imagefolder(out)[0].captions
        ['a photo of an ankle boot']
    """
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be a positive number or None, got {per_class}")
    from PIL import Image

    with ImageFolderWriter(out_dir) as writer:
        n = 0
        for split in splits:
            fm = read_fashion_mnist(split, root=root)
            if per_class is None:
                indices = np.arange(len(fm))
            else:
                # first per_class of each class in file order: deterministic without a seed
                indices = np.sort(np.concatenate(
                    [np.flatnonzero(fm.labels == c)[:per_class] for c in range(len(fm.class_names))]
                ))
            for index in indices.tolist():
                label = int(fm.labels[index])
                noun = _CAPTION_NOUNS[label]
                article = "an" if noun[0] in "aeiou" else "a"
                record = Record(
                    f"images/{n:06d}.png",
                    [f"a photo of {article} {noun}"],
                    id=f"{split}/{index}",
                    split=split,
                    label=label,
                    extra={"class_name": fm.class_names[label]},
                )
                writer.add(Image.fromarray(fm.images[index]), record)
                n += 1
    logger.info("exported %d Fashion-MNIST images to %s", n, out_dir)
    return writer.metadata_path
