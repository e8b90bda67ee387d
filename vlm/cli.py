"""``python -m vlm``: the core package's command line.

Subcommands:
  world        write a built-in world dataset (``--preset``: one of ``vlm.world.PRESETS``)
  pretrained   list or check the pretrained components (``list`` / ``check``)
  train        MLE training of a captioner (``--config vlm/configs/mle-world-small.yaml``)
  caption      caption a dataset split with a trained model and score it (``--model DIR --data DIR``)
  boost        Visual Caption Boosting of a dataset's captions (``--data DIR --out DIR``)
  train-retriever  train the offline retriever (LiT: EfficientNet-Lite0 + MiniLM) on the world
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _world(args: argparse.Namespace) -> int:
    from vlm.world import generate_world, resolve_config

    overrides = {}
    if args.size is not None:
        overrides["image_size"] = args.size
    cfg = resolve_config(args.preset, **overrides)
    out = generate_world(args.out, n=args.n, seed=args.seed, config=cfg, overwrite=args.overwrite,
                         progress=not args.quiet)
    from vlm.data import read_imagefolder

    ds = read_imagefolder(out, check_images=False)
    splits: dict[str, int] = {}
    for r in ds:
        splits[r.split] = splits.get(r.split, 0) + 1
    print(json.dumps({"out": str(out), "preset": cfg.preset, "seed": args.seed, "images": len(ds),
                      "splits": splits}, indent=2))
    return 0


def _pretrained(args: argparse.Namespace) -> int:
    from vlm import pretrained

    if args.action == "list":
        print(json.dumps(pretrained.list_components(), indent=2))
        return 0
    report = pretrained.check_components(names=args.names or None)
    print(json.dumps(report, indent=2))
    return 0 if all(r.get("ok") for r in report.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    from vlm.world import PRESETS  # light (pure Python + Pillow), so --help lists the presets as they are

    p = argparse.ArgumentParser(prog="python -m vlm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("world", help="write a built-in world dataset (imagefolder + metadata.jsonl)")
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    w.add_argument("--seed", type=int, default=0, help="world seed; same seed, byte-identical output")
    w.add_argument("--preset", default="captioning",
                   help=" | ".join(PRESETS) + " (default captioning)")
    w.add_argument("--size", type=int, default=None, help="image side in pixels (default 224)")
    w.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=_world)

    pr = sub.add_parser("pretrained", help="list or check the pretrained components")
    pr.add_argument("action", choices=["list", "check"])
    pr.add_argument("names", nargs="*", help="components to check (default: all offline ones)")
    pr.set_defaults(func=_pretrained)
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


# Subcommands with their own parsers: name -> (module, help).
_DELEGATED = {
    "train": ("vlm.train.mle", "MLE training of a captioner from a YAML config (accelerate launch works too)"),
    "caption": ("vlm.caption", "caption a dataset split with a trained captioner; caption metrics + world facts"),
    "boost": ("vlm.boost", "Visual Caption Boosting: blend reference captions into anchored fine-grained ones"),
    "train-retriever": ("vlm.train.contrastive", "train the offline LiT retriever on the world and evaluate it"),
}


def main(argv: list[str] | None = None) -> int:
    import sys as _sys

    argv = list(_sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in _DELEGATED:
        import importlib

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return importlib.import_module(_DELEGATED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
