"""CIDEr-D exactly as pycocoevalcap's ``Cider`` computes it (its ``cider_scorer.py``), vectorised.

For n = 1..4, every sentence becomes a tf-idf vector over its n-grams: ``tf * (log(N) - log(max(1, df)))``
where ``df`` counts the images whose references contain the n-gram and ``N`` is the number of images
(the document frequencies come from the references of the corpus being scored). For each reference of an
image, ``sum_g min(w_cand(g), w_ref(g)) * w_ref(g)`` (clipping) is divided by both vector norms (when both
are non-zero) and multiplied by the length penalty ``exp(-(delta ** 2) / (2 * 6 ** 2))``, where ``delta`` is
the difference of the two sentences' *bigram* counts - pycocoevalcap counts length on the n == 2 vectors
(``if n == 1`` on a 0-based index), i.e. ``max(0, words - 1)``; reproduced here. The image score is the mean
over n of the sum over references, divided by the number of references, times 10; the corpus score is
the mean over images.

Because ``df`` is a corpus statistic, the CIDEr of a subset of images depends on which images are scored
together: scoring a subset uses the subset's own references for ``df`` (what running pycocoevalcap on the
subset does), which is how the skill breakdown of :func:`benchmarks.captions.compute_caption_metrics`
computes it.

Example:
    >>> gts = {"1": ["a dog runs on the grass", "a dog on grass"], "2": ["two cats sleep", "cats on a bed"]}
    >>> res = {"1": ["a dog runs on grass"], "2": ["a cat on a bed"]}
    >>> score, per_image = Cider().compute_score(gts, res)
    >>> round(score, 4), [round(float(s), 4) for s in per_image]
    (3.3296, [4.8278, 1.8314])

With one image, ``log(N) = 0`` makes every weight 0, so CIDEr-D is 0 (as in pycocoevalcap).
"""

from __future__ import annotations

import numpy as np

from vlm.metrics.ngrams import TokenizedCorpus

__all__ = ["Cider", "cider_from_corpus"]


def cider_from_corpus(corpus: TokenizedCorpus, n: int = 4, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """``(corpus CIDEr-D, per-image CIDEr-D array)`` from an encoded corpus (pycocoevalcap's return types)."""
    N = corpus.n_images
    R = len(corpus.refs)
    if N == 0:
        return float("nan"), np.zeros(0)
    ref_len = np.log(float(N))                              # pycocoevalcap's "ref_len": log of the corpus size
    num = np.zeros((R, n))                                  # clipped dot products, per reference and order
    norm_ref = np.zeros((R, n))
    norm_cand = np.zeros((N, n))
    for k in range(1, n + 1):
        st = corpus.ngrams(k)
        if not len(st.tf):
            continue
        # document frequency of each n-gram: number of (n-gram, image) groups with a reference row
        group_has_ref = ~(st.is_cand[st.group_start])       # rows sorted by slot: a reference row comes first
        gram_of_group = st.gram[st.group_start]
        df = np.bincount(gram_of_group[group_has_ref], minlength=int(st.gram.max()) + 1)
        w = st.tf * (ref_len - np.log(np.maximum(1.0, df[st.gram])))        # (E,) tf-idf weights
        sq = w * w
        ref_rows = ~st.is_cand
        ref_sent = corpus.ref_offset[st.image[ref_rows]] + st.slot[ref_rows]
        norm_ref[:, k - 1] = np.bincount(ref_sent, weights=sq[ref_rows], minlength=R)
        norm_cand[:, k - 1] = np.bincount(st.image[st.is_cand], weights=sq[st.is_cand], minlength=N)
        # candidate weight of each row's group (0 where the candidate lacks the n-gram)
        last = st.group_last
        w_cand_group = np.where(st.is_cand[last], w[last], 0.0)
        wc = w_cand_group[st.group[ref_rows]]
        wr = w[ref_rows]
        num[:, k - 1] = np.bincount(ref_sent, weights=np.minimum(wc, wr) * wr, minlength=R)
    norm_ref = np.sqrt(norm_ref)
    norm_cand = np.sqrt(norm_cand)
    nc = norm_cand[corpus.ref_image]                        # (R, n)
    both = (nc != 0) & (norm_ref != 0)
    val = np.where(both, num / np.where(both, nc * norm_ref, 1.0), num)
    # length penalty on bigram counts (see the module docstring)
    blen_ref = np.maximum(corpus.ref_len - 1, 0)
    blen_cand = np.maximum(corpus.cand_len - 1, 0)
    delta = (blen_cand[corpus.ref_image] - blen_ref).astype(float)
    val *= (np.e ** (-(delta ** 2) / (2 * sigma ** 2)))[:, None]
    per_ref_order = np.add.reduceat(val, corpus.ref_offset[:-1], axis=0)   # (N, n): sum over references
    scores = per_ref_order.mean(axis=1) / corpus.n_refs * 10.0
    return float(np.mean(scores)), scores


class Cider:
    """pycocoevalcap's ``Cider`` interface: ``compute_score(gts, res) -> (CIDEr-D, per-image array)``."""

    def __init__(self, n: int = 4, sigma: float = 6.0) -> None:
        if not 1 <= n <= 4:
            raise ValueError(f"Cider: n must be 1..4, got {n}")
        self._n = n
        self._sigma = sigma

    def compute_score(self, gts: dict, res: dict) -> tuple[float, np.ndarray]:
        return cider_from_corpus(TokenizedCorpus(gts, res, "Cider"), self._n, self._sigma)

    def method(self) -> str:
        return "CIDEr"
