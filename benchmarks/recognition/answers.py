"""Turning a VLM's free-text answer into a class index: normalise, exact match, containment, token overlap.

Generative classification asks a VLM "which of these is it?" and gets prose back ("It looks like a coat.",
"<answer>Ankle boot</answer>", "trousers"). :class:`AnswerParser` maps such an answer onto the class list in
four steps, each tried only when the one before gives no single class:

1. normalise both sides: lower case, punctuation to spaces, a light plural stem (``boots`` -> ``boot``,
   ``dresses`` -> ``dress``); an ``<answer>...</answer>`` block, when present, is all that is read;
2. exact match of the whole normalised answer with a normalised class name;
3. containment: every occurrence of a class name (as whole words) is a mention; a mention whose neighbouring
   words continue a longer class name that contains it ("t shirt" for "T-shirt/top" besides "Shirt",
   "double ringed badge" besides "ringed badge") may mean either. The class consistent with every mention
   wins; mentions of two unrelated classes ("a coat or a shirt") are a hedge, which is unparseable;
4. closest by token overlap (Jaccard on content words, articles and filler such as "photo" or "image"
   dropped), among the classes still possible; the best score must be positive and unique.

Anything else is unparseable (``label`` None), and the benchmark reports how often that happens.

Example:
    >>> p = AnswerParser(["T-shirt/top", "Shirt", "Coat", "Ankle boot"])
    >>> p("It is a shirt.").label, p("Ankle boots!").how, p("a t-shirt or top").label, p("T-shirt").label
    (1, 'exact', 0, 0)
    >>> p("a coat or a shirt").how
    'unparseable'
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", flags=re.S | re.I)
_NON_WORD = re.compile(r"[^0-9a-z]+")
# Words that carry no class information in answers such as "This image shows a photo of a coat."
_FILLER = frozenset(
    "a an the of this that it its is it's are be looks look like seems appears to in on with and or "
    "image picture photo photograph shows showing shown depicts answer i think probably likely".split()
)


def _stem(token: str) -> str:
    # Just enough to make plurals meet singulars; the same rule runs on class names and answers.
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 4 and token.endswith(("sses", "shes", "ches", "xes")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def normalize_answer(text: str) -> tuple[str, ...]:
    """Lower-cased, punctuation-free, plural-stemmed tokens of ``text``.

    Example:
        >>> normalize_answer("Ankle BOOTS, probably.")
        ('ankle', 'boot', 'probably')
        >>> normalize_answer("T-shirt/top")
        ('t', 'shirt', 'top')
    """
    return tuple(_stem(t) for t in _NON_WORD.sub(" ", text.lower()).split())


class ParsedAnswer(NamedTuple):
    """A parsed answer: the class index (None when unparseable) and the step that decided it."""

    label: int | None
    how: str
    """``"exact"``, ``"contained"``, ``"overlap"`` or ``"unparseable"``."""


class AnswerParser:
    """Maps free-text answers onto a fixed list of class names (see the module docstring for the steps).

    Args:
        class_names: the classes, in label order. Two names that normalise to the same tokens are refused,
            since no answer could tell them apart.

    Example:
        >>> p = AnswerParser(["ringed badge", "double-ringed badge", "spotted badge"])
        >>> p("<think>two rings</think><answer>Double-ringed badge</answer>")
        ParsedAnswer(label=1, how='exact')
        >>> p("I see a double ringed badge here"), p("ringed?")
        (ParsedAnswer(label=1, how='contained'), ParsedAnswer(label=0, how='overlap'))
    """

    def __init__(self, class_names: Sequence[str]):
        if not class_names:
            raise ValueError("AnswerParser needs at least one class name")
        self.class_names = list(class_names)
        self._tokens = [normalize_answer(n) for n in self.class_names]
        seen: dict[tuple[str, ...], int] = {}
        for i, toks in enumerate(self._tokens):
            if not toks:
                raise ValueError(f"class name {self.class_names[i]!r} (label {i}) has no letters or digits")
            if toks in seen:
                raise ValueError(
                    f"class names {self.class_names[seen[toks]]!r} (label {seen[toks]}) and "
                    f"{self.class_names[i]!r} (label {i}) normalise to the same words {' '.join(toks)!r}; "
                    "rename one so that answers can tell them apart"
                )
            seen[toks] = i
        self._exact = seen
        self._content = [frozenset(t for t in toks if t not in _FILLER) or frozenset(toks) for toks in self._tokens]
        # For each class, the longer class names that contain its name, with the offsets where it sits.
        self._supersets: list[list[tuple[int, list[int]]]] = []
        for toks in self._tokens:
            n, sup = len(toks), []
            for j, longer in enumerate(self._tokens):
                offsets = [o for o in range(len(longer) - n + 1) if longer[o:o + n] == toks] if len(longer) > n else []
                if offsets:
                    sup.append((j, offsets))
            self._supersets.append(sup)

    def __call__(self, answer: str) -> ParsedAnswer:
        tagged = _ANSWER_TAG.findall(answer or "")
        tokens = normalize_answer(tagged[-1] if tagged else (answer or ""))
        if not tokens:
            return ParsedAnswer(None, "unparseable")
        if tokens in self._exact:
            return ParsedAnswer(self._exact[tokens], "exact")
        mentions = self._mentions(tokens)
        candidates = set(range(len(self.class_names)))
        for m in mentions:
            candidates &= m
        if not candidates:  # the answer names two different things ("a coat or a shirt"): a hedge
            return ParsedAnswer(None, "unparseable")
        if mentions and len(candidates) == 1:
            return ParsedAnswer(candidates.pop(), "contained")
        words = frozenset(t for t in tokens if t not in _FILLER)
        if not words:
            return ParsedAnswer(None, "unparseable")
        scores = {c: len(words & self._content[c]) / len(words | self._content[c]) for c in candidates}
        best = max(scores.values())
        winners = [c for c, v in scores.items() if v == best]
        if best > 0 and len(winners) == 1:
            return ParsedAnswer(winners[0], "overlap")
        return ParsedAnswer(None, "unparseable")

    def _mentions(self, tokens: tuple[str, ...]) -> list[set[int]]:
        """One set of possible classes per occurrence of a class name in ``tokens``.

        An occurrence of "shirt" in "t shirt" may be the class "shirt" or a shortened "t-shirt/top": when the
        words around it continue a longer class name that contains it, that class is a candidate too.
        """
        out = []
        for label, name in enumerate(self._tokens):
            n = len(name)
            for s in range(len(tokens) - n + 1):
                if tokens[s:s + n] != name:
                    continue
                cands = {label}
                for other in self._supersets[label]:
                    for offset in other[1]:
                        longer = self._tokens[other[0]]
                        aligned = sum(
                            1 for j, tok in enumerate(longer)
                            if not offset <= j < offset + n and 0 <= s - offset + j < len(tokens)
                            and tokens[s - offset + j] == tok
                        )
                        if aligned:
                            cands.add(other[0])
                out.append(cands)
        return out

    def parse_all(self, answers: Sequence[str]) -> list[ParsedAnswer]:
        """Parse a list of answers.

        Example:
            >>> [a.label for a in AnswerParser(["cat", "dog"]).parse_all(["Dog.", "no idea"])]
            [1, None]
        """
        return [self(a) for a in answers]


def parse_answer(answer: str, class_names: Sequence[str]) -> ParsedAnswer:
    """Parse one answer against ``class_names`` (build an :class:`AnswerParser` once for many answers).

    Example:
        >>> parse_answer("Definitely a SNEAKER!", ["Sandal", "Sneaker", "Ankle boot"])
        ParsedAnswer(label=1, how='contained')
    """
    return AnswerParser(class_names)(answer)
