"""finecap's core: pretrained components, the built-in world, dataset I/O, models and training.

Submodules: :mod:`vlm.pretrained` (one loading API for the pretrained components), :mod:`vlm.world`
(the procedural world), :mod:`vlm.data` (dataset formats and validation). ``import vlm`` stays light:
``vlm.pretrained`` (which imports torch) loads on first use of ``vlm.pretrained`` or of one of its names.

Example:
    >>> import vlm
    >>> [c["name"] for c in vlm.list_components()][:2]
    ['efficientnet_lite0', 'all-MiniLM-L6-v2']
"""

from vlm import _torchvision_compat

# Before anything imports torchvision (timm, open_clip, transformers image classes do).
_torchvision_compat.install()

__version__ = "0.1.0"

_PRETRAINED = ("load", "list_components", "check_components", "load_image_encoder", "load_text_encoder",
               "load_language_model", "load_clip_tokenizer", "ImageEncoder", "TextEncoder", "LanguageModel",
               "OpenCLIPImageEncoder", "HubOfflineError")

_MODELS = ("list_models", "create_captioner", "PrefixCaptioner", "PrefixCaptionerConfig", "HFCaptioner")
_RETRIEVAL = ("Retriever", "OpenCLIPRetriever", "load_retriever", "create_retriever", "register_retriever")

__all__ = ["__version__", *_PRETRAINED, *_MODELS, *_RETRIEVAL]


def __getattr__(name: str):
    # Lazy: importing torch costs ~1 s, and most users of vlm.world / vlm.data never need it.
    if name in _PRETRAINED:
        from vlm import pretrained

        return getattr(pretrained, name)
    if name in _MODELS:
        from vlm import models

        return getattr(models, name)
    if name in _RETRIEVAL:
        from vlm import retrieval

        return getattr(retrieval, "load_retriever" if name == "create_retriever" else name)
    if name in ("pretrained", "world", "data", "models", "retrieval", "metrics", "train"):
        import importlib

        return importlib.import_module(f"vlm.{name}")
    raise AttributeError(f"module 'vlm' has no attribute {name!r}")
