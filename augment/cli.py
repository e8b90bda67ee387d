"""``python -m augment``: TIDA from the command line.

Subcommands:
  skills          count the skill words (gender, color, counting by default) in a dataset's captions
  counterfactual  print the counterfactual edits of captions, as JSON

Both take --skill NAME (a shipped skill: gender, color, counting, size, shape) and --skill-file FILE (a YAML
skill of your own, see augment/skill_data/); without --skill they use gender, color, counting and the skills
of the files.

Example:
  python -m augment counterfactual "A woman holds two red balloons."
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def _chosen_skills(args: argparse.Namespace) -> list:
    from augment.skills import SKILLS, load_skills

    registry = load_skills(args.skill_file)
    if args.skill:
        unknown = [n for n in args.skill if n not in registry]
        if unknown:
            raise ValueError(f"unknown skill(s) {unknown}; known: {sorted(registry)}")
        names = list(dict.fromkeys(args.skill))
    else:
        user = [n for n in load_skills(args.skill_file, shipped=False) if n not in SKILLS]
        names = list(SKILLS) + user
    return [registry[n] for n in names]


def _skills(args: argparse.Namespace) -> int:
    from augment.skills import find_skills
    from vlm.data import read_imagefolder

    skills = _chosen_skills(args)
    names = [s.name for s in skills]
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
            matches = find_skills(cap, skills)
            for s in {m.skill for m in matches}:
                per_skill[s] += 1
                seen.add(s)
            words.update(m.word for m in matches)
        images_with.update(seen)
    print(json.dumps({
        "images": len(ds), "captions": n_captions,
        "captions_with_skill": {s: per_skill[s] for s in names},
        "images_with_skill": {s: images_with[s] for s in names},
        "words": dict(words.most_common()),
    }, indent=2))
    return 0


def _counterfactual(args: argparse.Namespace) -> int:
    import dataclasses
    import random

    from augment.counterfactual import counterfactuals, sample_counterfactual

    skills = _chosen_skills(args)
    rng = random.Random(args.seed)
    out = []
    for caption in args.captions:
        if args.sample:
            one = sample_counterfactual(caption, skills, rng=rng)
            edits = [] if one is None else [one]
        else:
            edits = counterfactuals(caption, skills)
        out.append({"caption": caption,
                    "edits": [{k: v for k, v in dataclasses.asdict(e).items() if k != "caption"} for e in edits]})
    print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m augment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    skill_opts = argparse.ArgumentParser(add_help=False)
    skill_opts.add_argument("--skill", action="append", default=[], metavar="NAME",
                            help="a skill to use (repeatable; default: gender, color, counting and the files' skills)")
    skill_opts.add_argument("--skill-file", action="append", default=[], metavar="FILE",
                            help="a YAML skill file or folder of them (repeatable); a same-named skill is replaced")
    s = sub.add_parser("skills", parents=[skill_opts], help="count skill words in a dataset's captions")
    s.add_argument("--data", required=True, help="dataset folder (imagefolder + metadata.jsonl)")
    s.add_argument("--split", default=None, help="only this split")
    s.set_defaults(func=_skills)
    c = sub.add_parser("counterfactual", parents=[skill_opts],
                       help="print each caption's counterfactual edits (JSON)")
    c.add_argument("captions", nargs="+", metavar="CAPTION", help="caption(s) to edit")
    c.add_argument("--sample", action="store_true", help="one random edit per caption instead of all of them")
    c.add_argument("--seed", type=int, default=0, help="seed of --sample")
    c.set_defaults(func=_counterfactual)
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
