"""``python -m benchmarks`` and the ``finecap`` console script.

``python -m benchmarks`` subcommands:
  run     the default job: build a world, embed it with the pretrained components, measure what they see
  speed   speed measurements (``speed world``)

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["speed"]:
        from benchmarks.speed import main as speed_main

        return speed_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub.add_parser("run", help="the default job on the built-in world"))
    sub.add_parser("speed", help="speed measurements: speed world ...")
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
}


def finecap_main(argv: list[str] | None = None) -> int:
    """The ``finecap`` console script: shortcuts to the package CLIs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: finecap {run,world,pretrained,speed,skills,vlm,augment,benchmarks} ...\n\n"
              "  run         the default job (python -m benchmarks run)\n"
              "  world       write a built-in world dataset (python -m vlm world)\n"
              "  pretrained  list/check pretrained components (python -m vlm pretrained)\n"
              "  speed       speed measurements (python -m benchmarks speed)\n"
              "  skills      skill words in a dataset's captions (python -m augment skills)\n"
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
