"""Fine-grained recognition: zero-shot, linear probe, k-shot and generative classification, with reports.

Protocols (:mod:`~benchmarks.recognition.protocols`) work on any retriever (``encode_images`` /
``encode_texts``), any image encoder (``vlm.pretrained.ImageEncoder``: frozen, cached features) and any VLM
(``generate(images, prompts, *, max_new_tokens)``). Data (:mod:`~benchmarks.recognition.data`): Fashion-MNIST,
the built-in world's fine-grained preset, CUB-200-2011, class-per-folder trees, the package's format.
:func:`run_recognition` runs one protocol end to end and writes the report; :func:`main` is
``python -m benchmarks recognition``.

Example:
    >>> from benchmarks.recognition import AnswerParser, classification_metrics
    >>> AnswerParser(["Coat", "Shirt"])("Looks like a coat to me.").label
    0
    >>> classification_metrics([0, 1, 1], [0, 1, 0], n_classes=2)["mean_per_class_accuracy"]
    0.75
"""

from benchmarks.recognition.answers import AnswerParser, ParsedAnswer, normalize_answer, parse_answer
from benchmarks.recognition.data import (RecognitionData, RecognitionSplit, load_recognition_data,
                                         stratified_split, subsample_per_class)
from benchmarks.recognition.features import default_cache_dir, extract_features, raw_pixel_features
from benchmarks.recognition.loaders import ComponentLoadError, load_retriever, load_vlm
from benchmarks.recognition.metrics import classification_metrics, confusion_matrix, plot_confusion_matrix
from benchmarks.recognition.protocols import (DEFAULT_GENERATIVE_PROMPT, DEFAULT_TEMPLATES, generative_predict,
                                              k_shot_probe, linear_probe_predict, sample_k_shot,
                                              zero_shot_predict, zero_shot_weights)
from benchmarks.recognition.run import RecognitionConfig, main, run_recognition

__all__ = [
    "AnswerParser", "ComponentLoadError", "DEFAULT_GENERATIVE_PROMPT", "DEFAULT_TEMPLATES",
    "ParsedAnswer", "RecognitionConfig", "RecognitionData", "RecognitionSplit", "classification_metrics",
    "confusion_matrix", "default_cache_dir", "extract_features", "generative_predict", "k_shot_probe",
    "linear_probe_predict", "load_recognition_data", "load_retriever", "load_vlm", "main", "normalize_answer",
    "parse_answer", "plot_confusion_matrix", "raw_pixel_features", "run_recognition", "sample_k_shot",
    "stratified_split", "subsample_per_class", "zero_shot_predict", "zero_shot_weights",
]
