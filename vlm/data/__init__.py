"""Datasets: the package's format (images + ``metadata.jsonl``) and readers for other layouts.

- ``Record`` / ``CaptionDataset``: the in-memory model every reader returns.
- ``read_imagefolder`` / ``write_imagefolder`` / ``ImageFolderWriter``: the package's format, which is also
  Hugging Face's ``imagefolder`` layout.
- ``read_karpathy_json``, ``read_cub``, ``read_class_folders``: Flickr30K/COCO Karpathy splits,
  CUB-200-2011, class-per-folder trees.
- ``read_fashion_mnist`` / ``export_fashion_mnist``: the offline Debian Fashion-MNIST.
- ``DatasetFormatError``: what bad input raises, naming file, line and field.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from vlm.data import ImageFolderWriter, Record, read_imagefolder
    >>> root = tempfile.mkdtemp()
    >>> with ImageFolderWriter(root) as w:
    ...     _ = w.add(Image.new("RGB", (8, 8), "green"), Record("images/0.png", ["a green square"], label=1))
    >>> read_imagefolder(root)[0].label
    1
"""

from vlm.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FashionMNIST,
    export_fashion_mnist,
    read_fashion_mnist,
    read_idx,
)
from vlm.data.formats import (
    DEFAULT_CAPTION_TEMPLATE,
    class_caption,
    cub_class_name,
    read_class_folders,
    read_cub,
    read_karpathy_json,
)
from vlm.data.io import (
    METADATA_FILE,
    ImageFolderWriter,
    atomic_write_bytes,
    atomic_write_text,
    check_image_file,
    file_identity,
    guard_run_settings,
    hf_split_keyword,
    read_imagefolder,
    read_json,
    record_from_json,
    record_to_json,
    write_imagefolder,
)
from vlm.data.records import (CaptionDataset, DatasetFormatError, Record, check_file_name, complete_bags,
                               resolve_inside)

__all__ = [
    "CaptionDataset",
    "DEFAULT_CAPTION_TEMPLATE",
    "DatasetFormatError",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FashionMNIST",
    "ImageFolderWriter",
    "METADATA_FILE",
    "Record",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_file_name",
    "complete_bags",
    "check_image_file",
    "file_identity",
    "guard_run_settings",
    "class_caption",
    "cub_class_name",
    "export_fashion_mnist",
    "hf_split_keyword",
    "read_class_folders",
    "read_cub",
    "read_fashion_mnist",
    "read_idx",
    "read_imagefolder",
    "read_json",
    "read_karpathy_json",
    "record_from_json",
    "record_to_json",
    "resolve_inside",
    "write_imagefolder",
]
