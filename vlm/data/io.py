"""The package's dataset format: a folder of images plus ``metadata.jsonl``, read, validated and written.

One JSON object per line and per image: ``file_name`` (relative to the folder), ``captions`` (non-empty list
of non-empty strings) and optional ``id``, ``split``, ``label`` and any other JSON field (``scene``, ``bag``,
``question``, ``answer`` ...), which ``Record.extra`` keeps. It is Hugging Face's ``imagefolder`` layout, so
``datasets.load_dataset("imagefolder", data_dir=root)`` reads the same folder.

Writers are atomic: every file is written under a temporary name in its final folder and renamed into
place, so a killed job leaves either the old file or the new one, never half of one. Metadata bytes are a
function of the records alone (fixed key order, no timestamps), so the same records give identical files.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from vlm.data.records import (
    RESERVED_FIELDS,
    CaptionDataset,
    DatasetFormatError,
    Record,
    resolve_inside,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"

#: What ``ImageFolderWriter.add`` takes as an image: a PIL image (encoded from the file name's suffix),
#: encoded bytes, or the path of an image file to copy.
ImageInput = Union["PIL.Image.Image", bytes, str, os.PathLike]  # noqa: F821 (PIL is imported lazily)

# datasets.data_files.SPLIT_KEYWORDS and NON_WORDS_CHARS (datasets 2.x-5.x). When any file under data_dir
# matches one of these as a word, load_dataset("imagefolder") infers splits from file names and silently
# drops metadata.jsonl; the test suite checks these lists against the installed datasets.
HF_SPLIT_KEYWORDS = (
    "train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation",
)
_HF_SEP = r"[-._ 0-9]"
_HF_SPLIT_WORD = re.compile(rf"(?:^|{_HF_SEP})({'|'.join(HF_SPLIT_KEYWORDS)})(?:{_HF_SEP}|$)")


# --------------------------------------------------------------------------------------------- atomic files


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    ``fsync=True`` also survives a power cut; turn it off for many small files where surviving a killed
    process is enough (a rename is atomic either way). Returns ``path``.

    Example:
        >>> import tempfile
        >>> p = atomic_write_bytes(Path(tempfile.mkdtemp()) / "x.bin", b"abc")
        >>> p.read_bytes()
        b'abc'
    """
    path = Path(path)
    # A hidden name with a non-image suffix: imagefolder and our readers never mistake it for data.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open rather than mkstemp: mkstemp makes 0600 files, os.open applies the user's umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """``atomic_write_bytes`` for UTF-8 text (newlines written as given).

    Example:
        >>> import tempfile
        >>> atomic_write_text(Path(tempfile.mkdtemp()) / "x.txt", "héllo\\n").read_text(encoding="utf-8")
        'héllo\\n'
    """
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def read_json(
    path: str | os.PathLike, what: str = "JSON file", *, error: type[ValueError] = ValueError, fix: str = ""
) -> Any:
    """Parse the JSON file at ``path``, or raise ``error`` naming the file and, for bad syntax, its line and column.

    The one way the package reads a JSON file a person or an interrupted job may have damaged: summaries,
    markers, configs, predictions. A missing file is the caller's question (``FileNotFoundError`` passes
    through). ``what`` says what the file is ("stage summary"), ``fix`` what to do about it, and ``error`` is
    the caller's ``ValueError`` subclass; ``DatasetFormatError`` is given the file and line as fields.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "summary.json"
        >>> _ = f.write_text('{"steps": 3,\\n "loss": }')
        >>> read_json(f, "stage summary", fix="delete it to rerun the stage")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../summary.json line 2: not a valid stage summary (column 10: Expecting value); delete it ...
        >>> _ = f.write_text('{"steps": 3}')
        >>> read_json(f)
        {'steps': 3}
    """
    path = Path(path)
    text = path.read_bytes()
    fix = f"; {fix}" if fix else ""
    try:
        return json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        reason, line = f"not a valid {what}: not UTF-8 text ({e}){fix}", None
    except json.JSONDecodeError as e:
        reason, line = f"not a valid {what} (column {e.colno}: {e.msg}){fix}", e.lineno
    if issubclass(error, DatasetFormatError):
        raise error(reason, file=path, line=line) from None
    raise error(f"{path}{f' line {line}' if line else ''}: {reason}") from None


def guard_run_settings(path: str | os.PathLike, settings: dict, *, what: str = "run") -> None:
    """Keep a resumable run folder to one set of settings: the first call writes ``settings`` (JSON) to
    ``path``; a later call with other settings raises ``ValueError`` naming the keys that differ (compared as
    JSON, so tuples and lists are alike), because the folder's finished stages were made with the first ones.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "settings.json"
        >>> guard_run_settings(f, {"steps": 10, "seed": 0})
        >>> guard_run_settings(f, {"steps": 10, "seed": 0})  # the same: resume
        >>> guard_run_settings(f, {"steps": 20, "seed": 0}, what="comparison")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... holds a comparison with other settings (steps); rerun with the same settings ...
    """
    path = Path(path)
    want = json.loads(json.dumps(settings))
    if not path.is_file():
        atomic_write_text(path, json.dumps(want, indent=2, sort_keys=True) + "\n", fsync=False)
        return
    have = read_json(path, f"{what} settings file", fix="delete it to start the folder anew, or pass a new --out")
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise ValueError(f"{path.parent} holds a {what} with other settings ({', '.join(diff)}); rerun with the same "
                         "settings to resume it, or pass a new --out")


# ------------------------------------------------------------------------------------------ shared helpers


class _ErrorPolicy:
    """Raise each problem (``on_error="raise"``) or collect its message (``"skip"``)."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.skip = on_error == "skip"
        self.messages: list[str] = []

    def __call__(self, err: DatasetFormatError) -> None:
        if not self.skip:
            raise err
        self.messages.append(str(err))

    def report(self, source: str | os.PathLike) -> None:
        if self.messages:
            logger.warning(
                "%s: skipped %d bad record(s) (on_error='skip'); first: %s",
                source, len(self.messages), self.messages[0],
            )


def file_identity(path: str | os.PathLike) -> str:
    """``"<real path>|<size>|<mtime_ns>"``: what cache keys use to notice that a file changed.

    The path is resolved through symbolic links, so a dataset reached through a linked folder (a comparison that
    links another's world) shares the cached features and embeddings of its real files.

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"abc"); f.close()
        >>> file_identity(f.name).split("|")[1]
        '3'
    """
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}"


def check_image_file(path: str | os.PathLike) -> None:
    """Raise ``DatasetFormatError`` (field ``file_name``) if ``path`` is missing or Pillow cannot read it.

    Uses ``Image.verify``, which checks structure and checksums without decoding every pixel.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "bad.png"
        >>> _ = p.write_bytes(b"not an image")
        >>> check_image_file(p)
        Traceback (most recent call last):
        ...
        vlm.data.records.DatasetFormatError: field 'file_name': image ... is not a readable image ...
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(
            f"image {path} does not exist; add the image or remove the record", field="file_name"
        )
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # Pillow reports bad files as OSError, SyntaxError, ValueError, struct.error ...
        raise DatasetFormatError(
            f"image {path} is not a readable image (Pillow: {type(e).__name__}: {e}); replace or remove it",
            field="file_name",
        ) from None


def hf_split_keyword(file_name: str) -> str | None:
    """The split word in ``file_name`` that would make ``datasets`` infer splits from names, else ``None``.

    ``load_dataset("imagefolder")`` looks for words such as ``train``/``val``/``test`` between separators
    (``-._ `` or digits) in any path component; when one matches it splits by name and ignores
    ``metadata.jsonl``. Put the split in the record's ``split`` field instead.

    Example:
        >>> hf_split_keyword("images/train-00001.png"), hf_split_keyword("images/00001.png")
        ('train', None)
    """
    for part in file_name.split("/"):
        m = _HF_SPLIT_WORD.search(part)
        if m:
            return m.group(1)
    return None


# ------------------------------------------------------------------------------------- metadata.jsonl lines


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with dict keys sorted at every depth, numpy values as Python ones; raise if not JSON."""
    if isinstance(value, dict):
        out = {}
        for key in sorted(value, key=lambda k: (not isinstance(k, str), str(k))):
            if not isinstance(key, str):
                raise DatasetFormatError(
                    f"dict key {key!r} at {where} is not a string; JSON would silently turn it into one",
                    field="extra",
                )
            out[key] = _jsonable(value[key], f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise DatasetFormatError(
                f"{where} is {value}, which strict JSON (and datasets) cannot hold", field="extra"
            )
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _jsonable(value.tolist(), where)
    raise DatasetFormatError(
        f"{where} is a {type(value).__name__}, which JSON cannot hold; store numbers, strings, lists or dicts",
        field="extra",
    )


def record_to_json(record: Record) -> str:
    """The ``metadata.jsonl`` line (without newline) for ``record``, in the package's fixed key order.

    ``file_name`` first, ``captions`` second, then every other present field sorted by name (``None``
    fields are left out); dicts inside are sorted too, so equal records always give equal bytes.

    Example:
        >>> record_to_json(Record("a.png", ["a cat"], label=2, extra={"bag": 1}))
        '{"file_name": "a.png", "captions": ["a cat"], "bag": 1, "label": 2}'
    """
    return json.dumps(_record_object(record), ensure_ascii=False, allow_nan=False)


def _record_object(record: Record) -> dict[str, Any]:
    obj: dict[str, Any] = {"file_name": record.file_name, "captions": list(record.captions)}
    rest: dict[str, Any] = {k: v for k, v in (("id", record.id), ("split", record.split),
                                               ("label", record.label)) if v is not None}
    for key, value in record.extra.items():
        rest[key] = _jsonable(value, key)
    for key in sorted(rest):
        obj[key] = rest[key]
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (datasets cannot read it either)")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def record_from_json(obj: Any) -> Record:
    """Build a ``Record`` from one parsed metadata object, with errors that name the field.

    Integer ids are accepted and turned into strings (Karpathy-style sources number their images).

    Example:
        >>> record_from_json({"file_name": "a.png", "captions": ["a cat"], "id": 7, "scene": {"n": 1}})
        Record(file_name='a.png', captions=['a cat'], id='7', split=None, label=None, extra={'scene': {'n': 1}})
    """
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"expected a JSON object, got {type(obj).__name__}")
    if "file_name" not in obj:
        raise DatasetFormatError("is missing; every line needs the image path", field="file_name")
    if "captions" not in obj:
        raise DatasetFormatError(
            "is missing; every line needs a list of captions, e.g. \"captions\": [\"a red cube\"]",
            field="captions",
        )
    record_id = obj.get("id")
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)
    return Record(
        file_name=obj["file_name"],
        captions=obj["captions"],
        id=record_id,
        split=obj.get("split"),
        label=obj.get("label"),
        extra={k: v for k, v in obj.items() if k not in RESERVED_FIELDS},
    )


class _Uniqueness:
    """Cross-record rules: unique file names and ids, one label type (datasets needs one column type)."""

    def __init__(self) -> None:
        self.file_names: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self.label_type: tuple[type, str] | None = None

    def check(self, record: Record, where: str) -> None:
        if record.file_name in self.file_names:
            raise DatasetFormatError(
                f"{record.file_name!r} is already used by {self.file_names[record.file_name]}; one record per "
                "image (put several captions in one record's list)",
                field="file_name",
            )
        if record.id is not None and record.id in self.ids:
            raise DatasetFormatError(
                f"id {record.id!r} is already used by {self.ids[record.id]}; ids must be unique", field="id"
            )
        if record.label is not None:
            kind = type(record.label)
            if self.label_type is None:
                self.label_type = (kind, where)
            elif self.label_type[0] is not kind:
                raise DatasetFormatError(
                    f"is a {kind.__name__} but {self.label_type[1]} has a {self.label_type[0].__name__} label; "
                    "use one label type in a dataset",
                    field="label",
                )

    def add(self, record: Record, where: str) -> None:
        self.file_names[record.file_name] = where
        if record.id is not None:
            self.ids[record.id] = where


def _json_kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"  # pyarrow promotes int64 to double, so ints and floats mix
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


class _FieldTypes:
    """One JSON type per field path across all records, as ``datasets`` (pyarrow's JSON reader) requires.

    Paths look like ``scene.things[].x``: list items share one path, so ``[0, "below", 1]`` mixes a number
    and a string at ``relations[][]`` and pyarrow refuses the whole file ("changed from number to string").
    ``null`` fits any type; missing keys are fine.
    """

    def __init__(self) -> None:
        self.kinds: dict[str, tuple[str, str]] = {}

    def check(self, obj: dict[str, Any], where: str) -> dict[str, tuple[str, str]]:
        """The new ``{path: (kind, where)}`` entries of ``obj``; raise on a clash. ``add`` commits them."""
        new: dict[str, tuple[str, str]] = {}
        stack = [(key, value) for key, value in obj.items()]
        while stack:
            path, value = stack.pop()
            kind = _json_kind(value)
            if kind is None:
                continue
            seen = self.kinds.get(path) or new.get(path)
            if seen is None:
                new[path] = (kind, where)
            elif seen[0] != kind:
                earlier = "elsewhere in this record" if seen[1] == where else f"in {seen[1]}"
                raise DatasetFormatError(
                    f"is a {kind} here but a {seen[0]} {earlier}; datasets.load_dataset('imagefolder') "
                    "(pyarrow) needs one JSON type per field, list items included: store e.g. a "
                    "[0, 'below', 1] triple as an object {\"subject\": 0, \"relation\": \"below\", \"object\": 1}",
                    field=path,
                )
            if kind == "object":
                stack.extend((f"{path}.{k}", v) for k, v in value.items())
            elif kind == "array":
                stack.extend((f"{path}[]", v) for v in value)
        return new

    def add(self, new: dict[str, tuple[str, str]]) -> None:
        self.kinds.update(new)


# ------------------------------------------------------------------------------------------------- reading


def read_imagefolder(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    on_error: str = "raise",
    check_images: bool = True,
) -> CaptionDataset:
    """Read a dataset folder (images + ``metadata.jsonl``) and validate every line.

    Args:
        root: the folder holding ``metadata.jsonl``; ``file_name`` paths are relative to it.
        split: keep only records with this ``split`` (every line is still validated; images are checked only
            for the records kept). Raises ``ValueError`` listing the splits present if none match.
        on_error: ``"raise"`` stops at the first bad record with a ``DatasetFormatError`` naming the file,
            line and field; ``"skip"`` drops bad records, logs a warning with the count and lists the
            messages in the result's ``skipped`` (``n_skipped`` is the count).
        check_images: check that each image exists and that Pillow can read it (``Image.verify``). Turn off
            for speed on trusted data; paths are still checked to stay inside ``root``.

    Returns:
        A ``CaptionDataset`` rooted at ``root``, records in file order.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> with ImageFolderWriter(root) as w:
        ...     _ = w.add(Image.new("RGB", (8, 8), "red"), Record("images/0.png", ["a red square"], split="train"))
        >>> ds = read_imagefolder(root, split="train")
        >>> len(ds), ds[0].captions, ds.image(0).getpixel((0, 0))
        (1, ['a red square'], (255, 0, 0))
    """
    root = Path(root)
    meta = root / METADATA_FILE
    if not meta.is_file():
        raise FileNotFoundError(
            f"{meta} not found: a dataset folder needs a {METADATA_FILE} (write one with write_imagefolder or "
            "ImageFolderWriter; see DESIGN.md 'Data format')"
        )
    policy = _ErrorPolicy(on_error)
    unique = _Uniqueness()
    records: list[Record] = []
    split_words: list[str] = []
    field_types = _FieldTypes()
    type_clashes: list[str] = []
    data = meta.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark some editors add
        if not raw.strip():
            continue  # blank lines carry nothing; refusing them would only punish hand edits
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetFormatError(f"not UTF-8 ({e}); save the file as UTF-8") from None
            try:
                obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
            except ValueError as e:
                raise DatasetFormatError(f"invalid JSON: {e}") from None
            record = record_from_json(obj)
            where = f"line {number}"
            unique.check(record, where)
            path = resolve_inside(root, record.file_name)
            if check_images and (split is None or record.split == split):
                check_image_file(path)
        except DatasetFormatError as err:
            policy(err.located(meta, number))
            continue
        unique.add(record, where)
        if hf_split_keyword(record.file_name):
            split_words.append(record.file_name)
        try:
            field_types.add(field_types.check(obj, where))
        except DatasetFormatError as err:
            type_clashes.append(str(err.located(meta, number)))
        records.append(record)
    policy.report(meta)
    if type_clashes:
        # Our readers cope; only datasets/pyarrow does not, so this warns instead of refusing the data.
        logger.warning(
            "%d record(s) mix JSON types in a field, so datasets.load_dataset('imagefolder') cannot read this "
            "folder; first: %s", len(type_clashes), type_clashes[0],
        )
    if split_words:
        logger.warning(
            "%s: %d file name(s) contain a split word (e.g. %r); datasets.load_dataset('imagefolder') will "
            "split by file name and ignore metadata.jsonl. Rename the files and use the 'split' field.",
            meta, len(split_words), split_words[0],
        )
    ds = CaptionDataset(root, records, skipped=policy.messages)
    if split is not None:
        present = ds.splits
        ds = ds.filter_split(split)
        if not ds.records:
            raise ValueError(
                f"{meta}: no record has split {split!r}; splits present: {', '.join(present) or 'none'}"
            )
    return ds


# ------------------------------------------------------------------------------------------------- writing


def _encode_image(image: Any, file_name: str) -> bytes:
    """Encoded bytes to store at ``file_name``; its suffix picks the format for PIL images."""
    from PIL import Image

    suffix = Path(file_name).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise DatasetFormatError(
            f"{file_name!r} has no image suffix Pillow knows; use .png (lossless, deterministic) or .jpg",
            field="file_name",
        )
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        try:
            # No pnginfo and no timestamps: Pillow's PNG bytes depend on the pixels alone.
            image.save(buf, format=fmt)
        except (OSError, ValueError, KeyError) as e:
            raise DatasetFormatError(
                f"Pillow cannot save a {image.mode} image as {fmt} ({e}); convert it first (e.g. "
                "image.convert('RGB')) or use .png",
                field="file_name",
            ) from None
        return buf.getvalue()
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            with Image.open(io.BytesIO(data)) as im:
                actual = im.format
                im.verify()
        except Exception as e:
            raise DatasetFormatError(
                f"the image bytes for {file_name!r} are not a readable image (Pillow: {type(e).__name__}: {e})",
                field="file_name",
            ) from None
        if actual != fmt:
            raise DatasetFormatError(
                f"the image bytes are {actual} but {file_name!r} says {fmt}; use a matching suffix",
                field="file_name",
            )
        return data
    raise TypeError(
        f"image for {file_name!r} must be a PIL.Image.Image, bytes or a path, got {type(image).__name__}"
    )


def _line_for_writing(
    record: Record, unique: _Uniqueness, types: _FieldTypes, index: int, root: Path
) -> tuple[str, dict[str, tuple[str, str]]]:
    """Validate ``record`` as the ``index``-th of a folder being written; return its metadata line.

    Commits nothing: the caller records ``record`` in ``unique`` and its field types in ``types`` once the
    image is safely written.
    """
    if not isinstance(record, Record):
        raise TypeError(f"record {index} must be a vlm.data.Record, got {type(record).__name__}")
    where = f"record {index} ({record.file_name})"
    try:
        unique.check(record, where)
        word = hf_split_keyword(record.file_name)
        if word:
            raise DatasetFormatError(
                f"{record.file_name!r} contains the split word {word!r}, so datasets.load_dataset("
                "'imagefolder') would split by file name and ignore metadata.jsonl; name files by "
                "number (e.g. 'images/000001.png') and put the split in Record(split=...)",
                field="file_name",
            )
        obj = _record_object(record)
        pending = types.check(obj, where)
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except DatasetFormatError as err:
        raise err.located(f"{root} {where}") from None
    return line, pending


class ImageFolderWriter:
    """Build a dataset folder one image at a time; each image lands atomically, metadata on ``close``.

    ``add`` validates the record (unique file name and id, one label type, JSON-serialisable extras, a file
    name that stays inside the root and that ``datasets`` will not mistake for a split name) *before*
    touching the disk, then writes the image under a temporary name and renames it. ``close()`` (or leaving
    the ``with`` block, also on an exception, so finished work is kept) writes ``metadata.jsonl``
    atomically, records in insertion order; ``flush()`` does so at any time, to checkpoint a long job.

    ``append=True`` starts from the records of an existing ``metadata.jsonl`` (a resumed job skips what
    ``in`` reports done); otherwise the folder's metadata is replaced by what this writer adds.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> with ImageFolderWriter(root) as w:
        ...     for i, colour in enumerate(["red", "blue"]):
        ...         _ = w.add(Image.new("RGB", (8, 8), colour), Record(f"images/{i}.png", [f"a {colour} square"]))
        >>> print((root / "metadata.jsonl").read_text(), end="")
        {"file_name": "images/0.png", "captions": ["a red square"]}
        {"file_name": "images/1.png", "captions": ["a blue square"]}
    """

    def __init__(self, root: str | os.PathLike, *, append: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._records: list[Record] = []
        self._lines: list[str] = []
        self._unique = _Uniqueness()
        self._types = _FieldTypes()
        self._closed = False
        if append and (self.root / METADATA_FILE).is_file():
            for record in read_imagefolder(self.root, check_images=False):
                self._accept(record)

    @property
    def metadata_path(self) -> Path:
        """Where ``metadata.jsonl`` goes."""
        return self.root / METADATA_FILE

    @property
    def records(self) -> list[Record]:
        """The records added so far (a copy)."""
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, file_name: object) -> bool:
        return file_name in self._unique.file_names

    def _check(self, record: Record) -> tuple[str, dict[str, tuple[str, str]]]:
        return _line_for_writing(record, self._unique, self._types, len(self._records), self.root)

    def _accept(self, record: Record, checked: tuple[str, dict[str, tuple[str, str]]] | None = None) -> None:
        line, pending = self._check(record) if checked is None else checked
        self._unique.add(record, f"record {len(self._records)} ({record.file_name})")
        self._types.add(pending)
        self._records.append(record)
        self._lines.append(line)

    def add(self, image: ImageInput | None, record: Record) -> Path:
        """Save ``image`` at ``root / record.file_name`` atomically and queue ``record`` for the metadata.

        ``image`` is a PIL image (encoded by the file name's suffix; use ``.png``), encoded bytes, a path
        to copy, or ``None`` when the file is already in place (it is then checked with Pillow).
        Returns the image's path.
        """
        if self._closed:
            raise RuntimeError(f"ImageFolderWriter({self.root}) is closed; open a new one with append=True")
        checked = self._check(record)
        try:
            path = resolve_inside(self.root, record.file_name)
            if image is None:
                check_image_file(path)
            else:
                data = _encode_image(image, record.file_name)
                path.parent.mkdir(parents=True, exist_ok=True)
                # No fsync per image: a rename already survives a killed process, and an fsync per file
                # would dominate generation time; flush() fsyncs the metadata that points at them.
                atomic_write_bytes(path, data, fsync=False)
        except DatasetFormatError as err:
            raise err.located(f"{self.root} record {len(self._records)} ({record.file_name})") from None
        self._accept(record, checked)
        return path

    def flush(self) -> Path:
        """Write ``metadata.jsonl`` for the records so far (atomically); returns its path."""
        return atomic_write_text(self.metadata_path, "".join(line + "\n" for line in self._lines))

    def close(self) -> Path:
        """Write ``metadata.jsonl`` and refuse further ``add``; returns its path. Safe to call twice."""
        path = self.flush() if not self._closed else self.metadata_path
        self._closed = True
        logger.debug("wrote %d records to %s", len(self._records), path)
        return path

    def __enter__(self) -> ImageFolderWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_imagefolder(
    root: str | os.PathLike,
    records: Iterable[Record],
    images: Sequence[ImageInput] | None = None,
) -> Path:
    """Write a whole dataset folder: ``images`` (one per record, in order) and ``metadata.jsonl``.

    With ``images=None`` the images must already be at ``root / record.file_name`` (they are checked); only
    the metadata is written. Every record is validated before the metadata is replaced, so a bad record
    leaves an existing ``metadata.jsonl`` untouched. Returns the path of ``metadata.jsonl``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> meta = write_imagefolder(root, [Record("0.png", ["a black square"], label=0)], [Image.new("L", (4, 4))])
        >>> read_imagefolder(root)[0].label
        0
    """
    records = list(records)
    if images is not None:
        images = list(images)
        if len(images) != len(records):
            raise ValueError(f"got {len(records)} records but {len(images)} images; give one image per record")
    # Validate every record before the first image is written, so a bad record late in the list cannot
    # leave new images next to the old metadata.
    unique, types = _Uniqueness(), _FieldTypes()
    for i, record in enumerate(records):
        _, pending = _line_for_writing(record, unique, types, i, Path(root))
        unique.add(record, f"record {i} ({record.file_name})")
        types.add(pending)
    writer = ImageFolderWriter(root)
    for i, record in enumerate(records):
        writer.add(None if images is None else images[i], record)
    return writer.close()
