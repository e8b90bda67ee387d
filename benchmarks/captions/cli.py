"""``python -m benchmarks captions``: COCO caption metrics of a predictions file, printed as JSON.

Usage::

    python -m benchmarks captions --refs REFS.json --preds PREDS.json [--out DIR]
        [--metrics BLEU,ROUGE_L,CIDEr] [--meteor] [--spice] [--per-image] [--skills]

``REFS.json``: ``{id: [captions]}`` or COCO annotations; ``PREDS.json``: ``{id: caption}`` or COCO results
(``[{"image_id", "caption"}]``). With ``--out`` the results JSON (with config and versions) and a Markdown
report are written there as ``captions.json`` / ``captions.md``. Exit codes: 0 ok, 2 bad input, 1 a
metric's Java program failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks captions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refs", required=True, help="references JSON: {id: [captions]} or COCO annotations")
    p.add_argument("--preds", required=True, help="predictions JSON: {id: caption} or COCO results")
    p.add_argument("--out", default=None, help="folder for captions.json + captions.md")
    p.add_argument("--metrics", default="BLEU,ROUGE_L,CIDEr",
                   help="comma-separated: BLEU, ROUGE_L, CIDEr, METEOR, SPICE (default BLEU,ROUGE_L,CIDEr)")
    p.add_argument("--meteor", action="store_true", help="add METEOR 1.5 (Java, ~10 s start-up)")
    p.add_argument("--spice", action="store_true",
                   help="add SPICE if Stanford CoreNLP 3.6.0 is installed (never downloaded; a note says how)")
    p.add_argument("--per-image", action="store_true", help="include per-image scores")
    p.add_argument("--skills", action="store_true",
                   help="scores on the gender / colour / counting subsets (TIDA's skill test splits)")
    p.add_argument("--meteor-timeout", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--spice-timeout", type=float, default=3600.0, help="seconds (default 3600)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from benchmarks.captions.evaluate import compute_caption_metrics
    from benchmarks.captions.io import CaptionInputError, load_predictions, load_references
    from benchmarks.captions.meteor import JavaNotFoundError, MeteorError

    t0 = time.perf_counter()
    try:
        refs = load_references(args.refs)
        preds = load_predictions(args.preds)
        from benchmarks.captions.io import check_pairing

        check_pairing(refs, preds, args.refs, args.preds)
        results = compute_caption_metrics(
            refs, preds, metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
            per_image=args.per_image, skills=args.skills, meteor=args.meteor, spice=args.spice,
            meteor_timeout=args.meteor_timeout, spice_timeout=args.spice_timeout)
    except (CaptionInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (JavaNotFoundError, MeteorError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    print(json.dumps(results, indent=2))
    if args.out:
        from benchmarks.report import markdown_table, write_results

        sections = {}
        if "skills" in results:
            rows = [{"skill": s, **row} for s, row in results["skills"].items()]
            sections["Skill subsets"] = markdown_table(rows)
        if results.get("notes"):
            sections["Notes"] = "\n".join(f"- {n}" for n in results["notes"])
        config = {"refs": args.refs, "preds": args.preds, "metrics": args.metrics, "meteor": args.meteor,
                  "spice": args.spice, "per_image": args.per_image, "skills": args.skills}
        write_results(args.out, "captions", results, config=config, seed=None, sections=sections,
                      wall_time_s=wall, device="cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
