"""Detail and hallucination of captions against the built-in world's scene graphs.

``python -m benchmarks hallucination --data WORLD_DIR [--field boosted_caption] [--captions PREDS.json]``

For each caption the world's fact parser (:mod:`vlm.world.facts`) lists the facts it states (things,
colours, sizes, counts, background, relations) and checks each against the image's scene graph. Reported
per caption source: facts per caption, and the hallucination rate = unsupported facts / stated facts; for the
``--field`` and ``--captions`` sources also per kind of fact (``by_kind:<source>``: how many stated, per caption,
and the share wrong).
The baselines beside it are the world's own captions: the first (tersest) reference, the mean over the
references, and the exhaustive dense caption.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlm.world.facts import fact_scores  # noqa: F401  (re-exported: benchmarks.fact_scores)


def world_baselines(records, scenes) -> dict[str, dict]:
    """The world's own captions scored the same way: first reference, all references, dense caption."""
    first = {str(r.id): r.captions[0] for r in records}
    dense = {str(r.id): r.extra["dense_caption"] for r in records if r.extra.get("dense_caption")}
    out = {"reference_first": fact_scores(first, scenes)}
    per_ref = [fact_scores({str(r.id): r.captions[j] for r in records}, scenes)["facts_per_caption"]
               for j in range(min(len(r.captions) for r in records))]
    out["reference_mean"] = {"facts_per_caption": round(sum(per_ref) / len(per_ref), 4)}
    if dense:
        out["dense_caption"] = fact_scores(dense, scenes)
    return out


def _add_scores(results: dict, name: str, scores: dict) -> None:
    """``results[name]`` = the scores; their ``by_kind`` goes after it, to ``results["by_kind:" + name]``, one row
    per kind of fact (its own table in the report)."""
    kinds = scores.pop("by_kind")
    results[name] = scores
    results[f"by_kind:{name}"] = [{"kind": k, **v} for k, v in kinds.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks hallucination", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a world dataset folder (records carry 'scene')")
    p.add_argument("--split", default=None)
    p.add_argument("--field", action="append", default=[], help="record field holding captions to score")
    p.add_argument("--captions", action="append", default=[], help="predictions JSON {id: caption} to score")
    p.add_argument("--out", default=None, help="write results + report here")
    args = p.parse_args(argv)

    from benchmarks.captions.io import CaptionInputError, load_predictions
    from benchmarks.report import write_results
    from vlm.data import read_imagefolder
    from vlm.world import Scene

    t0 = time.perf_counter()
    ds = read_imagefolder(args.data, split=args.split, check_images=False)
    records = list(ds)
    if not records or "scene" not in records[0].extra:
        print(f"error: {args.data}: records have no 'scene' field (not a world dataset)", file=sys.stderr)
        return 2
    scenes = {str(r.id): Scene.from_dict(r.extra["scene"]) for r in records}
    results: dict[str, dict] = world_baselines(records, scenes)
    for f in args.field:
        caps = {str(r.id): r.extra[f] for r in records if isinstance(r.extra.get(f), str)}
        if not caps:
            print(f"error: no record of {args.data} has a string field {f!r}", file=sys.stderr)
            return 2
        _add_scores(results, f"field:{f}", fact_scores(caps, scenes, by_kind=True))
    for path in args.captions:
        try:
            preds = load_predictions(path)  # {id: caption} or COCO results, bad files named
        except (OSError, CaptionInputError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        unknown = set(preds) - set(scenes)
        if unknown:
            print(f"error: {path}: ids not in the dataset, e.g. {sorted(unknown)[0]!r}", file=sys.stderr)
            return 2
        _add_scores(results, f"captions:{Path(path).name}", fact_scores(preds, scenes, by_kind=True))
    base = results["reference_first"]["facts_per_caption"]
    for k, v in results.items():
        if isinstance(v, dict) and "facts_per_caption" in v and base:
            v["facts_vs_first_reference"] = round(v["facts_per_caption"] / base, 3)
    if args.out:
        write_results(args.out, "hallucination", results, config=vars(args), wall_time_s=time.perf_counter() - t0)
    print(json.dumps(results, indent=2))
    return 0

