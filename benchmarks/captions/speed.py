"""``caption_speed``: our tokenize + BLEU + ROUGE-L + CIDEr-D against pycocoevalcap's, timed in one run.

Both sides do the same work on the same seeded synthetic corpus (:func:`synthetic_corpus`): PTB-tokenize
references and predictions, then BLEU-1..4, ROUGE-L and CIDEr-D with per-image scores. pycocoevalcap runs
once (its Java tokenizer's start-up included, as every user pays it); ours is the best of ``repeats``
runs of :func:`compute_caption_metrics` (a first, cold run - Unicode tables built, nothing cached - is
reported separately). The outputs of both are compared, so the timing is also an equality check.

Example (runs pycocoevalcap's Java tokenizer; tests/test_caption_metrics.py covers it)::

    r = caption_speed(n_images=30, repeats=1)
    r["speedup"] > 1 and r["max_abs_diff"]["CIDEr"] < 1e-9  # True
"""

from __future__ import annotations

import argparse
import json
import os
import time

__all__ = ["caption_speed", "main"]


def _pycocoevalcap(refs: dict, preds: dict) -> tuple[dict, dict, dict]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    times = {}
    t0 = time.perf_counter()
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    times["tokenize"] = time.perf_counter() - t0
    scores, per = {}, {}
    t = time.perf_counter()
    b, b_per = Bleu(4).compute_score(gts, res, verbose=0)
    times["bleu"] = time.perf_counter() - t
    for i in range(4):
        scores[f"Bleu_{i + 1}"], per[f"Bleu_{i + 1}"] = b[i], list(b_per[i])
    t = time.perf_counter()
    scores["ROUGE_L"], r_per = Rouge().compute_score(gts, res)
    times["rouge"] = time.perf_counter() - t
    per["ROUGE_L"] = list(r_per)
    t = time.perf_counter()
    scores["CIDEr"], c_per = Cider().compute_score(gts, res)
    times["cider"] = time.perf_counter() - t
    per["CIDEr"] = list(c_per)
    times["total"] = time.perf_counter() - t0
    return scores, per, {"gts": gts, "res": res, "times": times}


def caption_speed(n_images: int = 5000, n_refs: int = 5, seed: int = 0, repeats: int = 3) -> dict:
    """Seconds for tokenize + BLEU + ROUGE-L + CIDEr-D, ours (best of ``repeats``) and pycocoevalcap's (once).

    Returns a dict with ``ours_s``, ``pycocoevalcap_s``, ``speedup`` (their time / ours), both breakdowns,
    and ``max_abs_diff`` per metric over the corpus and per-image scores (expected < 1e-9).
    """
    from benchmarks.captions.evaluate import _fast_scores, compute_caption_metrics
    from benchmarks.captions.meteor import java_executable
    from benchmarks.captions.synthetic import synthetic_corpus
    from vlm.metrics.tokenizer import tokenize_many

    if repeats < 1:
        raise ValueError(f"caption_speed: repeats must be >= 1, got {repeats}")
    java_executable()  # pycocoevalcap's tokenizer is Java: fail early with a clear message
    refs, preds = synthetic_corpus(n_images, n_refs, seed)

    t = time.perf_counter()
    compute_caption_metrics(refs, preds)
    cold = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        compute_caption_metrics(refs, preds)
        runs.append(time.perf_counter() - t)
    ours = min(runs)

    theirs_scores, theirs_per, extra = _pycocoevalcap(refs, preds)
    theirs = extra["times"]["total"]

    # equality check (untimed): same tokenization, same corpus and per-image scores
    gts, res = tokenize_many(refs, {k: [preds[k]] for k in refs})
    ours_scores, ours_per = _fast_scores(gts, res, ["BLEU", "ROUGE_L", "CIDEr"])
    diff = {k: max([abs(ours_scores[k] - theirs_scores[k])]
                   + [abs(a - b) for a, b in zip(ours_per[k], theirs_per[k])]) for k in theirs_scores}
    return {
        "target": "captions", "n_images": n_images, "n_refs": n_refs, "seed": seed, "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "ours_s": round(ours, 4), "ours_runs_s": [round(x, 4) for x in runs], "ours_cold_s": round(cold, 4),
        "pycocoevalcap_s": round(theirs, 4),
        "pycocoevalcap_breakdown_s": {k: round(v, 4) for k, v in extra["times"].items()},
        "speedup": round(theirs / ours, 2), "goal_speedup": 10,
        "tokenization_equal": gts == extra["gts"] and res == extra["res"],
        "max_abs_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks speed captions [--n-images N] [--n-refs K] [--seed S] [--repeats R]``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks speed captions",
                                description="caption metrics: ours vs pycocoevalcap (tokenize + BLEU + ROUGE-L + CIDEr-D)")
    p.add_argument("--n-images", type=int, default=5000)
    p.add_argument("--n-refs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(caption_speed(args.n_images, args.n_refs, args.seed, args.repeats), indent=2))
    return 0
