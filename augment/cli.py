"""``python -m augment``: TIDA from the command line.

Subcommands:
  skills          count the skill words (gender, color, counting by default) in a dataset's captions
  counterfactual  print the counterfactual edits of captions, as JSON
  tida            the TIDA dataset job: edit images to match counterfactual captions, verify, write a dataset
  tida-merge      merge the shards of a TIDA job into one dataset (automatic when the last shard finishes)

All but tida-merge take --skill NAME (a shipped skill: gender, color, counting, size, shape; repeatable, or
comma-separated: --skills color,counting) and --skill-file FILE (a YAML skill of your own, see
augment/skill_data/); without --skill they use gender, color, counting and the skills of the files.

Examples:
  python -m augment counterfactual "A woman holds two red balloons."
  python -m augment tida --data data/world --split train --skills color,counting,gender --out tida-world/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def _chosen_skills(args: argparse.Namespace) -> list:
    from augment.skills import SKILLS, load_skills

    registry = load_skills(args.skill_file)
    asked = _skill_names(args)
    if asked:
        unknown = [n for n in asked if n not in registry]
        if unknown:
            raise ValueError(f"unknown skill(s) {unknown}; known: {sorted(registry)}")
        names = list(dict.fromkeys(asked))
    else:
        user = [n for n in load_skills(args.skill_file, shipped=False) if n not in SKILLS]
        names = list(SKILLS) + user
    return [registry[n] for n in names]


def _skill_names(args: argparse.Namespace) -> list[str]:
    """--skill values, commas split: ``--skills color,counting --skill gender``."""
    return [n.strip() for value in args.skill for n in value.split(",") if n.strip()]


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


def _threshold(text: str) -> float | None:
    """A verifier threshold: a number, or "none" to turn its check off."""
    return None if text.lower() in ("none", "off") else float(text)


def _tida(args: argparse.Namespace) -> int:
    from augment.tida import TIDAConfig, run_tida

    cfg = TIDAConfig(
        data=args.data, out=args.out, split=args.split, limit=args.limit, image_dir=args.image_dir,
        skills=tuple(_skill_names(args)) or None, skill_files=tuple(args.skill_file), captions=args.captions,
        edits_per_record=args.edits_per_record, seed=args.seed, editor=args.editor, model=args.model,
        segmenter=args.segmenter, device=args.device, dtype=args.dtype, steps=args.steps, guidance=args.guidance,
        world_seed=args.world_seed, other_captions=args.other_captions, verify=not args.no_verify,
        retriever=args.retriever, margin=args.margin, gain=args.gain, direction=args.direction,
        max_unmasked_diff=args.max_unmasked_diff, keep_rejected=args.keep_rejected, batch_size=args.batch_size,
        shard=args.shard, on_error=args.on_error)
    print(json.dumps(run_tida(cfg, progress=not args.no_progress), indent=2))
    return 0


def _tida_merge(args: argparse.Namespace) -> int:
    from augment.tida import merge_tida

    print(json.dumps(merge_tida(args.out), indent=2))
    return 0


def _add_tida(sub, skill_opts: argparse.ArgumentParser) -> None:
    t = sub.add_parser("tida", parents=[skill_opts], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="the TIDA dataset job (counterfactual captions, edited images, verification)",
                       description="Edit each record's image to match a counterfactual caption, verify the edit, "
                       "and write the accepted ones as a dataset with provenance (see augment/tida.py). "
                       "Resumable; shard with --shard i/N or accelerate launch.")
    g = t.add_argument_group("input and output")
    g.add_argument("--data", required=True, help="dataset folder (metadata.jsonl), Karpathy JSON, or a folder with one")
    g.add_argument("--out", required=True, help="output folder: new, or this job's (to resume)")
    g.add_argument("--split", default=None, help="only this split (e.g. train); default: every record")
    g.add_argument("--limit", type=int, default=None, help="only the first N records (after --split)")
    g.add_argument("--image-dir", default=None, help="images of a Karpathy JSON, when not next to it")
    g.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="bad records: stop naming file, line and field (default), or skip and report them")
    g.add_argument("--shard", default=None, metavar="I/N",
                   help="process records with index %% N == I (default: RANK/WORLD_SIZE under accelerate, else all)")
    g.add_argument("--batch-size", type=int, default=8, help="records per committed chunk; images per pipeline call")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = t.add_argument_group("which edits")
    g.add_argument("--captions", choices=("all", "first", "sample"), default="all",
                   help="captions to edit: all, the first, or one drawn among those with a skill word")
    g.add_argument("--edits-per-record", type=int, default=1, metavar="N",
                   help="edits drawn per record, skills in turn (0: every counterfactual); default 1")
    g.add_argument("--seed", type=int, default=0, help="seed of the draws and of every edit")
    g = t.add_argument_group("editor")
    g.add_argument("--editor", choices=("auto", "scene", "inpaint", "instruct-pix2pix", "regenerate"),
                   default="auto", help="auto: scene when records carry scene graphs, else inpaint")
    g.add_argument("--model", default=None, help="diffusion model: hub id or save_pretrained folder")
    g.add_argument("--segmenter", default=None, help="inpaint: CLIPSeg model (hub id or folder)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (editor, segmenter, retriever)")
    g.add_argument("--dtype", default="auto", help="diffusion dtype: auto, float16, bfloat16, float32")
    g.add_argument("--steps", type=int, default=50, help="denoising steps")
    g.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the editor's)")
    g.add_argument("--world-seed", type=int, default=None, help="scene editor: the world's seed (default: world.json)")
    g.add_argument("--other-captions", choices=("regenerate", "none"), default="regenerate",
                   help="world data: regenerate the other captions from the edited scene, or keep only the edited one")
    g = t.add_argument_group("verification")
    g.add_argument("--retriever", default="finecap:lit", help="retriever spec (default finecap:lit)")
    g.add_argument("--no-verify", action="store_true", help="write every applied edit unverified")
    g.add_argument("--margin", type=_threshold, default=0.0,
                   help="least cos(edited, target) - cos(edited, source); 'none': off (default 0)")
    g.add_argument("--gain", type=_threshold, default=None, help="least rise of that margin over the original")
    g.add_argument("--direction", type=_threshold, default=None, help="least directional similarity")
    g.add_argument("--max-unmasked-diff", type=_threshold, default=0.02,
                   help="largest mean pixel change outside the mask, 0-1 (default 0.02)")
    g.add_argument("--keep-rejected", action="store_true", help="also write rejected edits (tida.accepted false)")
    t.set_defaults(func=_tida)
    m = sub.add_parser("tida-merge", help="merge the finished shards of a TIDA job into OUT/metadata.jsonl")
    m.add_argument("--out", required=True, help="the job's output folder")
    m.set_defaults(func=_tida_merge)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m augment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    skill_opts = argparse.ArgumentParser(add_help=False)
    skill_opts.add_argument("--skill", "--skills", action="append", default=[], metavar="NAME",
                            help="skill(s) to use, comma-separated or repeated (default: gender, color, counting "
                            "and the files' skills)")
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
    _add_tida(sub, skill_opts)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
