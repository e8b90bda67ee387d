"""Retrievers and VLMs named on the command line.

The Python API takes any object with the right methods; the command line needs a name. Until the package
has its own factories (``vlm.create_retriever`` / ``vlm.create_captioner``), two kinds of name work:

- ``open_clip:MODEL[:PRETRAINED]`` (retrievers): an open_clip model, e.g.
  ``open_clip:ViT-B-32:laion2b_s34b_b79k``. The weights download from the Hugging Face Hub, so this needs a
  machine that is online; offline, loading fails at once with an error that says so. Without
  ``PRETRAINED`` the model has random weights (for tests with tiny configs).
- ``py:MODULE:FACTORY`` (retrievers and VLMs): ``FACTORY()`` from the importable module ``MODULE`` returns the
  object, e.g. ``py:mypkg.models:make_vlm``.

Retriever specs other than ``py:`` go to :func:`vlm.retrieval.load_retriever` (one way to load a
retriever in the whole package); VLM specs other than ``py:`` go to :func:`vlm.models.create_captioner`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Sequence

logger = logging.getLogger(__name__)


class ComponentLoadError(RuntimeError):
    """A named retriever or VLM could not be loaded (offline, unknown name, wrong object); says what to do."""


def _from_factory(spec: str, what: str) -> Any:
    target = spec[len("py:"):]
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--{what} {spec!r}: expected py:MODULE:FACTORY, e.g. py:mypkg.models:make_{what}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--{what} {spec!r}: cannot find {attr} in {module_name} ({err})") from None
    return factory()


def load_retriever(spec: str, *, device: str = "cpu") -> Any:
    """A retriever from a :func:`vlm.retrieval.load_retriever` spec (``open_clip:MODEL:TAG`` ...) or
    ``py:MODULE:FACTORY``."""
    if spec.startswith("py:"):
        obj = _from_factory(spec, "retriever")
    else:
        from vlm.retrieval import load_retriever as vlm_load_retriever

        try:
            obj = vlm_load_retriever(spec, device=device)
        except ValueError:
            raise
        except Exception as err:  # offline hub, missing weights: say what happened and what to do
            raise ComponentLoadError(f"could not load the retriever {spec!r}: {type(err).__name__}: {err}") from err
    for method in ("encode_images", "encode_texts"):
        if not callable(getattr(obj, method, None)):
            raise ComponentLoadError(f"--retriever {spec!r} gave a {type(obj).__name__} without {method}()")
    return obj


def load_vlm(spec: str) -> Any:
    """A VLM (an object with ``generate(images, prompts, *, max_new_tokens)``): a trained captioner folder or
    ``hf:<id>`` (through :func:`vlm.models.create_captioner`), or ``py:MODULE:FACTORY``.

    Example:
        >>> load_vlm("/no/such/model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        benchmarks.recognition.loaders.ComponentLoadError: could not load the VLM '/no/such/model': ...
    """
    if spec.startswith("py:"):
        obj = _from_factory(spec, "vlm")
    else:
        from vlm.models import create_captioner

        try:
            obj = create_captioner(spec)
        except Exception as err:
            raise ComponentLoadError(f"could not load the VLM {spec!r}: {type(err).__name__}: {err}") from err
    if not callable(getattr(obj, "generate", None)):
        raise ComponentLoadError(f"--vlm {spec!r} gave a {type(obj).__name__} without generate()")
    return obj
