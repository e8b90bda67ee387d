"""``python -m benchmarks`` and the ``finecap`` console script.

``python -m benchmarks`` subcommands:
  run          the default job: build a world, embed it with the pretrained components, measure what they see
  captions     caption metrics of predictions against references (pycocoevalcap-exact, fast)
  truematch    TrueMatch self-retrieval R@1 per bag size, RD100, CLIPScore
  recognition  fine-grained recognition protocols
  flickr30k    caption and score the Flickr30K Karpathy split (``coco`` likewise)
  hallucination  facts per caption and hallucination rate against world scene graphs
  sr-bagcurri  the self-retrieval comparison: MLE vs SR with random distractors vs SR + BagCurri, 3 seeds
  sr-headroom  best-of-n headroom of a captioner under a judge: what self-retrieval fine-tuning could find
  tida-compare the TIDA comparison: captioners on biased world data vs biased + TIDA pairs, 3 seeds
  speed        speed measurements (``speed world``, ``speed captions``)

``finecap`` gathers every package's commands: ``finecap run``, ``finecap world``, ``finecap pretrained``,
``finecap speed``, ``finecap skills``, and ``finecap vlm|augment|benchmarks ...`` for the full CLIs.
"""

from __future__ import annotations

import argparse
import sys


def _run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/default", help="output folder (default runs/default)")
    p.add_argument("--n", type=int, default=800, help="world images (default 800)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Subcommands whose parsers live in their own modules: name -> (module, function, help).
_DELEGATED = {
    "speed": ("benchmarks.speed", "main", "speed measurements: speed world | speed captions"),
    "captions": ("benchmarks.captions.cli", "main", "caption metrics (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE, CLIP-S)"),
    "truematch": ("benchmarks.truematch", "main", "TrueMatch: self-retrieval in bags of near-identical images"),
    "recognition": ("benchmarks.recognition", "main", "fine-grained recognition: zero-shot, linear probe, k-shot, generative"),
    "flickr30k": ("benchmarks.flickr", "main", "caption the Flickr30K Karpathy split with a captioner and score it"),
    "coco": ("benchmarks.flickr", "main", "caption the COCO Karpathy split with a captioner and score it"),
    "hallucination": ("benchmarks.hallucination", "main", "facts stated and hallucinated by captions of world images"),
    "sr-bagcurri": ("benchmarks.sr_bagcurri", "main", "MLE vs SR (random) vs SR + BagCurri on the world, 3 seeds"),
    "sr-headroom": ("benchmarks.sr_headroom", "main", "what SR could find in a captioner's samples"),
    "tida-compare": ("benchmarks.tida_compare", "main", "biased vs biased + TIDA captioners, 3 seeds"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in _DELEGATED:
        import importlib

        module, func, _ = _DELEGATED[argv[0]]
        fn = getattr(importlib.import_module(module), func)
        if argv[0] in ("flickr30k", "coco"):
            return fn(argv[1:], dataset=argv[0])
        return fn(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub.add_parser("run", help="the default job on the built-in world"))
    for name, (_, _, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args = p.parse_args(argv)
    if args.command == "run":
        import json

        from benchmarks.pipeline import run_default

        report = run_default(out=args.out, n=args.n, seed=args.seed, batch_size=args.batch_size,
                             progress=not args.quiet)
        print(json.dumps(report, indent=2))
        return 0
    return 2


_SHORTCUTS = {
    "run": ("benchmarks", ["run"]),
    "speed": ("benchmarks", ["speed"]),
    "world": ("vlm", ["world"]),
    "pretrained": ("vlm", ["pretrained"]),
    "skills": ("augment", ["skills"]),
    "captions": ("benchmarks", ["captions"]),
    "truematch": ("benchmarks", ["truematch"]),
    "recognition": ("benchmarks", ["recognition"]),
}


def finecap_main(argv: list[str] | None = None) -> int:
    """The ``finecap`` console script: shortcuts to the package CLIs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: finecap {run,world,pretrained,speed,skills,captions,truematch,recognition,vlm,augment,"
              "benchmarks} ...\n\n"
              "  run         the default job (python -m benchmarks run)\n"
              "  world       write a built-in world dataset (python -m vlm world)\n"
              "  pretrained  list/check pretrained components (python -m vlm pretrained)\n"
              "  speed       speed measurements (python -m benchmarks speed)\n"
              "  skills      skill words in a dataset's captions (python -m augment skills)\n"
              "  captions    caption metrics (python -m benchmarks captions)\n"
              "  truematch   TrueMatch self-retrieval (python -m benchmarks truematch)\n"
              "  recognition fine-grained recognition (python -m benchmarks recognition)\n"
              "  vlm | augment | benchmarks ARGS   a package's full command line")
        return 0 if argv else 2
    head, rest = argv[0], argv[1:]
    if head in _SHORTCUTS:
        package, prefix = _SHORTCUTS[head]
        rest = prefix + rest
    elif head in ("vlm", "augment", "benchmarks"):
        package = head
    else:
        print(f"finecap: unknown command {head!r}; run 'finecap --help'", file=sys.stderr)
        return 2
    if package == "vlm":
        from vlm.cli import main as pkg_main
    elif package == "augment":
        from augment.cli import main as pkg_main
    else:
        pkg_main = main
    return pkg_main(rest)


if __name__ == "__main__":
    sys.exit(main())
