"""Tokenized references and candidates as integer arrays, and their n-gram statistics (shared by the scorers).

pycocoevalcap's scorers count n-grams with Python dicts, one sentence at a time. Here every sentence is
split once, words become integer ids, and for each n-gram order one sort of 64-bit keys
``(n-gram, image, slot)`` gives, per image, the term frequency of every n-gram in every reference (slots
``0..k-1``) and in the candidate (the last slot). BLEU's clipped counts, CIDEr's document frequencies,
tf-idf vectors, norms and clipped dot products are then array reductions over those runs.

Splitting follows pycocoevalcap exactly: BLEU and CIDEr use ``str.split()`` (any whitespace), ROUGE-L uses
``str.split(" ")`` (so an empty caption is one empty token there, as in pycocoevalcap).

Example:
    >>> c = TokenizedCorpus({"a": ["a dog runs", "the dog"]}, {"a": ["a dog"]})
    >>> c.cand_len.tolist(), c.ref_len.tolist()
    ([2], [3, 2])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["NgramStats", "TokenizedCorpus", "check_gts_res"]

# Whitespace that makes str.split() and str.split(" ") disagree (per line of a "\n"-joined text).
_SPLIT_DIFFERS = re.compile(r"[^\S \n]| {2}|^ | $|^$", re.M)


def check_gts_res(gts: dict, res: dict, name: str = "scorer") -> list:
    """pycocoevalcap's input contract, with errors instead of asserts. Returns the ids in ``gts`` order."""
    if not isinstance(gts, dict) or not isinstance(res, dict):
        raise TypeError(f"{name}: gts and res must be dicts {{id: [captions]}}, got {type(gts).__name__} and "
                        f"{type(res).__name__}")
    if gts.keys() != res.keys():
        missing = [k for k in gts if k not in res][:5]
        extra = [k for k in res if k not in gts][:5]
        raise ValueError(f"{name}: gts and res must have the same ids; missing in res: {missing}, "
                         f"not in gts: {extra}")
    for k, hypo in res.items():
        if not isinstance(hypo, list) or len(hypo) != 1 or not isinstance(hypo[0], str):
            raise ValueError(f"{name}: res[{k!r}] must be a list with exactly one caption string, got {hypo!r}")
        ref = gts[k]
        if not isinstance(ref, list) or not ref or not all(isinstance(r, str) for r in ref):
            raise ValueError(f"{name}: gts[{k!r}] must be a non-empty list of caption strings, got {ref!r}")
    return list(gts.keys())


@dataclass
class NgramStats:
    """Runs of one n-gram order, sorted by (n-gram, image, slot); one row per (n-gram, image, slot)."""

    gram: np.ndarray        # (E,) n-gram id, 0..G-1 in sorted order
    image: np.ndarray       # (E,) image index
    slot: np.ndarray        # (E,) reference index within the image, or the candidate slot
    tf: np.ndarray          # (E,) count of the n-gram in that sentence
    is_cand: np.ndarray     # (E,) bool: the row is the candidate's
    group: np.ndarray       # (E,) index of the row's (n-gram, image) group
    group_start: np.ndarray  # (G,) first row of each group
    group_last: np.ndarray   # (G,) last row of each group (the candidate's row when the candidate has it)


class TokenizedCorpus:
    """Integer-encoded references (``gts``) and candidates (``res``), as pycocoevalcap's scorers take them.

    Args:
        gts: ``{id: [tokenized reference, ...]}``.
        res: ``{id: [tokenized candidate]}`` with the same ids.
    """

    def __init__(self, gts: dict, res: dict, name: str = "scorer") -> None:
        self.ids = check_gts_res(gts, res, name)
        refs_per = [gts[k] for k in self.ids]
        self.n_images = len(self.ids)
        self.n_refs = np.array([len(r) for r in refs_per], dtype=np.int64)              # (N,)
        self.ref_offset = np.concatenate([[0], np.cumsum(self.n_refs)])                   # (N+1,)
        self.ref_image = np.repeat(np.arange(self.n_images), self.n_refs)                 # (R,)
        self.refs = [s for r in refs_per for s in r]
        self.cands = [res[k][0] for k in self.ids]
        self._ws: tuple | None = None
        self._sp: tuple | None = None
        self._stats: dict[int, NgramStats] = {}

    # ---- words --------------------------------------------------------------------------------------
    @staticmethod
    def _encode(sentences: list[str], by_space: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(word ids 1..V flat, sentence of each word, lengths, V)`` for ``split()`` or ``split(" ")``."""
        if by_space:
            flat = [w for s in sentences for w in s.split(" ")]
            lens = np.fromiter(map(len, (s.split(" ") for s in sentences)), dtype=np.int64, count=len(sentences))
        else:
            joined = " \x00 ".join(sentences)
            if "\x00" in joined.replace(" \x00 ", " "):   # a sentence holds the separator itself: go slow
                lens = np.fromiter(map(len, map(str.split, sentences)), dtype=np.int64, count=len(sentences))
                flat = [w for s in sentences for w in s.split()]
            else:
                flat = joined.split()
                lens = None
        index = {w: i for i, w in enumerate(dict.fromkeys(flat), start=1)}
        ids = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat))
        if lens is None:
            # "\x00" separated the sentences: its positions give the lengths; drop it
            sep = index.get("\x00", -1)
            is_sep = ids == sep
            bounds = np.flatnonzero(is_sep)
            lens = np.diff(np.concatenate([[-1], bounds, [len(ids)]])) - 1
            ids = ids[~is_sep]
            if sep > 0:  # keep ids contiguous: move the last id into the separator's place
                last = len(index)
                ids[ids == last] = sep
                del index["\x00"]
        sent = np.repeat(np.arange(len(lens)), lens)
        return ids, sent, lens, len(index)

    def words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(ids, sentence_of_word, lengths, vocab)`` for ``split()``: refs first, then candidates."""
        if self._ws is None:
            self._ws = self._encode(self.refs + self.cands, by_space=False)
        return self._ws

    def space_words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The same for ``split(" ")`` (ROUGE-L); shared with :meth:`words` when they agree."""
        if self._sp is None:
            sentences = self.refs + self.cands
            joined = "\n".join(sentences)
            same = (all(sentences) and "  " not in joined and "\n " not in joined and " \n" not in joined
                    and not joined.startswith(" ") and not joined.endswith(" "))
            if same:
                if joined.isascii():
                    same = not any(c in joined for c in "\t\x0b\x0c\r\x1c\x1d\x1e\x1f")
                else:
                    same = _SPLIT_DIFFERS.search(joined) is None
            self._sp = self.words() if same else self._encode(sentences, by_space=True)
        return self._sp

    @property
    def ref_len(self) -> np.ndarray:
        """(R,) reference lengths in words (``split()``)."""
        return self.words()[2][: len(self.refs)]

    @property
    def cand_len(self) -> np.ndarray:
        """(N,) candidate lengths in words (``split()``)."""
        return self.words()[2][len(self.refs):]

    # ---- n-grams ------------------------------------------------------------------------------------
    def ngrams(self, n: int) -> NgramStats:
        """Per-(n-gram, image, slot) term frequencies for n-grams of length ``n`` (``split()`` words)."""
        if n in self._stats:
            return self._stats[n]
        ids, sent, lens, vocab = self.words()
        n_ref = len(self.refs)
        # n-gram keys (base vocab+1, digits 1..vocab) at every start whose n-gram stays in its sentence
        if len(ids) >= n:
            starts = np.flatnonzero(sent[: len(ids) - n + 1] == sent[n - 1:])
        else:
            starts = np.zeros(0, dtype=np.int64)
        key = ids[starts]
        base = vocab + 1
        for k in range(1, n):
            if float(key.max(initial=0)) * base + base >= 2.0 ** 62:
                key = np.unique(key, return_inverse=True)[1] + 1  # compact before it overflows
            key = key * base + ids[starts + k]
        # one int64 per occurrence: n-gram | image | slot (the candidate takes the last slot)
        max_slot = int(self.n_refs.max(initial=0))
        slot_bits = max_slot.bit_length()
        img_bits = max(self.n_images - 1, 0).bit_length()
        low_bits = slot_bits + img_bits
        if float(key.max(initial=0)) >= 2.0 ** (62 - low_bits):
            key = np.unique(key, return_inverse=True)[1]
        sent_code = np.concatenate([(self.ref_image << slot_bits) | (np.arange(n_ref) - self.ref_offset[self.ref_image]),
                                    (np.arange(self.n_images) << slot_bits) | max_slot])
        combined = (key << low_bits) | sent_code[sent[starts]]
        combined.sort()
        E = len(combined)
        if E:
            new_row = np.empty(E, dtype=bool)
            new_row[0] = True
            np.not_equal(combined[1:], combined[:-1], out=new_row[1:])
            first = np.flatnonzero(new_row)
            tf = np.diff(np.append(first, E))
            u = combined[first]
        else:
            u, tf = combined, np.zeros(0, dtype=np.int64)
        slot_u = u & ((1 << slot_bits) - 1)
        pair = u >> slot_bits                                   # (n-gram, image)
        image_u = pair & ((1 << img_bits) - 1)
        gram_key = pair >> img_bits
        if len(pair):
            new_group = np.empty(len(pair), dtype=bool)
            new_group[0] = True
            np.not_equal(pair[1:], pair[:-1], out=new_group[1:])
            group_start = np.flatnonzero(new_group)
            group_last = np.append(group_start[1:] - 1, len(pair) - 1)
            group = np.cumsum(new_group) - 1
            new_gram = np.empty(len(pair), dtype=bool)
            new_gram[0] = False
            np.not_equal(gram_key[1:], gram_key[:-1], out=new_gram[1:])
            gram_u = np.cumsum(new_gram)                        # 0..G-1 in sorted order
        else:
            group_start = group_last = group = gram_u = pair
        stats = NgramStats(gram=gram_u, image=image_u, slot=slot_u, tf=tf, is_cand=slot_u == max_slot,
                           group=group, group_start=group_start, group_last=group_last)
        self._stats[n] = stats
        return stats

    def row_sentence(self, st: NgramStats) -> np.ndarray:
        """(E,) sentence index of each row (references first, then candidates)."""
        ref_sent = self.ref_offset[st.image] + st.slot
        return np.where(st.is_cand, len(self.refs) + st.image, ref_sent)
