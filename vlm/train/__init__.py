"""Training: the package's contrastive retriever (LiT on the built-in world), its evaluation, and helpers.

Names load on first use (``import vlm.train`` imports no torch):

- :class:`LiTTrainConfig`, :func:`train_lit`: contrastive training of a :class:`vlm.models.lit.LiTRetriever`;
- :func:`evaluate_retriever`, :func:`score_retrieval`: text -> image R@1 among random distractors (RD100)
  and within TrueMatch bags, for any retriever;
- :func:`fit_ridge_retriever`: the closed-form baseline;
- :func:`ensure_default_retriever`: the package's offline retrievers (``lit-world-v1``, ``-v2``, ``-v3``:
  :func:`retriever_recipe`), trained once and cached;
- :func:`contrastive_main`: ``python -m vlm train-retriever``;
- :class:`MLEConfig`, :func:`train_mle`: MLE training of captioners (``python -m vlm train``), with
  :func:`save_checkpoint` / :func:`load_checkpoint` and the frozen-feature cache :func:`cached_features`.

Example:
    >>> import vlm.train
    >>> vlm.train.LiTTrainConfig(steps=5).steps
    5
"""

from __future__ import annotations

import importlib

_CONTRASTIVE = ("LiTTrainConfig", "contrastive_loss", "default_train_config", "ensure_default_retriever",
                "evaluate_retriever", "fit_ridge_retriever", "make_worlds", "retriever_recipe", "score_retrieval",
                "train_lit")

_MLE = ("MLEConfig", "train_mle", "warmup_cosine")
_CHECKPOINT = ("save_checkpoint", "load_checkpoint", "latest_checkpoint")
_FEATURES = ("cached_features", "feature_cache_key")

__all__ = [*_CONTRASTIVE, *_MLE, *_CHECKPOINT, *_FEATURES, "contrastive_main"]


def __getattr__(name: str):
    # Lazy: the training modules import torch (about a second), which most users of vlm never need.
    if name in _CONTRASTIVE:
        return getattr(importlib.import_module("vlm.train.contrastive"), name)
    for module, names in (("vlm.train.mle", _MLE), ("vlm.train.checkpoint", _CHECKPOINT),
                          ("vlm.train.features", _FEATURES)):
        if name in names:
            return getattr(importlib.import_module(module), name)
    if name == "contrastive_main":
        return importlib.import_module("vlm.train.contrastive").main
    raise AttributeError(f"module 'vlm.train' has no attribute {name!r}")
