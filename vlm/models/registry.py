"""Models found by name: small JSON files in ``vlm/model_configs/``, like open_clip's model configs.

A file holds ``kind`` and ``config`` (the model's fields), or names another file as its ``base`` and holds only
the fields it changes (``{"base": "prefix-lit-small", "config": {"image_encoder": "finecap:lit-v4"}}``).

``list_models()`` names them; ``create_captioner(name)`` builds one (random trainable parts, pretrained
frozen parts; ``hf-tiny-*``: a tiny random Hugging Face model of one family, for tests); a folder saved with
``save_pretrained`` or a Hugging Face image-to-text model (``hf:<id or folder>``) load through the same call.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from vlm.data.io import read_json

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"


def _merged(base: dict, over: dict) -> dict:
    """``base`` with ``over``'s fields, nested objects merged field by field."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@lru_cache(maxsize=None)
def _configs() -> dict[str, dict]:
    """Every shipped config by name, ``base`` resolved: a config that names another as its ``base`` holds only the
    fields it changes (its own ``_comment`` kept), as ``base:`` does in the training YAMLs."""
    raw = {path.stem: (path, read_json(path, "model config")) for path in sorted(CONFIG_DIR.glob("*.json"))}
    out: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        if name not in out:
            path, d = raw[name]
            if not isinstance(d, dict):
                raise ValueError(f"{path}: a model config is a JSON object, got {type(d).__name__}")
            base = d.get("base")
            if base is not None:
                if base not in raw:
                    raise ValueError(f"{path}: field 'base': no shipped model config {base!r}")
                if base in chain:
                    raise ValueError(f"{path}: field 'base': configs based on each other ({' -> '.join(chain)})")
                d = _merged(resolve(base, (*chain, base)), {k: v for k, v in d.items() if k != "base"})
            if "kind" not in d or "config" not in d:
                raise ValueError(f"{path}: a model config needs 'kind' and 'config' fields (or a 'base' with them)")
            out[name] = d
        return out[name]

    for name in raw:
        resolve(name, (name,))
    return dict(sorted(out.items()))


def list_models(kind: str | None = None) -> list[str]:
    """Names of the shipped model configs (optionally of one ``kind``: ``"prefix"``, ``"hf-tiny"`` ...).

    Example:
        >>> "prefix-small" in list_models()
        True
        >>> list_models(kind="hf-tiny")[:2]
        ['hf-tiny-blip', 'hf-tiny-git']
    """
    return [n for n, d in _configs().items() if kind is None or d["kind"] == kind]


def model_config(name: str) -> dict:
    """The shipped config of a model name (a copy)."""
    if name not in _configs():
        raise ValueError(f"unknown model {name!r}; shipped models: {list_models()}")
    return json.loads(json.dumps(_configs()[name]))


def create_captioner(name: str, *, tokenizer: Any = None, train_texts: list[str] | None = None,
                     vocab_size: int = 1000, seed: int = 0, device: str = "cpu", **overrides: Any):
    """A captioner from a shipped name, a saved folder, or ``hf:<hub id or folder>``.

    Args:
        name: ``list_models()`` name (new model: ``prefix-*`` or a tiny random Hugging Face model
            ``hf-tiny-*``), a folder saved by ``save_pretrained`` (trained model), or ``hf:<id>`` for a
            transformers image-to-text model.
        tokenizer: for from-scratch LMs, the tokenizer to use; or
        train_texts: captions to train a byte-level BPE of ``vocab_size`` on (from-scratch LMs).
        seed: initialisation seed.
        overrides: config fields to change (e.g. ``prefix_length=4``).

    Example:
        >>> from vlm.models import create_captioner
        >>> m = create_captioner("prefix-tiny", train_texts=["a red circle.", "two squares."] * 10, vocab_size=280)
        >>> type(m).__name__
        'PrefixCaptioner'
        >>> type(create_captioner("hf-tiny-git").model).__name__
        'GitForCausalLM'
    """
    from vlm.models.hf import HFCaptioner
    from vlm.models.prefix import PrefixCaptioner, PrefixCaptionerConfig, build_prefix_captioner

    if name.startswith("hf:"):
        return HFCaptioner.from_pretrained(name[3:], device=device)
    path = Path(name)
    if path.is_dir():
        if (path / "config.json").is_file() and "image_encoder" in json.loads((path / "config.json").read_text()):
            return PrefixCaptioner.from_pretrained(path, device=device)
        return HFCaptioner.from_pretrained(path, device=device)
    d = model_config(name)
    if d["kind"] == "hf-tiny":
        from vlm.models.hf_tiny import build_tiny_hf_captioner

        cfg = {**d["config"], **overrides}
        unknown = set(cfg) - {"family"}
        if unknown:
            raise ValueError(f"{name}: unknown hf-tiny config keys {sorted(unknown)} (in "
                             f"{CONFIG_DIR / (name + '.json')} or the overrides); only 'family' is allowed")
        return build_tiny_hf_captioner(cfg["family"], seed=seed, device=device)
    if d["kind"] != "prefix":
        raise ValueError(f"model {name!r} is a {d['kind']}, not a captioner")
    cfg = PrefixCaptionerConfig.from_dict({**d["config"], **overrides})
    if cfg.language_model == "scratch" and tokenizer is None:
        if not train_texts:
            raise ValueError(f"{name} trains its LM from scratch: pass tokenizer=... or train_texts=[captions]")
        from vlm.models.tokenizer import train_caption_tokenizer

        tokenizer = train_caption_tokenizer(train_texts, vocab_size=vocab_size)
    return build_prefix_captioner(cfg, tokenizer=tokenizer, seed=seed, device=device)
