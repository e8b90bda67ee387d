"""Caption metrics, exact to pycocoevalcap and fast: PTB tokenizer, BLEU-1..4, ROUGE-L, CIDEr-D.

They live in ``vlm`` because training needs them (evaluation during MLE, CIDEr rewards in RL);
:mod:`benchmarks.captions` adds METEOR, SPICE, CLIP-S, file formats, skill breakdowns and the CLI.

Example:
    >>> from vlm.metrics import caption_scores
    >>> s = caption_scores({"1": ["a red circle", "a circle"], "2": ["two dogs", "dogs run"]},
    ...                    {"1": "a red circle", "2": "two dogs"})
    >>> round(s["Bleu_1"], 3), sorted(s)
    (1.0, ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr', 'ROUGE_L'])
"""

from __future__ import annotations

from vlm.metrics.bleu import Bleu
from vlm.metrics.cider import Cider
from vlm.metrics.rouge import Rouge, lcs_length
from vlm.metrics.tokenizer import PTBTokenizer, ptb_tokens, tokenize, tokenize_caption, tokenize_many

__all__ = ["Bleu", "Cider", "PTBTokenizer", "Rouge", "caption_scores", "fast_scores", "lcs_length", "ptb_tokens",
           "tokenize", "tokenize_caption", "tokenize_many"]


def fast_scores(gts: dict, res: dict, metrics=("BLEU", "ROUGE_L", "CIDEr")) -> tuple[dict, dict]:
    """Corpus and per-image BLEU-1..4 / ROUGE-L / CIDEr-D of *tokenized* ``gts`` and ``res``."""
    from vlm.metrics.bleu import bleu_from_corpus
    from vlm.metrics.cider import cider_from_corpus
    from vlm.metrics.ngrams import TokenizedCorpus
    from vlm.metrics.rouge import rouge_from_corpus

    corpus = TokenizedCorpus(gts, res, "caption metrics")
    scores: dict = {}
    per: dict = {}
    if "BLEU" in metrics:
        b, b_per = bleu_from_corpus(corpus, 4)
        for i in range(4):
            scores[f"Bleu_{i + 1}"] = b[i]
            per[f"Bleu_{i + 1}"] = b_per[i]
    if "ROUGE_L" in metrics:
        scores["ROUGE_L"], r = rouge_from_corpus(corpus)
        per["ROUGE_L"] = r.tolist()
    if "CIDEr" in metrics:
        scores["CIDEr"], c = cider_from_corpus(corpus)
        per["CIDEr"] = c.tolist()
    return scores, per


def caption_scores(references: dict[str, list[str]], predictions: dict[str, str]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of raw captions (PTB-tokenized as pycocoevalcap does)."""
    gts, res = tokenize_many(references, {k: [v] for k, v in predictions.items()})
    return fast_scores(gts, res)[0]
