"""Reward functions for captioning RL: self-retrieval, CLIP-S, CIDEr-D, and weighted mixtures.

Two layers:

* tensor functions on a similarity matrix, the core of self-retrieval (SR): row ``i`` holds the cosine
  similarities of caption ``i`` to its candidate images, column 0 the target (the image it was sampled for)
  unless ``target`` says otherwise: :func:`contrastive_reward` (the log-probability that the retriever picks
  the target, i.e. minus the contrastive cross-entropy: the reward of "No Detail Left Behind"),
  :func:`recall_reward` (R@1, ties shared), :func:`clip_s_reward` (CLIP-S of the target);
* callables with TRL's reward signature ``(completions, **kwargs) -> list[float]``:
  :class:`SelfRetrievalReward`, :class:`CIDErReward` and :class:`RewardMixture`, usable as
  ``GRPOTrainer(reward_funcs=[...])`` and by :mod:`vlm.train.sr`.

Example:
    >>> import torch
    >>> sim = torch.tensor([[0.9, 0.1, 0.1], [0.2, 0.2, 0.8]])  # caption 0 fits its target, caption 1 does not
    >>> [round(x, 3) for x in contrastive_reward(sim, scale=10).tolist()]
    [-0.001, -6.005]
    >>> recall_reward(sim).tolist()
    [1.0, 0.0]
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = ["CIDErReward", "RewardMixture", "SelfRetrievalReward", "clip_s_reward", "contrastive_reward",
           "recall_reward", "REWARD_KINDS"]

REWARD_KINDS = ("contrastive", "recall", "clip_s")


def _target_column(sim: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    if sim.dim() != 2:
        raise ValueError(f"similarities must be (captions, candidates), got shape {tuple(sim.shape)}")
    if target is None:
        target = 0
    if isinstance(target, int):
        return torch.full((sim.shape[0],), target, dtype=torch.long, device=sim.device)
    return target.to(sim.device).long()


def contrastive_reward(sim: torch.Tensor, target: torch.Tensor | int | None = None, *, scale: float = 100.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(scale * sim)[target]`` per row: the log-probability the retriever picks the target.

    Args:
        sim: ``(B, C)`` cosine similarities of each caption to its C candidate images.
        target: index of the target column per row (default 0).
        scale: the retriever's logit scale (CLIP: 100).
        mask: optional ``(B, C)`` bool, False for padded candidates (bags of unequal size).

    Example:
        >>> round(float(contrastive_reward(torch.tensor([[0.5, 0.5]]), scale=1.0)[0]), 4)  # a coin flip
        -0.6931
    """
    t = _target_column(sim, target)
    logits = scale * sim.float()
    if mask is not None:
        logits = logits.masked_fill(~mask.to(logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=1).gather(1, t[:, None])[:, 0]


def recall_reward(sim: torch.Tensor, target: torch.Tensor | int | None = None, *,
                  mask: torch.Tensor | None = None, tie_tol: float = 1e-6) -> torch.Tensor:
    """1 when the target is the unique best candidate, ``1/k`` when it ties with k-1 others, else 0.

    Example:
        >>> recall_reward(torch.tensor([[0.5, 0.5, 0.1], [0.1, 0.7, 0.2]])).tolist()
        [0.5, 0.0]
    """
    t = _target_column(sim, target)
    s = sim.float()
    if mask is not None:
        s = s.masked_fill(~mask.to(s.device), float("-inf"))
    tgt = s.gather(1, t[:, None])
    best = s.max(dim=1, keepdim=True).values
    ties = (s >= tgt - tie_tol).sum(dim=1).float()
    return torch.where(tgt[:, 0] >= best[:, 0] - tie_tol, 1.0 / ties, torch.zeros_like(ties))


def clip_s_reward(sim: torch.Tensor, target: torch.Tensor | int | None = None, *, w: float = 2.5) -> torch.Tensor:
    """CLIP-S of the target (Hessel et al., 2021): ``w * max(cos, 0)``; it ignores the distractors.

    Example:
        >>> clip_s_reward(torch.tensor([[0.4, 0.9], [-0.2, 0.1]])).tolist()
        [1.0, 0.0]
    """
    t = _target_column(sim, target)
    return w * sim.float().gather(1, t[:, None])[:, 0].clamp(min=0)


_TENSOR_REWARDS: dict[str, Callable[..., torch.Tensor]] = {
    "contrastive": contrastive_reward, "recall": recall_reward, "clip_s": clip_s_reward}


class SelfRetrievalReward:
    """Self-retrieval reward of captions against pre-embedded images, with TRL's reward signature.

    Args:
        retriever: any :class:`vlm.retrieval.Retriever` (encodes the captions).
        image_embeddings: ``(N, D)`` unit-norm embeddings of the images, by dataset index.
        kind: ``contrastive`` (default), ``recall`` or ``clip_s``.
        scale: logit scale of the contrastive reward (default: the retriever's ``logit_scale``, else 100).

    Call with ``completions`` (captions; TRL's conversational form ``[{"content": ...}]`` works too),
    ``image_index`` (one dataset index per caption: its target) and ``candidates`` (one list of dataset
    indices per caption, the target included; bags may differ in size). ``candidates`` defaults to the
    images of the call (in-batch distractors).

    Example:
        >>> import torch
        >>> class Words:  # a toy retriever: a text points at the colours it names
        ...     name, logit_scale = "words", 10.0
        ...     def encode_texts(self, texts, *, batch_size=256):
        ...         v = torch.tensor([[float("red" in t), float("blue" in t)] for t in texts]) + 1e-3
        ...         return torch.nn.functional.normalize(v, dim=1)
        >>> images = torch.eye(2)  # image 0 is red, image 1 blue
        >>> reward = SelfRetrievalReward(Words(), images, kind="recall")
        >>> reward(["a red square", "a square"], image_index=[0, 1], candidates=[[0, 1], [1, 0]])
        [1.0, 0.5]
    """

    def __init__(self, retriever: Any, image_embeddings: torch.Tensor, *, kind: str = "contrastive",
                 scale: float | None = None):
        if kind not in _TENSOR_REWARDS:
            raise ValueError(f"unknown self-retrieval reward {kind!r}; choose from {sorted(_TENSOR_REWARDS)}")
        self.retriever = retriever
        self.image_embeddings = image_embeddings.float()
        self.kind = kind
        self.scale = float(scale if scale is not None else getattr(retriever, "logit_scale", 100.0))
        self.__name__ = f"self_retrieval_{kind}"  # TRL logs reward functions by __name__

    def similarities(self, texts: Sequence[str], image_index: Sequence[int],
                     candidates: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sim (B, C), target (B,), mask (B, C))`` of each caption to its padded candidate list."""
        if len(texts) != len(image_index):
            raise ValueError(f"{len(texts)} captions but {len(image_index)} image indices")
        if candidates is None:
            uniq = list(dict.fromkeys(int(i) for i in image_index))
            candidates = [uniq] * len(texts)
        if len(candidates) != len(texts):
            raise ValueError(f"{len(texts)} captions but {len(candidates)} candidate lists")
        width = max(len(c) for c in candidates)
        idx = torch.zeros(len(texts), width, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.bool)
        target = torch.zeros(len(texts), dtype=torch.long)
        for r, (i, cand) in enumerate(zip(image_index, candidates)):
            cand = [int(c) for c in cand]
            if int(i) not in cand:
                raise ValueError(f"caption {r}: its target image {int(i)} is not among its candidates {cand}")
            idx[r, :len(cand)] = torch.tensor(cand)
            mask[r, :len(cand)] = True
            target[r] = cand.index(int(i))
        text = self.retriever.encode_texts(list(texts)).float()
        sim = torch.einsum("bd,bcd->bc", text, self.image_embeddings[idx])
        return sim, target, mask

    def scores(self, texts: Sequence[str], image_index: Sequence[int],
               candidates: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """The rewards as a ``(B,)`` tensor."""
        return self.from_similarities(*self.similarities(texts, image_index, candidates))

    def from_similarities(self, sim: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The rewards of :meth:`similarities`' output (other rewards of the same captions need no re-encoding)."""
        if self.kind == "contrastive":
            return contrastive_reward(sim, target, scale=self.scale, mask=mask)
        if self.kind == "recall":
            return recall_reward(sim, target, mask=mask)
        return clip_s_reward(sim, target)

    def __call__(self, completions: Sequence[Any], *, image_index: Sequence[int],
                 candidates: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        return self.scores(_texts(completions), image_index, candidates).tolist()


def _texts(completions: Sequence[Any]) -> list[str]:
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list) and c and isinstance(c[-1], Mapping):  # TRL conversational completions
            out.append(str(c[-1].get("content", "")))
        else:
            raise TypeError(f"a completion must be a str or a list of chat messages, got {type(c).__name__}")
    return out


class CIDErReward:
    """Per-caption CIDEr-D against each image's references, with document frequencies from all references.

    Args:
        references: ``{image index: [reference captions]}`` (the corpus the idf comes from).

    Example:
        >>> refs = {0: ["a red circle", "one red circle"], 1: ["two blue squares", "blue squares"]}
        >>> r = CIDErReward(refs)
        >>> good, bad = r(["a red circle", "two blue squares"], image_index=[0, 0])
        >>> good > bad
        True
    """

    def __init__(self, references: Mapping[int, Sequence[str]], *, n: int = 4, sigma: float = 6.0):
        import math
        from collections import Counter

        self.n, self.sigma = n, sigma
        self.references = {int(k): [_words(r) for r in v] for k, v in references.items()}
        df: Counter = Counter()
        for refs in self.references.values():
            df.update({g for r in refs for g in _ngrams(r, n)})
        self._log_n = math.log(float(max(len(self.references), 1)))
        self._df = df
        self._refs = {k: [(self._vec(r), len(r)) for r in refs] for k, refs in self.references.items()}
        self.__name__ = "cider_d"

    def _vec(self, words: list[str]) -> tuple[list[dict], list[float]]:
        import math
        from collections import Counter

        vecs, norms = [], []
        for k in range(1, self.n + 1):
            tf = Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1))
            v = {g: c * (self._log_n - math.log(max(1.0, self._df.get(g, 0.0)))) for g, c in tf.items()}
            vecs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vecs, norms

    def score_one(self, text: str, image: int) -> float:
        """CIDEr-D of one caption against the references of ``image`` (pycocoevalcap's formula)."""
        import math

        if int(image) not in self._refs:
            raise KeyError(f"no references for image {image}")
        words = _words(text)
        (cv, cn), refs = self._vec(words), self._refs[int(image)]
        total = 0.0
        for (rv, rn), rlen in refs:
            delta = float(max(len(words) - 1, 0) - max(rlen - 1, 0))
            per_n = 0.0
            for k in range(self.n):
                num = sum(min(w, rv[k][g]) * rv[k][g] for g, w in cv[k].items() if g in rv[k])
                per_n += num / (cn[k] * rn[k]) if cn[k] and rn[k] else num
            total += per_n / self.n * math.exp(-(delta ** 2) / (2 * self.sigma ** 2))
        return total / len(refs) * 10.0

    def scores(self, texts: Sequence[str], image_index: Sequence[int], candidates: Any = None) -> torch.Tensor:
        return torch.tensor([self.score_one(t, i) for t, i in zip(texts, image_index)], dtype=torch.float32)

    def __call__(self, completions: Sequence[Any], *, image_index: Sequence[int], **kwargs: Any) -> list[float]:
        return self.scores(_texts(completions), image_index).tolist()


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)}


class RewardMixture:
    """A weighted sum of reward callables (each with ``scores(texts, image_index, candidates)``).

    Example:
        >>> class Const:
        ...     def __init__(self, v): self.v = v
        ...     def scores(self, texts, image_index, candidates=None): return torch.full((len(texts),), self.v)
        >>> RewardMixture({"sr": (Const(-1.0), 1.0), "cider": (Const(2.0), 0.5)})(["a", "b"], image_index=[0, 1])
        [0.0, 0.0]
    """

    def __init__(self, parts: Mapping[str, tuple[Any, float]]):
        if not parts:
            raise ValueError("a reward mixture needs at least one part")
        self.parts = dict(parts)
        self.__name__ = "+".join(f"{w:g}*{k}" for k, (_, w) in self.parts.items())

    def components(self, texts: Sequence[str], image_index: Sequence[int],
                   candidates: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Each part's unweighted rewards."""
        return {k: fn.scores(texts, image_index, candidates) for k, (fn, _) in self.parts.items()}

    def scores(self, texts: Sequence[str], image_index: Sequence[int],
               candidates: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        comps = self.components(texts, image_index, candidates)
        return sum(w * comps[k] for k, (_, w) in self.parts.items())

    def __call__(self, completions: Sequence[Any], *, image_index: Sequence[int],
                 candidates: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        return self.scores(_texts(completions), image_index, candidates).tolist()
