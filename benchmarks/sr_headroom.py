"""How much could self-retrieval (SR) fine-tuning gain under a judge? Best-of-n headroom of a captioner.

``python -m benchmarks sr-headroom --model DIR --world DIR [--retriever finecap:lit-v3] [--n 16] [--out F.json]``

SR fine-tuning can only make a captioner say what its own samples already say now and then. This samples
``n`` captions per image of a TrueMatch world (protocol limits: at most 20 tokens, stop at the first '.'),
keeps one per image by a rule, and scores the kept captions with the TrueMatch protocol (R@1 per bag size
under the same retriever) and against the scene graphs (facts per caption, hallucination rate):

- ``beam``: the protocol decoding (beam 5), the captioner as it is;
- ``greedy``: the likeliest token at each step (no search), the caption that sampling-based SR moves first. Far
  below ``beam``, it says that beam search already composes details the likeliest caption leaves out, which an
  SR gain under the protocol's beam 5 cannot claim again;
- ``sample``: the first sample, one policy draw;
- ``clip_s``: the sample closest to its own image (no distractors: what a decoding-time reranker gets);
- ``rd{K}``: the best contrastive reward against ``K`` random images of the world (what random-distractor
  SR rewards);
- ``nn{K}``: the best contrastive reward against the image's ``K`` nearest neighbours in the retriever's
  image space (what SR on hard mined bags rewards);
- ``bag``: the best contrastive reward against the image's own evaluation bag: an oracle that uses the
  answer, the ceiling of the sampled captions.

If even ``bag`` stays near ``beam``, SR has nothing to find; a gap is the room SR could take, provided the
policy can learn from its training images which sample to prefer (only training measures that). A rise
in hallucination under ``rd``/``nn`` warns that the reward favours what the judge sees over what is there.

A second table, the captioner's *sight* (:func:`captioner_sight`, for captioners with ``token_log_probs``), asks
what the captioner could say right if it said everything: R@1 when its own likelihoods choose among the bag's
exact captions (the scene graphs in words). A caption can name the detail that separates near-duplicates only as
often as the captioner tells them apart; SR cannot go past that.

A third table (:func:`content_ceilings`) asks what the judge rewards: R@1 of true captions written from each
image's scene graph that state chosen content (:data:`CONTENT_VARIANTS`: one, two or all groups, with or without
colours and sizes, exact or vague counts). It needs no captioner: it says what a captioner would have to say, and
say right, for a given R@1 (the first rows that pass a target are the least a policy must learn).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch


@torch.no_grad()
def sr_headroom(captioner: Any, data: Any, retriever: Any, *, n: int = 16, temperature: float = 1.0,
                k_random: int = 31, k_nn: int = 10, seed: int = 0, batch_size: int = 64,
                cache: Any = None, progress: bool = False) -> dict[str, dict]:
    """Scores of the captions each rule keeps (module docstring), ``{rule_name: {"R@1/bag5": ..., ...}}``.

    ``captioner``: anything with ``generate(images, num_beams=, do_sample=, temperature=,
    num_return_sequences=, max_new_tokens=, stop_at_period=)``; ``data``: a world's
    :class:`benchmarks.truematch.TrueMatchData` (records with scenes); ``retriever``: the judge; ``cache``: a
    :class:`benchmarks.truematch.EmbeddingCache` for the image embeddings (``python -m benchmarks truematch``'s).
    """
    from tqdm import tqdm

    from benchmarks.truematch import encode_image_files, score_truematch
    from vlm.rewards import contrastive_reward
    from vlm.world import Scene
    from vlm.world.facts import fact_scores

    if n < 2:
        raise ValueError(f"sr_headroom needs n >= 2 samples per image, got {n}")
    if data.records is None or not all(r.extra.get("scene") for r in data.records):
        raise ValueError("sr_headroom needs a built-in world's bags (records with scenes): load_world_bags(folder)")
    N = data.n_images
    if N <= max(k_random, k_nn):
        raise ValueError(f"sr_headroom: {N} images are too few for k_random={k_random} / k_nn={k_nn} distractors")
    torch.manual_seed(seed)
    beam, greedy, samples = [], [], []
    for start in tqdm(range(0, N, batch_size), desc="sr-headroom captions", disable=not progress):
        ims = [data.image(i) for i in range(start, min(N, start + batch_size))]
        beam += captioner.generate(ims, num_beams=5, max_new_tokens=20, stop_at_period=True)
        greedy += captioner.generate(ims, num_beams=1, max_new_tokens=20, stop_at_period=True)
        samples += captioner.generate(ims, do_sample=True, temperature=temperature, num_return_sequences=n,
                                      max_new_tokens=20, stop_at_period=True)
    img = encode_image_files(retriever, data.paths, batch_size=batch_size, cache=cache).float()
    t_beam = retriever.encode_texts([c or "." for c in beam]).float()
    t_samp = retriever.encode_texts([c or "." for c in samples]).float().view(N, n, -1)
    scale = float(getattr(retriever, "logit_scale", 100.0))

    def reward_against(cands: torch.Tensor) -> torch.Tensor:  # (N, C) candidates, target first -> (N, n)
        sims = torch.einsum("knd,kcd->knc", t_samp, img[cands])
        return contrastive_reward(sims.flatten(0, 1), 0, scale=scale).view(N, n)

    g = torch.Generator().manual_seed(seed)
    rnd = torch.empty(N, k_random + 1, dtype=torch.long)
    for i in range(N):
        others = torch.randperm(N - 1, generator=g)[:k_random]
        rnd[i, 0], rnd[i, 1:] = i, others + (others >= i).long()  # k_random distinct images other than i
    sim_ii = img @ img.T
    sim_ii.fill_diagonal_(-2.0)
    nn = torch.cat([torch.arange(N)[:, None], sim_ii.topk(k_nn, dim=1).indices], 1)
    bag_score = torch.full((N, n), float("-inf"))
    for bags in data.bags.values():
        for bag in bags:
            b = torch.as_tensor(bag)
            for pos, i in enumerate(bag):
                bag_score[i] = contrastive_reward(t_samp[i] @ img[b].T, pos, scale=scale)
    own = torch.einsum("knd,kd->kn", t_samp, img)
    picks = {"sample": torch.zeros(N, dtype=torch.long), "clip_s": own.argmax(1),
             f"rd{k_random}": reward_against(rnd).argmax(1), f"nn{k_nn}": reward_against(nn).argmax(1),
             "bag": bag_score.argmax(1)}
    scenes = {str(i): Scene.from_dict(r.extra["scene"]) for i, r in enumerate(data.records)}

    def score(text_emb: torch.Tensor, caps: list[str]) -> dict:
        m = score_truematch(img, text_emb.contiguous(), data.bags).metrics()
        out = {k: round(v, 4) for k, v in m.items() if v is not None and k.startswith("R@1/bag")}
        f = fact_scores({str(i): c or "." for i, c in enumerate(caps)}, scenes)
        words = sum(len(c.split()) for c in caps) / N
        out.update(facts_per_caption=round(f["facts_per_caption"], 3),
                   hallucination_rate=round(f["hallucination_rate"], 4), mean_length_words=round(words, 2))
        return out

    result = {"beam": score(t_beam, beam),
              "greedy": score(retriever.encode_texts([c or "." for c in greedy]).float(), greedy)}
    rows = torch.arange(N)
    for name, j in picks.items():
        result[name] = score(t_samp[rows, j], [samples[i * n + int(j[i])] for i in range(N)])
    return result


#: True one-sentence captions with chosen content, ``{row name: vlm.world.content_caption keyword arguments}``, from
#: saying little to saying everything the first sentence of a dense caption says (every group named in order of
#: salience, the background always).
CONTENT_VARIANTS: dict[str, dict] = {
    "1 group, colour": {"max_groups": 1, "size": False},
    "1 group, colour + size": {"max_groups": 1},
    "2 groups, no colour or size": {"max_groups": 2, "color": False, "size": False},
    "2 groups, colour": {"max_groups": 2, "size": False},
    "2 groups, colour + size": {"max_groups": 2},
    "all groups, size": {"color": False},
    "all groups, colour": {"size": False},
    "all groups, colour + size": {},
    "all groups, colour + size, vague counts": {"exact_counts": False},
}


@torch.no_grad()
def content_ceilings(data: Any, retriever: Any, *, variants: dict[str, dict] | None = None, batch_size: int = 64,
                     cache: Any = None) -> dict[str, dict]:
    """R@1 per bag size (and words per caption) of true captions stating chosen content, ``{row: {...}}``.

    Each image's caption is :func:`vlm.world.content_caption` of its scene graph with a row's keyword arguments
    (``variants``, default :data:`CONTENT_VARIANTS`); a last row, ``dense caption (+ relations)``, is the whole
    dense caption. The captions are true by construction, so each row is what a captioner that saw perfectly and
    said exactly that would score under this judge. ``data``: a world's
    :class:`benchmarks.truematch.TrueMatchData` (records with scenes); ``cache``: an image-embedding cache.
    """
    from benchmarks.truematch import encode_image_files, score_truematch
    from vlm.world import Scene, content_caption, dense_caption

    if data.records is None or not all(r.extra.get("scene") for r in data.records):
        raise ValueError("content_ceilings needs a built-in world's bags (records with scenes): "
                         "load_world_bags(folder)")
    scenes = [Scene.from_dict(r.extra["scene"]) for r in data.records]
    img = encode_image_files(retriever, data.paths, batch_size=batch_size, cache=cache).float()
    rows = {name: [content_caption(s, **kw) for s in scenes] for name, kw in (variants or CONTENT_VARIANTS).items()}
    rows["dense caption (+ relations)"] = [dense_caption(s) for s in scenes]
    out = {}
    for name, caps in rows.items():
        m = score_truematch(img, retriever.encode_texts(caps).float().contiguous(), data.bags).metrics()
        out[name] = {k: round(v, 4) for k, v in m.items() if v is not None and k.startswith("R@1/bag")}
        out[name]["mean_length_words"] = round(sum(len(c.split()) for c in caps) / len(caps), 2)
    return out


@torch.no_grad()
def captioner_sight(captioner: Any, data: Any, *, field: str = "dense_caption", batch_size: int = 64,
                    tie_tol: float = 1e-6, progress: bool = False) -> dict[str, dict[str, float]]:
    """What the captioner can tell apart, whatever it chooses to say: its own likelihoods of the bag's exact captions.

    For every bag of a world, each member's exact caption (``record.extra[field]``, the scene graph in words) is
    scored under the captioner given each member's image (summed token log-probabilities, end of text included).
    Two R@1 per bag size, ties (within ``tie_tol``) counted as misses as in TrueMatch:

    - ``image_to_caption``: for each image, is its own exact caption the likeliest of the bag's? What the
      captioner would say if it had to say everything, priors included: SR can only make a caption name a
      detail right as often as this;
    - ``caption_to_image``: for each exact caption, is its own image the one that makes it likeliest? The
      captioner used as a generative retriever: the text prior cancels, only how the image moves the caption
      counts.

    If these stay near the beam captions' TrueMatch R@1, the details that separate the bag are beyond the
    captioner's sight, and no reward will make it state them. ``captioner`` needs ``token_log_probs(texts,
    images=...)`` (``PrefixCaptioner`` and ``HFCaptioner`` have it); ``data``: a world's
    :class:`benchmarks.truematch.TrueMatchData`.
    """
    from tqdm import tqdm

    if not callable(getattr(captioner, "token_log_probs", None)):
        raise TypeError(f"captioner_sight needs a captioner with token_log_probs(texts, images=...); "
                        f"{type(captioner).__name__} has none")
    if data.records is None or not all(field in r.extra for r in data.records):
        raise ValueError(f"captioner_sight needs each record's exact caption in extra[{field!r}] "
                         "(a built-in world: load_world_bags(folder))")
    by_features = (callable(getattr(captioner, "image_features", None))
                   and callable(getattr(captioner, "preprocess", None))
                   and "features" in inspect.signature(captioner.token_log_probs).parameters)
    out: dict[str, dict[str, float]] = {"image_to_caption": {}, "caption_to_image": {}}
    total = sum(len(b) for b in data.bags.values())
    bar = tqdm(total=total, desc="captioner sight", disable=not progress)
    for size, bags in sorted(data.bags.items()):
        hits_ic, hits_ci = [], []
        for bag in bags:
            images = [data.image(i) for i in bag]
            caps = [data.records[i].extra[field] for i in bag]
            k = len(bag)
            scores = []  # rows of (image a, caption b) pairs, a-major
            pairs = [(a, b) for a in range(k) for b in range(k)]
            feats = captioner.image_features(captioner.preprocess(images)) if by_features else None
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                texts = [caps[b] for _, b in chunk]
                if feats is not None:
                    lp, mask = captioner.token_log_probs(texts, features=feats[[a for a, _ in chunk]])
                else:
                    lp, mask = captioner.token_log_probs(texts, images=[images[a] for a, _ in chunk])
                scores.append((lp.float() * mask).sum(1).cpu())
            S = torch.cat(scores).double().view(k, k)  # S[a, b] = log p(caption b | image a)
            for i in range(k):
                others = [j for j in range(k) if j != i]
                hits_ic.append(bool(S[i, i] > S[i, others].max() + tie_tol))
                hits_ci.append(bool(S[i, i] > S[others, i].max() + tie_tol))
            bar.update(1)
        out["image_to_caption"][f"R@1/bag{size}"] = round(sum(hits_ic) / len(hits_ic), 4)
        out["caption_to_image"][f"R@1/bag{size}"] = round(sum(hits_ci) / len(hits_ci), 4)
    bar.close()
    return out


def markdown_table(result: dict) -> str:
    cols = [c for c in next(iter(result.values())) if c.startswith("R@1/bag")]
    cols += ["facts_per_caption", "hallucination_rate", "mean_length_words"]
    lines = ["| kept caption | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in result.items():
        cells = [f"{100 * row[c]:.1f}" if c.startswith("R@1") or c == "hallucination_rate" else f"{row[c]:.2f}"
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def content_table(content: dict) -> str:
    """:func:`content_ceilings`' result as Markdown: R@1 in % per bag size, words per caption."""
    cols = [c for c in next(iter(content.values())) if c.startswith("R@1/bag")]
    lines = ["| true captions that say (judge's R@1) | " + " | ".join(cols) + " | words |",
             "|---|" + "---|" * (len(cols) + 1)]
    for name, row in content.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" for c in cols)
                     + f" | {row['mean_length_words']:.1f} |")
    return "\n".join(lines)


def sight_table(sight: dict) -> str:
    """:func:`captioner_sight`'s result as Markdown: R@1 in % per bag size and direction."""
    cols = list(next(iter(sight.values())))
    lines = ["| the captioner's sight (its likelihoods of the bag's exact captions) | " + " | ".join(cols) + " |",
             "|---|" + "---|" * len(cols)]
    names = {"image_to_caption": "image -> its exact caption", "caption_to_image": "exact caption -> its image"}
    for k, row in sight.items():
        lines.append(f"| {names.get(k, k)} | " + " | ".join(f"{100 * row[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks sr-headroom", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a captioner folder (save_pretrained) or hf:<id>")
    p.add_argument("--world", required=True,
                   help="a truematch-preset world folder (python -m vlm world --preset truematch)")
    p.add_argument("--retriever", default="finecap:lit", help="the judge (default finecap:lit)")
    p.add_argument("--n", type=int, default=16, help="samples per image (default 16)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--k-random", type=int, default=31)
    p.add_argument("--k-nn", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the scores to this JSON file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from benchmarks.truematch import EmbeddingCache, load_world_bags
    from vlm.models import create_captioner
    from vlm.pretrained import cache_dir
    from vlm.retrieval import load_retriever

    model = create_captioner(args.model)
    model.eval()
    data = load_world_bags(args.world)
    # Decided before the sampling, so that a missing piece is said up front, not after minutes of work.
    no_sight = (f"{type(model).__name__} has no token_log_probs"
                if not callable(getattr(model, "token_log_probs", None)) else
                f"{args.world}: records without 'dense_caption' (exact captions)"
                if not all("dense_caption" in r.extra for r in data.records) else None)
    if no_sight:
        print(f"sr-headroom: no sight table ({no_sight})", file=sys.stderr)
    judge, cache = load_retriever(args.retriever), EmbeddingCache(cache_dir() / "truematch_embeddings")
    result = sr_headroom(model, data, judge, n=args.n, temperature=args.temperature, k_random=args.k_random,
                         k_nn=args.k_nn, seed=args.seed, cache=cache, progress=not args.quiet)
    sight = None if no_sight else captioner_sight(model, data, progress=not args.quiet)
    content = content_ceilings(data, judge, cache=cache)
    if args.out:
        from vlm.data import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps({"args": vars(args), "scores": result, "sight": sight,
                                                      "content": content}, indent=2) + "\n")
    print(markdown_table(result))
    print()
    print(f"(no sight table: {no_sight})" if sight is None else sight_table(sight))
    print()
    print(content_table(content))
    return 0


__all__ = ["CONTENT_VARIANTS", "captioner_sight", "content_ceilings", "content_table", "markdown_table", "sight_table",
           "sr_headroom"]
