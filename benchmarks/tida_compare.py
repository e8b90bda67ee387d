"""Does TIDA make a captioner name the colour, count and gender it sees? The whole comparison, one command.

``python -m benchmarks tida-compare [--out runs/tida-compare] [--seeds 0 1 2] [--n 3000] [--steps 1000]``

1. World: the ``tida-biased`` preset (``--n`` images, ``--world-seed``): in ``train`` and ``val`` each skill is
   correlated with a context or a shape at p = 0.9 (woman -> kitchen, man -> street, circle -> red,
   square -> blue, triangle -> yellow, stars come in twos); ``test`` is i.i.d.; every ``test_cf`` image breaks
   at least one of the rules (a person is put in the other gender's context: the man in the kitchen).
2. TIDA (``python -m augment tida`` as a function) on the world's ``train`` split: colour, counting and gender
   counterfactuals, exact scene-graph edits (:class:`augment.SceneEditor`), ``--edits-per-record`` per image
   (default 6), with the counting words of ``--skill-file`` (default
   ``benchmarks/skill_data/counting-from-one.yaml``: TIDA's two .. six plus "one", so that "two stars" can
   become "one star"; a lone star is as common in ``test_cf`` as any other count).
   Verification is off by default: a scene edit is exact by construction (the edited scene graph is drawn again
   and the captions are regenerated from it), while the offline LiT retriever, trained on small world images,
   rejects many correct counting edits and would thin out precisely the skill the biased data lacks.
   ``--verify`` (with ``--margin``, ``--retriever``) turns it on.
3. Per seed, two MLE captioners from the same recipe (``--mle-config``, default
   ``vlm/configs/mle-world-small.yaml``, with the captioner ``--model``, default ``prefix-mid-pos-small``: it
   reads EfficientNet's mid-level map, where counts survive): on the biased ``train`` split alone, and on it
   plus the TIDA pairs (``MLEConfig.extra_train_data``), both for exactly ``--steps`` optimizer steps
   (``MLEConfig.max_steps``), so the augmented arm sees more distinct pairs, not more updates.
4. Each captioner captions ``test_cf``, ``val`` and ``test`` (beam 3, at most 30 tokens).
5. Scores: skill correctness per skill on ``test_cf`` (:func:`benchmarks.skills_world.skill_scores`: the
   skill words a caption states checked against the scene graph; an image whose scene has the skill but whose
   caption leaves it out counts as not right), also on the ``test_cf`` images that break a rule of that skill;
   CIDEr-D on ``val``, the in-distribution split (the same biased distribution as ``train``; ``test`` is
   i.i.d., a distribution neither arm trained on, so it is reported beside it but not used for the check);
   hallucination rate on ``test_cf``.

``OUT/tida_compare.md`` and ``.json`` hold the table (mean ± sample standard deviation over seeds), the paired
per-seed differences, the acceptance checks (for every skill, accuracy on ``test_cf`` at least 15 points above
the biased-only captioner; CIDEr-D on ``val`` at most 3 % (relative) below it) and the wall time. The run is
seeded end to end. A rerun reuses every finished stage (world, TIDA, each training run, each caption file;
interrupted TIDA jobs and training runs resume from their own logs and checkpoints), so the wall time of
the whole experiment is the sum of the stage times stored in ``OUT/timings.json``; other settings in the same
``OUT`` are refused (more seeds are fine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.report import StageTimings

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "vlm" / "configs"
ARMS = ("biased", "tida")
"""Training data of the two captioners: the biased ``train`` split alone, and with the TIDA pairs added."""
ARM_NAMES = {"biased": "biased only", "tida": "biased + TIDA"}
SPLITS = ("test_cf", "val", "test")
"""Captioned splits: the counterfactual one (skills), the in-distribution one (CIDEr-D), the i.i.d. one."""
SKILLS = ("color", "counting", "gender")
MIN_SKILL_GAIN_POINTS = 15.0
MAX_CIDER_DROP_PCT = 3.0


@dataclass
class TIDACompareConfig:
    """One comparison run. Every field is documented once, here; the CLI flags are the same names."""

    out: str = "runs/tida-compare"
    """Run folder: world, TIDA output, one folder per training run, the table."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (model initialisation and data order); each gives one captioner per arm."""
    n: int = 3000
    """World images (70 % train, 10 % each of val, test, test_cf)."""
    world_seed: int = 0
    """Seed of the world."""
    image_size: int = 224
    """World image side in pixels."""
    steps: int = 1000
    """Optimizer steps of every captioner (about 6 epochs of the biased split at n = 3000, batch 64)."""
    mle_config: str = str(CONFIGS / "mle-world-small.yaml")
    """The MLE recipe (YAML of :class:`vlm.train.MLEConfig`); data, seed, steps and folders are set here."""
    model: str | None = "prefix-mid-pos-small"
    """Captioner name overriding the recipe's (``prefix-tiny`` for a smoke run); None: the recipe's
    (``prefix-small``, which reads pooled ImageNet features and barely sees counts: README)."""
    edits_per_record: int = 6
    """TIDA edits drawn per training image (skills take turns; 6 gives about 5.5 pairs per image at n = 3000:
    counting needed them, README)."""
    tida_seed: int = 0
    """Seed of TIDA's draws and edits."""
    skill_files: list[str] = field(default_factory=lambda: [str(ROOT / "benchmarks" / "skill_data"
                                                               / "counting-from-one.yaml")])
    """Skill YAML files for TIDA (:func:`augment.load_skills`); one named like a shipped skill replaces it. The
    default, ``benchmarks/skill_data/counting-from-one.yaml``, lets counting edits go down to "one"."""
    verify: bool = False
    """Verify TIDA edits with the retriever (off: scene edits are exact; see the module docstring)."""
    margin: float = 0.0
    """With ``verify``: least ``cos(edited, new caption) - cos(edited, old caption)``."""
    retriever: str = "finecap:lit"
    """With ``verify``: the retriever spec."""
    num_beams: int = 3
    """Beams of the evaluation captions."""
    max_new_tokens: int = 30
    """Token budget of the evaluation captions."""
    progress: bool = True
    """Progress bars."""

    def __post_init__(self):
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"TIDACompareConfig.seeds must be distinct and at least one, got {self.seeds}")
        for name, least in (("n", 10), ("steps", 1), ("edits_per_record", 0), ("num_beams", 1),
                            ("max_new_tokens", 1), ("image_size", 16)):
            if getattr(self, name) < least:
                raise ValueError(f"TIDACompareConfig.{name} must be >= {least}, got {getattr(self, name)}")
        if not Path(self.mle_config).is_file():
            raise ValueError(f"TIDACompareConfig.mle_config: {self.mle_config} is not a file")
        self.skill_files = [str(f) for f in self.skill_files]
        for f in self.skill_files:
            if not Path(f).is_file():
                raise ValueError(f"TIDACompareConfig.skill_files: {f} is not a file")

    def settings(self) -> dict:
        """What the stored stages depend on: a rerun into the same folder must have the same."""
        import yaml

        from vlm.train.mle import load_config_file

        d = dataclasses.asdict(self)
        for k in ("out", "seeds", "progress", "mle_config"):
            d.pop(k)
        if not self.verify:  # thresholds and retriever change nothing then
            d.pop("margin")
            d.pop("retriever")
        d["mle_recipe"] = load_config_file(self.mle_config)  # the recipe itself ('base:' resolved), not its path
        d["skill_files"] = [yaml.safe_load(Path(f).read_text()) for f in self.skill_files]  # likewise
        return d


# ---- stages ---------------------------------------------------------------------------------------------


def _check_settings(cfg: TIDACompareConfig, out: Path) -> None:
    from vlm.data import guard_run_settings

    guard_run_settings(out / "tida_compare_config.json", cfg.settings(), what="comparison run")


def build_world(cfg: TIDACompareConfig, out: Path, timings: StageTimings) -> Path:
    """The tida-biased world (reused when ``OUT/world/world.json`` exists: it is written last)."""
    from vlm.world import generate_world

    world = out / "world"
    if not (world / "world.json").is_file():
        t = time.perf_counter()
        generate_world(world, n=cfg.n, seed=cfg.world_seed, preset="tida-biased", image_size=cfg.image_size,
                       overwrite=True, progress=cfg.progress)
        timings.record("world", time.perf_counter() - t)
    return world


def build_tida(cfg: TIDACompareConfig, world: Path, out: Path, timings: StageTimings) -> dict:
    """TIDA on the world's train split (reused when its report exists; an interrupted job resumes)."""
    from augment import TIDAConfig, run_tida
    from vlm.data import read_json

    tida = out / "tida"
    report_file = tida / "tida_report.json"
    if report_file.is_file():
        return read_json(report_file, "TIDA report", fix="delete it to run TIDA's report again")
    t = time.perf_counter()
    report = run_tida(TIDAConfig(data=str(world), out=str(tida), split="train", skills=SKILLS,
                                 skill_files=list(cfg.skill_files),
                                 edits_per_record=cfg.edits_per_record, seed=cfg.tida_seed, editor="scene",
                                 verify=cfg.verify, margin=cfg.margin, retriever=cfg.retriever),
                      progress=cfg.progress)
    timings.record("tida", time.perf_counter() - t)
    if not report.get("written"):
        raise RuntimeError(f"TIDA wrote no augmented pair into {tida} (report: {report_file}); with --verify the "
                           "retriever may reject every edit: try --margin lower or no --verify")
    return report


def _mle_config(cfg: TIDACompareConfig, arm: str, seed: int, world: Path, tida: Path, run_dir: Path):
    from vlm.data import read_imagefolder
    from vlm.train.mle import MLEConfig

    extra = [str(tida)] if arm == "tida" else []
    base = MLEConfig.from_yaml(cfg.mle_config)
    examples = sum(len(r.captions) for folder in [world, *extra]
                   for r in read_imagefolder(folder, check_images=False) if r.split == base.train_split)
    # Enough epochs for the steps: max_steps decides, equal in both arms however many pairs each has.
    epochs = max(1, math.ceil(cfg.steps / math.ceil(examples / base.batch_size)))
    over = dict(train_data=str(world), extra_train_data=extra, train_split="train", eval_split="val",
                test_split="", epochs=epochs, max_steps=cfg.steps, eval_every=cfg.steps, seed=seed,
                out_dir=str(run_dir), progress=cfg.progress)
    if cfg.model:
        over["model"] = cfg.model
    return dataclasses.replace(base, **over)


def train_arm(cfg: TIDACompareConfig, arm: str, seed: int, world: Path, tida: Path, out: Path,
              timings: StageTimings) -> Path:
    """One captioner (reused when its ``summary.json`` exists; an interrupted run resumes)."""
    from vlm.train.mle import train_mle

    run_dir = out / "runs" / f"{arm}-s{seed}"
    if not (run_dir / "summary.json").is_file():
        t = time.perf_counter()
        summary = train_mle(_mle_config(cfg, arm, seed, world, tida, run_dir))
        if summary["steps"] != cfg.steps:
            raise RuntimeError(f"{run_dir}: trained {summary['steps']} steps, expected {cfg.steps}")
        timings.record(f"train/{arm}-s{seed}", time.perf_counter() - t)
    return run_dir


def caption_splits(cfg: TIDACompareConfig, run_dir: Path, splits: dict, timings: StageTimings) -> dict[str, dict]:
    """``{split: {id: caption}}`` of one captioner (each split's file reused when present)."""
    from vlm.caption import caption_records
    from vlm.data import atomic_write_text, read_json

    preds, model = {}, None
    for split, ds in splits.items():
        path = run_dir / f"captions_{split}.json"
        if not path.is_file():
            if model is None:
                from vlm.models import create_captioner

                model = create_captioner(str(run_dir / "final"))
            t = time.perf_counter()
            caps = caption_records(model, ds, num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                                   progress=cfg.progress)
            atomic_write_text(path, json.dumps(caps, indent=1, sort_keys=True) + "\n", fsync=False)
            timings.record(f"caption/{run_dir.name}/{split}", time.perf_counter() - t)
        preds[split] = read_json(path, "predictions file", fix="delete it to caption the split again")
    return preds


# ---- scores ---------------------------------------------------------------------------------------------


def rule_skill(rule: str) -> str:
    """The skill whose correlation a rule of the world states (the strings of ``record.extra["counterfactual"]``).

    Example:
        >>> rule_skill("shape=star -> count=2 (p=0.9)"), rule_skill("gender=woman -> background=kitchen (p=0.9)")
        ('counting', 'gender')
    """
    if rule.startswith("gender="):
        return "gender"
    return "counting" if "-> count=" in rule else "color"


def score_run(preds: dict[str, dict], splits: dict) -> dict:
    """The scores of one captioner: skill correctness on test_cf (all, and the images breaking that skill's
    rule), CIDEr-D and friends per split, hallucination rate."""
    from benchmarks.skills_world import skill_scores
    from vlm.caption import score_predictions
    from vlm.world import Scene

    out: dict = {}
    for split, ds in splits.items():
        s = score_predictions(preds[split], ds)
        out[f"CIDEr/{split}"] = s["CIDEr"]
        out[f"Bleu_4/{split}"] = s["Bleu_4"]
        if split not in ("val", "test_cf"):
            continue
        records = {str(r.id): r for r in ds}
        scenes = {k: Scene.from_dict(r.extra["scene"]) for k, r in records.items()}
        summary, _ = skill_scores(preds[split], scenes)
        if split == "val":
            # In distribution: how well the captioner sees each skill where the correlations hold.
            for skill in SKILLS:
                out[f"{skill}/val"] = summary[skill]["accuracy"]
        if split == "test_cf":
            out["hallucination_rate/test_cf"] = s["hallucination_rate"]
            for skill in SKILLS:
                out[f"{skill}/test_cf"] = summary[skill]["accuracy"]
                out[f"{skill}_precision/test_cf"] = summary[skill]["precision"]
                out[f"{skill}_mention_rate/test_cf"] = summary[skill]["mention_rate"]
                broken = {k for k, r in records.items()
                          if any(rule_skill(x) == skill for x in r.extra.get("counterfactual", []))}
                sub, _ = skill_scores({k: preds[split][k] for k in broken}, scenes)
                out[f"{skill}/test_cf_rule"] = sub[skill]["accuracy"]
    return out


def _mean_std(values: list) -> list:
    values = [v for v in values if v is not None]
    if not values:
        return [None, None]
    return [round(statistics.fmean(values), 6), round(statistics.stdev(values), 6) if len(values) > 1 else 0.0]


def summarise(per_seed: dict[str, list[dict]]) -> tuple[dict, dict, dict]:
    """Table (mean, std per arm), paired per-seed differences, and the acceptance checks."""
    keys = list(per_seed["biased"][0])
    table = {arm: {k: _mean_std([r[k] for r in rows]) for k in keys} for arm, rows in per_seed.items()}
    paired = {}
    for k in keys:
        diffs = [(t[k] - b[k]) for b, t in zip(per_seed["biased"], per_seed["tida"])
                 if t[k] is not None and b[k] is not None]
        paired[k] = _mean_std(diffs)
    checks: dict = {}
    for skill in SKILLS:
        b, t = table["biased"][f"{skill}/test_cf"][0], table["tida"][f"{skill}/test_cf"][0]
        checks[f"{skill}_gain_points"] = None if b is None or t is None else round(100 * (t - b), 2)
    cb, ct = table["biased"]["CIDEr/val"][0], table["tida"]["CIDEr/val"][0]
    change = checks["cider_val_relative_change_pct"] = round(100 * (ct / cb - 1), 2) if cb else None
    checks["pass"] = {
        **{f"{skill}_gain_>={MIN_SKILL_GAIN_POINTS:g}_points":
           checks[f"{skill}_gain_points"] is not None and checks[f"{skill}_gain_points"] >= MIN_SKILL_GAIN_POINTS
           for skill in SKILLS},
        f"cider_val_drop_<={MAX_CIDER_DROP_PCT:g}%": (change is not None and change >= -MAX_CIDER_DROP_PCT),
    }
    checks["all_pass"] = all(checks["pass"].values())
    return table, paired, checks


def run(cfg: TIDACompareConfig) -> dict:
    """Run (or resume) the whole comparison; returns the result also written to ``OUT/tida_compare.json``."""
    from benchmarks.report import StageTimings, package_versions
    from vlm.data import atomic_write_text, read_imagefolder

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(cfg, out)
    timings = StageTimings(out / "timings.json")
    world = build_world(cfg, out, timings)
    report = build_tida(cfg, world, out, timings)
    full = read_imagefolder(world, check_images=False)
    splits = {s: full.filter_split(s) for s in SPLITS}
    empty = [s for s, ds in splits.items() if not len(ds)]
    if empty:
        raise ValueError(f"{world}: no records in split(s) {empty}; use a larger --n")
    per_seed: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for seed in cfg.seeds:
        for arm in ARMS:
            run_dir = train_arm(cfg, arm, seed, world, out / "tida", out, timings)
            per_seed[arm].append(score_run(caption_splits(cfg, run_dir, splits, timings), splits))
    table, paired, checks = summarise(per_seed)
    result = {
        "config": {**dataclasses.asdict(cfg), **cfg.settings()},
        "world": {"n": cfg.n, "seed": cfg.world_seed, "splits": {s: len(ds) for s, ds in splits.items()},
                  "train": len(full.filter_split("train"))},
        "tida": {"written": report["written"], "per_skill": {s: {k: r[k] for k in ("selected", "edited", "accepted",
                                                                                    "written")}
                                                             for s, r in report["per_skill"].items()}},
        "seeds": cfg.seeds, "table": table, "paired_difference": paired, "per_seed": per_seed, "checks": checks,
        "timings": timings.data, "stage_time_s": timings.total,
        "wall_time_s": round(time.perf_counter() - t0, 1), "versions": package_versions(),
    }
    atomic_write_text(out / "tida_compare.json", json.dumps(result, indent=2) + "\n", fsync=False)
    atomic_write_text(out / "tida_compare.md", markdown_table(result) + "\n", fsync=False)
    return result


def _cell(v: list, pct: bool) -> str:
    m, s = v
    if m is None:
        return "n/a"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def markdown_table(result: dict) -> str:
    """The comparison as Markdown: one row per arm and the paired difference, then the checks."""
    cols = [("color/test_cf", "colour right, test_cf (%)", True),
            ("counting/test_cf", "counting right, test_cf (%)", True),
            ("gender/test_cf", "gender right, test_cf (%)", True), ("CIDEr/val", "CIDEr-D val (in-dist.)", False),
            ("CIDEr/test", "CIDEr-D test (i.i.d.)", False), ("CIDEr/test_cf", "CIDEr-D test_cf", False),
            ("hallucination_rate/test_cf", "hallucination test_cf (%)", True)]
    lines = ["| captioner | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for arm in ARMS:
        cells = [_cell(result["table"][arm][k], p) for k, _, p in cols]
        lines.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells) + " |")
    lines.append("| difference (paired by seed) | "
                 + " | ".join(_cell(result["paired_difference"][k], p) for k, _, p in cols) + " |")
    sub = ["", "On the test_cf images that break a rule of the skill, and in distribution (val):", "",
           "| captioner | " + " | ".join(f"{s} right, rule broken (%)" for s in SKILLS) + " | "
           + " | ".join(f"{s} right, val (%)" for s in SKILLS) + " |", "|---|" + "---|" * (2 * len(SKILLS))]
    for arm in ARMS:
        row = result["table"][arm]
        sub.append(f"| {ARM_NAMES[arm]} | "
                   + " | ".join(_cell(row[f"{s}/test_cf_rule"], True) for s in SKILLS) + " | "
                   + " | ".join(_cell(row.get(f"{s}/val", [None, None]), True) for s in SKILLS) + " |")
    c = result["checks"]
    checks = ["", "Checks: " + "; ".join(
        [f"{s} {c[f'{s}_gain_points']:+.1f} points" if c[f"{s}_gain_points"] is not None else f"{s} n/a"
         for s in SKILLS]
        + [f"CIDEr-D val {c['cider_val_relative_change_pct']:+.2f} %" if c["cider_val_relative_change_pct"]
           is not None else "CIDEr-D val n/a"])
        + " -> " + ", ".join(f"{k}: {'pass' if v else 'FAIL'}" for k, v in c["pass"].items())]
    cfg = result["config"]
    foot = ["", f"A skill is right when the caption states it and every skill word holds in the scene graph; an "
                f"image whose scene shows the skill counts as not right when its caption leaves it out. Mean ± "
                f"standard deviation over seeds {result['seeds']}; {cfg['steps']} optimizer steps per captioner; "
                f"world n={cfg['n']} (seed {cfg['world_seed']}, {cfg['image_size']} px); TIDA pairs written "
                f"{result['tida']['written']} (verification {'on' if cfg['verify'] else 'off'}). Wall time "
                f"{result['stage_time_s']:.0f} s (sum of the stages; this invocation {result['wall_time_s']:.0f} s)."]
    return "\n".join(lines + sub + checks + foot)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tida-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TIDACompareConfig()
    p.add_argument("--out", default=d.out)
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    p.add_argument("--n", type=int, default=d.n, help=f"world images (default {d.n})")
    p.add_argument("--world-seed", type=int, default=d.world_seed)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps per captioner (default {d.steps})")
    p.add_argument("--mle-config", default=d.mle_config, help="the MLE recipe YAML (default mle-world-small.yaml)")
    p.add_argument("--model", default=d.model,
                   help=f"captioner overriding the recipe's (default {d.model}; prefix-tiny: smoke runs)")
    p.add_argument("--edits-per-record", type=int, default=d.edits_per_record)
    p.add_argument("--tida-seed", type=int, default=d.tida_seed)
    p.add_argument("--skill-file", action="append", default=None, dest="skill_files",
                   help="a skill YAML for TIDA, replacing the shipped skill of its name (repeatable; default "
                        "benchmarks/skill_data/counting-from-one.yaml)")
    p.add_argument("--paper-skills", action="store_true",
                   help="TIDA's own word lists only (counting two .. six), no --skill-file")
    p.add_argument("--verify", action="store_true", help="verify TIDA edits with the retriever (default off)")
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--retriever", default=d.retriever)
    p.add_argument("--num-beams", type=int, default=d.num_beams)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    cfg = TIDACompareConfig(out=args.out, seeds=args.seeds, n=args.n, world_seed=args.world_seed,
                            image_size=args.image_size, steps=args.steps, mle_config=args.mle_config, model=args.model,
                            edits_per_record=args.edits_per_record, tida_seed=args.tida_seed,
                            skill_files=[] if args.paper_skills else (args.skill_files or d.skill_files),
                            verify=args.verify,
                            margin=args.margin, retriever=args.retriever, num_beams=args.num_beams,
                            max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    result = run(cfg)
    print(markdown_table(result))
    print(json.dumps(result["checks"], indent=2))
    return 0
