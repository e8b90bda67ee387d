"""Self-retrieval (SR) fine-tuning of a captioner with bag curricula (BagCurri), METHODS.md section 2.

``python -m vlm train --config vlm/configs/sr-bagcurri.yaml`` (a YAML with ``method: sr``).

Each step: draw anchor images and their distractors from the current curriculum stage
(:mod:`vlm.train.curriculum`); sample ``n_samples`` captions per anchor from the policy; a frozen retriever
scores each caption against its candidates (:mod:`vlm.rewards`: the log-probability it picks the target by
default, or R@1, CLIP-S, CIDEr-D and weighted mixtures); REINFORCE with a baseline
(:mod:`vlm.train.policy_gradient`: leave-one-out, self-critical greedy, running mean or group-normalised)
on token-mean log-probabilities, plus optional KL to the starting model and MLE on reference captions.

The loop is the MLE trainer's: Hugging Face Accelerate (CPU, GPU, ``accelerate launch``), safetensors
checkpoints with optimizer, RNG and baseline state, exact resume, a JSONL metrics log, periodic evaluation
(bag R@1 of the policy's own captions on the evaluation split, CIDEr-D, scene-graph facts and
hallucination on world data, caption length and vocabulary).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlm.train.curriculum import DEFAULT_BAGCURRI, BagSampler, Curriculum, mine_neighbours, step_candidates
from vlm.train.policy_gradient import (BASELINES, RunningMeanBaseline, group_normalised_advantages, kl_penalty,
                                       leave_one_out_advantages, policy_gradient_loss, self_critical_advantages)

logger = logging.getLogger(__name__)


@dataclass
class SRConfig:
    """Self-retrieval fine-tuning; YAML files with ``method: sr`` in ``vlm/configs/``. Unknown keys are errors."""

    method: str = "sr"
    """Always ``sr`` (tells ``python -m vlm train`` which trainer a YAML file is for)."""
    init_model: str = "runs/mle-world-small/final"
    """The captioner to fine-tune: a folder saved with ``save_pretrained`` (the MLE stage's ``final``)."""
    train_data: str = "world"
    """A dataset folder, or ``world`` to generate one into ``out_dir/world`` (``world_preset``)."""
    train_split: str = "train"
    eval_split: str = "val"
    """Split scored during training (empty: none)."""
    world_preset: str = "truematch"
    world_n: int = 3000
    world_seed: int = 1
    captions: str = "human"
    """The references the MLE term and the CIDEr-D reward use: ``human`` (the ``captions`` list), ``dense`` or
    ``field:NAME`` (e.g. ``field:boosted_caption`` of a world boosted by Visual Caption Boosting), as
    ``MLEConfig.captions``."""
    retriever: str = "finecap:lit"
    """The frozen reward model (a :func:`vlm.retrieval.load_retriever` spec)."""
    reward: str = "contrastive"
    """``contrastive`` (log-probability of picking the target), ``recall`` (R@1) or ``clip_s``."""
    cider_weight: float = 0.0
    """Adds ``cider_weight * CIDEr-D`` (against the training references) to the reward."""
    reward_scale: float = 0.0
    """Logit scale of the contrastive reward (0: the retriever's own). Higher sharpens the reward among
    near-duplicates; 100 against ``finecap:lit-v4``'s 37 measured the same on held-out bags
    (docs/sr-experiments.md)."""
    baseline: str = "loo"
    """``loo`` (leave-one-out over the samples), ``greedy`` (self-critical), ``mean`` (running) or ``group``."""
    n_samples: int = 4
    """Sampled captions per anchor image."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 30
    batch_size: int = 32
    """Anchor images per optimizer step (in-batch random stages use the others as distractors)."""
    lr: float = 2e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    finetune: str = "full"
    """``full``: train what the captioner's own config trains (its mapper and LM, or its LoRA adapters);
    ``lora``: freeze the captioner and train fresh LoRA adapters on its LM (``lora_*``), folded into the LM's
    weights when the run ends, so ``final`` is saved and loaded like the start (a from-scratch LM or
    ``lm_training: full``). METHODS.md's reference configs fine-tune with LoRA rank 32."""
    lora_r: int = 32
    lora_alpha: int = 64
    lora_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names of the LM that get adapters (``finetune: lora``)."""
    lora_mapper: bool = False
    """With ``finetune: lora``, also train the mapper (image features -> prefix)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the starting model (k3 estimator on sampled tokens)."""
    mle_coef: float = 0.0
    """Weight of an MLE loss on one reference caption per anchor (keeps captions human-like)."""
    curriculum: list = field(default_factory=lambda: [dict(s) for s in DEFAULT_BAGCURRI])
    """Stages (see :mod:`vlm.train.curriculum`); the run lasts their total steps."""
    neighbours: int = 50
    """Nearest neighbours mined per image for bag stages."""
    seed: int = 0
    eval_every: int = 50
    eval_images: int = 300
    eval_num_beams: int = 3
    eval_max_new_tokens: int = 30
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    out_dir: str = "runs/sr"
    progress: bool = True

    def __post_init__(self):
        if self.method != "sr":
            raise ValueError(f"SRConfig.method must be 'sr', got {self.method!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"SRConfig.baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.reward not in ("contrastive", "recall", "clip_s"):
            raise ValueError(f"SRConfig.reward must be contrastive, recall or clip_s, got {self.reward!r}")
        if self.baseline in ("loo", "group") and self.n_samples < 2:
            raise ValueError(f"baseline {self.baseline!r} needs n_samples >= 2")
        if self.lr <= 0 or self.batch_size < 1 or self.n_samples < 1:
            raise ValueError("SRConfig: lr, batch_size and n_samples must be positive")
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"SRConfig.finetune must be 'full' or 'lora', got {self.finetune!r}")
        if self.finetune == "lora" and (self.lora_r < 1 or self.lora_alpha <= 0 or not self.lora_targets):
            raise ValueError(f"SRConfig: LoRA needs lora_r >= 1, lora_alpha > 0 and lora_targets, got "
                             f"{self.lora_r}, {self.lora_alpha}, {self.lora_targets}")
        if isinstance(self.lora_targets, str) or not all(isinstance(t, str) for t in self.lora_targets):
            raise ValueError(f"SRConfig.lora_targets must be a list of module names, got {self.lora_targets!r}")
        if self.captions not in ("human", "dense") and not self.captions.startswith("field:"):
            raise ValueError(f"SRConfig.captions must be 'human', 'dense' or 'field:NAME', got {self.captions!r}")
        Curriculum.from_list(self.curriculum)  # validates the stages now, naming any bad key

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> SRConfig:
        from vlm.train.mle import check_config_keys

        check_config_keys(cls, d, source=source)
        return cls(**d)


def _retriever_image_embeddings(retriever, ds, *, progress: bool) -> torch.Tensor:
    from vlm.retrieval import image_cache_name
    from vlm.train.features import cached_features, feature_cache_key

    key = feature_cache_key(f"retriever:{image_cache_name(retriever)}", getattr(retriever, "fingerprint", "") or "",
                            {}, [ds.path(i) for i in range(len(ds))])
    return cached_features(key, len(ds), lambda idx: retriever.encode_images([ds.image(i) for i in idx]),
                           batch_size=64, progress=progress, desc="retriever image embeddings")


def world_bags_of(ds) -> list[list[int]]:
    """Dataset-index lists of the world's bags (records with a ``bag`` field), complete bags only
    (:func:`vlm.data.complete_bags`)."""
    from vlm.data import complete_bags

    return complete_bags(ds)


def world_edits_of(ds) -> list[list[str]]:
    """Each record's edits from its bag's first image (``extra["bag"]["edits"]``; empty where none)."""
    out = []
    for i in range(len(ds)):
        bag = ds[i].extra.get("bag")
        out.append(list(bag.get("edits") or []) if isinstance(bag, dict) else [])
    return out


def bag_recall(text_emb: torch.Tensor, image_emb: torch.Tensor, bags: list[list[int]]) -> dict[str, float]:
    """R@1 of each bag member's caption among its bag (ties shared), per bag size: ``{"R@1/bag5": ...}``."""
    from vlm.rewards import recall_reward

    by_size: dict[int, list[float]] = {}
    for bag in bags:
        t = torch.tensor(bag)
        sim = text_emb[t] @ image_emb[t].T  # (k, k): caption i vs every image of the bag
        r = recall_reward(sim, torch.arange(len(bag)))
        by_size.setdefault(len(bag), []).extend(r.tolist())
    return {f"R@1/bag{k}": round(sum(v) / len(v), 4) for k, v in sorted(by_size.items())}


def train_sr(cfg: SRConfig, *, stop_after_steps: int | None = None) -> dict:
    """Run (or resume) self-retrieval fine-tuning; returns the summary (also written to ``summary.json``).

    ``stop_after_steps`` stops early after that step's checkpoint, as a killed run would (for tests).
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from vlm.models import create_captioner
    from vlm.retrieval import load_retriever
    from vlm.rewards import CIDErReward, SelfRetrievalReward, recall_reward
    from vlm.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, trim_log
    from vlm.train.mle import _features_for, _trainable_state, append_jsonl, resolve_dataset, targets_of

    t_start = time.perf_counter()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root, reader = resolve_dataset(cfg, is_main=acc.is_main_process)
    acc.wait_for_everyone()
    full = reader(root, check_images=False)
    train_ds = full.filter_split(cfg.train_split)
    eval_ds = full.filter_split(cfg.eval_split) if cfg.eval_split else None
    if len(train_ds) < 2:
        raise ValueError(f"{root}: split {cfg.train_split!r} needs at least 2 records")
    if not Path(cfg.init_model).is_dir():
        raise FileNotFoundError(f"SRConfig.init_model {cfg.init_model!r} is not a folder; train the MLE stage first "
                                "(python -m vlm train --config vlm/configs/mle-world-small.yaml)")

    policy = create_captioner(cfg.init_model, device=str(acc.device))
    if getattr(policy.config, "image_encoder_training", "frozen") != "frozen":
        raise ValueError("SR training here needs a frozen image encoder (its features are cached)")
    if cfg.finetune == "lora":
        if not hasattr(policy, "add_lora_adapters"):
            raise ValueError(f"SRConfig.finetune 'lora': {cfg.init_model} is a {type(policy).__name__}, which takes no "
                             "added adapters; use finetune: full")
        try:
            n_lora = policy.add_lora_adapters(cfg.lora_r, cfg.lora_alpha, cfg.lora_targets,
                                              train_mapper=cfg.lora_mapper)
        except ValueError as e:
            raise ValueError(f"SRConfig.finetune 'lora' with {cfg.init_model}: {e}") from None
        logger.info("LoRA rank %d on %s: %d trainable parameters", cfg.lora_r, cfg.lora_targets, n_lora)
    reference = create_captioner(cfg.init_model, device=str(acc.device)).eval() if cfg.kl_coef else None
    if reference is not None:
        for p in reference.parameters():
            p.requires_grad_(False)
    prog = cfg.progress and acc.is_main_process
    feats = _features_for(policy, train_ds, progress=prog)
    eval_feats = _features_for(policy, eval_ds, progress=prog) if eval_ds is not None and len(eval_ds) else None

    retriever = load_retriever(cfg.retriever, device=str(acc.device))
    img_emb = _retriever_image_embeddings(retriever, train_ds, progress=prog)
    eval_img_emb = _retriever_image_embeddings(retriever, eval_ds, progress=prog) if eval_feats is not None else None
    sr_reward = SelfRetrievalReward(retriever, img_emb, kind=cfg.reward, scale=cfg.reward_scale or None)
    refs = [targets_of(train_ds[i], cfg.captions) for i in range(len(train_ds))]  # a missing field fails here
    cider = (CIDErReward(dict(enumerate(refs)))
             if cfg.cider_weight else None)

    curriculum = Curriculum.from_list(cfg.curriculum).resolve(max(1, len(train_ds) // cfg.batch_size))
    total_steps = curriculum.total_steps
    needs_nb = any(s.source in ("easy", "hard") for s in curriculum.stages)
    nb = sims = None
    if needs_nb:
        from vlm.data import file_identity
        from vlm.retrieval import image_cache_name

        key = f"{image_cache_name(retriever)}|{getattr(retriever, 'fingerprint', '')}|" + "|".join(
            file_identity(train_ds.path(i)) for i in range(len(train_ds)))
        nb, sims = mine_neighbours(img_emb, cfg.neighbours, cache_key=key)
    sampler = BagSampler(nb, sims, n_images=len(train_ds), world_bags=world_bags_of(train_ds),
                         world_edits=world_edits_of(train_ds), seed=cfg.seed)
    for k, st in enumerate(curriculum.stages):  # a stage the data cannot serve fails now, not steps later
        try:
            sampler.sample(st, 1, 0)
        except ValueError as e:
            raise ValueError(f"{cfg.train_data}: curriculum stage {k} ({st.describe()}): {e}") from None
    eval_bags = world_bags_of(eval_ds) if eval_feats is not None else []

    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    baseline = RunningMeanBaseline()
    step = 0
    ckpt_dir = out / "checkpoints"
    metrics_log = out / "metrics.jsonl"
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        state, tstate = load_checkpoint(ckpt, optimizer=opt, scheduler=sched)
        policy.load_state_dict(state, strict=False)
        step = int(tstate["step"])
        t_start -= float(tstate.get("elapsed_s", 0.0))  # wall_time_s counts the interrupted run to its checkpoint
        if tstate.get("baseline"):
            baseline.load_state_dict(tstate["baseline"])
        if acc.is_main_process:  # lines written after that checkpoint would otherwise appear twice
            trim_log(metrics_log, step)
    elif acc.is_main_process and metrics_log.exists():
        metrics_log.unlink()
    if acc.is_main_process:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    wrapped, opt_p = acc.prepare(policy, opt)
    model = acc.unwrap_model(wrapped)

    def checkpoint_state() -> dict:
        # with LoRA the rest is the start's, rebuilt on resume: the checkpoint keeps what trains
        if cfg.finetune == "lora":
            return {k: v for k, v in model.state_dict().items()
                    if "lora_" in k or (cfg.lora_mapper and k.startswith("mapper."))}
        return _trainable_state(model)

    def evaluate_now() -> dict:
        return evaluate_policy(model, eval_ds, eval_feats, eval_img_emb, eval_bags, retriever, cfg)

    last_eval: dict = {}
    if step == 0 and eval_feats is not None and acc.is_main_process:
        last_eval = evaluate_now()
        append_jsonl(metrics_log, {"step": 0, "eval": last_eval})
    bar = tqdm(total=total_steps, initial=step, desc="sr", disable=not prog)
    while step < total_steps:
        stage = curriculum.stage_at(step)
        anchors, cands = sampler.sample(stage, cfg.batch_size, step)
        anchors = anchors[acc.process_index::acc.num_processes]
        if cands is not None:
            cands = cands[acc.process_index::acc.num_processes]
        cands = step_candidates(stage, anchors, cands)  # in-batch: against this process's other anchors
        n = cfg.n_samples
        torch.manual_seed(cfg.seed * 1_000_003 + step * 7 + acc.process_index)  # sampling reproducible on resume
        model.eval()
        f = feats[anchors]
        texts = model.generate(features=f, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                               num_return_sequences=n, max_new_tokens=cfg.max_new_tokens, batch_size=len(anchors))
        idx = [a for a in anchors for _ in range(n)]
        cand_rep = [c for c in cands for _ in range(n)]

        def reward_of(txts, ix, cs):
            sim, target, mask = sr_reward.similarities(txts, ix, cs)  # one retriever pass per caption set
            r = sr_reward.from_similarities(sim, target, mask)
            if cider is not None:
                r = r + cfg.cider_weight * cider.scores(txts, ix)
            return r, recall_reward(sim, target, mask=mask)

        with torch.no_grad():
            rewards, hit = reward_of(texts, idx, cand_rep)
            rewards = rewards.view(len(anchors), n)
            if cfg.baseline == "loo":
                adv = leave_one_out_advantages(rewards)
            elif cfg.baseline == "group":
                adv = group_normalised_advantages(rewards)
            elif cfg.baseline == "greedy":
                greedy = model.generate(features=f, max_new_tokens=cfg.max_new_tokens, batch_size=len(anchors))
                adv = self_critical_advantages(rewards, reward_of(greedy, anchors, cands)[0])
            else:
                adv = baseline.advantages(rewards.flatten()).view_as(rewards)
        model.train()
        logp, mask = model.token_log_probs(texts, features=feats[idx])
        loss = policy_gradient_loss(logp, mask, adv.flatten())
        kl = torch.zeros(())
        if reference is not None:
            with torch.no_grad():
                ref_logp, _ = reference.token_log_probs(texts, features=feats[idx])
            kl = kl_penalty(logp, ref_logp, mask)
            loss = loss + cfg.kl_coef * kl
        mle = torch.zeros(())
        if cfg.mle_coef:
            caps = [random.Random(cfg.seed * 31 + step * 997 + a).choice(refs[a]) for a in anchors]
            mle = model.loss({"features": f, "captions": caps})
            loss = loss + cfg.mle_coef * mle
        opt_p.zero_grad(set_to_none=True)
        acc.backward(loss)
        if cfg.grad_clip:
            acc.clip_grad_norm_(params, cfg.grad_clip)
        opt_p.step()
        sched.step()
        step += 1
        words = [len(t.split()) for t in texts]
        rec = {"step": step, "stage": stage.describe(), "reward": round(float(rewards.mean()), 5),
               "recall": round(float(hit.mean()), 4), "loss": round(float(loss.detach()), 6),
               "kl": round(float(kl.detach()), 6), "mle": round(float(mle.detach()), 6),
               "length": round(sum(words) / max(len(words), 1), 2)}
        bar.update(1)
        bar.set_postfix(stage=rec["stage"], reward=f"{rec['reward']:.3f}", r1=f"{rec['recall']:.2f}")
        if acc.is_main_process:
            append_jsonl(metrics_log, rec)
        if eval_feats is not None and acc.is_main_process and (
                (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
            last_eval = evaluate_now()
            append_jsonl(metrics_log, {"step": step, "eval": last_eval})
        if step % cfg.checkpoint_every == 0 or step == total_steps or step == stop_after_steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(ckpt_dir, model_state=checkpoint_state(), optimizer=opt, scheduler=sched,
                                keep=cfg.keep_checkpoints,
                                trainer_state={"step": step, "config": dataclasses.asdict(cfg),
                                               "baseline": baseline.state_dict(),
                                               "elapsed_s": round(time.perf_counter() - t_start, 1)})
        if stop_after_steps is not None and step >= stop_after_steps:
            bar.close()
            return {"stopped_at": step}
    bar.close()
    acc.wait_for_everyone()
    summary = {"steps": step, "train_images": len(train_ds), "stages": [s.describe() for s in curriculum.stages],
               "wall_time_s": round(time.perf_counter() - t_start, 1), "eval": last_eval}
    if acc.is_main_process:
        if cfg.finetune == "lora":
            model.merge_lora_adapters()  # final is a captioner like the start: adapters folded into the LM
        model.save_pretrained(out / "final")
        (out / "final" / "training_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def evaluate_policy(model, ds, feats, img_emb, bags, retriever, cfg: SRConfig) -> dict:
    """Captions of ``ds`` (beam search): bag R@1 under the reward retriever, CIDEr-D, facts, length."""
    from vlm.caption import score_predictions

    model.eval()
    n = min(cfg.eval_images, len(ds)) if not bags else len(ds)
    preds = model.generate(features=feats[:n], num_beams=cfg.eval_num_beams, max_new_tokens=cfg.eval_max_new_tokens)
    out = {}
    if bags:
        out.update(bag_recall(retriever.encode_texts([p or "." for p in preds]).float(), img_emb[:n], bags))
    ids = [str(ds[i].id if ds[i].id is not None else i) for i in range(n)]
    keep = min(cfg.eval_images, n)
    scores = score_predictions({k: p or "." for k, p in list(zip(ids, preds))[:keep]}, ds)
    out.update({k: v for k, v in scores.items() if k in ("CIDEr", "Bleu_4", "facts_per_caption", "hallucination_rate",
                                                         "mean_length_words", "vocabulary")})
    model.train()
    return out


__all__ = ["SRConfig", "bag_recall", "evaluate_policy", "train_sr", "world_bags_of", "world_edits_of"]
