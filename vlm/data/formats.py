"""Readers for other people's layouts: Karpathy JSON (Flickr30K/COCO), CUB-200-2011, class-per-folder trees.

Each returns a ``CaptionDataset`` whose records point at the original image files (nothing is copied), with
the same error behaviour as ``read_imagefolder``: a ``DatasetFormatError`` that names the file and the line,
entry or field, or, with ``on_error="skip"``, the bad records dropped and counted. Classification sources
get captions from a template (``"a photo of a {name}"``) so every dataset is a caption dataset and can be
written with ``write_imagefolder``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from vlm.data.io import _ErrorPolicy, check_image_file, read_json
from vlm.data.records import CaptionDataset, DatasetFormatError, Record, resolve_inside

logger = logging.getLogger(__name__)

#: Default caption for classification sources; ``{name}`` is the class name, ``{article}`` "a" or "an".
DEFAULT_CAPTION_TEMPLATE = "a photo of {article} {name}"

#: Suffixes the tree reader takes as images (Pillow reads all of them), compared case-insensitively.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

# Folder names that mark a root/<split>/<class>/ tree in layout="auto".
_SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev", "test", "testing"})


def class_caption(name: str, template: str = DEFAULT_CAPTION_TEMPLATE) -> str:
    """Fill a caption template with a class name and the matching article.

    Example:
        >>> class_caption("Black footed Albatross"), class_caption("ankle boot")
        ('a photo of a Black footed Albatross', 'a photo of an ankle boot')
        >>> class_caption("sparrow", "a photo of a {name}, a type of bird.")
        'a photo of a sparrow, a type of bird.'
    """
    article = "an" if name[:1].lower() in ("a", "e", "i", "o", "u") else "a"
    try:
        return template.format(name=name, article=article)
    except (KeyError, IndexError) as e:
        raise ValueError(
            f"caption template {template!r} uses an unknown placeholder {e}; use only {{name}} and {{article}}"
        ) from None


def _check_image(policy: _ErrorPolicy, root: Path, file_name: str, source: Any, where: int | None,
                 check_images: bool) -> bool:
    """Path-safety and (optionally) image checks for one record; False when the record must be dropped."""
    try:
        path = resolve_inside(root, file_name)
        if check_images:
            check_image_file(path)
    except DatasetFormatError as err:
        policy(err.located(source, where))
        return False
    return True


def _filter_split(ds: CaptionDataset, split: str | None, source: Any) -> CaptionDataset:
    if split is None:
        return ds
    out = ds.filter_split(split)
    if not out.records:
        raise ValueError(f"{source}: no record has split {split!r}; splits present: {', '.join(ds.splits) or 'none'}")
    return out


# ----------------------------------------------------------------------------------------- Karpathy JSON


def read_karpathy_json(
    path: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    split: str | None = None,
    restval_as_train: bool = False,
    on_error: str = "raise",
    check_images: bool = True,
) -> CaptionDataset:
    """Read Karpathy's split file (``dataset_flickr30k.json``, ``dataset_coco.json``, ``dataset_flickr8k.json``).

    Each entry of ``images`` becomes a record: ``file_name`` is ``filepath/filename`` (COCO) or
    ``filename`` (Flickr) relative to ``image_dir``, ``captions`` the sentences' ``raw`` text (stripped),
    ``id`` the ``cocoid`` if present else the ``imgid``, ``split`` the entry's split, and ``extra`` keeps
    ``imgid``/``sentids``/``cocoid``.

    Args:
        path: the JSON file.
        image_dir: folder the image paths are relative to (e.g. ``flickr30k-images/`` or COCO's root that
            holds ``train2014/`` and ``val2014/``); it becomes the dataset's root.
        split: keep only this split (after the restval mapping).
        restval_as_train: COCO's 30k ``restval`` images are usually trained on; ``True`` labels them
            ``train``.
        on_error, check_images: as for ``read_imagefolder``; errors name the entry (``images[12]``) and field.

    Example:
        >>> import json, tempfile
        >>> from PIL import Image
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4)).save(d / "1.jpg")
        >>> entry = {"filename": "1.jpg", "imgid": 0, "split": "restval", "sentids": [0],
        ...          "sentences": [{"raw": "A dog runs .", "tokens": ["a", "dog", "runs"]}]}
        >>> _ = (d / "k.json").write_text(json.dumps({"images": [entry], "dataset": "flickr30k"}))
        >>> r = read_karpathy_json(d / "k.json", d, restval_as_train=True)[0]
        >>> r.file_name, r.captions, r.id, r.split
        ('1.jpg', ['A dog runs .'], '0', 'train')
    """
    path, image_dir = Path(path), Path(image_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"Karpathy split file {path} not found; it is dataset_flickr30k.json / dataset_coco.json from "
            "Karpathy's caption_datasets.zip"
        )
    data = read_json(path, "Karpathy split JSON", error=DatasetFormatError)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(
            "expected an object with an 'images' list (Karpathy's format); is this the right file?",
            file=path, field="images",
        )
    policy = _ErrorPolicy(on_error)
    records: list[Record] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data["images"]):
        try:
            record = _karpathy_record(entry, i, restval_as_train)
            if record.file_name in seen:
                raise DatasetFormatError(
                    f"{record.file_name!r} is already used by images[{seen[record.file_name]}]",
                    field=f"images[{i}].filename",
                )
        except DatasetFormatError as err:
            policy(err.located(path))
            continue
        keep = split is None or record.split == split
        if not _check_image(policy, image_dir, record.file_name, path, None, check_images and keep):
            continue
        seen[record.file_name] = i
        records.append(record)
    policy.report(path)
    return _filter_split(CaptionDataset(image_dir, records, skipped=policy.messages), split, path)


def _karpathy_record(entry: Any, i: int, restval_as_train: bool) -> Record:
    def fail(field: str, reason: str) -> DatasetFormatError:
        return DatasetFormatError(reason, field=f"images[{i}].{field}" if field else f"images[{i}]")

    if not isinstance(entry, dict):
        raise fail("", f"expected an object, got {type(entry).__name__}")
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise fail("filename", f"must be a non-empty string, got {filename!r}")
    filepath = entry.get("filepath")
    if filepath is not None and (not isinstance(filepath, str) or not filepath):
        raise fail("filepath", f"must be a non-empty string, got {filepath!r}")
    split = entry.get("split")
    if not isinstance(split, str) or not split:
        raise fail("split", f"must be a string such as 'train', 'val', 'test', 'restval'; got {split!r}")
    if restval_as_train and split == "restval":
        split = "train"
    sentences = entry.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise fail("sentences", f"must be a non-empty list of {{'raw': ...}} objects, got {sentences!r:.60}")
    captions = []
    for k, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise fail(f"sentences[{k}].raw", f"must be a non-empty string, got {raw!r}")
        captions.append(raw.strip())
    extra: dict[str, Any] = {}
    for key in ("imgid", "cocoid"):
        value = entry.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise fail(key, f"must be an integer, got {value!r}")
            extra[key] = value
    sentids = entry.get("sentids")
    if sentids is not None:
        if not isinstance(sentids, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sentids):
            raise fail("sentids", f"must be a list of integers, got {sentids!r:.60}")
        extra["sentids"] = sentids
    record_id = extra.get("cocoid", extra.get("imgid"))
    file_name = f"{filepath}/{filename}" if filepath else filename
    try:
        return Record(file_name, captions, id=None if record_id is None else str(record_id), split=split,
                      extra=extra)
    except DatasetFormatError as err:
        raise fail("filename" if err.field == "file_name" else (err.field or ""), err.reason) from None


# ------------------------------------------------------------------------------------------ CUB-200-2011


def cub_class_name(folder_name: str) -> str:
    """Readable CUB class name: ``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"``.

    Example:
        >>> cub_class_name("001.Black_footed_Albatross")
        'Black footed Albatross'
    """
    return re.sub(r"^\d+\.", "", folder_name).replace("_", " ").strip()


def _read_table(path: Path, n_fields: int, names: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a whitespace-separated CUB text file as ``(line number, fields)``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; a CUB-200-2011 root holds images.txt, image_class_labels.txt, "
            "train_test_split.txt, classes.txt and images/ (from CUB_200_2011.tgz)"
        )
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=n_fields - 1)
        if len(fields) != n_fields:
            raise DatasetFormatError(f"expected '{names}', got {line!r}", file=path, line=number)
        rows.append((number, fields))
    return rows


def _int_field(value: str, path: Path, number: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(f"{what} must be an integer, got {value!r}", file=path, line=number) from None


def _id_table(path: Path, names: str, value_kind: str) -> dict[int, tuple[int, str]]:
    """``{id: (line number, value)}`` of a two-column CUB file, refusing duplicate ids."""
    out: dict[int, tuple[int, str]] = {}
    for number, (key, value) in _read_table(path, 2, names):
        key_int = _int_field(key, path, number, names.split()[0].strip("<>"))
        if key_int in out:
            raise DatasetFormatError(
                f"{value_kind} id {key_int} already appears on line {out[key_int][0]}", file=path, line=number
            )
        out[key_int] = (number, value)
    return out


def read_cub(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    captions_dir: str | os.PathLike | None = None,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
    on_error: str = "raise",
    check_images: bool = True,
) -> CaptionDataset:
    """Read CUB-200-2011 from its extracted folder (``CUB_200_2011/``).

    Records: ``file_name`` ``images/<path from images.txt>``, ``id`` the image id, ``label`` the 0-based
    class index (classes ordered by their id in ``classes.txt``), ``split`` ``train``/``test`` from
    ``train_test_split.txt``, ``extra["class_name"]`` the readable name. ``class_names`` holds the readable
    names (``"Black footed Albatross"``).

    Args:
        root: the folder holding ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
            ``classes.txt`` and ``images/``.
        split: ``"train"`` or ``"test"`` to keep one split.
        captions_dir: Reed et al.'s fine-grained captions (``text_c10/``, one ``.txt`` per image with ten
            lines, same relative paths as ``images/``); without it captions come from ``caption_template``.
        caption_template: used when ``captions_dir`` is ``None``; see ``class_caption``.
        on_error, check_images: as for ``read_imagefolder``. Malformed lines in the text files always raise
            (they mean a broken download); per-image problems follow ``on_error``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "images/001.Black_footed_Albatross").mkdir(parents=True)
        >>> Image.new("RGB", (4, 4)).save(root / "images/001.Black_footed_Albatross/a.jpg")
        >>> for name, text in [("images.txt", "1 001.Black_footed_Albatross/a.jpg"), ("classes.txt",
        ...         "1 001.Black_footed_Albatross"), ("image_class_labels.txt", "1 1"), ("train_test_split.txt", "1 0")]:
        ...     _ = (root / name).write_text(text + "\\n")
        >>> ds = read_cub(root)
        >>> ds[0].label, ds[0].split, ds[0].captions, ds.class_names
        (0, 'test', ['a photo of a Black footed Albatross'], ['Black footed Albatross'])
    """
    root = Path(root)
    images_txt = root / "images.txt"
    labels_txt = root / "image_class_labels.txt"
    split_txt = root / "train_test_split.txt"
    classes_txt = root / "classes.txt"
    images = _id_table(images_txt, "<image_id> <path>", "image")
    labels = _id_table(labels_txt, "<image_id> <class_id>", "image")
    splits = _id_table(split_txt, "<image_id> <is_train>", "image")
    classes = _id_table(classes_txt, "<class_id> <class_name>", "class")
    class_ids = sorted(classes)
    index_of_class = {class_id: k for k, class_id in enumerate(class_ids)}
    class_names = [cub_class_name(classes[c][1]) for c in class_ids]

    policy = _ErrorPolicy(on_error)
    records: list[Record] = []
    for image_id, (number, rel_path) in sorted(images.items(), key=lambda kv: kv[1][0]):
        try:
            if image_id not in labels:
                raise DatasetFormatError(
                    f"has no line for image id {image_id} (images.txt line {number})", file=labels_txt
                )
            if image_id not in splits:
                raise DatasetFormatError(
                    f"has no line for image id {image_id} (images.txt line {number})", file=split_txt
                )
            label_line, class_text = labels[image_id]
            class_id = _int_field(class_text, labels_txt, label_line, "class_id")
            if class_id not in index_of_class:
                raise DatasetFormatError(
                    f"class id {class_id} is not in classes.txt", file=labels_txt, line=label_line
                )
            split_line, is_train = splits[image_id]
            if is_train not in ("0", "1"):
                raise DatasetFormatError(
                    f"is_train must be 0 or 1, got {is_train!r}", file=split_txt, line=split_line
                )
            label = index_of_class[class_id]
            name = class_names[label]
            if captions_dir is not None:
                captions = _cub_captions(Path(captions_dir), rel_path)
            else:
                captions = [class_caption(name, caption_template)]
            try:
                record = Record(f"images/{rel_path}", captions, id=str(image_id),
                                split="train" if is_train == "1" else "test", label=label,
                                extra={"class_name": name})
            except DatasetFormatError as err:
                raise err.located(images_txt, number) from None
        except DatasetFormatError as err:
            if err.line is None and err.file is None:
                err = err.located(images_txt, number)
            policy(err)
            continue
        keep = split is None or record.split == split
        if not _check_image(policy, root, record.file_name, images_txt, number, check_images and keep):
            continue
        records.append(record)
    extra_ids = sorted(set(labels) - set(images))
    if extra_ids:
        logger.warning("%s: %d image id(s) not in images.txt (first: %d); ignored",
                       labels_txt, len(extra_ids), extra_ids[0])
    policy.report(root)
    ds = CaptionDataset(root, records, class_names=class_names, skipped=policy.messages)
    return _filter_split(ds, split, root)


def _cub_captions(captions_dir: Path, rel_path: str) -> list[str]:
    text_path = captions_dir / Path(rel_path).with_suffix(".txt")
    if not text_path.is_file():
        raise DatasetFormatError(
            f"caption file {text_path} not found; captions_dir must mirror images/ (Reed et al.'s text_c10/)",
            field="captions",
        )
    captions = [line.strip() for line in text_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise DatasetFormatError(f"caption file {text_path} is empty", field="captions")
    return captions


# ------------------------------------------------------------------------------------ class-per-folder tree


def _image_files(folder: Path) -> list[Path]:
    # followlinks: a class folder that is a symlink to data elsewhere is a normal way to assemble a tree;
    # here the user laid out the files, unlike a metadata file_name that could point anywhere.
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_class_folders(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    layout: str = "auto",
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
    on_error: str = "raise",
    check_images: bool = True,
) -> CaptionDataset:
    """Read a tree with one folder per class: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``.

    Labels index the sorted class folder names (the union over splits, so a label means the same class in
    every split); ``class_names`` holds those names. Images are found recursively inside a class folder,
    sorted by path; hidden files and non-image suffixes are ignored. Captions come from
    ``caption_template`` with the folder name, underscores read as spaces.

    Args:
        root: top folder.
        split: keep one split (``layout="split/class"`` only).
        layout: ``"class"``, ``"split/class"``, or ``"auto"``: ``"split/class"`` when every top folder is
            named like a split (``train``, ``val``, ``valid``, ``validation``, ``dev``, ``test`` ...).
        caption_template, on_error, check_images: as for ``read_cub`` / ``read_imagefolder``.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for s, c in [("train", "tabby_cat"), ("train", "dog"), ("test", "dog")]:
        ...     (root / s / c).mkdir(parents=True)
        ...     Image.new("RGB", (4, 4)).save(root / s / c / "0.png")
        >>> ds = read_class_folders(root)
        >>> ds.class_names, [(r.split, r.label) for r in ds], ds[2].captions
        (['dog', 'tabby_cat'], [('test', 0), ('train', 0), ('train', 1)], ['a photo of a tabby cat'])
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected root/<class>/<image> or root/<split>/<class>/<image>")
    if layout not in ("auto", "class", "split/class"):
        raise ValueError(f"layout must be 'auto', 'class' or 'split/class', got {layout!r}")
    top = _subfolders(root)
    if not top:
        raise DatasetFormatError("has no class folders; expected root/<class>/<image>", file=root)
    if layout == "auto":
        layout = "split/class" if all(p.name.lower() in _SPLIT_FOLDER_NAMES for p in top) else "class"
    if layout == "class" and split is not None:
        raise ValueError(f"{root} has no split folders (layout 'class'); leave split=None")
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        logger.warning("%s: %d image(s) directly in the root belong to no class and are ignored (e.g. %s)",
                       root, len(loose), loose[0])

    # (split or None, class folder) pairs
    groups = [(None, p) for p in top] if layout == "class" else [(s.name, c) for s in top for c in _subfolders(s)]
    files = {(s, c): _image_files(c) for s, c in groups}
    counts: dict[str, int] = {}
    for (_, c), found in files.items():
        counts[c.name] = counts.get(c.name, 0) + len(found)
    empty = sorted(name for name, n in counts.items() if n == 0)
    if empty:
        raise DatasetFormatError(
            f"class folder(s) {', '.join(map(repr, empty))} hold no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add images or remove the folder, since an empty class would shift every later label",
            file=root,
        )
    class_names = sorted(counts)
    label_of = {name: k for k, name in enumerate(class_names)}

    policy = _ErrorPolicy(on_error)
    records = []
    for (split_name, class_dir), found in sorted(files.items(), key=lambda kv: (kv[0][0] or "", kv[0][1].name)):
        name = class_dir.name
        caption = class_caption(name.replace("_", " ").strip(), caption_template)
        for path in found:
            file_name = path.relative_to(root).as_posix()
            try:
                record = Record(file_name, [caption], split=split_name, label=label_of[name],
                                extra={"class_name": name})
                if check_images and (split is None or split_name == split):
                    check_image_file(path)
            except DatasetFormatError as err:
                policy(err.located(path))
                continue
            records.append(record)
    policy.report(root)
    ds = CaptionDataset(root, records, class_names=class_names, skipped=policy.messages)
    return _filter_split(ds, split, root)
