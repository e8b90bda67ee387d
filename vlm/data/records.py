"""The in-memory data model shared by every reader and writer: ``Record``, ``CaptionDataset`` and the errors.

A record is one image: its path relative to the dataset root, its captions and optional fields. Records are
validated when they are built, so a writer can never put a record on disk that the readers would refuse.
This module imports only the standard library and Pillow (lazily), so ``import vlm.data`` stays fast.
"""

from __future__ import annotations

import logging
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

logger = logging.getLogger(__name__)

#: Top-level metadata keys that are ``Record`` attributes; every other key lives in ``Record.extra``.
RESERVED_FIELDS = ("file_name", "captions", "id", "split", "label")


class DatasetFormatError(ValueError):
    """A dataset file breaks the format; the message names the file, line and field at fault.

    ``file``, ``line`` and ``field`` are kept as attributes (``None`` where unknown) and ``reason`` is the
    message without the location, so callers can re-locate an error raised deeper down.

    Example:
        >>> err = DatasetFormatError("must not be empty", file="data/metadata.jsonl", line=7, field="captions")
        >>> str(err)
        "data/metadata.jsonl line 7: field 'captions': must not be empty"
        >>> err.line, err.field
        (7, 'captions')
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | os.PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where = f"{where} line {self.line}" if where else f"line {self.line}"
        what = f"field '{self.field}': {self.reason}" if self.field else self.reason
        return f"{where}: {what}" if where else what

    def located(self, file: str | os.PathLike | None = None, line: int | None = None) -> DatasetFormatError:
        """The same error with its file and line filled in (existing values win)."""
        return DatasetFormatError(
            self.reason,
            file=self.file if self.file is not None else file,
            line=self.line if self.line is not None else line,
            field=self.field,
        )


def check_file_name(file_name: Any) -> str:
    """Return ``file_name`` if it is a safe relative POSIX path, else raise ``DatasetFormatError``.

    Refused: absolute paths, ``..``/``.``/empty components and backslashes. These are the lexical checks;
    whether a symlink takes the path outside the root needs the file system (see ``resolve_inside``).

    Example:
        >>> check_file_name("images/000001.png")
        'images/000001.png'
        >>> check_file_name("../secrets.png")
        Traceback (most recent call last):
        ...
        vlm.data.records.DatasetFormatError: field 'file_name': '../secrets.png' has a '..' component; ...
    """
    if not isinstance(file_name, str):
        raise DatasetFormatError(f"must be a string, got {type(file_name).__name__}", field="file_name")
    if not file_name:
        raise DatasetFormatError("must not be empty", field="file_name")
    if "\\" in file_name:
        raise DatasetFormatError(
            f"{file_name!r} contains a backslash; use '/' as the separator", field="file_name"
        )
    if file_name.startswith("/") or PurePosixPath(file_name).is_absolute():
        raise DatasetFormatError(
            f"{file_name!r} is absolute; give the path relative to the dataset root", field="file_name"
        )
    parts = file_name.split("/")
    if ".." in parts:
        raise DatasetFormatError(
            f"{file_name!r} has a '..' component; file names must stay inside the dataset root",
            field="file_name",
        )
    if "" in parts or "." in parts:
        raise DatasetFormatError(
            f"{file_name!r} has an empty or '.' component; write it as a plain relative path such as "
            "'images/000001.png'",
            field="file_name",
        )
    return file_name


def resolve_inside(root: str | os.PathLike, file_name: str) -> Path:
    """``root / file_name`` after checking that it does not leave ``root``, symlinks included.

    Raises ``DatasetFormatError`` (field ``file_name``) when the lexical checks of ``check_file_name`` fail or
    when a symlink resolves to a place outside ``root``. The file itself need not exist.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> resolve_inside(root, "images/0.png").name
        '0.png'
    """
    check_file_name(file_name)
    root_real = os.path.realpath(root)
    target_real = os.path.realpath(os.path.join(root_real, file_name))
    if os.path.commonpath([root_real, target_real]) != root_real:
        raise DatasetFormatError(
            f"{file_name!r} resolves to {target_real}, outside the dataset root {root_real} (through a "
            "symlink); copy the image into the root instead",
            field="file_name",
        )
    return Path(root) / file_name


@dataclass
class Record:
    """One image of a dataset: where it is, what it shows, and optional fields.

    Validated on construction (a ``DatasetFormatError`` names the field), so a record that exists can be
    written. Numpy integer labels are converted to ``int``; ``captions`` given as a tuple become a list.

    Example:
        >>> r = Record("images/000001.png", ["a red cube left of a blue ball"], split="train", label=3,
        ...            extra={"bag": 12})
        >>> r.label, r.extra["bag"]
        (3, 12)
    """

    file_name: str
    """Path of the image relative to the dataset root, '/'-separated (e.g. ``"images/000001.png"``)."""
    captions: list[str]
    """One or more non-empty captions."""
    id: str | None = None
    """A dataset-unique identifier (metrics key their results by it)."""
    split: str | None = None
    """Split name such as ``"train"``, ``"val"``, ``"test"``."""
    label: int | str | None = None
    """Class index (0-based) or class name."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other JSON field (``scene``, ``bag``, ``question``, ``answer`` ...); must be JSON-serialisable."""

    def __post_init__(self) -> None:
        check_file_name(self.file_name)
        if isinstance(self.captions, tuple):
            self.captions = list(self.captions)
        if not isinstance(self.captions, list):
            raise DatasetFormatError(
                f"must be a list of strings, got {type(self.captions).__name__}", field="captions"
            )
        if not self.captions:
            raise DatasetFormatError("must hold at least one caption, got an empty list", field="captions")
        for k, caption in enumerate(self.captions):
            if not isinstance(caption, str):
                raise DatasetFormatError(
                    f"caption {k} must be a string, got {type(caption).__name__}", field="captions"
                )
            if not caption.strip():
                raise DatasetFormatError(f"caption {k} is empty; remove it or write the text", field="captions")
        if self.id is not None and (not isinstance(self.id, str) or not self.id):
            raise DatasetFormatError(f"must be a non-empty string or null, got {self.id!r}", field="id")
        if self.split is not None and (not isinstance(self.split, str) or not self.split):
            raise DatasetFormatError(f"must be a non-empty string or null, got {self.split!r}", field="split")
        self.label = _check_label(self.label)
        if not isinstance(self.extra, dict):
            raise DatasetFormatError(f"must be a dict, got {type(self.extra).__name__}", field="extra")
        for key in self.extra:
            if not isinstance(key, str):
                raise DatasetFormatError(f"keys must be strings, got {key!r}", field="extra")
            if key in RESERVED_FIELDS:
                raise DatasetFormatError(
                    f"{key!r} is a Record attribute; pass it as Record({key}=...) instead of in extra",
                    field="extra",
                )


def complete_bags(records: Iterable[Record]) -> list[list[int]]:
    """Positions of each complete near-duplicate bag among ``records`` (a dataset or any list of records).

    A bag is the records sharing a ``bag`` field's ``id`` (the truematch world writes ``{"id", "size",
    "index"}``); it counts when all ``size`` of its members are there (a split or a filter can cut one) and
    ``size >= 2``. Bags come in order of their id, members in order of their ``index`` in the bag. Records
    without a ``bag`` object are ignored; :func:`benchmarks.truematch.load_world_bags` is the strict reader
    that refuses malformed bags.

    Example:
        >>> rs = [Record(f"{k}.png", ["x"], extra={"bag": {"id": b, "size": 2, "index": j}})
        ...       for k, (b, j) in enumerate([("b1", 1), ("b0", 0), ("b1", 0), ("b2", 0)])]
        >>> complete_bags(rs)  # b0 and b2 lack a member
        [[2, 0]]
    """
    members: dict[str, list[tuple[int, int, int]]] = {}  # bag id -> (index in bag, size, position)
    for pos, r in enumerate(records):
        bag = r.extra.get("bag")
        if isinstance(bag, dict) and "id" in bag:
            members.setdefault(str(bag["id"]), []).append((int(bag.get("index", 0)), int(bag.get("size", 0)), pos))
    return [[pos for _, _, pos in sorted(m)] for _, m in sorted(members.items())
            if len(m) == m[0][1] >= 2]


def _check_label(label: Any) -> int | str | None:
    if label is None or (isinstance(label, str) and label):
        return label
    if isinstance(label, bool):  # bool is an int subclass, but True as a class index is surely a mistake
        raise DatasetFormatError("must be an int, a non-empty string or null, got a bool", field="label")
    try:
        return operator.index(label)  # int, and numpy integers from generators
    except TypeError:
        raise DatasetFormatError(
            f"must be an int, a non-empty string or null, got {type(label).__name__} {label!r}", field="label"
        ) from None


@dataclass
class CaptionDataset:
    """Images under ``root`` described by a list of ``Record``; what every reader returns.

    Indexing gives the ``Record``; ``image(i)`` loads the picture (RGB, with Pillow) and ``path(i)`` gives its
    path. ``skipped`` lists the messages of the records a reader dropped with ``on_error="skip"``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("L", (4, 4), 255).save(root / "a.png")
        >>> ds = CaptionDataset(root, [Record("a.png", ["a white square"], split="train")])
        >>> len(ds), ds[0].captions, ds.image(0).mode, ds.image(0).getpixel((0, 0))
        (1, ['a white square'], 'RGB', (255, 255, 255))
        >>> len(ds.filter_split("test"))
        0
    """

    root: Path
    """Folder that the records' ``file_name`` paths are relative to."""
    records: list[Record]
    """The records, in file order."""
    class_names: list[str] | None = None
    """Names of the classes, indexed by integer ``label``, where the source defines classes."""
    skipped: list[str] = field(default_factory=list)
    """Error messages of the records skipped while reading (``on_error="skip"``)."""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.records = list(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def n_skipped(self) -> int:
        """How many records the reader skipped."""
        return len(self.skipped)

    @property
    def splits(self) -> list[str]:
        """The split names present, sorted."""
        return sorted({r.split for r in self.records if r.split is not None})

    def path(self, i: int) -> Path:
        """Path of image ``i`` (``root / file_name``)."""
        return self.root / self.records[i].file_name

    def image(self, i: int):
        """Image ``i`` as an RGB ``PIL.Image.Image``, fully loaded (the file is closed again)."""
        from PIL import Image

        with Image.open(self.path(i)) as im:
            return im.convert("RGB")

    def subset(self, indices: Iterable[int]) -> CaptionDataset:
        """A dataset of the records at ``indices``, in that order."""
        return CaptionDataset(self.root, [self.records[i] for i in indices], class_names=self.class_names,
                              skipped=list(self.skipped))

    def filter_split(self, split: str | Iterable[str]) -> CaptionDataset:
        """A dataset holding only the records whose ``split`` is ``split`` (or one of several names)."""
        wanted = {split} if isinstance(split, str) else set(split)
        return CaptionDataset(
            self.root,
            [r for r in self.records if r.split in wanted],
            class_names=self.class_names,
            skipped=list(self.skipped),
        )
