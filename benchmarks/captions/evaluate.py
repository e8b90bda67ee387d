"""``compute_caption_metrics``: the COCO caption metrics of a set of predictions, optionally per image and
per TIDA skill subset.

The captions are tokenized like pycocoevalcap (references and predictions as two texts), then BLEU-1..4,
ROUGE-L and CIDEr-D are computed from one integer encoding of the corpus; METEOR and SPICE run their Java
programs when asked (SPICE only if its CoreNLP jars are installed - otherwise the result says why and has
no ``SPICE`` key). Keys are pycocoevalcap's: ``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``SPICE``.

Skill breakdown (TIDA's skill-specific test splits): the images whose references contain a gender,
colour or counting word (:data:`augment.skills.SKILL_WORDS`, detected with
:func:`augment.skills.detect_skills` on the raw references), each scored as a corpus of its own. For
CIDEr-D that means document frequencies from the subset's own references - exactly what running
pycocoevalcap on the subset gives, and not the mean of the full-corpus per-image CIDEr over the subset.
BLEU and METEOR are corpus-level statistics recomputed on the subset too; ROUGE-L and SPICE are means
of per-image scores. (The captions are tokenized once, for the whole corpus.)

Example:
    >>> refs = {"1": ["A man rides a red bike.", "A person on a bike."], "2": ["Two dogs run.", "Dogs on grass."]}
    >>> preds = {"1": "A man riding a red bike.", "2": "Two dogs running on grass."}
    >>> out = compute_caption_metrics(refs, preds, skills=True)
    >>> sorted(out), round(out["CIDEr"], 4)
    (['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'CIDEr', 'ROUGE_L', 'n_images', 'notes', 'skills'], 2.7004)
    >>> out["skills"]["counting"]["n_images"], out["skills"]["color"]["n_images"]
    (1, 1)
"""

from __future__ import annotations

import logging
from typing import Iterable

from benchmarks.captions.io import CaptionInputError, check_pairing
from vlm.metrics.tokenizer import tokenize_many

__all__ = ["METRICS", "compute_caption_metrics", "skill_subsets"]

log = logging.getLogger(__name__)

#: Metric names accepted in ``metrics`` (case-insensitive), in output order.
METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_ALIASES = {"bleu": "BLEU", "meteor": "METEOR", "rouge_l": "ROUGE_L", "rouge": "ROUGE_L", "rouge-l": "ROUGE_L",
            "cider": "CIDEr", "cider-d": "CIDEr", "cider_d": "CIDEr", "spice": "SPICE"}
_CIDER_SUBSET_NOTE = ("skills: each skill subset is scored as its own corpus; its CIDEr uses document "
                      "frequencies from the subset's references (as pycocoevalcap run on the subset does)")


def _check_inputs(references: dict, predictions: dict) -> None:
    if not isinstance(references, dict) or not isinstance(predictions, dict):
        raise CaptionInputError("references must be {id: [captions]} and predictions {id: caption}, got "
                                f"{type(references).__name__} and {type(predictions).__name__}")
    if not references:
        raise CaptionInputError("references: no images")
    for k, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)) or not refs:
            raise CaptionInputError(f"references: id {k!r} must have a non-empty list of captions, got {refs!r:.80}")
        for j, r in enumerate(refs):
            if not isinstance(r, str):
                raise CaptionInputError(f"references: id {k!r}, reference {j}: caption must be a string, "
                                        f"got {type(r).__name__}")
            if not r.strip():
                raise CaptionInputError(f"references: id {k!r}, reference {j}: empty caption")
    for k, c in predictions.items():
        if not isinstance(c, str):
            raise CaptionInputError(f"predictions: id {k!r}: caption must be a string, got {type(c).__name__}")
        if not c.strip():
            raise CaptionInputError(f"predictions: id {k!r}: empty caption")
    check_pairing(references, predictions)


def _resolve_metrics(metrics: Iterable[str], meteor: bool, spice: bool) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen = set()
    for m in metrics:
        name = _ALIASES.get(str(m).lower())
        if name is None:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        chosen.add(name)
    if meteor:
        chosen.add("METEOR")
    if spice:
        chosen.add("SPICE")
    return [m for m in METRICS if m in chosen]


def skill_subsets(references: dict) -> dict[str, list]:
    """``{skill: [ids]}``: the images with at least one reference using a word of that skill.

    Example:
        >>> skill_subsets({"1": ["Two men."], "2": ["A red car."], "3": ["A cat."]})
        {'gender': ['1'], 'color': ['2'], 'counting': ['1']}
    """
    from augment.skills import SKILL_WORDS, detect_skills

    out: dict[str, list] = {s: [] for s in SKILL_WORDS}
    for k, refs in references.items():
        found = set().union(*(detect_skills(r) for r in refs))
        for s in out:
            if s in found:
                out[s].append(k)
    return out


def _fast_scores(gts: dict, res: dict, metrics: list[str]) -> tuple[dict, dict]:
    from vlm.metrics import fast_scores

    return fast_scores(gts, res, metrics)


_ORDER = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]


def compute_caption_metrics(references: dict[str, list[str]], predictions: dict[str, str], *,
                            metrics: Iterable[str] = ("BLEU", "ROUGE_L", "CIDEr"), per_image: bool = False,
                            skills: bool = False, meteor: bool = False, spice: bool = False,
                            meteor_timeout: float = 600.0, spice_timeout: float = 3600.0) -> dict:
    """COCO caption metrics of ``predictions`` against ``references``, pycocoevalcap-equal.

    Args:
        references: ``{id: [reference captions]}`` (raw text; tokenized here).
        predictions: ``{id: caption}``, one per reference id.
        metrics: any of ``BLEU`` (gives ``Bleu_1``..``Bleu_4``), ``ROUGE_L``, ``CIDEr`` (CIDEr-D), ``METEOR``,
            ``SPICE``.
        per_image: also return ``per_image``: ``{id: {metric: score}}``.
        skills: also return ``skills``: ``{skill: {"n_images": k, metric: score, ...}}`` (see module doc).
        meteor: add METEOR (Java, ~10 s start-up).
        spice: add SPICE when its CoreNLP jars are installed; otherwise a note says how to install them.
        meteor_timeout, spice_timeout: seconds before the Java program is killed.

    Returns:
        ``{"Bleu_1": ..., ..., "n_images": N, "notes": [...]}`` plus ``per_image`` / ``skills`` on request.
    """
    _check_inputs(references, predictions)
    chosen = _resolve_metrics(metrics, meteor, spice)
    ids = list(references)
    notes: list[str] = []
    gts, res = tokenize_many({k: list(references[k]) for k in ids}, {k: [predictions[k]] for k in ids})
    scores, per = _fast_scores(gts, res, chosen)
    subsets = skill_subsets(references) if skills else {}

    meteor_subset_scores: dict = {}
    if "METEOR" in chosen:
        from benchmarks.captions.meteor import Meteor

        names = [s for s, sub in subsets.items() if sub]
        corpus_scores, per["METEOR"] = Meteor(timeout=meteor_timeout).score_subsets(
            gts, res, [ids] + [subsets[s] for s in names])
        scores["METEOR"] = corpus_scores[0]
        meteor_subset_scores = dict(zip(names, corpus_scores[1:]))
    if "SPICE" in chosen:
        from benchmarks.captions.spice import Spice, spice_status

        ok, message = spice_status()
        if ok:
            scores["SPICE"], spice_per = Spice(timeout=spice_timeout).compute_score(gts, res)
            per["SPICE"] = [p["All"]["f"] for p in spice_per]
        else:
            log.warning("%s", message)
            notes.append(message)

    out: dict = {k: scores[k] for k in _ORDER if k in scores}
    out["n_images"] = len(ids)
    if per_image:
        keys = [k for k in _ORDER if k in per]
        out["per_image"] = {img: {k: per[k][i] for k in keys} for i, img in enumerate(ids)}
    if skills:
        position = {k: i for i, k in enumerate(ids)}
        table: dict = {}
        for skill, sub in subsets.items():
            row: dict = {"n_images": len(sub)}
            if sub:
                sub_scores, _ = _fast_scores({k: gts[k] for k in sub}, {k: res[k] for k in sub}, chosen)
                if skill in meteor_subset_scores:
                    sub_scores["METEOR"] = meteor_subset_scores[skill]
                if "SPICE" in per:
                    vals = [per["SPICE"][position[k]] for k in sub]
                    sub_scores["SPICE"] = sum(vals) / len(vals)
                row.update({k: sub_scores[k] for k in _ORDER if k in sub_scores})
            table[skill] = row
        out["skills"] = table
        if "CIDEr" in chosen:
            notes.append(_CIDER_SUBSET_NOTE)
    out["notes"] = notes
    return out
