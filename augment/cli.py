"""``python -m augment``: TIDA from the command line.

Subcommands:
  skills   count the skill words (gender, color, counting) in a dataset's captions
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def _skills(args: argparse.Namespace) -> int:
    from augment.skills import SKILLS, find_skills
    from vlm.data import read_imagefolder

    ds = read_imagefolder(args.data, check_images=False)
    if args.split:
        ds = ds.filter_split(args.split)
    per_skill: Counter = Counter()
    words: Counter = Counter()
    images_with: Counter = Counter()
    n_captions = 0
    for rec in ds:
        seen = set()
        for cap in rec.captions:
            n_captions += 1
            matches = find_skills(cap)
            for s in {m.skill for m in matches}:
                per_skill[s] += 1
                seen.add(s)
            words.update(m.word for m in matches)
        images_with.update(seen)
    print(json.dumps({
        "images": len(ds), "captions": n_captions,
        "captions_with_skill": {s: per_skill[s] for s in SKILLS},
        "images_with_skill": {s: images_with[s] for s in SKILLS},
        "words": dict(words.most_common()),
    }, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m augment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("skills", help="count skill words in a dataset's captions")
    s.add_argument("--data", required=True, help="dataset folder (imagefolder + metadata.jsonl)")
    s.add_argument("--split", default=None, help="only this split")
    s.set_defaults(func=_skills)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
