"""ROUGE-L exactly as pycocoevalcap's ``Rouge`` computes it, with a bit-parallel LCS.

pycocoevalcap: per image, the longest common subsequence (LCS) of the candidate with each reference
(tokens from ``split(" ")``), ``P = max_r lcs / len(cand)`` and ``R = max_r lcs / len(ref)`` taken
separately over the references, ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2`` (0 when P or R is 0);
the corpus score is the mean over images.

The LCS lengths come from the bit-vector algorithm of Hyyrö (2004): with the candidate's positions as
the bits of one 64-bit word, each reference token costs four integer operations, done for all
(candidate, reference) pairs at once with numpy. Candidates longer than 64 tokens use Python integers.

Example:
    >>> score, per_image = Rouge().compute_score({"1": ["a dog runs on the grass", "a cat"]},
    ...                                          {"1": ["a dog runs on grass"]})
    >>> round(score, 4)
    0.8944
"""

from __future__ import annotations

import numpy as np

from vlm.metrics.ngrams import TokenizedCorpus

__all__ = ["Rouge", "lcs_length", "rouge_from_corpus"]

_BETA = 1.2
_WORD = 64


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel, any lengths).

    Example:
        >>> lcs_length("a b c d".split(), "a c x d".split())
        3
    """
    if not a or not b:
        return 0
    masks: dict = {}
    for i, t in enumerate(a):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def _pair_lcs(corpus: TokenizedCorpus) -> np.ndarray:
    """(R,) LCS length of each reference with its image's candidate."""
    ids, sent, lens, vocab = corpus.space_words()
    R, N = len(corpus.refs), corpus.n_images
    ref_lens, cand_lens = lens[:R], lens[R:]
    starts = np.concatenate([[0], np.cumsum(lens)])
    out = np.zeros(R, dtype=np.int64)
    long_cand = cand_lens > _WORD
    # match masks: for every (image, word) of a candidate, the bits of the positions holding that word
    cand_word_start = starts[R]
    c_ids = ids[cand_word_start:]
    c_img = sent[cand_word_start:] - R
    c_pos = cand_word_start + np.arange(len(c_ids)) - starts[R + c_img]
    keep = ~long_cand[c_img]
    key = c_img[keep] * (vocab + 1) + c_ids[keep]
    bits = np.left_shift(np.uint64(1), c_pos[keep].astype(np.uint64))
    order = np.argsort(key, kind="stable")
    key, bits = key[order], bits[order]
    if len(key):
        edge = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
        ukey = key[edge]
        umask = np.bitwise_or.reduceat(bits, edge)
    else:
        ukey = key
        umask = bits
    # for each reference word, the mask of its image's candidate (0 if the word is not in it)
    r_ids = ids[:cand_word_start]
    r_sent = sent[:cand_word_start]
    r_img = corpus.ref_image[r_sent]
    r_key = r_img * (vocab + 1) + r_ids
    hit = np.searchsorted(ukey, r_key)
    hit_c = np.minimum(hit, max(len(ukey) - 1, 0))
    found = (hit < len(ukey)) & (ukey[hit_c] == r_key) if len(ukey) else np.zeros(len(r_key), bool)
    r_mask = np.where(found, umask[hit_c] if len(ukey) else np.uint64(0), np.uint64(0)).astype(np.uint64)
    # step j of the recurrence reads word j of every reference still that long: sort references by
    # length (longest first) so that those are a prefix, and gather their masks from the flat array
    order = np.argsort(-ref_lens, kind="stable")
    sorted_lens = ref_lens[order]
    word_start = starts[:R][order]
    v = np.full(R, np.iinfo(np.uint64).max, dtype=np.uint64)
    active = R
    for j in range(int(ref_lens.max(initial=0))):
        while active and sorted_lens[active - 1] <= j:
            active -= 1
        vv = v[:active]
        u = vv & r_mask[word_start[:active] + j]
        v[:active] = (vv + u) | (vv - u)
    m = cand_lens[corpus.ref_image[order]]
    low = np.where(m >= _WORD, np.uint64(np.iinfo(np.uint64).max),
                   (np.left_shift(np.uint64(1), np.minimum(m, _WORD - 1).astype(np.uint64)) - np.uint64(1)))
    lcs_sorted = m - np.bitwise_count(v & low).astype(np.int64)
    out[order] = lcs_sorted
    # candidates longer than one machine word: Python integers
    for r in np.flatnonzero(long_cand[corpus.ref_image]):
        i = corpus.ref_image[r]
        c = ids[starts[R + i]:starts[R + i + 1]].tolist()
        rr = ids[starts[r]:starts[r + 1]].tolist()
        out[r] = lcs_length(c, rr)
    return out


def rouge_from_corpus(corpus: TokenizedCorpus, beta: float = _BETA) -> tuple[float, np.ndarray]:
    """``(mean ROUGE-L, per-image array)`` from an encoded corpus (pycocoevalcap's return types)."""
    lens = corpus.space_words()[2]
    R = len(corpus.refs)
    ref_lens, cand_lens = lens[:R].astype(float), lens[R:].astype(float)
    lcs = _pair_lcs(corpus).astype(float)
    prec = lcs / cand_lens[corpus.ref_image]
    rec = lcs / ref_lens
    prec_max = np.maximum.reduceat(prec, corpus.ref_offset[:-1])
    rec_max = np.maximum.reduceat(rec, corpus.ref_offset[:-1])
    ok = (prec_max != 0) & (rec_max != 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = ((1 + beta ** 2) * prec_max * rec_max) / (rec_max + beta ** 2 * prec_max)
    scores = np.where(ok, f, 0.0)
    return float(np.mean(scores)), scores


class Rouge:
    """pycocoevalcap's ``Rouge`` interface: ``compute_score(gts, res) -> (ROUGE-L, per-image array)``."""

    def __init__(self, beta: float = _BETA) -> None:
        self.beta = beta

    def compute_score(self, gts: dict, res: dict) -> tuple[float, np.ndarray]:
        return rouge_from_corpus(TokenizedCorpus(gts, res, "Rouge"), self.beta)

    def method(self) -> str:
        return "Rouge"
