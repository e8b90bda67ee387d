"""The default job (``finecap run``): what the package can do end to end on the built-in world, offline.

Today it:
1. generates a captioning world (or reuses one made with the same seed and size: the job resumes);
2. reads it back through the validating dataset reader;
3. embeds every image with the real ImageNet EfficientNet-Lite0 and every dense caption with MiniLM
   (embeddings cached as safetensors next to the world);
4. measures what the frozen image features already encode with linear probes (background, number of
   things, presence of a person, colour of the largest thing), each beside its majority baseline;
5. fits a ridge map from image features to the text embedding space on train and scores caption -> image
   retrieval on test (R@1, R@5 against chance);
6. writes ``report.json`` (results + resolved config) and ``report.png`` (sample images and the scores).

Later issues extend it with captioner training, TIDA and the benchmarks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def _world(out: Path, n: int, seed: int, progress: bool) -> Path:
    from vlm.world import generate_world, resolve_config, world_matches

    world_dir = out / "world"
    if world_matches(world_dir, seed=seed, n=n, preset="captioning"):
        logger.info("reusing world at %s", world_dir)
        return world_dir
    generate_world(world_dir, n=n, seed=seed, config=resolve_config("captioning"), overwrite=True,
                   progress=progress)
    return world_dir


def _embed(ds, world_dir: Path, batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    from vlm.pretrained import load_image_encoder, load_text_encoder

    cache = world_dir / "embeddings.safetensors"
    if cache.exists():
        emb = load_file(str(cache))
        if emb["image"].shape[0] == len(ds):
            return emb
    enc = load_image_encoder("efficientnet_lite0")
    feats = []
    for start in tqdm(range(0, len(ds), batch_size), desc="image features", disable=not progress):
        idx = range(start, min(start + batch_size, len(ds)))
        with torch.inference_mode():
            # No centre crop: objects near the border count as much as the others.
            pixels = enc.preprocess([ds.image(i) for i in idx], center_crop=False)
            feats.append(enc.features(pixels, kind="pooled"))
    text = load_text_encoder("all-MiniLM-L6-v2")
    captions = [ds[i].extra["dense_caption"] for i in range(len(ds))]
    emb = {"image": torch.cat(feats).float().contiguous(),
           "text": text.encode(captions, batch_size=batch_size).float().contiguous()}
    tmp = cache.with_suffix(".tmp")
    save_file(emb, str(tmp))
    tmp.replace(cache)
    return emb


def _targets(ds) -> dict[str, tuple[list[int], list[str]]]:
    from vlm.world import BACKGROUNDS, COLORS

    colors = list(COLORS)
    out = {"background": ([], list(BACKGROUNDS)), "n_things": ([], [str(k) for k in range(1, 9)]),
           "has_person": ([], ["no", "yes"]), "color_of_largest_thing": ([], colors)}
    for rec in ds:
        scene = rec.extra["scene"]
        things = scene["things"]
        out["background"][0].append(BACKGROUNDS.index(scene["background"]))
        out["n_things"][0].append(len(things) - 1)
        out["has_person"][0].append(int(any(t["kind"] == "person" for t in things)))
        # Ties (same size class) are broken by the first in the scene graph, whose order is random.
        largest = max(things, key=lambda t: ("small", "medium", "large").index(t["size"]))
        out["color_of_largest_thing"][0].append(colors.index(largest["color"]))
    return out


def _plot(ds, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 6.5))
    for k in range(6):
        ax = fig.add_subplot(2, 6, k + 1)
        ax.imshow(ds.image(k))
        ax.set_axis_off()
        ax.set_title("\n".join(_wrap(ds[k].captions[0], 26)[:3]), fontsize=7)
    ax = fig.add_subplot(2, 2, 3)
    probes = report["probes"]
    names = list(probes)
    ax.barh(names, [probes[k]["accuracy"] for k in names], color="tab:blue", label="linear probe")
    ax.barh(names, [probes[k]["majority_baseline"] for k in names], color="tab:gray", alpha=0.7,
            label="majority class")
    ax.set_xlim(0, 1)
    ax.set_title("What frozen EfficientNet-Lite0 features encode (test accuracy)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = fig.add_subplot(2, 2, 4)
    r = report["retrieval"]
    ax.bar(["R@1", "R@5"], [r["R@1"], r["R@5"]], color="tab:green", label="ridge map image->MiniLM")
    ax.bar(["R@1", "R@5"], [r["chance_R@1"], r["chance_R@5"]], color="tab:gray", alpha=0.7, label="chance")
    ax.set_ylim(0, 1)
    ax.set_title(f"Caption -> image retrieval among {r['n_test']} test images", fontsize=9)
    ax.legend(fontsize=7)
    from benchmarks.report import save_figure

    save_figure(fig, path, dpi=110)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def run_default(out: str | Path = "runs/default", n: int = 800, seed: int = 0, batch_size: int = 64,
                progress: bool = True) -> dict:
    """Run the default job and return its report (also written to ``out/report.json``).

    Example (about 30 s on 2 CPU cores; tests/test_pipeline.py runs it)::

        report = run_default("runs/example", n=200)
        sorted(report["probes"])  # ['background', 'color_of_largest_thing', 'has_person', 'n_things']
    """
    from benchmarks.probe import apply_ridge, linear_probe, ridge_map
    from vlm.data import read_imagefolder

    if n < 20:
        raise ValueError(f"the default job needs n >= 20 images, got {n}")
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world_dir = _world(out, n, seed, progress)
    ds = read_imagefolder(world_dir)
    emb = _embed(ds, world_dir, batch_size, progress)
    # Held out: val + test (about 20 %), so that the scores rest on more than a handful of images.
    train = torch.tensor([r.split == "train" for r in ds])
    test = ~train
    probes = {}
    for name, (labels, classes) in _targets(ds).items():
        y = torch.tensor(labels)
        res = linear_probe(emb["image"][train], y[train], emb["image"][test], y[test])
        probes[name] = {"accuracy": round(res.accuracy, 4), "majority_baseline": round(res.majority_baseline, 4),
                        "n_classes": len(classes)}
    w = ridge_map(emb["image"][train], emb["text"][train], alpha=float(emb["image"].shape[1]))
    pred = torch.nn.functional.normalize(apply_ridge(emb["image"][test], w).float(), dim=-1)
    text = torch.nn.functional.normalize(emb["text"][test], dim=-1)
    sims = text @ pred.T  # (captions, images): caption i belongs to image i
    ranks = (sims > sims.diag()[:, None]).sum(1)
    n_test = int(test.sum())
    report = {
        "world": {"dir": str(world_dir), "images": len(ds), "seed": seed, "preset": "captioning",
                  "test_images": n_test},
        "components": {"image_encoder": "efficientnet_lite0 (ImageNet-1k, timm tf_efficientnet_lite0)",
                       "text_encoder": "all-MiniLM-L6-v2"},
        "probes": probes,
        "retrieval": {"R@1": round((ranks < 1).float().mean().item(), 4),
                      "R@5": round((ranks < 5).float().mean().item(), 4),
                      "chance_R@1": round(1 / n_test, 4), "chance_R@5": round(min(5, n_test) / n_test, 4),
                      "n_test": n_test},
        "config": {"out": str(out), "n": n, "seed": seed, "batch_size": batch_size},
    }
    _plot(ds, report, out / "report.png")
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "report.json")
    return report
