"""Training: the package's contrastive retriever (LiT on the built-in world), its evaluation, and helpers.

Names load on first use (``import vlm.train`` imports no torch):

- :class:`LiTTrainConfig`, :func:`train_lit`: contrastive training of a :class:`vlm.models.lit.LiTRetriever`;
- :func:`evaluate_retriever`, :func:`score_retrieval`: text -> image R@1 among random distractors (RD100)
  and within TrueMatch bags, for any retriever;
- :func:`fit_ridge_retriever`: the closed-form baseline;
- :func:`ensure_default_retriever`: the package's offline retriever, trained once and cached;
- :func:`contrastive_main`: ``python -m vlm train-retriever``.

Example:
    >>> import vlm.train
    >>> vlm.train.LiTTrainConfig(steps=5).steps
    5
"""

from __future__ import annotations

import importlib

_CONTRASTIVE = ("LiTTrainConfig", "contrastive_loss", "default_train_config", "ensure_default_retriever",
                "evaluate_retriever", "fit_ridge_retriever", "make_worlds", "score_retrieval", "train_lit")

__all__ = [*_CONTRASTIVE, "contrastive_main"]


def __getattr__(name: str):
    # Lazy: the training modules import torch (about a second), which most users of vlm never need.
    if name in _CONTRASTIVE:
        return getattr(importlib.import_module("vlm.train.contrastive"), name)
    if name == "contrastive_main":
        return importlib.import_module("vlm.train.contrastive").main
    raise AttributeError(f"module 'vlm.train' has no attribute {name!r}")
