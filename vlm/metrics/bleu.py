"""BLEU-1..4 exactly as pycocoevalcap's ``Bleu(4)`` computes them, vectorised.

pycocoevalcap (``bleu_scorer.py``, option ``"closest"``): per image, clipped n-gram matches (each
candidate n-gram counts at most as often as in the reference that has it most), guesses
``max(0, len - n + 1)``, and the reference length closest to the candidate's (ties: the shorter). The
corpus score sums matches, guesses and lengths over images, then
``BLEU_n = prod_{k<=n}((correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/n)`` times the brevity penalty
``exp(1 - 1/ratio)`` when ``ratio = (testlen + 1e-15) / (reflen + 1e-9) < 1``. The per-image scores use the
same formula on one image's counts (these tiny constants are why a per-image BLEU-4 with no 4-gram
match is ~1e-5 rather than 0, as in pycocoevalcap).

Example:
    >>> score, per_image = Bleu(4).compute_score({"1": ["a dog runs on the grass"]},
    ...                                          {"1": ["a dog runs on grass"]})
    >>> [round(s, 4) for s in score]
    [0.8187, 0.709, 0.6498, 0.5789]
"""

from __future__ import annotations

import math

import numpy as np

from vlm.metrics.ngrams import TokenizedCorpus

__all__ = ["Bleu", "bleu_from_corpus"]

_SMALL = 1e-9
_TINY = 1e-15


def bleu_from_corpus(corpus: TokenizedCorpus, n: int = 4) -> tuple[list[float], list[list[float]]]:
    """``(corpus BLEU_1..n, per-image BLEU_1..n)`` from an encoded corpus (pycocoevalcap's return types)."""
    N = corpus.n_images
    testlen = corpus.cand_len                                   # (N,)
    reflen_all = corpus.ref_len                                 # (R,)
    # closest reference length, ties to the shorter: min over (|l - testlen|, l)
    if N:
        key = np.abs(reflen_all - testlen[corpus.ref_image]) * (int(reflen_all.max(initial=0)) + 1) + reflen_all
        best = np.minimum.reduceat(key, corpus.ref_offset[:-1])
        reflen = best % (int(reflen_all.max(initial=0)) + 1)
    else:
        reflen = np.zeros(0, dtype=np.int64)
    correct = np.zeros((n, N), dtype=np.int64)
    guess = np.maximum(0, testlen[None, :] - np.arange(n)[:, None])   # (n, N): max(0, len - k + 1)
    for k in range(1, n + 1):
        st = corpus.ngrams(k)
        if not len(st.tf):
            continue
        ref_tf = np.where(st.is_cand, 0, st.tf)
        max_ref = np.maximum.reduceat(ref_tf, st.group_start)               # (G,) max count over references
        last = st.group_last
        cand_tf = np.where(st.is_cand[last], st.tf[last], 0)               # (G,) candidate count
        clipped = np.minimum(cand_tf, max_ref)
        correct[k - 1] = np.bincount(st.image[last], weights=clipped, minlength=N).astype(np.int64)

    # per image, the same float operations in the same order as pycocoevalcap's loop
    per_image = np.empty((n, N))
    b = np.ones(N)
    for k in range(n):
        b = b * ((correct[k].astype(float) + _TINY) / (guess[k].astype(float) + _SMALL))
        per_image[k] = b ** (1.0 / (k + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    short = ratio < 1
    if short.any():
        per_image[:, short] *= np.exp(1 - 1 / ratio[short])

    total_test, total_ref = int(testlen.sum()), int(reflen.sum())
    scores = []
    b = 1.0
    for k in range(n):
        b *= float(int(correct[k].sum()) + _TINY) / (int(guess[k].sum()) + _SMALL)
        scores.append(b ** (1.0 / (k + 1)))
    ratio_c = (total_test + _TINY) / (total_ref + _SMALL)
    if ratio_c < 1:
        scores = [s * math.exp(1 - 1 / ratio_c) for s in scores]
    return scores, [row.tolist() for row in per_image]


class Bleu:
    """pycocoevalcap's ``Bleu`` interface: ``compute_score(gts, res) -> ([BLEU_1..n], [[per image] * n])``.

    ``gts``/``res`` are tokenized (see :func:`vlm.metrics.tokenize`), ``{id: [str, ...]}`` and
    ``{id: [str]}`` with the same ids.
    """

    def __init__(self, n: int = 4) -> None:
        if not 1 <= n <= 4:
            raise ValueError(f"Bleu: n must be 1..4, got {n}")
        self._n = n

    def compute_score(self, gts: dict, res: dict, verbose: int = 0) -> tuple[list[float], list[list[float]]]:
        return bleu_from_corpus(TokenizedCorpus(gts, res, "Bleu"), self._n)

    def method(self) -> str:
        return "Bleu"
