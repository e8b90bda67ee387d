"""Does a bag curriculum make self-retrieval captions tell near-identical images apart? The whole comparison.

``python -m benchmarks sr-bagcurri [--out runs/sr-bagcurri-compare] [--seeds 0 1 2]``

1. MLE: the default small captioner (``vlm/configs/mle-world-small.yaml``) on the captioning world (reused
   when ``OUT/mle/final`` exists). With ``--pretrain-set``, an MLE pretraining stage comes first (the recipe with
   those fields, e.g. other images captioned by other annotators, into ``OUT/mle-pretrain``) and the MLE stage
   fine-tunes from its model.
2. For each seed, two self-retrieval fine-tunings from it on a truematch-preset world: with the bag
   curriculum (``vlm/configs/sr-bagcurri.yaml``) and with random in-batch distractors only
   (``vlm/configs/sr-random.yaml``), same steps, same reward, same baseline. Finished runs are reused.
3. Every model is scored with the TrueMatch protocol decoding (beam 5, at most 20 tokens, stop at the first
   '.'): TrueMatch R@1 per bag size on a held-out truematch world (another seed, never trained on), and on
   the MLE world's test split, CIDEr-D against the references, the hallucination rate against the scene
   graphs (overall and per kind of fact: colours, counts, ...), caption length and vocabulary size.
4. With ``--reference-set``, a reference MLE stage from the MLE stage's start with those fields too (e.g.
   ``captions=dense``: the world's exact scene-graph captions, supervision of every detail SR is to teach) into
   ``OUT/mle-reference``, scored beside the others: what direct supervision reaches under the same protocol.
5. With ``--vcb``, the paper's whole pipeline beside it: Visual Caption Boosting merges each image's captions of
   the MLE world into one richer target (``OUT/vcb-world``; the deterministic merger, or the LLM blend with
   ``--vcb-llm``), an MLE stage from the MLE stage's start learns them (``OUT/mle-vcb``, the recipe with
   ``--vcb-set`` fields too), and both SR arms run from that captioner per seed (``OUT/vcb-sr-bagcurri-s0``, ...)
   on the SR world with its references boosted the same way (``OUT/sr-world-vcb``: the MLE term and the CIDEr-D
   reward anchor to the boosted captions), scored beside the others.

6. With ``--greedy``, a diagnostic beside the protocol: every captioner's TrueMatch R@1 with greedy decoding (the
   likeliest token at each step, the same limits), with the gaps between them and their confidence intervals.
   Beam search can itself string together details that a captioner's likeliest caption leaves out; SR makes the
   likeliest caption say them, so the two decodings tell apart what SR teaches and what beam search already did.
   ``checks["mle_beam_over_greedy_R@1_bag5_points"]`` is the MLE captioner's lift from beam search: small where
   the method's premise holds (its beam captions generic too). The acceptance checks use the protocol's beam 5
   only.

The table (mean and spread over seeds), R@1 per kind of edit between bag members (which details each model's
captions tell apart), hallucination per kind of fact and the acceptance checks are written to
``OUT/sr_bagcurri.md`` and ``.json``, and a figure to ``OUT/sr_bagcurri.png`` (:func:`plot_sr_bagcurri`: R@1 on
bags of 5 against hallucination for every model and seed, with the acceptance region drawn, and each SR run's
R@1 on its training world's bags as it trains); the run is seeded end to end. Each captioner's scores are kept in
``OUT/scores/<stage>.json`` with a digest of what they were made from (:func:`score_key`), so a rerun, or a
comparison that links them with ``--reuse-from``, scores only the captioners that are new.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "vlm" / "configs"
logger = logging.getLogger(__name__)
VARIANTS = ("sr-random", "sr-bagcurri")


def _load_yaml(path: Path) -> dict:
    from vlm.train.mle import load_config_file

    return load_config_file(path)  # 'base:' resolved, so the saved settings hold every field


def evaluate_captioner(model_dir: Path, *, truematch_world: Path, caption_world: Path, retriever: Any,
                       cache: Any = None, progress: bool = False) -> dict:
    """TrueMatch R@1 per bag size + caption quality and faithfulness of one trained captioner. ``cache``: an
    :class:`benchmarks.truematch.EmbeddingCache` for the held-out images' embeddings, which every captioner shares."""
    from benchmarks.truematch import _ProtocolDecoding, evaluate_truematch, load_world_bags
    from vlm.caption import caption_records, score_predictions
    from vlm.data import read_imagefolder
    from vlm.models import create_captioner

    model = create_captioner(str(model_dir))
    tm = evaluate_truematch(load_world_bags(truematch_world), retriever, captioner=_ProtocolDecoding(model),
                            cache=cache, progress=progress)
    out = _bag_recall(tm)
    test = read_imagefolder(caption_world, check_images=False).filter_split("test")
    preds = caption_records(model, test, num_beams=5, max_new_tokens=20, progress=progress, stop_at_period=True)
    scores = score_predictions(preds, test, by_kind=True)  # by_kind: which kinds of fact are stated, and wrong
    out.update({k: scores[k] for k in ("CIDEr", "Bleu_4", "facts_per_caption", "hallucination_rate",
                                       "mean_length_words", "vocabulary", "facts_by_kind", "hallucination_by_kind")})
    out["by_edit"] = {k: round(v["R@1"], 4) for k, v in tm.by_edit().items()}
    return out


def _bag_recall(tm: Any) -> dict[str, Any]:
    """R@1 per bag size of a TrueMatch result, and per bag the share of its members that hit (``bag_hits``: what
    the confidence intervals of the differences resample)."""
    out: dict[str, Any] = {k: round(v, 4) for k, v in tm.metrics.items() if k.startswith("R@1/bag") and v is not None}
    out["bag_hits"] = {str(size): [round(float(x), 4) for x in h.float().mean(dim=1)]
                       for size, h in sorted(tm.scores.bag_hits.items())}
    return out


def evaluate_greedy(model_dir: Path, *, truematch_world: Path, retriever: Any, caption_world: Path | None = None,
                    cache: Any = None, progress: bool = False) -> dict:
    """The ``--greedy`` diagnostic: one captioner decoded greedily (at most 20 tokens, stop at the first '.').
    TrueMatch R@1 per bag size and each bag's share of hits (``bag_hits``, as :func:`evaluate_captioner`'s); with
    ``caption_world``, CIDEr-D, facts, hallucination and length of its greedy captions of that world's test split."""
    from benchmarks.truematch import _ProtocolDecoding, evaluate_truematch, load_world_bags
    from vlm.caption import caption_records, score_predictions
    from vlm.data import read_imagefolder
    from vlm.models import create_captioner

    model = create_captioner(str(model_dir))
    tm = evaluate_truematch(load_world_bags(truematch_world), retriever,
                            captioner=_ProtocolDecoding(model, num_beams=1), cache=cache, progress=progress)
    out = _bag_recall(tm)
    if caption_world is not None:
        test = read_imagefolder(caption_world, check_images=False).filter_split("test")
        preds = caption_records(model, test, num_beams=1, max_new_tokens=20, progress=progress, stop_at_period=True)
        scores = score_predictions(preds, test)
        out.update({k: scores[k] for k in ("CIDEr", "facts_per_caption", "hallucination_rate", "mean_length_words")})
    return out


#: Bumped when :func:`evaluate_captioner` changes what it measures: scores saved by another version are made anew.
SCORES_VERSION = 1


def scoring_context(*, truematch_world: Path, caption_world: Path, retriever_spec: str, retriever: Any) -> str:
    """Digest of what every captioner of a comparison is scored against: the held-out world's and the caption
    world's ``metadata.jsonl``, the retriever (spec and weights' fingerprint) and :data:`SCORES_VERSION`. Made
    once per comparison; :func:`score_key` adds each captioner's files."""
    import hashlib

    h = hashlib.sha256(json.dumps([SCORES_VERSION, retriever_spec, getattr(retriever, "fingerprint", "") or ""])
                       .encode())
    for tag, world in (("truematch_world", truematch_world), ("caption_world", caption_world)):
        h.update(tag.encode() + b"\0" + (Path(world) / "metadata.jsonl").read_bytes() + b"\0")
    return h.hexdigest()


def score_key(model_dir: Path, context: str) -> str:
    """What a captioner's saved scores (``OUT/scores/<stage>.json``) were made from, as one digest: its saved
    files and the comparison's :func:`scoring_context`. Scores are reused only under the same key, so a retrained
    captioner, another world or another judge is scored again."""
    import hashlib

    h = hashlib.sha256(context.encode())
    for f in sorted(f for f in Path(model_dir).rglob("*") if f.is_file()):
        h.update(f.relative_to(model_dir).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _check_settings(out: Path, settings: dict) -> None:
    """A rerun into ``out`` must use the settings its finished stages were made with."""
    from vlm.data import guard_run_settings

    guard_run_settings(out / "sr_bagcurri_config.json", settings, what="comparison")


#: The comparison's two generated worlds: SR training, and held-out TrueMatch evaluation.
WORLDS = ("sr-world", "truematch-eval")
#: Visual Caption Boosting's copies of the MLE world and of the SR world (``--vcb``): references boosted.
BOOSTED = ("vcb-world", "sr-world-vcb")
#: Stages a comparison can take from another one (``reuse_from``), with the file that marks each finished.
SHARED_STAGES = {"mle-pretrain": "final/config.json", "mle": "final/config.json", "mle-reference": "final/config.json",
                 "sr-world": "metadata.jsonl", "truematch-eval": "metadata.jsonl",
                 "vcb-world": "boost_summary.json", "mle-vcb": "final/config.json",
                 "sr-world-vcb": "boost_summary.json"}
#: The stages each stage is made from: made anew, they make it anew too (an SR arm: its MLE captioner and world).
DEPENDS = {"mle": ("mle-pretrain",), "mle-reference": ("mle-pretrain",), "mle-vcb": ("mle-pretrain", "vcb-world"),
           "sr-arm": ("mle", "sr-world"), "vcb-arm": ("mle-vcb", "sr-world-vcb")}
#: Where the VCB captioner's and arms' training targets are (the field ``python -m vlm boost`` writes).
VCB_CAPTIONS = "field:boosted_caption"


def arm_names(seeds: Sequence[int], *, vcb: bool = False) -> list[str]:
    """The SR arms' folder names, seed by seed: ``sr-random-s0``, ``sr-bagcurri-s0``, ... and, with ``vcb``, the
    arms from the VCB captioner after them (``vcb-sr-random-s0``, ...)."""
    return [f"{p}{v}-s{s}" for p in ("", "vcb-")[:1 + vcb] for s in seeds for v in VARIANTS]


def _stage_inputs(settings: dict, *, source: str, seeds: Sequence[int] = ()) -> dict[str, dict]:
    """What each shareable stage of a comparison with these saved settings was made from (the SR arms of
    ``seeds`` too: an arm is its MLE captioner, its world and its whole resolved config). :func:`run` builds its
    stages from these, and :func:`plan_shared_stages` compares them, so the two cannot drift apart."""
    from vlm.train.sr import SRConfig

    sr_set = settings.get("sr_set", {})
    try:
        base = SRConfig.from_dict({**settings["sr_configs"]["sr-bagcurri"], **sr_set}, source=source)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{source}: cannot read the comparison's SR settings ({err})") from None
    recipe = {"mle_recipe": settings.get("mle_recipe"), "model": settings.get("model")}
    mle_set, pretrain_set = settings.get("mle_set", {}), settings.get("pretrain_set", {})
    # fine-tuning a pretrained folder, the MLE stage takes its model_overrides from that model
    mle_fields = {k: v for k, v in mle_set.items() if not (pretrain_set and k == "model_overrides")}
    inputs = {"mle-pretrain": {**recipe, "fields": {**mle_set, **pretrain_set}},
              "mle": {**recipe, "mle_set": mle_fields, "pretrain_set": pretrain_set},
              "mle-reference": {**recipe, "mle_set": mle_fields, "pretrain_set": pretrain_set,
                                "reference_set": settings.get("reference_set", {})},
              "sr-world": {"world_preset": base.world_preset, "world_n": base.world_n, "world_seed": base.world_seed},
              "truematch-eval": {"eval_world_n": settings.get("eval_world_n", 1500),
                                 "world_seed": base.world_seed + 100, "world_preset": "truematch"}}
    vcb = settings.get("vcb")
    if vcb is not None:  # the MLE stage's world boosted, an MLE stage on it, the SR world boosted
        inputs["vcb-world"] = {"mle": inputs["mle"], "llm": vcb["llm"]}
        inputs["mle-vcb"] = {**recipe, "mle_set": mle_fields, "pretrain_set": pretrain_set, "vcb": vcb}
        inputs["sr-world-vcb"] = {"sr-world": inputs["sr-world"], "llm": vcb["llm"]}
    for variant in VARIANTS:
        config = {k: v for k, v in {**settings["sr_configs"][variant], **sr_set}.items() if k != "out_dir"}
        for seed in seeds:
            inputs[f"{variant}-s{seed}"] = {"mle": inputs["mle"], "sr-world": inputs["sr-world"],
                                            "config": config, "retriever": settings.get("retriever"), "seed": seed}
            if vcb is not None:
                inputs[f"vcb-{variant}-s{seed}"] = {"mle-vcb": inputs["mle-vcb"],
                                                    "sr-world-vcb": inputs["sr-world-vcb"], "config": config,
                                                    "retriever": settings.get("retriever"), "seed": seed}
    return inputs


def plan_shared_stages(out: Path, source: Path, settings: dict, seeds: Sequence[int] = ()
                       ) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Which finished stages of the comparison in ``source`` this one (its ``settings``, its ``seeds``) would make
    identically: ``({stage: source folder}, {stage: inputs that differ})``. Stages are the MLE stages, the two
    worlds and the SR arms (``sr-random-s0``, ...). The first are to be linked into ``out``, so that a
    comparison of another curriculum trains neither the same MLE captioner nor the same random arms again; the
    second are made anew (say, the brief MLE stage with other ``mle_set`` fields, from a shared pretraining
    stage), as is everything that depends on them. A stage ``out`` already has is kept."""
    from vlm.data import read_json

    source = Path(source)
    saved = source / "sr_bagcurri_config.json"
    if not saved.is_file():
        raise FileNotFoundError(f"reuse_from: {source} is not a comparison folder (no sr_bagcurri_config.json)")
    theirs = _stage_inputs(read_json(saved, "comparison config (reuse_from)"), source=str(saved), seeds=seeds)
    ours = _stage_inputs(json.loads(json.dumps(settings)), source="this comparison", seeds=seeds)
    vcb = settings.get("vcb") is not None
    arms = {name: "summary.json" for name in arm_names(seeds, vcb=vcb)}
    plan: dict[str, Path] = {}
    differ: dict[str, list[str]] = {}
    for stage, marker in {**SHARED_STAGES, **arms}.items():
        if (stage == "mle-pretrain" and not settings.get("pretrain_set")) or (
                stage == "mle-reference" and not settings.get("reference_set")) or (
                stage in (*BOOSTED, "mle-vcb") and not vcb):
            continue
        if (out / stage).exists() or (out / stage).is_symlink() or not (source / stage / marker).is_file():
            continue
        if stage not in theirs:  # a folder the source comparison's settings do not ask for
            continue
        if stage in arms:
            depends = DEPENDS["vcb-arm" if stage.startswith("vcb-") else "sr-arm"]
        else:
            depends = DEPENDS.get(stage, ())
        if theirs[stage] != ours[stage]:
            differ[stage] = sorted(k for k in ours[stage] if theirs[stage].get(k) != ours[stage][k])
        elif made_anew := sorted(set(depends) & set(differ)):
            differ[stage] = made_anew  # made from a stage this comparison makes anew
        else:
            plan[stage] = source / stage
    return plan, differ


def _link(out: Path, plan: dict[str, Path], seeds: Sequence[int]) -> dict[str, str]:
    """Link the planned stages into ``out``; return every shared stage of ``out`` that is a link (however made),
    ``{stage: target}``: where the comparison's MLE captioner, worlds and arms came from."""
    import os

    for stage, folder in plan.items():
        (out / stage).symlink_to(os.path.relpath(folder.resolve(), out.resolve()), target_is_directory=True)
    names = [*SHARED_STAGES, *arm_names(seeds, vcb=True)]
    return {stage: os.readlink(out / stage) for stage in names if (out / stage).is_symlink()}


def stage_seconds(stage_dir: Path) -> float:
    """How long a finished training stage took to make, from its own ``summary.json`` (``total_time_s`` of an
    MLE stage, ``wall_time_s`` of an SR arm; both count a resumed run's interrupted process up to its last
    checkpoint). So a stage made by an earlier invocation, or linked by ``--reuse-from``, counts what it cost."""
    from vlm.data import read_json

    f = Path(stage_dir) / "summary.json"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: {stage_dir} is not a finished training stage")
    summary = read_json(f, "stage summary")
    seconds = summary.get("total_time_s", summary.get("wall_time_s")) if isinstance(summary, dict) else None
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise ValueError(f"{f}: no total_time_s or wall_time_s (seconds) in the stage summary")
    return float(seconds)


def run(out: Path, seeds: list[int], *, mle_config: str | Path = CONFIGS / "mle-world-small.yaml",
        model: str | None = None, retriever: str | None = None, mle_set: dict | None = None,
        sr_set: dict | None = None, eval_world_n: int = 1500, sr_configs: dict[str, Path] | None = None,
        pretrain_set: dict | None = None, reference_set: dict | None = None, vcb_set: dict | None = None,
        vcb_llm: bool = False, reuse_from: str | Path | None = None, greedy: bool = False,
        progress: bool = True) -> dict:
    """The whole comparison into ``out`` (finished stages reused). ``mle_config``: the MLE recipe; ``model``: a
    captioner overriding the recipe's (e.g. ``prefix-mid-pos-small``); ``retriever``: the reward and
    evaluation retriever overriding the SR configs' (e.g. ``finecap:lit-v2``); ``mle_set`` / ``sr_set``: more
    fields overriding the MLE recipe's / both SR configs' (e.g. ``{"kl_coef": 0.1}``); ``eval_world_n``: images
    of the held-out TrueMatch world; ``sr_configs``: the two SR YAMLs, ``{"sr-random": path, "sr-bagcurri": path}``
    (default: the shipped ones); ``pretrain_set``: when given, an MLE pretraining stage first (the recipe with these
    fields, e.g. ``{"world_preset": "captioning", "world_seed": 7}``: other annotators on other images) into
    ``out/mle-pretrain``, from whose final model the MLE stage then fine-tunes; the comparison starts from that
    MLE captioner as from any other; ``reference_set``: when given, a reference MLE stage from the same start as
    the MLE stage with these fields as well (e.g. ``{"captions": "dense"}``: supervision of every detail SR is to
    teach) into ``out/mle-reference``, scored beside the others as what direct supervision reaches;
    ``vcb_set``: when given (``{}`` for none), the paper's whole pipeline beside the comparison: Visual Caption
    Boosting of the MLE world (``vlm.boost.boost_dataset``, the LLM blend when ``vcb_llm``, else the deterministic
    merger) into ``out/vcb-world``, an MLE stage on its ``boosted_caption`` from the MLE stage's start with these
    fields too (e.g. ``{"epochs": 4}``) into ``out/mle-vcb``, and both SR arms per seed from that captioner
    (``out/vcb-sr-bagcurri-s0``, ...) on the SR world with boosted references (``out/sr-world-vcb``);
    ``reuse_from``: another comparison's folder whose finished MLE stages, worlds and SR arms this one would make
    identically, linked in rather than made again; ``greedy``: also score every captioner decoded greedily (a
    diagnostic beside the protocol's beam 5, kept with its saved scores; no stage is made again for it)
    (:func:`plan_shared_stages`; the result names them under ``reused``, and those made anew for differing inputs
    under ``not_reused``)."""
    from benchmarks.report import StageTimings
    from benchmarks.truematch import EmbeddingCache, bag_difference_ci
    from vlm.metrics import caption_scores
    from vlm.pretrained import cache_dir
    from vlm.retrieval import load_retriever
    from vlm.train.mle import MLEConfig, check_config_keys, train_mle
    from vlm.train.sr import SRConfig, train_sr
    from vlm.world import generate_world

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    mle_set, sr_set = dict(mle_set or {}), dict(sr_set or {})
    check_config_keys(MLEConfig, mle_set, source="mle_set (--mle-set)")
    check_config_keys(SRConfig, sr_set, source="sr_set (--sr-set)")
    pretrain_set = dict(pretrain_set or {})
    reference_set = dict(reference_set or {})
    vcb = None if vcb_set is None else {"set": dict(vcb_set), "llm": bool(vcb_llm)}
    for name, fields in (("pretrain_set", pretrain_set), ("reference_set", reference_set),
                         ("vcb_set", vcb["set"] if vcb else {})):
        check_config_keys(MLEConfig, fields, source=f"{name} (--{name.replace('_', '-')})")
        if {"model", "out_dir"} & set(fields):
            raise ValueError(f"{name}: model and out_dir are set by the comparison itself (use --model, --out)")
    if vcb and {"train_data", "captions"} & set(vcb["set"]):
        raise ValueError("vcb_set: train_data and captions are set by the comparison itself (the boosted MLE world, "
                         f"{VCB_CAPTIONS})")
    if "curriculum" in sr_set:
        raise ValueError("sr_set: the curriculum is what the comparison varies; give another BagCurri config "
                         "(--bagcurri-config, sr_configs)")
    fixed = sorted(set(sr_set) & {"init_model", "train_data", "seed", "out_dir", "retriever", "progress"})
    if fixed:
        raise ValueError(f"sr_set: {fixed} are set by the comparison itself (use --retriever, --seeds, --out)")
    sr_configs = {v: Path(p) for v, p in (sr_configs or {v: CONFIGS / f"{v}.yaml" for v in VARIANTS}).items()}
    if set(sr_configs) != set(VARIANTS):
        raise ValueError(f"sr_configs needs exactly the keys {VARIANTS}, got {sorted(sr_configs)}")
    arm_fields = {v: _load_yaml(sr_configs[v]) for v in VARIANTS}  # read once: what is saved is what trains
    base = SRConfig.from_dict({**arm_fields["sr-bagcurri"], **sr_set}, source=str(sr_configs["sr-bagcurri"]))
    retriever = retriever or base.retriever
    settings = {"mle_recipe": _load_yaml(Path(mle_config)), "model": model, "retriever": retriever,
                "sr_configs": arm_fields}
    if mle_set or sr_set or eval_world_n != 1500:  # runs made before these options existed stay reusable
        settings.update(mle_set=mle_set, sr_set=sr_set, eval_world_n=eval_world_n)
    if pretrain_set:
        settings["pretrain_set"] = pretrain_set
    if reference_set:
        settings["reference_set"] = reference_set
    if vcb is not None:
        settings["vcb"] = vcb
    inputs = _stage_inputs(settings, source="this comparison", seeds=seeds)
    plan, not_reused = (plan_shared_stages(out, Path(reuse_from), settings, seeds) if reuse_from is not None
                        else ({}, {}))
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    reused = _link(out, plan, seeds)
    for stage, keys in not_reused.items():
        logger.warning("reuse_from: %s made anew: %s differs from %s", stage, ", ".join(keys), Path(reuse_from) / stage)
    over = {**inputs["mle"]["mle_set"], **({"model": model} if model else {})}
    pre_cfg = None
    if pretrain_set:
        pre_cfg = MLEConfig.from_yaml(mle_config, out_dir=str(out / "mle-pretrain"), progress=progress,
                                      **{**inputs["mle-pretrain"]["fields"], **({"model": model} if model else {})})
        over["model"] = str(out / "mle-pretrain" / "final")  # the MLE stage fine-tunes the pretrained folder
    # both configs are built (and checked) before anything trains
    mle_cfg = MLEConfig.from_yaml(mle_config, out_dir=str(out / "mle"), progress=progress, **over)
    ref_cfg = None
    if reference_set:
        ref_over = {**over, **reference_set}
        if mle_cfg.train_data == "world" and not any(k == "train_data" or k.startswith("world_")
                                                     for k in reference_set):
            ref_over["train_data"] = str(out / "mle" / "world")  # the MLE stage's images and cached features
        ref_cfg = MLEConfig.from_yaml(mle_config, out_dir=str(out / "mle-reference"), progress=progress, **ref_over)
    vcb_cfg = None
    if vcb is not None:
        vcb_cfg = MLEConfig.from_yaml(mle_config, out_dir=str(out / "mle-vcb"), progress=progress,
                                      **{**over, **vcb["set"], "train_data": str(out / "vcb-world"),
                                         "captions": VCB_CAPTIONS})
    if pre_cfg is not None and not (out / "mle-pretrain" / "final" / "config.json").is_file():
        t = time.perf_counter()
        train_mle(pre_cfg, metrics_fn=caption_scores)
        timings["mle_pretrain_s"] = round(time.perf_counter() - t, 1)
    if not (out / "mle" / "final" / "config.json").is_file():
        t = time.perf_counter()
        train_mle(mle_cfg, metrics_fn=caption_scores)
        timings["mle_s"] = round(time.perf_counter() - t, 1)
    if ref_cfg is not None and not (out / "mle-reference" / "final" / "config.json").is_file():
        t = time.perf_counter()
        train_mle(ref_cfg, metrics_fn=caption_scores)
        timings["mle_reference_s"] = round(time.perf_counter() - t, 1)
    world_times = StageTimings(out / "timings.json")
    caption_world = out / "mle" / "world" if mle_cfg.train_data == "world" else Path(mle_cfg.train_data)

    def boost(source: Path, name: str) -> None:
        """Visual Caption Boosting of a dataset into ``out/name`` (resumable; done once its summary is written)."""
        from vlm.boost import boost_dataset
        from vlm.data import atomic_write_text

        if not (out / name / "boost_summary.json").is_file():
            t = time.perf_counter()
            summary = boost_dataset(source, out / name, use_llm=vcb["llm"], progress=progress)
            atomic_write_text(out / name / "boost_summary.json", json.dumps(summary, indent=2) + "\n")  # the marker
            world_times.record(name, time.perf_counter() - t)

    if vcb_cfg is not None:
        boost(caption_world, "vcb-world")
        if not (out / "mle-vcb" / "final" / "config.json").is_file():
            t = time.perf_counter()
            train_mle(vcb_cfg, metrics_fn=caption_scores)
            timings["mle_vcb_s"] = round(time.perf_counter() - t, 1)
    sr_world = out / "sr-world"
    if not (sr_world / "metadata.jsonl").is_file():
        t = time.perf_counter()
        w = inputs["sr-world"]
        generate_world(sr_world, n=w["world_n"], seed=w["world_seed"], preset=w["world_preset"], progress=progress)
        world_times.record("sr-world", time.perf_counter() - t)
    eval_world = out / "truematch-eval"
    if not (eval_world / "metadata.jsonl").is_file():
        t = time.perf_counter()
        w = inputs["truematch-eval"]
        generate_world(eval_world, n=w["eval_world_n"], seed=w["world_seed"], preset=w["world_preset"],
                       progress=progress)
        world_times.record("truematch-eval", time.perf_counter() - t)
    if vcb is not None:
        boost(sr_world, "sr-world-vcb")
    runs: dict[str, list[Path]] = {}
    for name in arm_names(seeds, vcb=vcb is not None):
        arm, seed = name.rsplit("-s", 1)
        variant = arm.removeprefix("vcb-")
        d = {**inputs[name]["config"], "seed": int(seed), "out_dir": str(out / name), "retriever": retriever,
             "progress": progress}
        if arm.startswith("vcb-"):  # from the VCB captioner, anchored to boosted references
            d.update(init_model=str(out / "mle-vcb" / "final"), train_data=str(out / "sr-world-vcb"),
                     captions=VCB_CAPTIONS)
        else:
            d.update(init_model=str(out / "mle" / "final"), train_data=str(sr_world))
        run_dir = Path(d["out_dir"])
        if not (run_dir / "summary.json").is_file():
            t = time.perf_counter()
            train_sr(SRConfig.from_dict(d, source=str(sr_configs[variant])))
            timings[f"{name}_s"] = round(time.perf_counter() - t, 1)
        runs.setdefault(arm, []).append(run_dir / "final")
    retriever_spec, retriever = retriever, load_retriever(retriever)
    cache = EmbeddingCache(cache_dir() / "truematch_embeddings")  # the held-out images are encoded once, not per model
    score_seconds: list[float] = []
    context = scoring_context(truematch_world=eval_world, caption_world=caption_world, retriever_spec=retriever_spec,
                              retriever=retriever)
    (out / "scores").mkdir(exist_ok=True)

    def scored(model_dir: Path) -> dict:
        """The captioner's scores, saved in ``out/scores/<stage>.json`` (or taken from ``reuse_from``'s) and reused
        while their :func:`score_key` holds: a rerun or a comparison that adds stages scores only what is new."""
        from vlm.data import atomic_write_text, read_json

        name = model_dir.parent.name
        key = score_key(model_dir, context)
        own = out / "scores" / f"{name}.json"
        saved, write = None, True  # write: own's file does not hold what is returned yet
        for f in (own, *((Path(reuse_from) / "scores" / f"{name}.json",) if reuse_from is not None else ())):
            if f.is_file():
                found = read_json(f, "saved captioner scores", fix="delete it to score the captioner again")
                if isinstance(found, dict) and found.get("key") == key:
                    saved, write = found, f != own
                    break
        if saved is None:
            t = time.perf_counter()
            result = evaluate_captioner(model_dir, truematch_world=eval_world, caption_world=caption_world,
                                        retriever=retriever, cache=cache, progress=progress)
            saved = {"key": key, "seconds": round(time.perf_counter() - t, 1), "scores": result}
        if greedy and "greedy" not in saved["scores"]:  # added to saved scores without scoring beam 5 again
            t = time.perf_counter()
            saved["scores"]["greedy"] = evaluate_greedy(model_dir, truematch_world=eval_world, retriever=retriever,
                                                        caption_world=caption_world, cache=cache, progress=progress)
            saved["greedy_seconds"] = round(time.perf_counter() - t, 1)
            write = True
        if write:
            atomic_write_text(own, json.dumps(saved) + "\n")
        score_seconds.append(saved["seconds"] + saved.get("greedy_seconds", 0.0))
        return saved["scores"]

    scores: dict[str, list[dict]] = {"mle": [scored(out / "mle" / "final")]}
    reference = {"mle-reference": [out / "mle-reference" / "final"]} if ref_cfg is not None else {}
    vcb_mle = {"mle-vcb": [out / "mle-vcb" / "final"]} if vcb_cfg is not None else {}
    plain = {k: v for k, v in runs.items() if not k.startswith("vcb-")}
    from_vcb = {k: v for k, v in runs.items() if k.startswith("vcb-")}
    for variant, dirs in {**plain, **reference, **vcb_mle, **from_vcb}.items():
        scores[variant] = [scored(p) for p in dirs]
    table, by_edit, by_fact = {}, {}, {}
    for name, rows in scores.items():
        table[name] = {k: _mean_std([r[k] for r in rows]) for k in rows[0] if not isinstance(rows[0][k], dict)}
        by_edit[name] = {k: _mean_std([r["by_edit"][k] for r in rows]) for k in rows[0]["by_edit"]}
        if all("hallucination_by_kind" in r for r in rows):  # a kind no caption of a seed states: left out there
            kinds = dict.fromkeys(k for r in rows for k in r["hallucination_by_kind"])
            by_fact[name] = {k: {"hallucination_rate": _mean_std([r["hallucination_by_kind"][k] for r in rows
                                                                  if k in r["hallucination_by_kind"]]),
                                 "per_caption": _mean_std([r["facts_by_kind"].get(k, 0.0) for r in rows])}
                             for k in kinds}
    r5 = {k: table[k]["R@1/bag5"][0] for k in table}

    def gap_ci(a: str, b: str) -> tuple[float, float] | None:
        """How sure ``a - b`` on bags of 5 is: resampling the held-out bags (seeds averaged per bag)."""
        if not all("5" in r["bag_hits"] for k in (a, b) for r in scores[k]):
            return None  # a held-out world without bags of 5
        _, lo, hi = bag_difference_ci([r["bag_hits"]["5"] for r in scores[a]], [r["bag_hits"]["5"] for r in scores[b]])
        return round(100 * lo, 2), round(100 * hi, 2)

    def acceptance(prefix: str) -> dict:
        """The issue's four acceptance figures for the arms ``{prefix}sr-bagcurri`` and ``{prefix}sr-random``
        against the MLE captioner, the R@1 gaps with their CIs, and whether each holds (key ``{prefix}pass``)."""
        p = prefix.replace("-", "_")
        curri, rnd = f"{prefix}sr-bagcurri", f"{prefix}sr-random"
        halluc = table[curri]["hallucination_rate"][0] - table["mle"]["hallucination_rate"][0]
        mle_cider = table["mle"]["CIDEr"][0]
        cider = round(100 * (table[curri]["CIDEr"][0] / mle_cider - 1), 2) if mle_cider > 0 else None  # None: MLE 0
        figures = {f"{p}bagcurri_vs_mle_R@1_bag5_points": round(100 * (r5[curri] - r5["mle"]), 2),
                   f"{p}bagcurri_vs_random_R@1_bag5_points": round(100 * (r5[curri] - r5[rnd]), 2),
                   f"{p}hallucination_rise_points": round(100 * halluc, 2),
                   f"{p}cider_relative_change_pct": cider}
        for other, name in (("mle", "mle"), (rnd, "random")):
            if (ci := gap_ci(curri, other)) is not None:
                figures[f"{p}bagcurri_vs_{name}_R@1_bag5_ci95"] = list(ci)
        figures[f"{p}pass"] = {"R@1_bag5_+10_over_mle": figures[f"{p}bagcurri_vs_mle_R@1_bag5_points"] >= 10,
                               "R@1_bag5_+3_over_random": figures[f"{p}bagcurri_vs_random_R@1_bag5_points"] >= 3,
                               "hallucination_rise_<=2": figures[f"{p}hallucination_rise_points"] <= 2,
                               "cider_drop_<=15%": cider is not None and cider >= -15}
        return figures

    checks = acceptance("")
    if "mle-vcb" in scores:  # the whole pipeline: what boosting alone gains, and SR after it
        for a, b, key in (("mle-vcb", "mle", "vcb_vs_mle"), ("vcb-sr-bagcurri", "mle-vcb", "vcb_bagcurri_vs_vcb_mle")):
            checks[f"{key}_R@1_bag5_points"] = round(100 * (r5[a] - r5[b]), 2)
            if (ci := gap_ci(a, b)) is not None:
                checks[f"{key}_R@1_bag5_ci95"] = list(ci)
        checks.update(acceptance("vcb-"))
    if "mle-reference" in scores:  # what direct supervision gains, and how much of it SR + BagCurri gets
        gain = r5["mle-reference"] - r5["mle"]
        checks["reference_vs_mle_R@1_bag5_points"] = round(100 * gain, 2)
        if (ci := gap_ci("mle-reference", "mle")) is not None:
            checks["reference_vs_mle_R@1_bag5_ci95"] = list(ci)
        if gain > 0:
            checks["bagcurri_share_of_reference_gain"] = round((r5["sr-bagcurri"] - r5["mle"]) / gain, 3)
    greedy_table = {}
    if greedy:  # the diagnostic's R@1 and gaps on bags of 5; the acceptance above is the protocol's alone
        greedy_table = {name: {k: _mean_std([r["greedy"][k] for r in rows]) for k in rows[0]["greedy"]
                               if k != "bag_hits"} for name, rows in scores.items()}
        g5 = {k: v["R@1/bag5"][0] for k, v in greedy_table.items() if "R@1/bag5" in v}
        # the method's premise: beam search over the MLE captioner writes generic captions too (METHODS.md section 2)
        checks["mle_beam_over_greedy_R@1_bag5_points"] = round(100 * (r5["mle"] - g5["mle"]), 2)
        pairs = [("sr-bagcurri", "mle"), ("sr-bagcurri", "sr-random"), ("sr-random", "mle")]
        pairs += [(k, "mle") for k in ("mle-reference", "mle-vcb") if k in g5]
        for a, b in pairs:
            if a in g5 and b in g5:
                key = f"greedy_{a}_vs_{b}".replace("-", "_")
                checks[f"{key}_R@1_bag5_points"] = round(100 * (g5[a] - g5[b]), 2)
                hits = [[r["greedy"]["bag_hits"]["5"] for r in scores[k]] for k in (a, b)]
                _, lo, hi = bag_difference_ci(*hits)
                checks[f"{key}_R@1_bag5_ci95"] = [round(100 * lo, 2), round(100 * hi, 2)]
        g_mle, g_curri = greedy_table["mle"], greedy_table["sr-bagcurri"]
        if "hallucination_rate" in g_mle:  # the faithfulness limits, greedy against greedy
            checks["greedy_hallucination_rise_points"] = round(
                100 * (g_curri["hallucination_rate"][0] - g_mle["hallucination_rate"][0]), 2)
            if g_mle["CIDEr"][0] > 0:
                checks["greedy_cider_relative_change_pct"] = round(
                    100 * (g_curri["CIDEr"][0] / g_mle["CIDEr"][0] - 1), 2)
    checks["pass"] = checks.pop("pass")  # last, after the other figures
    stages = (["mle-pretrain"] if pretrain_set else []) + ["mle"] + (["mle-reference"] if reference_set else []) + (
        ["mle-vcb"] if vcb is not None else []) + [p.parent.name for d in runs.values() for p in d]
    stage_times = {name: stage_seconds(out / name) for name in stages}
    # a world's time (a boosted one's too) is kept beside it, in the comparison that made it (linked or not)
    for w in (*WORLDS, *(BOOSTED if vcb is not None else ())):
        made = (out / w).resolve()
        known = StageTimings(made.parent / "timings.json").data
        if made.name in known:
            stage_times[w] = known[made.name]
    stage_times["evaluation"] = round(sum(score_seconds), 1)  # each captioner's scoring as it was made
    wall = round(time.perf_counter() - t0, 1)
    result = {"seeds": seeds, "mle_config": str(mle_config), "model": model or mle_cfg.model,
              "retriever": retriever_spec, "mle_set": mle_set, "sr_set": sr_set, "eval_world_n": eval_world_n,
              "pretrain_set": pretrain_set, "reference_set": reference_set, "vcb": vcb,
              "table": {k: {m: [round(a, 4), round(b, 4)] for m, (a, b) in v.items()} for k, v in table.items()},
              "by_edit": {k: {m: [round(a, 4), round(b, 4)] for m, (a, b) in v.items()} for k, v in by_edit.items()},
              "facts_by_kind": {k: {kind: {m: [round(a, 4), round(b, 4)] for m, (a, b) in d.items()}
                                    for kind, d in v.items()} for k, v in by_fact.items()},
              "greedy": {k: {m: [round(a, 4), round(b, 4)] for m, (a, b) in v.items()}
                         for k, v in greedy_table.items()},
              "per_seed": scores, "checks": checks, "timings": timings, "wall_time_s": wall,
              "stage_times_s": stage_times, "stage_time_s": round(sum(stage_times.values()), 1)}
    if reused:
        result["reused"] = reused
    if not_reused:
        result["not_reused"] = not_reused
    (out / "sr_bagcurri.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sr_bagcurri.md").write_text(markdown_table(result) + "\n")
    plot_sr_bagcurri(result, out / "sr_bagcurri.png", runs_dir=out)
    return result


NAMES = {"mle": "MLE", "sr-random": "SR, random distractors", "sr-bagcurri": "SR + BagCurri",
         "mle-reference": "MLE reference", "mle-vcb": "MLE + VCB", "vcb-sr-random": "VCB, then SR, random distractors",
         "vcb-sr-bagcurri": "VCB, then SR + BagCurri"}
COLOURS = {"mle": "tab:gray", "sr-random": "tab:blue", "sr-bagcurri": "tab:orange", "mle-reference": "tab:purple",
           "mle-vcb": "tab:brown", "vcb-sr-random": "tab:cyan", "vcb-sr-bagcurri": "tab:red"}


def _label(name: str, result: dict) -> str:
    """A table row's name; the reference MLE stage's names the fields it was trained with.

    Example:
        >>> _label("mle-reference", {"reference_set": {"captions": "dense", "epochs": 4}})
        'MLE reference (captions=dense epochs=4)'
    """
    fields = result.get("reference_set") or {}
    if name == "mle-reference" and fields:
        return f"{NAMES[name]} (" + " ".join(f"{k}={v}" for k, v in fields.items()) + ")"
    return NAMES.get(name, name)


def plot_sr_bagcurri(result: dict, path: str | Path, *, runs_dir: str | Path | None = None) -> Path:
    """The comparison at a glance, as a PNG at ``path``.

    Left: R@1 on bags of 5 against the hallucination rate, one point per model and seed (``result["per_seed"]``),
    the acceptance region shaded (at least +10 points of R@1 over the MLE captioner with at most +2 points of
    hallucination) and the "+3 over random distractors" level dashed. Right (when ``runs_dir`` holds the SR runs'
    ``metrics.jsonl`` with evaluations): each run's R@1 on bags of 5 of its training world's validation split as
    it trains, BagCurri's stage boundaries dotted.

    Example:
        >>> import tempfile
        >>> row = lambda r, h: {"R@1/bag5": r, "hallucination_rate": h}
        >>> res = {"per_seed": {"mle": [row(0.6, 0.04)], "sr-random": [row(0.65, 0.06)],
        ...                     "sr-bagcurri": [row(0.66, 0.05)]}}
        >>> plot_sr_bagcurri(res, Path(tempfile.mkdtemp()) / "f.png").stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_seed = result["per_seed"]
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    bounds: list[tuple[int, str]] = []
    if runs_dir is not None:
        for variant in (*VARIANTS, *(f"vcb-{v}" for v in VARIANTS)):  # with --vcb, its arms too (dashed)
            for metrics in sorted(Path(runs_dir).glob(f"{variant}-s*/metrics.jsonl")):
                rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                evals = [(r["step"], r["eval"]["R@1/bag5"]) for r in rows if r.get("eval", {}).get("R@1/bag5")]
                if evals:
                    curves.setdefault(variant, []).append(([s for s, _ in evals], [v for _, v in evals]))
                if variant == "sr-bagcurri" and not bounds:
                    last = None
                    for r in rows:
                        if "stage" in r and r["stage"] != last:
                            bounds.append((r["step"], r["stage"]))
                            last = r["stage"]
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(11 if curves else 5.5, 5.0), squeeze=False)
    ax = axes[0][0]
    mle = per_seed["mle"][0]
    r0, h0 = 100 * mle["R@1/bag5"], 100 * mle["hallucination_rate"]
    points = [(100 * r["hallucination_rate"], 100 * r["R@1/bag5"]) for rows in per_seed.values() for r in rows]
    top = max(max(y for _, y in points), r0 + 10) + 3
    left, right = min(x for x, _ in points) - 1, max(max(x for x, _ in points), h0 + 2) + 1
    ax.fill_between([left, h0 + 2], r0 + 10, top, color="tab:green", alpha=0.12,
                    label="acceptance: >= +10 R@1, <= +2 hallucination")
    if per_seed.get("sr-random"):
        rnd = statistics.mean(100 * r["R@1/bag5"] for r in per_seed["sr-random"])
        ax.axhline(rnd + 3, color="tab:blue", linestyle="--", linewidth=0.8, label="+3 over random (mean)")
    for name, rows in per_seed.items():
        ax.scatter([100 * r["hallucination_rate"] for r in rows], [100 * r["R@1/bag5"] for r in rows], s=40,
                   color=COLOURS.get(name), label=NAMES.get(name, name), zorder=3)
    ax.set_xlim(left, right)
    ax.set_ylim(min(y for _, y in points) - 3, top)
    ax.set_xlabel("hallucination rate (%)")
    ax.set_ylabel("TrueMatch R@1, bags of 5 (%)")
    ax.set_title("Discrimination against faithfulness")
    # below the axes: inside, it would hide the SR arms, which sit between the MLE point and the acceptance region
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    if curves:
        ax = axes[0][1]
        for variant, runs in curves.items():
            for k, (steps, values) in enumerate(runs):
                ax.plot(steps, [100 * v for v in values], marker="o", color=COLOURS[variant], alpha=0.8,
                        linestyle="--" if variant.startswith("vcb-") else "-", label=NAMES[variant] if k == 0 else None)
        for step, stage in bounds[1:]:
            ax.axvline(step - 0.5, color="tab:orange", linestyle=":", linewidth=0.8)
            ax.text(step, ax.get_ylim()[1], stage, fontsize=7, rotation=90, va="top", color="tab:orange")
        ax.set_xlabel("SR step")
        ax.set_ylabel("R@1, bags of 5 of the training world's val split (%)")
        ax.set_title("While training (every seed)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    from benchmarks.report import save_figure

    return save_figure(fig, path, dpi=110)


def markdown_table(result: dict) -> str:
    """The comparison as a Markdown table (mean ± spread over seeds)."""
    cols = ["R@1/bag3", "R@1/bag5", "R@1/bag7", "CIDEr", "hallucination_rate", "mean_length_words", "vocabulary"]
    head = "| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    rows = []
    for k, v in result["table"].items():
        cells = []
        for c in cols:
            m, s = v[c]
            pct = c.startswith("R@1") or c == "hallucination_rate"
            cells.append(f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3f} ± {s:.3f}" if c == "CIDEr"
                         else f"{m:.1f} ± {s:.1f}")
        rows.append(f"| {_label(k, result)} | " + " | ".join(cells) + " |")
    text = head + "\n".join(rows) + f"\n\nseeds {result['seeds']}; wall time {result['wall_time_s']:.0f} s"
    if result.get("stage_time_s") is not None:
        text += (f" (this invocation); the whole comparison {result['stage_time_s']:.0f} s, the sum of its stages "
                 "as each was made (stage_times_s in the JSON")
        unknown = [w for w in WORLDS if w not in result.get("stage_times_s", {})]
        its = "their times were" if len(unknown) > 1 else "its time was"
        text += f"; {' and '.join(unknown)} made before {its} kept)" if unknown else ")"
    checks = result.get("checks") or {}
    gaps = [f"{label} {checks[f'bagcurri_vs_{k}_R@1_bag5_points']:+.1f} points (95 % CI {lo:+.1f} to {hi:+.1f})"
            for k, label in (("mle", "over MLE"), ("random", "over random distractors"))
            if f"bagcurri_vs_{k}_R@1_bag5_ci95" in checks
            for lo, hi in [checks[f"bagcurri_vs_{k}_R@1_bag5_ci95"]]]
    if gaps:
        text += ("\n\nSR + BagCurri on bags of 5: " + "; ".join(gaps) + ". The intervals resample the held-out bags "
                 "(a paired bootstrap, seeds averaged per bag); the ± above is the spread over seeds.")
    if "reference_vs_mle_R@1_bag5_ci95" in checks:
        lo, hi = checks["reference_vs_mle_R@1_bag5_ci95"]
        text += (f" The MLE reference gains {checks['reference_vs_mle_R@1_bag5_points']:+.1f} points over MLE (95 % CI "
                 f"{lo:+.1f} to {hi:+.1f})")
        share = checks.get("bagcurri_share_of_reference_gain")
        text += f"; SR + BagCurri gets {100 * share:.0f} % of that." if share is not None else "."
    if "vcb_vs_mle_R@1_bag5_points" in checks:

        def gap(key: str) -> str:
            ci = checks.get(f"{key}_R@1_bag5_ci95")
            ci_text = f" (95 % CI {ci[0]:+.1f} to {ci[1]:+.1f})" if ci else ""
            return f"{checks[f'{key}_R@1_bag5_points']:+.1f}{ci_text}"

        text += (f"\n\nWith Visual Caption Boosting first: MLE + VCB gains {gap('vcb_vs_mle')} points over MLE on bags "
                 f"of 5; SR + BagCurri from it ends {gap('vcb_bagcurri_vs_mle')} over MLE, "
                 f"{gap('vcb_bagcurri_vs_vcb_mle')} over MLE + VCB and {gap('vcb_bagcurri_vs_random')} over SR "
                 "with random distractors from it.")
    greedy = result.get("greedy") or {}
    if greedy:
        cols = [c for c in ("R@1/bag3", "R@1/bag5", "R@1/bag7", "CIDEr", "hallucination_rate", "mean_length_words")
                if c in next(iter(greedy.values()))]
        text += ("\n\nWith greedy decoding (`--greedy`, a diagnostic; the table above and the checks use the "
                 "protocol's beam 5):\n\n| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
        for k, v in greedy.items():
            text += f"\n| {_label(k, result)} | " + " | ".join(
                f"{100 * v[c][0]:.1f} ± {100 * v[c][1]:.1f}" if c.startswith("R@1") or c == "hallucination_rate"
                else f"{v[c][0]:.3f} ± {v[c][1]:.3f}" if c == "CIDEr" else f"{v[c][0]:.1f} ± {v[c][1]:.1f}"
                for c in cols) + " |"
        notes = [f"{NAMES.get(a, a)} over {NAMES.get(b, b)} {checks[key + '_R@1_bag5_points']:+.1f} (95 % CI "
                 f"{checks[key + '_R@1_bag5_ci95'][0]:+.1f} to {checks[key + '_R@1_bag5_ci95'][1]:+.1f})"
                 for a, b in (("sr-bagcurri", "mle"), ("sr-bagcurri", "sr-random"), ("sr-random", "mle"),
                              ("mle-reference", "mle"), ("mle-vcb", "mle"))
                 for key in [f"greedy_{a}_vs_{b}".replace("-", "_")] if key + "_R@1_bag5_points" in checks]
        if "mle_beam_over_greedy_R@1_bag5_points" in checks:
            notes.insert(0, f"beam 5 lifts the MLE captioner {checks['mle_beam_over_greedy_R@1_bag5_points']:+.1f} "
                            "over its greedy captions")
        if "greedy_hallucination_rise_points" in checks:
            notes.append(f"hallucination {checks['greedy_hallucination_rise_points']:+.1f} points and CIDEr-D "
                         f"{checks.get('greedy_cider_relative_change_pct', float('nan')):+.1f} % for SR + BagCurri "
                         "against MLE")
        if notes:
            text += "\n\nGreedy, bags of 5: " + "; ".join(notes) + "."
    by_edit = result.get("by_edit") or {}
    if by_edit.get("mle"):  # single edits only, in the MLE's order (most members first)
        kinds = [k for k in by_edit["mle"] if "+" not in k]
        text += ("\n\nR@1 (%) by the edit that made a bag member from its bag's first image (\"none\": the first "
                 "image), bags of every size:\n\n| model | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
        for k, v in by_edit.items():
            text += f"\n| {_label(k, result)} | " + " | ".join(f"{100 * v[c][0]:.1f}" if c in v else "-"
                                                           for c in kinds) + " |"
    facts = result.get("facts_by_kind") or {}
    if facts:
        from vlm.world.facts import FACT_KINDS

        kinds = [k for k in FACT_KINDS if any(k in v for v in facts.values())]
        text += ("\n\nHallucination by kind of fact on the MLE test split: % of the stated facts of that kind that "
                 "are wrong (facts of that kind per caption):\n\n| model | " + " | ".join(kinds) + " |\n|---|"
                 + "---|" * len(kinds))
        for k, v in facts.items():
            text += f"\n| {_label(k, result)} | " + " | ".join(
                f"{100 * v[c]['hallucination_rate'][0]:.1f} ({v[c]['per_caption'][0]:.2f})" if c in v else "-"
                for c in kinds) + " |"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks sr-bagcurri", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/sr-bagcurri-compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mle-config", default=str(CONFIGS / "mle-world-small.yaml"),
                   help="the MLE recipe YAML (default mle-world-small.yaml)")
    p.add_argument("--model", default=None, help="captioner overriding the MLE recipe's (e.g. prefix-mid-pos-small)")
    p.add_argument("--retriever", default=None,
                   help="reward and evaluation retriever overriding the SR configs' finecap:lit (e.g. finecap:lit-v2)")
    p.add_argument("--mle-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="MLE recipe fields to override (YAML values), as python -m vlm train --set")
    p.add_argument("--sr-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fields to override in both SR configs (e.g. kl_coef=0.1 mle_coef=0.1)")
    p.add_argument("--pretrain-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="run an MLE pretraining stage first, the recipe with these fields (e.g. "
                        "world_preset=captioning world_seed=7), and fine-tune the MLE stage from it")
    p.add_argument("--reference-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="also train and score a reference MLE stage from the MLE stage's start with these fields "
                        "(e.g. captions=dense epochs=4: what supervision of every detail reaches)")
    p.add_argument("--vcb", action="store_true",
                   help="also run the paper's whole pipeline: Visual Caption Boosting of the MLE world, an MLE stage "
                        "on the boosted captions from the MLE stage's start, and both SR arms from it per seed")
    p.add_argument("--vcb-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="with --vcb: fields of its MLE stage on the boosted captions (e.g. epochs=4)")
    p.add_argument("--vcb-llm", action="store_true",
                   help="with --vcb: blend the captions with the LLM (SmolLM2; about 2.5 h for 12,000 images on 2 CPU "
                        "cores) instead of the deterministic merger")
    p.add_argument("--bagcurri-config", default=str(CONFIGS / "sr-bagcurri.yaml"),
                   help="the curriculum arm's SR YAML (default vlm/configs/sr-bagcurri.yaml): any custom schedule, "
                        "e.g. with {source: world, edits: [size]} stages")
    p.add_argument("--random-config", default=str(CONFIGS / "sr-random.yaml"),
                   help="the random-distractor arm's SR YAML (default vlm/configs/sr-random.yaml)")
    p.add_argument("--eval-world-n", type=int, default=1500, help="images of the held-out TrueMatch world")
    p.add_argument("--reuse-from", default=None, metavar="DIR",
                   help="another comparison's folder: link in its finished MLE stages, worlds and SR arms where "
                        "this comparison would make them identically (e.g. to compare other --sr-set values or "
                        "another --bagcurri-config)")
    p.add_argument("--greedy", action="store_true",
                   help="also score every captioner decoded greedily, a diagnostic beside the protocol's beam 5: "
                        "what SR teaches the likeliest caption against what beam search already finds")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if (args.vcb_set or args.vcb_llm) and not args.vcb:
        p.error("--vcb-set and --vcb-llm need --vcb")
    for flag, path in (("--bagcurri-config", args.bagcurri_config), ("--random-config", args.random_config)):
        if not Path(path).is_file():
            p.error(f"{flag}: no such file: {path}")
    from vlm.train.mle import parse_overrides

    result = run(Path(args.out), args.seeds, mle_config=args.mle_config, model=args.model, retriever=args.retriever,
                 mle_set=parse_overrides(args.mle_set, option="--mle-set"),
                 sr_set=parse_overrides(args.sr_set, option="--sr-set"), eval_world_n=args.eval_world_n,
                 pretrain_set=parse_overrides(args.pretrain_set, option="--pretrain-set"),
                 reference_set=parse_overrides(args.reference_set, option="--reference-set"),
                 vcb_set=parse_overrides(args.vcb_set, option="--vcb-set") if args.vcb else None, vcb_llm=args.vcb_llm,
                 sr_configs={"sr-random": Path(args.random_config), "sr-bagcurri": Path(args.bagcurri_config)},
                 reuse_from=args.reuse_from, greedy=args.greedy, progress=not args.quiet)
    print(markdown_table(result))
    print(json.dumps(result["checks"], indent=2))
    return 0
