"""Scoring: caption metrics, TrueMatch, fine-grained recognition, Flickr30K/COCO, hallucination against
scene graphs, speed measurements, and the default job.

Names load lazily (``import benchmarks`` pulls in no torch), from these modules:
:mod:`benchmarks.captions`, :mod:`benchmarks.truematch`, :mod:`benchmarks.recognition`,
:mod:`benchmarks.flickr`, :mod:`benchmarks.hallucination`, :mod:`benchmarks.skills_world`,
:mod:`benchmarks.tida_compare`, :mod:`benchmarks.speed`, :mod:`benchmarks.report`, :mod:`benchmarks.probe`,
:mod:`benchmarks.pipeline`.

Example:
    >>> from benchmarks import compute_caption_metrics
    >>> round(compute_caption_metrics({"1": ["a red circle"]}, {"1": "a red circle"})["Bleu_1"], 6)
    1.0
"""

import importlib

import vlm  # noqa: F401  (installs the torchvision fix before any heavy import)

_EXPORTS = {
    "benchmarks.captions": ["compute_caption_metrics", "load_references", "load_predictions", "clip_score",
                            "synthetic_corpus", "caption_speed", "Meteor", "Spice", "CaptionInputError"],
    "benchmarks.truematch": ["evaluate_truematch", "score_truematch", "score_truematch_reference", "load_bags_json",
                             "load_world_bags", "TrueMatchData", "TrueMatchConfig", "run_truematch"],
    "benchmarks.recognition": ["run_recognition", "RecognitionConfig", "load_recognition_data", "AnswerParser",
                               "classification_metrics", "extract_features"],
    "benchmarks.flickr": ["load_karpathy_split", "caption_dataset"],
    "benchmarks.hallucination": ["fact_scores"],
    "benchmarks.skills_world": ["skill_scores", "skill_verdicts"],
    "benchmarks.tida_compare": ["TIDACompareConfig"],
    "benchmarks.speed": ["world_speed", "generation_speed", "cached_features_speed"],
    "benchmarks.report": ["write_results", "package_versions", "markdown_table"],
    "benchmarks.probe": ["linear_probe", "fit_linear_classifier", "select_weight_decay", "ridge_map"],
    "benchmarks.pipeline": ["run_default"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
