"""Caption a dataset split with a trained captioner and score it.

``python -m vlm caption --model runs/mle-world-small/final --data runs/mle-world-small/world --split test``

Writes ``{id: caption}`` predictions (``--out``) and prints caption metrics against the records' reference
captions (BLEU-1..4, ROUGE-L, CIDEr-D) and, for world data (records carrying a ``scene``), facts per caption
and the hallucination rate against the scene graphs. Frozen-encoder prefix captioners reuse the cached image
features of training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def caption_records(model: Any, ds: Any, *, limit: int | None = None, num_beams: int = 3, max_new_tokens: int = 30,
                    batch_size: int = 64, progress: bool = True, **generate_kw: Any) -> dict[str, str]:
    """``{record id: caption}`` for the first ``limit`` records of ``ds`` (a :class:`vlm.data.CaptionDataset`).

    ``generate_kw`` go to the model's ``generate`` (e.g. ``stop_at_period=True``)."""
    n = min(limit, len(ds)) if limit else len(ds)
    ids = [str(ds[i].id if ds[i].id is not None else i) for i in range(n)]
    cfg = getattr(model, "config", None)
    if getattr(cfg, "image_encoder_training", None) == "frozen" and hasattr(model, "image_features"):
        from vlm.train.mle import _features_for

        sub = ds.subset(range(n)) if n < len(ds) else ds
        feats = _features_for(model, sub, progress=progress)
        preds = model.generate(features=feats, num_beams=num_beams, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, **generate_kw)
    else:
        preds = model.generate([ds.image(i) for i in range(n)], num_beams=num_beams, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, **generate_kw)
    return {k: p or "." for k, p in zip(ids, preds)}


def score_predictions(preds: dict[str, str], ds: Any, *, by_kind: bool = False) -> dict:
    """Caption metrics against the records' references, plus scene-graph facts where records have scenes.

    ``by_kind=True`` adds, with scenes, ``facts_by_kind`` (facts per caption) and ``hallucination_by_kind`` (share
    wrong) per kind of fact (:func:`vlm.world.facts.fact_scores`)."""
    from vlm.metrics import caption_scores

    by_id = {str(r.id if r.id is not None else i): r for i, r in enumerate(ds)}
    refs = {k: list(by_id[k].captions) for k in preds}
    out = {k: round(float(v), 6) for k, v in caption_scores(refs, preds).items() if isinstance(v, (int, float))}
    if all(by_id[k].extra.get("scene") for k in preds):
        from vlm.world import Scene
        from vlm.world.facts import fact_scores

        facts = fact_scores(preds, {k: Scene.from_dict(by_id[k].extra["scene"]) for k in preds}, by_kind=by_kind)
        out["facts_per_caption"] = facts["facts_per_caption"]
        out["hallucination_rate"] = facts["hallucination_rate"]
        if by_kind:
            out["facts_by_kind"] = {k: v["per_caption"] for k, v in facts["by_kind"].items()}
            out["hallucination_by_kind"] = {k: v["hallucination_rate"] for k, v in facts["by_kind"].items()}
    words = [w for p in preds.values() for w in p.lower().replace(".", " ").split()]
    out["mean_length_words"] = round(len(words) / max(len(preds), 1), 3)
    out["vocabulary"] = len(set(words))
    out["images"] = len(preds)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m vlm caption --model DIR --data DIR [--split test] [--limit N] [--out preds.json]``."""
    import argparse

    from vlm.data import read_imagefolder
    from vlm.models import create_captioner

    p = argparse.ArgumentParser(prog="python -m vlm caption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a folder saved with save_pretrained, or hf:<id>")
    p.add_argument("--data", required=True, help="dataset folder (imagefolder + metadata.jsonl)")
    p.add_argument("--split", default="test", help="split to caption (default test; '' for all records)")
    p.add_argument("--limit", type=int, default=None, help="caption only the first N records")
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write {id: caption} JSON here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from vlm.devices import resolve_device

    t0 = time.perf_counter()
    ds = read_imagefolder(args.data, check_images=False)
    if args.split:
        ds = ds.filter_split(args.split)
        if not len(ds):
            raise SystemExit(f"error: {args.data}: no records in split {args.split!r}")
    model = create_captioner(args.model, device=str(resolve_device(args.device)))
    preds = caption_records(model, ds, limit=args.limit, num_beams=args.num_beams,
                            max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(preds, indent=1) + "\n")
    scores = score_predictions(preds, ds)
    scores["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"model": args.model, "data": args.data, "split": args.split, **scores}, indent=2))
    return 0
