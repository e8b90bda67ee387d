"""Reading references and predictions, in the formats caption papers and tools use, with clear errors.

References (:func:`load_references`):
  * ``{"<id>": ["ref 1", "ref 2", ...], ...}``
  * COCO annotations: ``{"annotations": [{"image_id": 1, "caption": "..."}, ...], ...}``
    (``images``/``info``/... are ignored).

Predictions (:func:`load_predictions`):
  * ``{"<id>": "caption", ...}`` (a one-caption list ``["caption"]`` is accepted too)
  * COCO results: ``[{"image_id": 1, "caption": "..."}, ...]``.

Ids are compared as strings (JSON object keys are strings, COCO ``image_id`` values are numbers). Errors
name the file and the offending id or field. :func:`check_pairing` then checks that every reference
image has exactly one prediction and vice versa.

Example:
    >>> import json, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "res.json")
    >>> json.dump([{"image_id": 7, "caption": "a dog"}], open(p, "w"))
    >>> load_predictions(p)
    {'7': 'a dog'}
"""

from __future__ import annotations

from pathlib import Path

from vlm.data.io import read_json

__all__ = ["CaptionInputError", "check_pairing", "load_predictions", "load_references", "parse_predictions",
           "parse_references"]


class CaptionInputError(ValueError):
    """References or predictions that cannot be scored; the message names the file and the id/field."""


def _read_json(path: str | Path, what: str):
    p = Path(path)
    if not p.is_file():
        raise CaptionInputError(f"{what} file {p} does not exist")
    return read_json(p, f"{what} file", error=CaptionInputError)


def _caption(value, where: str) -> str:
    if not isinstance(value, str):
        raise CaptionInputError(f"{where}: caption must be a string, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise CaptionInputError(f"{where}: empty caption")
    return value


def parse_references(data, source: str = "references") -> dict[str, list[str]]:
    """``{id: [captions]}`` from parsed JSON (either reference format); ``source`` names it in errors."""
    out: dict[str, list[str]] = {}
    if isinstance(data, dict) and "annotations" in data:
        anns = data["annotations"]
        if not isinstance(anns, list):
            raise CaptionInputError(f"{source}: 'annotations' must be a list, got {type(anns).__name__}")
        for i, ann in enumerate(anns):
            where = f"{source}: annotations[{i}]"
            if not isinstance(ann, dict):
                raise CaptionInputError(f"{where} must be an object, got {type(ann).__name__}")
            for field in ("image_id", "caption"):
                if field not in ann:
                    raise CaptionInputError(f"{where} has no '{field}' field")
            if not isinstance(ann["image_id"], (int, str)) or isinstance(ann["image_id"], bool):
                raise CaptionInputError(f"{where}: image_id must be a number or string, got {ann['image_id']!r}")
            out.setdefault(str(ann["image_id"]), []).append(
                _caption(ann["caption"], f"{where} (image_id {ann['image_id']!r})"))
    elif isinstance(data, dict):
        for k, refs in data.items():
            where = f"{source}: id {k!r}"
            if isinstance(refs, str):
                raise CaptionInputError(f"{where}: references must be a list of captions, got a single string")
            if not isinstance(refs, list):
                raise CaptionInputError(f"{where}: references must be a list of captions, got {type(refs).__name__}")
            if not refs:
                raise CaptionInputError(f"{where}: no reference captions")
            out[str(k)] = [_caption(r, f"{where}, reference {j}") for j, r in enumerate(refs)]
    else:
        raise CaptionInputError(f"{source}: expected {{id: [captions]}} or COCO annotations "
                                f"{{'annotations': [...]}}, got a JSON {type(data).__name__}")
    if not out:
        raise CaptionInputError(f"{source}: no references")
    return out


def parse_predictions(data, source: str = "predictions") -> dict[str, str]:
    """``{id: caption}`` from parsed JSON (either prediction format); ``source`` names it in errors."""
    out: dict[str, str] = {}
    if isinstance(data, list):
        for i, item in enumerate(data):
            where = f"{source}: item {i}"
            if not isinstance(item, dict):
                raise CaptionInputError(f"{where} must be an object with image_id and caption, got "
                                        f"{type(item).__name__}")
            for field in ("image_id", "caption"):
                if field not in item:
                    raise CaptionInputError(f"{where} has no '{field}' field")
            if not isinstance(item["image_id"], (int, str)) or isinstance(item["image_id"], bool):
                raise CaptionInputError(f"{where}: image_id must be a number or string, got {item['image_id']!r}")
            key = str(item["image_id"])
            if key in out:
                raise CaptionInputError(f"{where}: a second prediction for image_id {item['image_id']!r}")
            out[key] = _caption(item["caption"], f"{where} (image_id {item['image_id']!r})")
    elif isinstance(data, dict):
        for k, cap in data.items():
            where = f"{source}: id {k!r}"
            if isinstance(cap, list):
                if len(cap) != 1:
                    raise CaptionInputError(f"{where}: expected one caption, got a list of {len(cap)}")
                cap = cap[0]
            out[str(k)] = _caption(cap, where)
    else:
        raise CaptionInputError(f"{source}: expected {{id: caption}} or COCO results [{{image_id, caption}}], "
                                f"got a JSON {type(data).__name__}")
    if not out:
        raise CaptionInputError(f"{source}: no predictions")
    return out


def load_references(path: str | Path) -> dict[str, list[str]]:
    """References from a JSON file: ``{id: [captions]}`` or COCO annotations."""
    return parse_references(_read_json(path, "references"), str(path))


def load_predictions(path: str | Path) -> dict[str, str]:
    """Predictions from a JSON file: ``{id: caption}`` or COCO results."""
    return parse_predictions(_read_json(path, "predictions"), str(path))


def check_pairing(references: dict, predictions: dict, refs_source: str = "references",
                  preds_source: str = "predictions") -> None:
    """Every reference id has a prediction and every prediction id has references, or an error naming them.

    Example:
        >>> check_pairing({"1": ["a"], "2": ["b"]}, {"1": "a"})
        Traceback (most recent call last):
        ...
        benchmarks.captions.io.CaptionInputError: predictions: no prediction for 1 id of references: '2'
    """
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]

    def show(ids: list) -> str:
        return ", ".join(repr(k) for k in ids[:5]) + (f" ... ({len(ids) - 5} more)" if len(ids) > 5 else "")

    if missing:
        raise CaptionInputError(f"{preds_source}: no prediction for {len(missing)} id{'s' * (len(missing) > 1)} "
                                f"of {refs_source}: {show(missing)}")
    if extra:
        raise CaptionInputError(f"{preds_source}: {len(extra)} prediction{'s' * (len(extra) > 1)} for ids "
                                f"without references in {refs_source}: {show(extra)}")
