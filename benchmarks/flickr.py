"""Flickr30K / COCO captioning on the Karpathy splits: caption the split with any captioner, then score it.

``python -m benchmarks flickr30k --model NAME_OR_PATH --data-root DIR`` (and ``coco``):

- ``--data-root`` holds the Karpathy JSON (``dataset_flickr30k.json`` / ``dataset_coco.json``) and the
  images: for Flickr30K in ``flickr30k-images/``, ``images/`` or the root itself; for COCO under the root
  by each entry's ``filepath`` (``val2014/...``).
- ``--model`` is a captioner: a folder saved with ``save_pretrained`` or a hub id (online). Captioning is
  batched, on GPU with bf16 when there is one, and resumable: predictions are appended to
  ``predictions.jsonl`` in ``--out`` as each batch finishes, and a rerun captions only the images not yet
  done (never twice).
- ``--captions FILE`` skips captioning and scores a predictions JSON (``{id: caption}`` or COCO results).

Scores are pycocoevalcap's (BLEU-1..4, METEOR with ``--meteor``, ROUGE-L, CIDEr-D), computed by
:mod:`benchmarks.captions`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_JSON_NAMES = {"flickr30k": "dataset_flickr30k.json", "coco": "dataset_coco.json"}


def find_karpathy(data_root: str | Path, dataset: str) -> tuple[Path, Path]:
    """The Karpathy JSON and the image folder of a dataset under ``data_root``.

    Example:
        >>> find_karpathy("/nonexistent", "flickr30k")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: /nonexistent/dataset_flickr30k.json not found...
    """
    if dataset not in _JSON_NAMES:
        raise ValueError(f"dataset must be one of {sorted(_JSON_NAMES)}, got {dataset!r}")
    root = Path(data_root)
    js = root / _JSON_NAMES[dataset]
    if not js.is_file():
        alt = root / "annotations" / _JSON_NAMES[dataset]
        if alt.is_file():
            js = alt
        else:
            raise FileNotFoundError(
                f"{js} not found: --data-root must contain the Karpathy split file {_JSON_NAMES[dataset]} "
                "(from Karpathy's caption_datasets.zip) and the images")
    if dataset == "flickr30k":
        for cand in (root / "flickr30k-images", root / "images", root):
            if cand.is_dir() and any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in cand.iterdir()):
                return js, cand
        raise FileNotFoundError(f"no Flickr30K images under {root} (looked in flickr30k-images/, images/ and the root)")
    return js, root


def load_karpathy_split(data_root: str | Path, dataset: str = "flickr30k", split: str = "test", *,
                        check_images: bool = True):
    """The Karpathy ``split`` of Flickr30K or COCO as a :class:`vlm.data.CaptionDataset`."""
    from vlm.data import read_karpathy_json

    js, images = find_karpathy(data_root, dataset)
    return read_karpathy_json(js, images, split=split, check_images=check_images)


def _load_predictions_file(path: Path) -> dict[str, str]:
    from benchmarks.captions import load_predictions

    return load_predictions(path)


def caption_dataset(captioner, ds, out_file: str | Path, *, batch_size: int = 16, num_beams: int = 3,
                    max_new_tokens: int = 20, stop_at_period: bool = True, progress: bool = True) -> dict[str, str]:
    """Caption every image of ``ds`` with ``captioner``, appending ``{"id", "caption"}`` lines to ``out_file``.

    Resumable: ids already in ``out_file`` are skipped, and a half-written last line (a killed job) is
    dropped. Returns ``{id: caption}`` for the whole dataset.
    """
    from tqdm import tqdm

    out_file = Path(out_file)
    done: dict[str, str] = {}
    if out_file.exists():
        lines = out_file.read_text().splitlines()
        good = []
        for line in lines:
            try:
                obj = json.loads(line)
                done[str(obj["id"])] = obj["caption"]
                good.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                logger.warning("%s: dropping a malformed line (an interrupted write): %.60s", out_file, line)
        if len(good) != len(lines):
            tmp = out_file.with_name(out_file.name + ".tmp")
            tmp.write_text("".join(g + "\n" for g in good))
            os.replace(tmp, out_file)
    todo = [i for i in range(len(ds)) if str(ds[i].id) not in done]
    if done:
        logger.info("resuming: %d of %d images already captioned", len(ds) - len(todo), len(ds))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("a") as f, tqdm(total=len(todo), desc="captioning", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            caps = captioner.generate([ds.image(i) for i in idx], num_beams=num_beams,
                                      max_new_tokens=max_new_tokens, stop_at_period=stop_at_period)
            for i, c in zip(idx, caps):
                done[str(ds[i].id)] = c
                f.write(json.dumps({"id": str(ds[i].id), "caption": c}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(idx))
    return {str(r.id): done[str(r.id)] for r in ds}


def main(argv: list[str] | None = None, dataset: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if dataset is None:
        if not argv or argv[0] not in _JSON_NAMES:
            print(f"usage: python -m benchmarks {{{','.join(_JSON_NAMES)}}} --model ... --data-root ...", file=sys.stderr)
            return 2
        dataset, argv = argv[0], argv[1:]
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {dataset}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help=f"folder with {_JSON_NAMES[dataset]} and the images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="captioner: a save_pretrained folder or a hub id (online)")
    src.add_argument("--captions", help="score this predictions JSON instead of captioning")
    p.add_argument("--split", default="test", help="Karpathy split (default test)")
    p.add_argument("--out", default=None, help=f"output folder (default runs/{dataset})")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (smoke runs)")
    p.add_argument("--meteor", action="store_true", help="also METEOR (needs Java)")
    p.add_argument("--per-image", action="store_true", help="also per-image scores")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    from benchmarks.captions import compute_caption_metrics
    from benchmarks.report import write_results
    from vlm.devices import resolve_device

    t0 = time.perf_counter()
    out = Path(args.out or f"runs/{dataset}")
    try:
        ds = load_karpathy_split(args.data_root, dataset, args.split)
        if args.limit is not None:
            from vlm.data import CaptionDataset

            ds = CaptionDataset(ds.root, ds.records[: args.limit])
        device = resolve_device(args.device)
        if args.captions:
            preds = _load_predictions_file(Path(args.captions))
        else:
            from vlm.models import load_captioner

            captioner = load_captioner(args.model, device=device)
            preds = caption_dataset(captioner, ds, out / "predictions.jsonl", batch_size=args.batch_size,
                                    num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                                    progress=not args.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    refs = {str(r.id): list(r.captions) for r in ds}
    missing = sorted(set(refs) - set(preds))
    if missing:
        print(f"error: no caption for {len(missing)} images of the split, e.g. id {missing[0]!r}", file=sys.stderr)
        return 2
    preds = {k: preds[k] for k in refs}
    scores = compute_caption_metrics(refs, preds, meteor=args.meteor, per_image=args.per_image)
    config = {k: v for k, v in vars(args).items()} | {"dataset": dataset, "images": len(refs)}
    write_results(out, dataset, scores, config=config, wall_time_s=time.perf_counter() - t0, device=device)
    print(json.dumps(scores, indent=2))
    return 0
