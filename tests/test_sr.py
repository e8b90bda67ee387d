"""Self-retrieval RL: rewards, baselines, curricula, and the training loop on a toy problem."""

import json
import math

import pytest
import torch
from PIL import Image

from vlm.rewards import (CIDErReward, RewardMixture, SelfRetrievalReward, clip_s_reward, contrastive_reward,
                         recall_reward)
from vlm.train.curriculum import BagSampler, Curriculum, Stage, mine_neighbours
from vlm.train.policy_gradient import (RunningMeanBaseline, group_normalised_advantages, kl_penalty,
                                       leave_one_out_advantages, policy_gradient_loss, self_critical_advantages)

# ---- rewards on hand-made similarity matrices -------------------------------------------------------------


def test_contrastive_reward_is_the_log_softmax_of_the_target():
    sim = torch.tensor([[0.30, 0.10, 0.20], [0.00, 0.50, 0.50]])
    r = contrastive_reward(sim, scale=10.0)
    e = [math.exp(3.0), math.exp(1.0), math.exp(2.0)]
    assert r[0].item() == pytest.approx(math.log(e[0] / sum(e)), abs=1e-6)
    assert r[1].item() == pytest.approx(math.log(1 / (1 + 2 * math.exp(5.0))), abs=1e-5)
    # the target column can be any column, and padded candidates do not count
    r2 = contrastive_reward(sim, torch.tensor([1, 1]), scale=10.0, mask=torch.tensor([[1, 1, 0], [1, 1, 0]]).bool())
    assert r2[0].item() == pytest.approx(math.log(math.exp(1) / (math.exp(3) + math.exp(1))), abs=1e-6)
    assert r2[1].item() == pytest.approx(math.log(math.exp(5) / (1 + math.exp(5))), abs=1e-6)
    assert torch.all(r <= 0)


def test_recall_and_clip_s_rewards():
    sim = torch.tensor([[0.9, 0.2, 0.2], [0.5, 0.5, 0.5], [0.1, 0.8, 0.3], [-0.3, -0.5, -0.4]])
    assert recall_reward(sim).tolist() == pytest.approx([1.0, 1 / 3, 0.0, 1.0])
    assert recall_reward(sim, mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]).bool()).tolist() \
        == pytest.approx([1.0, 0.5, 1.0, 1.0])
    assert clip_s_reward(sim).tolist() == pytest.approx([2.25, 1.25, 0.25, 0.0])


class WordRetriever:
    """Texts point at the colours they name; images are one-hot colours (index = colour)."""

    name = "words"
    logit_scale = 10.0
    colours = ("red", "blue", "green", "yellow")

    def encode_texts(self, texts, *, batch_size=256):
        v = torch.tensor([[float(c in t.split()) for c in self.colours] for t in texts]) + 1e-3
        return torch.nn.functional.normalize(v, dim=1)


def test_self_retrieval_reward_bags_in_batch_and_trl_signature():
    images = torch.eye(4)
    sr = SelfRetrievalReward(WordRetriever(), images, kind="contrastive")
    r = sr(["a red square", "a blue square", "a square"], image_index=[0, 1, 2],
           candidates=[[0, 1], [1, 0, 2, 3], [2, 3]])
    assert r[0] == pytest.approx(math.log(1 / (1 + math.exp(-10 * (1 - 1e-3) / math.sqrt(1 + 3e-6)))), abs=1e-3)
    assert r[2] == pytest.approx(math.log(0.5), abs=1e-6)  # no colour: a coin flip between 2 and 3
    assert r[1] > r[2]
    # in-batch candidates (RD-n), and TRL's conversational completions
    assert sr([[{"role": "assistant", "content": "a red square"}]], image_index=[0]) == [0.0]
    assert SelfRetrievalReward(WordRetriever(), images, kind="recall")(
        ["red", "red"], image_index=[0, 1]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="not among its candidates"):
        sr(["red"], image_index=[0], candidates=[[1, 2]])


def test_cider_reward_matches_the_corpus_metric():
    from vlm.metrics.cider import Cider

    refs = {0: ["a red circle on the grass", "one red circle"], 1: ["two blue squares", "blue squares on snow"],
            2: ["a green star", "a small green star in a kitchen"]}
    preds = ["a red circle", "two blue squares on snow", "a green star in a kitchen"]
    reward = CIDErReward(refs)
    mine = reward(preds, image_index=[0, 1, 2])
    _, per_image = Cider().compute_score({str(k): v for k, v in refs.items()},
                                         {str(k): [p] for k, p in zip(refs, preds)})
    assert [reward.score_one(p, i) for i, p in enumerate(preds)] == pytest.approx(per_image.tolist(), abs=1e-12)
    assert mine == pytest.approx(per_image.tolist(), abs=1e-5)  # float32 tensors
    mix = RewardMixture({"cider": (reward, 0.5), "sr": (reward, 1.0)})
    assert mix(preds, image_index=[0, 1, 2]) == pytest.approx([1.5 * x for x in mine])


# ---- baselines --------------------------------------------------------------------------------------------


def test_baseline_arithmetic():
    r = torch.tensor([[1.0, 3.0, 5.0, 7.0], [2.0, 2.0, 2.0, 2.0]])
    loo = leave_one_out_advantages(r)
    assert loo[0].tolist() == pytest.approx([1 - 5, 3 - 13 / 3, 5 - 11 / 3, 7 - 3])
    assert loo[1].tolist() == [0.0] * 4
    assert loo.sum().item() == pytest.approx(0.0, abs=1e-6)  # LOO advantages of a group sum to zero
    assert self_critical_advantages(r, torch.tensor([4.0, 1.0])).tolist() == [[-3, -1, 1, 3], [1, 1, 1, 1]]
    g = group_normalised_advantages(r)
    assert g[0].mean().item() == pytest.approx(0.0, abs=1e-6) and g[0].std().item() == pytest.approx(1.0, abs=1e-3)
    b = RunningMeanBaseline(momentum=0.9)
    assert b.advantages(torch.tensor([1.0, 3.0])).tolist() == [-1.0, 1.0]
    assert b.advantages(torch.tensor([4.0])).tolist() == [2.0] and b.value == pytest.approx(0.9 * 2 + 0.1 * 4)
    with pytest.raises(ValueError):
        leave_one_out_advantages(torch.ones(3, 1))


def test_policy_gradient_loss_pushes_up_positive_advantages():
    logits = torch.zeros(2, 3, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :2]
    mask = torch.tensor([[True, True], [True, False]])
    loss = policy_gradient_loss(logp, mask, torch.tensor([1.0, -1.0]))
    loss.backward()
    assert logits.grad[0, 0] < 0 and logits.grad[1, 0] > 0  # descent raises sample 0's tokens, lowers sample 1's
    lp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    k3 = (math.exp(math.log(0.5)) - math.log(0.5) - 1) / 2  # ref/p = 0.5 on token 0, 1 on token 1
    assert kl_penalty(lp, ref, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(k3, abs=1e-6)


# ---- curricula and bags -----------------------------------------------------------------------------------


def test_curriculum_switches_stages_at_their_step_counts():
    c = Curriculum.from_list([{"source": "random", "steps": 3}, {"source": "easy", "bag_size": 5, "steps": 2},
                              {"source": "hard", "bag_size": 3, "epochs": 0.5}]).resolve(steps_per_epoch=8)
    assert [s.steps for s in c.stages] == [3, 2, 4] and c.total_steps == 9
    assert [c.stage_at(s).describe() for s in range(10)] == ["random"] * 3 + ["easy5"] * 2 + ["hard3"] * 5
    with pytest.raises(ValueError, match="stage 0: unknown keys"):
        Curriculum.from_list([{"source": "random", "size": 3}])
    with pytest.raises(ValueError, match="bag_size"):
        Stage("hard", bag_size=1)


def test_neighbour_mining_is_exact_and_cached(tmp_path):
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    idx, sim = mine_neighbours(emb, 5, chunk=7)
    full = emb @ emb.T
    full.fill_diagonal_(-2)
    v, i = full.topk(5, dim=1)
    assert torch.equal(idx, i) and torch.allclose(sim, v)
    idx2, _ = mine_neighbours(emb, 5, cache_key="k", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    idx3, _ = mine_neighbours(torch.zeros(50, 8), 5, cache_key="k", cache_dir=tmp_path)  # read back, not recomputed
    assert torch.equal(idx2, idx) and torch.equal(idx3, idx)


def test_bag_sampler_draws_each_stage_reproducibly():
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(40, 6, generator=g), dim=1)
    nb, sim = mine_neighbours(emb, 20)
    s = BagSampler(nb, sim, world_bags=[[0, 1, 2], [3, 4, 5, 6, 7]], seed=3)
    anchors, cands = s.sample(Stage("hard", bag_size=4), batch=6, step=2)
    assert len(anchors) == 6 and all(c[0] == a and c[1:] == nb[a, :3].tolist() for a, c in zip(anchors, cands))
    assert s.sample(Stage("hard", bag_size=4), batch=6, step=2) == (anchors, cands)  # same (seed, step)
    assert s.sample(Stage("hard", bag_size=4), batch=6, step=3)[0] != anchors
    a_e, c_e = s.sample(Stage("easy", bag_size=3, window=4), batch=5, step=0)
    for a, c in zip(a_e, c_e):
        ranks = [nb[a].tolist().index(x) for x in c[1:]]
        assert len(set(c)) == 3 and all(2 <= r < 12 for r in ranks)
    thr = float(sim[:, 1].median())
    eligible = s.eligible(Stage("hard", bag_size=3, threshold=thr))
    assert 0 < len(eligible) < 40 and bool((sim[eligible, 1] >= thr).all())
    a_w, c_w = s.sample(Stage("world", bag_size=5), batch=4, step=0)
    assert all(sorted(c) == [3, 4, 5, 6, 7] and c[0] == a for a, c in zip(a_w, c_w))
    assert s.sample(Stage("random"), batch=5, step=0)[1] is None
    a_b, c_b = s.sample(Stage("world", whole_bags=True), batch=8, step=0)  # both bags whole, in a seeded order
    assert sorted(a_b) == list(range(8)) and all(c[0] == a and sorted(c) == (list(range(3)) if a < 3 else
                                                                               list(range(3, 8)))
                                                 for a, c in zip(a_b, c_b))
    a_c, c_c = s.sample(Stage("world", whole_bags=True), batch=4, step=0)  # a bag cut at the batch's end
    assert len(a_c) == 4 and a_c == a_b[:4] and c_c == c_b[:4]
    with pytest.raises(ValueError, match="whole_bags is for world stages"):
        Stage("hard", bag_size=3, whole_bags=True)
    with pytest.raises(ValueError, match="lower the threshold"):
        s.sample(Stage("hard", bag_size=3, threshold=1.5), batch=2, step=0)


def test_a_world_stage_with_edits_anchors_only_the_members_made_by_them():
    edits = [[], ["size"], ["color"], [], ["count", "size"], ["color"], ["move"], ["size"]]
    s = BagSampler(n_images=8, world_bags=[[0, 1, 2], [3, 4, 5, 6, 7]], world_edits=edits, seed=0)
    stage = Curriculum.from_list([{"source": "world", "edits": ["size"], "steps": 1}]).stages[0]
    assert stage.edits == ("size",) and stage.describe() == "world[size]"
    anchors, cands = s.sample(stage, batch=30, step=0)
    assert set(anchors) == {1, 4, 7}  # every size-edited member, and only those
    bag_of = {a: [0, 1, 2] if a < 3 else [3, 4, 5, 6, 7] for a in range(8)}
    assert all(c[0] == a and sorted(c) == bag_of[a] for a, c in zip(anchors, cands))
    assert s.sample(stage, batch=30, step=0) == (anchors, cands)  # seeded by (seed, step)
    two = Stage("world", edits=("color", "move"))
    assert set(s.sample(two, batch=30, step=1)[0]) == {2, 5, 6}
    assert set(s.sample(Stage("world", bag_size=3, edits="color"), batch=10, step=0)[0]) == {2}
    with pytest.raises(ValueError, match="no bag member of the data was made by \\['gender'\\]"):
        s.sample(Stage("world", edits=("gender",)), batch=2, step=0)
    with pytest.raises(ValueError, match="needs each image's edits"):
        BagSampler(n_images=8, world_bags=[[0, 1, 2]]).sample(stage, batch=2, step=0)
    with pytest.raises(ValueError, match="edits are for world stages"):
        Stage("hard", bag_size=3, edits=("size",))
    with pytest.raises(ValueError, match="give one or the other"):
        Stage("world", whole_bags=True, edits=("size",))
    with pytest.raises(ValueError, match=r"unknown edits \['colour'\]"):
        Stage("world", edits=("colour",))


def test_world_edits_of_reads_each_member_edits(tmp_path):
    from vlm.data import read_imagefolder
    from vlm.train.sr import world_bags_of, world_edits_of
    from vlm.world import EDITS, generate_world

    ds = read_imagefolder(generate_world(tmp_path / "w", n=8, seed=0, preset="truematch", image_size=32))
    edits = world_edits_of(ds)
    for bag in world_bags_of(ds):  # the first member is the base; every other one was made by 1-2 edits
        assert edits[bag[0]] == [] and all(1 <= len(edits[i]) <= 2 and set(edits[i]) <= set(EDITS)
                                           for i in bag[1:])


# ---- the training loop on a toy problem -------------------------------------------------------------------

PALETTE = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}


class PaletteRetriever(WordRetriever):
    """Images embed as the one-hot of their nearest palette colour; a reward that needs the colour word."""

    name = "palette"
    fingerprint = "palette-v1"

    def encode_images(self, images, *, batch_size=64):
        out = []
        for im in images:
            px = im.convert("RGB").getpixel((4, 4))
            d = [sum((a - b) ** 2 for a, b in zip(px, PALETTE[c])) for c in self.colours]
            out.append(torch.nn.functional.one_hot(torch.tensor(min(range(4), key=d.__getitem__)), 4).float())
        return torch.stack(out)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from vlm.data import Record, write_imagefolder
    from vlm.models import create_captioner
    from vlm.retrieval import register_retriever

    root = tmp_path_factory.mktemp("sr")
    records, images = [], []
    shapes = ("square", "circle")
    for i in range(48):
        colour = list(PALETTE)[i % 4]
        caps = [f"a {colour} {shapes[i % 2]}.", f"a {shapes[i % 2]}.", "a thing."]
        split = "train" if i < 40 else "val"
        records.append(Record(file_name=f"images/{i:03d}.png", captions=caps, id=str(i), split=split,
                              extra={"bag": {"id": f"b{i // 4}", "size": 4, "index": i % 4}}))
        images.append(Image.new("RGB", (32, 32), PALETTE[colour]))
    write_imagefolder(root / "data", records, images)
    texts = [c for r in records for c in r.captions] * 3
    model = create_captioner("prefix-tiny", train_texts=texts, vocab_size=300, seed=0)
    # A short MLE stage: the policy says "a red square." or "a square." or "a thing." about equally often.
    torch.manual_seed(0)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    pix = model.preprocess(images)
    for _ in range(100):
        loss = model.loss({"pixel_values": pix.repeat(3, 1, 1, 1), "captions": [r.captions[j] for j in range(3)
                                                                                 for r in records]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(root / "init")
    register_retriever("palette", lambda rest, device="cpu": PaletteRetriever())
    yield root
    from vlm.retrieval import _FACTORIES

    _FACTORIES.pop("palette", None)  # other tests (and doctests) list the registered kinds


def _sr_cfg(toy, name, **kw):
    from vlm.train.sr import SRConfig

    base = dict(init_model=str(toy / "init"), train_data=str(toy / "data"), retriever="palette:x",
                curriculum=[{"source": "random", "steps": 4}, {"source": "world", "bag_size": 4, "steps": 4}],
                batch_size=8, n_samples=4, lr=1e-3, max_new_tokens=6, eval_every=4, eval_num_beams=1,
                eval_max_new_tokens=6, checkpoint_every=3, out_dir=str(toy / name), progress=False)
    base.update(kw)
    return SRConfig(**base)


def test_sr_training_switches_stages_and_raises_the_reward(toy):
    from vlm.train.sr import train_sr

    cfg = _sr_cfg(toy, "run", curriculum=[{"source": "random", "steps": 4},
                                          {"source": "world", "bag_size": 4, "steps": 26}], reward="recall")
    summary = train_sr(cfg)
    log = [json.loads(x) for x in (toy / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "reward" in r]
    assert [r["stage"] for r in steps] == ["random"] * 4 + ["world4"] * 26
    first = sum(r["reward"] for r in steps[:4]) / 4
    last = sum(r["reward"] for r in steps[-5:]) / 5
    assert last > 0.8 and last > first + 0.3, (first, last)  # the policy learned to name the right colour
    evals = [r["eval"] for r in log if "eval" in r]
    assert evals[-1]["R@1/bag4"] >= evals[0]["R@1/bag4"] + 0.3 and summary["eval"] == evals[-1]
    from vlm.models import create_captioner

    init = create_captioner(str(toy / "init"))
    final = create_captioner(str(toy / "run" / "final"))
    changed = [k for k, v in final.state_dict().items() if not torch.equal(v, init.state_dict()[k])]
    assert changed and all("image_encoder" not in k for k in changed)  # the frozen encoder stays frozen


def test_sr_run_killed_and_resumed_ends_with_the_same_weights(toy):
    from vlm.train.sr import train_sr

    kw = dict(baseline="mean", kl_coef=0.1, mle_coef=0.1, cider_weight=0.2, eval_split="")
    full = train_sr(_sr_cfg(toy, "full", **kw))
    assert train_sr(_sr_cfg(toy, "part", **kw), stop_after_steps=3) == {"stopped_at": 3}
    from vlm.train.checkpoint import latest_checkpoint

    trainer_json = latest_checkpoint(toy / "part" / "checkpoints") / "trainer.json"
    tstate = json.loads(trainer_json.read_text())
    assert 0 < tstate["elapsed_s"] < 1000
    trainer_json.write_text(json.dumps({**tstate, "elapsed_s": 1000.0}))  # as if the first process ran long
    resumed = train_sr(_sr_cfg(toy, "part", **kw))
    assert resumed["steps"] == full["steps"] == 8
    assert resumed["wall_time_s"] >= 1000 > full["wall_time_s"]  # the interrupted process's time is counted
    from safetensors.torch import load_file

    a = load_file(str(toy / "full" / "final" / "model.safetensors"))
    b = load_file(str(toy / "part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(x)["step"] for x in (toy / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_sr_config_errors_name_the_problem(toy):
    from vlm.train.sr import SRConfig

    with pytest.raises(ValueError, match="unknown SRConfig keys"):
        SRConfig.from_dict({"method": "sr", "learning_rate": 1}, source="x.yaml")
    with pytest.raises(ValueError, match="needs n_samples >= 2"):
        SRConfig(baseline="loo", n_samples=1)
    with pytest.raises(ValueError, match="stage 1: unknown keys"):
        SRConfig(curriculum=[{"source": "random", "steps": 1}, {"source": "hard", "bagsize": 3}])


def test_a_bag_stage_with_the_batch_adds_the_batch_to_each_bag(toy):
    from vlm.train.curriculum import Stage, step_candidates
    from vlm.train.sr import train_sr

    assert Stage("hard", bag_size=3, with_batch=True).describe() == "hard3+batch"
    with pytest.raises(ValueError, match="with_batch is for bag stages"):
        Stage("random", with_batch=True)
    # each bag keeps its order and gains the batch's other anchors once
    assert step_candidates(Stage("hard", bag_size=3, with_batch=True), [0, 5, 9],
                           [[0, 1, 2], [5, 0, 6], [9, 8, 5]]) == [[0, 1, 2, 5, 9], [5, 0, 6, 9], [9, 8, 5, 0]]
    assert step_candidates(Stage("hard", bag_size=3), [0, 5], [[0, 1, 2], [5, 0, 6]]) == [[0, 1, 2], [5, 0, 6]]
    cfg = _sr_cfg(toy, "with-batch", curriculum=[{"source": "world", "bag_size": 4, "with_batch": True,
                                                  "steps": 3}], reward="recall", eval_split="")
    train_sr(cfg)
    log = [json.loads(x) for x in (toy / "with-batch" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log if "reward" in r] == ["world4+batch"] * 3


def test_a_stage_the_data_cannot_serve_fails_before_training(toy):
    """The toy bags record no edits: a world stage on size edits is refused before the first step."""
    from vlm.train.sr import train_sr

    cfg = _sr_cfg(toy, "no-edits", curriculum=[{"source": "random", "steps": 2},
                                               {"source": "world", "edits": ["size"], "steps": 2}])
    with pytest.raises(ValueError, match=r"curriculum stage 1 \(world\[size\]\): .*no bag member of the data was "
                                         r"made by \['size'\]"):
        train_sr(cfg)
    assert not (toy / "no-edits" / "metrics.jsonl").exists()  # nothing trained, nothing logged
    with pytest.raises(ValueError, match=r"curriculum stage 0 \(world7\): .*no world bags of that size"):
        train_sr(_sr_cfg(toy, "no-sevens", curriculum=[{"source": "world", "bag_size": 7, "steps": 2}]))


def test_the_references_come_from_the_captions_field(toy, monkeypatch):
    """``captions=field:NAME`` (a boosted world): the CIDEr-D reward and the MLE term read that field."""
    import vlm.rewards
    from vlm.data import read_imagefolder, write_imagefolder
    from vlm.train.sr import train_sr

    ds = read_imagefolder(toy / "data")
    records = []
    for r in ds:
        r.extra["boosted"] = r.captions[0] + " on a grey ground."
        records.append(r)
    write_imagefolder(toy / "boosted", records, [ds.image(i) for i in range(len(ds))])
    seen, mle_targets = {}, []
    real_cider = vlm.rewards.CIDErReward

    def spy(refs, **kw):
        seen.update(refs)
        return real_cider(refs, **kw)

    monkeypatch.setattr(vlm.rewards, "CIDErReward", spy)
    from vlm.models.prefix import PrefixCaptioner

    real_loss = PrefixCaptioner.loss

    def loss_spy(self, batch):
        mle_targets.extend(batch.get("captions", []))
        return real_loss(self, batch)

    monkeypatch.setattr(PrefixCaptioner, "loss", loss_spy)
    train_sr(_sr_cfg(toy, "boosted-run", train_data=str(toy / "boosted"), captions="field:boosted", cider_weight=1.0,
                     mle_coef=0.5, curriculum=[{"source": "random", "steps": 2}], eval_split=""))
    train = [r for r in records if r.split == "train"]
    assert seen == {i: [r.captions[0] + " on a grey ground."] for i, r in enumerate(train)}
    assert mle_targets and all(c.endswith(" on a grey ground.") for c in mle_targets)
    with pytest.raises(ValueError, match=r"record images/000.png: no field 'missing' for captions='field:missing'"):
        train_sr(_sr_cfg(toy, "missing-field", captions="field:missing", curriculum=[{"source": "random", "steps": 1}]))
    with pytest.raises(ValueError, match="SRConfig.captions must be"):
        _sr_cfg(toy, "bad", captions="boosted")


def test_lora_adapters_fold_into_the_weights_they_adapt(toy, tmp_path):
    """``add_lora_adapters`` trains adapters alone; ``merge_lora_adapters`` gives the same captioner, saved as any."""
    from vlm.models import create_captioner

    m = create_captioner(str(toy / "init"))
    with pytest.raises(ValueError, match=r"LoRA targets \['c_attn'\] are not modules of the LM; it has e\.g\."):
        m.add_lora_adapters(4, 8, ["c_attn"])
    n = m.add_lora_adapters(4, 8, ["q_proj", "v_proj"])
    trainable = [k for k, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k for k in trainable)
    assert n == sum(p.numel() for p in m.parameters() if p.requires_grad)
    torch.manual_seed(0)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.5)  # adapters start at zero: make them change the model
    feats = torch.randn(3, *create_captioner(str(toy / "init"))._batch_features(
        {"images": [Image.new("RGB", (32, 32))]}).shape[1:])
    texts = ["a red square.", "a circle.", "a thing."]
    base = create_captioner(str(toy / "init")).token_log_probs(texts, features=feats)[0]
    adapted = m.token_log_probs(texts, features=feats)[0]
    assert not torch.allclose(adapted, base, atol=1e-3)
    with pytest.raises(ValueError, match="merge_lora_adapters"):
        m.save_pretrained(tmp_path / "unmerged")
    m.merge_lora_adapters()
    assert torch.allclose(m.token_log_probs(texts, features=feats)[0], adapted, atol=1e-4)
    m.save_pretrained(tmp_path / "merged")
    again = create_captioner(str(tmp_path / "merged"))
    assert torch.allclose(again.token_log_probs(texts, features=feats)[0], adapted, atol=1e-4)
    assert set(again.state_dict()) == set(create_captioner(str(toy / "init")).state_dict())


def test_sr_with_lora_trains_only_the_adapters_and_resumes(toy):
    """``finetune: lora``: the mapper and the encoder stay as they were, the LM moves by the folded adapters, the
    reward rises, and a killed run resumes to the same weights."""
    from safetensors.torch import load_file

    from vlm.models import create_captioner
    from vlm.train.sr import train_sr

    kw = dict(finetune="lora", lora_r=8, lora_alpha=32, lr=1e-2, reward="recall", eval_split="",
              curriculum=[{"source": "world", "bag_size": 4, "steps": 26}])
    train_sr(_sr_cfg(toy, "lora", **kw))
    log = [json.loads(x) for x in (toy / "lora" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["reward"] for r in log[:3]) / 3
    last = sum(r["reward"] for r in log[-5:]) / 5
    assert last > 0.8 and last > first + 0.2, (first, last)  # one stage: the adapters learned to name the colour
    init = create_captioner(str(toy / "init")).state_dict()
    final = create_captioner(str(toy / "lora" / "final")).state_dict()
    assert final.keys() == init.keys()
    changed = {k for k in init if not torch.equal(init[k], final[k])}
    assert changed and all(k.startswith("lm.") and "_proj" in k for k in changed), sorted(changed)[:5]
    assert {k.split(".")[-2] for k in changed} <= {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert train_sr(_sr_cfg(toy, "lora-part", **kw), stop_after_steps=3) == {"stopped_at": 3}
    from vlm.train.checkpoint import latest_checkpoint

    kept = load_file(str(latest_checkpoint(toy / "lora-part" / "checkpoints") / "model.safetensors"))
    assert kept and all("lora_" in k for k in kept)  # the frozen rest is the start's, not saved again
    train_sr(_sr_cfg(toy, "lora-part", **kw))
    a = load_file(str(toy / "lora" / "final" / "model.safetensors"))
    b = load_file(str(toy / "lora-part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ValueError, match="SRConfig.finetune must be 'full' or 'lora'"):
        _sr_cfg(toy, "bad", finetune="adapters")
    with pytest.raises(ValueError, match="lora_r >= 1"):
        _sr_cfg(toy, "bad", finetune="lora", lora_r=0)
    with pytest.raises(ValueError, match="lora_targets must be a list of module names"):
        _sr_cfg(toy, "bad", finetune="lora", lora_targets="q_proj")
