"""Captioners and small multimodal LLMs behind one API.

- :func:`list_models` / :func:`create_captioner`: shipped architectures (``vlm/model_configs/*.json``),
  saved folders, and Hugging Face image-to-text models (``hf:<id>``).
- :class:`PrefixCaptioner`: ClipCap-style image encoder -> mapper -> prefix -> causal LM.
- :class:`HFCaptioner`: any ``AutoModelForImageTextToText`` + ``AutoProcessor``.
- :class:`LiTRetriever`: the offline retriever (EfficientNet-Lite0 + MiniLM, projections trained on the world).

Example:
    >>> from vlm.models import list_models, truncate_at_period
    >>> "prefix-tiny" in list_models()
    True
    >>> truncate_at_period("two cats. on a mat")
    'two cats.'
"""

from vlm.models.hf import HFCaptioner, load_captioner, truncate_at_period
from vlm.models.registry import create_captioner, list_models, model_config

__all__ = ["HFCaptioner", "LiTConfig", "LiTRetriever", "load_lit_retriever", "PrefixCaptioner", "PrefixCaptionerConfig", "build_prefix_captioner", "create_captioner",
           "list_models", "load_captioner", "model_config", "train_caption_tokenizer", "truncate_at_period"]


def __getattr__(name):
    # torch-heavy classes load on first use so that `import vlm.models` stays light.
    if name in ("PrefixCaptioner", "PrefixCaptionerConfig", "build_prefix_captioner"):
        from vlm.models import prefix

        return getattr(prefix, name)
    if name in ("LiTConfig", "LiTRetriever", "load_lit_retriever"):
        from vlm.models import lit

        return getattr(lit, name)
    if name == "train_caption_tokenizer":
        from vlm.models.tokenizer import train_caption_tokenizer

        return train_caption_tokenizer
    raise AttributeError(f"module 'vlm.models' has no attribute {name!r}")
