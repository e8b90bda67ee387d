"""COCO caption metrics equal to pycocoevalcap, without Java for tokenization and >10x faster.

* :func:`compute_caption_metrics` - BLEU-1..4, ROUGE-L, CIDEr-D (+ METEOR, SPICE), per image and per TIDA
  skill subset;
* :func:`tokenize` / :class:`PTBTokenizer` - pycocoevalcap's PTB tokenization (Stanford's Java lexer,
  re-implemented);
* :class:`Bleu`, :class:`Rouge`, :class:`Cider`, :class:`Meteor`, :class:`Spice` - pycocoevalcap's scorer
  interface ``compute_score(gts, res) -> (corpus, per_image)`` on tokenized dicts;
* :func:`clip_score` - CLIP-S / RefCLIP-S with any retriever;
* :func:`load_references`, :func:`load_predictions` - JSON and COCO formats with clear errors;
* :func:`synthetic_corpus`, :func:`caption_speed` - the seeded test corpus and the speed comparison.

CLI: ``python -m benchmarks captions --refs REFS.json --preds PREDS.json [--out DIR] [--meteor] [--spice]
[--per-image] [--skills]`` (:func:`main`).

Example:
    >>> from benchmarks.captions import compute_caption_metrics
    >>> out = compute_caption_metrics({"1": ["A dog runs on the grass."]}, {"1": "A dog running on grass."})
    >>> round(out["Bleu_1"], 4), round(out["ROUGE_L"], 4)
    (0.655, 0.7155)
"""

from vlm.metrics.bleu import Bleu
from vlm.metrics.cider import Cider
from benchmarks.captions.cli import main
from benchmarks.captions.clipscore import clip_score
from benchmarks.captions.evaluate import METRICS, compute_caption_metrics, skill_subsets
from benchmarks.captions.io import CaptionInputError, check_pairing, load_predictions, load_references
from benchmarks.captions.meteor import JavaNotFoundError, Meteor, MeteorError
from vlm.metrics.rouge import Rouge, lcs_length
from benchmarks.captions.speed import caption_speed
from benchmarks.captions.spice import Spice, SpiceUnavailableError, spice_status
from benchmarks.captions.synthetic import synthetic_corpus
from vlm.metrics.tokenizer import PTBTokenizer, ptb_tokens, tokenize, tokenize_caption, tokenize_many

__all__ = ["Bleu", "CaptionInputError", "Cider", "JavaNotFoundError", "METRICS", "Meteor", "MeteorError",
           "PTBTokenizer", "Rouge", "Spice", "SpiceUnavailableError", "caption_speed", "check_pairing",
           "clip_score", "compute_caption_metrics", "lcs_length", "load_predictions", "load_references", "main",
           "ptb_tokens", "skill_subsets", "spice_status", "synthetic_corpus", "tokenize", "tokenize_caption",
           "tokenize_many"]
