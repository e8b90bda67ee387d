"""``python -m benchmarks speed TARGET``: speed measurements, printed as JSON.

Targets (each a ratio or rate measured in one run):
  world       built-in world throughput at a given size: sampling + rendering alone, and the full
              ``generate_world`` job (sampling, captions, rendering, PNG encoding, atomic writes, metadata).
  captions    tokenize + BLEU + ROUGE-L + CIDEr-D: finecap vs pycocoevalcap on a generated corpus.
  generation  batched, KV-cached caption generation vs a per-image loop of the same captioner.
  features    training steps on cached frozen-encoder features vs recomputing the encoder each step.
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


def _world_captioner(model: str, n: int, size: int, seed: int):
    from vlm.models import create_captioner
    from vlm.world import iter_world, render, resolve_config

    items = list(iter_world(resolve_config("captioning"), n, seed))
    texts = [c for it in items for c in it.captions]
    captioner = create_captioner(model, train_texts=texts, vocab_size=1000, seed=seed).eval()
    images = [render(it.scene, size) for it in items]
    return captioner, images, items


def generation_speed(model: str = "prefix-small", n: int = 64, batch_size: int = 32, max_new_tokens: int = 20,
                     num_beams: int = 1, seed: int = 0) -> dict:
    """Captions per second: batched, KV-cached generation vs a per-image loop of the same model.

    Two ratios in one run: end to end (both paths encode the images, then decode) and decoding alone
    (both paths start from the same encoded images). Both decode ``max_new_tokens`` tokens (EOS disabled
    so that the work is the same whatever the weights).
    """
    import torch

    captioner, images, _ = _world_captioner(model, n, 224, seed)
    eos = captioner.tokenizer.eos_token_id
    captioner.tokenizer.eos_token_id = None  # same number of tokens on both paths

    try:
        captioner.generate(images[:2], max_new_tokens=2)  # warm-up
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        captioner.generate(images, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for im in images:
            captioner.generate([im], batch_size=1, max_new_tokens=max_new_tokens, num_beams=num_beams)
        t_loop = time.perf_counter() - t0
        with torch.inference_mode():
            feats = captioner.image_features(captioner.preprocess(images))
        t0 = time.perf_counter()
        captioner.generate(features=feats, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
        t_dec_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            captioner.generate(features=feats[i:i + 1], batch_size=1, max_new_tokens=max_new_tokens,
                               num_beams=num_beams)
        t_dec_loop = time.perf_counter() - t0
    finally:
        captioner.tokenizer.eos_token_id = eos
    return {"target": "generation", "model": model, "images": n, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "num_beams": num_beams,
            "batched_captions_per_s": round(n / t_batched, 2), "loop_captions_per_s": round(n / t_loop, 2),
            "speedup": round(t_loop / t_batched, 2),
            "decode_batched_captions_per_s": round(n / t_dec_batched, 2),
            "decode_loop_captions_per_s": round(n / t_dec_loop, 2),
            "decode_speedup": round(t_dec_loop / t_dec_batched, 2), "goal_speedup": 3.0}


def cached_features_speed(model: str = "prefix-small", n: int = 64, batch_size: int = 32, steps: int = 6,
                          seed: int = 0) -> dict:
    """Training steps per second on cached frozen-encoder features vs recomputing the encoder each step."""
    import torch

    captioner, images, items = _world_captioner(model, n, 224, seed)
    captioner.train()
    opt = torch.optim.AdamW([p for p in captioner.parameters() if p.requires_grad], lr=1e-4)
    caps = [it.captions[0] for it in items]
    with torch.inference_mode():
        t0 = time.perf_counter()
        feats = captioner.image_features(captioner.preprocess(images))
        t_cache = time.perf_counter() - t0
    feats = feats.clone()

    def run(use_cache: bool) -> float:
        t0 = time.perf_counter()
        for s in range(steps):
            idx = [(s * batch_size + k) % n for k in range(batch_size)]
            batch = {"captions": [caps[i] for i in idx]}
            if use_cache:
                batch["features"] = feats[idx]
            else:
                batch["images"] = [images[i] for i in idx]
            opt.zero_grad()
            captioner.loss(batch).backward()
            opt.step()
        return time.perf_counter() - t0

    run(True)  # warm-up
    t_cached, t_recompute = run(True), run(False)
    return {"target": "features", "model": model, "batch_size": batch_size, "steps": steps,
            "cached_steps_per_s": round(steps / t_cached, 3), "recompute_steps_per_s": round(steps / t_recompute, 3),
            "speedup": round(t_recompute / t_cached, 2), "one_time_feature_extraction_s": round(t_cache, 2)}


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
    g = sub.add_parser("generation", help="batched vs per-image caption generation")
    g.add_argument("--model", default="prefix-small")
    g.add_argument("--n", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--max-new-tokens", type=int, default=20)
    g.add_argument("--num-beams", type=int, default=1)
    f = sub.add_parser("features", help="training on cached features vs recomputing the frozen encoder")
    f.add_argument("--model", default="prefix-small")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--steps", type=int, default=6)
    c = sub.add_parser("captions", help="caption metrics vs pycocoevalcap")
    c.add_argument("--n-images", type=int, default=5000)
    c.add_argument("--n-refs", type=int, default=5)
    c.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.target == "world":
        result = world_speed(args.n, args.size, args.preset, args.seed, args.repeats)
    elif args.target == "generation":
        result = generation_speed(args.model, args.n, args.batch_size, args.max_new_tokens, args.num_beams)
    elif args.target == "features":
        result = cached_features_speed(args.model, batch_size=args.batch_size, steps=args.steps)
    else:
        from benchmarks.captions import caption_speed

        result = caption_speed(n_images=args.n_images, n_refs=args.n_refs, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0
