"""finecap's core: models, pretrained components, data (the built-in world, dataset I/O) and training."""

from vlm import _torchvision_compat

# Before anything imports torchvision (timm, open_clip, transformers image classes do).
_torchvision_compat.install()

__version__ = "0.1.0"
