"""``python -m benchmarks speed TARGET``: speed measurements, printed as JSON.

Targets:
  world   built-in world throughput at a given size: sampling + rendering alone, and the full
          ``generate_world`` job (sampling, captions, rendering, PNG encoding, atomic writes, metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def world_speed(n: int = 500, size: int = 224, preset: str = "captioning", seed: int = 0, repeats: int = 3) -> dict:
    """Images per second of the world at ``size`` px (best of ``repeats`` runs, after one warm-up).

    Example:
        >>> r = world_speed(n=20, size=64, repeats=1)
        >>> r["render_images_per_s"] > 0
        True
    """
    from vlm.world import generate_world, iter_world, render, resolve_config

    cfg = resolve_config(preset, image_size=size)
    list(iter_world(cfg, min(n, 10), seed))  # warm-up: imports, cached background textures
    for item in iter_world(cfg, 10, seed):
        render(item.scene, size)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_sample = best(lambda: list(iter_world(cfg, n, seed)))
    items = list(iter_world(cfg, n, seed))
    t_render = best(lambda: [render(it.scene, size, jitter_seed=int(it.id)) for it in items])

    def full():
        with tempfile.TemporaryDirectory() as d:
            generate_world(os.path.join(d, "w"), n=n, seed=seed, config=cfg)

    t_full = best(full)
    return {
        "target": "world", "preset": preset, "image_size": size, "images": len(items), "cpu_count": os.cpu_count(),
        "sample_and_describe_images_per_s": round(len(items) / t_sample, 1),
        "render_images_per_s": round(len(items) / t_render, 1),
        "sample_render_images_per_s": round(len(items) / (t_sample + t_render), 1),
        "generate_world_images_per_s": round(len(items) / t_full, 1),
        "goal_images_per_s": 100,
        "render_vs_goal": round(len(items) / (t_sample + t_render) / 100, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="target", required=True)
    w = sub.add_parser("world", help="built-in world rendering throughput")
    w.add_argument("--n", type=int, default=500)
    w.add_argument("--size", type=int, default=224)
    w.add_argument("--preset", default="captioning")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.target == "world":
        result = world_speed(args.n, args.size, args.preset, args.seed, args.repeats)
    print(json.dumps(result, indent=2))
    return 0
