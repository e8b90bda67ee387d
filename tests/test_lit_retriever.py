"""The offline LiT retriever (vlm.models.lit) and its contrastive training and evaluation (vlm.train.contrastive)."""

import json
import math

import pytest
import torch
from PIL import Image

import vlm  # noqa: F401  (installs the torchvision fix before timm is imported)
from vlm.models.lit import LiTConfig, LiTRetriever
from vlm.train import contrastive
from vlm.train.contrastive import (LiTTrainConfig, contrastive_loss, ensure_default_retriever, evaluate_retriever,
                                   score_retrieval, train_lit)

# Tiny everything: 48 px images, a 32-d space, 64-wide projections; the towers are the real ones.
TINY = dict(image_size=48, embed_dim=32, proj_hidden=64)


def _train_cfg(**kw):
    base = dict(model=LiTConfig(**TINY), steps=12, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=4,
                log_every=1, feature_batch_size=32)
    base.update(kw)
    return LiTTrainConfig(**base)


@pytest.fixture(scope="module")
def world(lit_world):
    return lit_world  # conftest.py


@pytest.fixture(scope="module")
def trained(towers, world, feature_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("lit") / "run"
    model = train_lit(world, _train_cfg(steps=40, checkpoint_every=40), out_dir=out, feature_cache=feature_cache,
                      progress=False, **towers)
    return model, out


# ---- no weights ----------------------------------------------------------------------------------------


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="LiTConfig.embed_dim"):
        LiTConfig(embed_dim=0)
    with pytest.raises(ValueError, match="LiTConfig.unfreeze_text_layers"):
        LiTConfig(unfreeze_text_layers=-1)
    with pytest.raises(ValueError, match=r"unknown LiTConfig fields \['dim'\]"):
        LiTConfig.from_dict({"dim": 3})
    with pytest.raises(ValueError, match="LiTTrainConfig.steps"):
        LiTTrainConfig(steps=0)
    cfg = LiTTrainConfig.from_dict(json.loads(json.dumps(_train_cfg().to_dict())))
    assert cfg == _train_cfg()


def test_contrastive_loss_matches_cross_entropy_and_merges_identical_captions():
    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    i = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    logits = 10.0 * t @ i.T
    ref = (torch.nn.functional.cross_entropy(logits, torch.arange(5))
           + torch.nn.functional.cross_entropy(logits.T, torch.arange(5))) / 2
    assert contrastive_loss(t, i, 10.0).item() == pytest.approx(ref.item(), abs=1e-6)
    # Pairs 0 and 1 share one caption: identical texts, so each row may pick either image.
    t2 = t.clone()
    t2[1] = t2[0]
    same = contrastive_loss(t2, i, 10.0, torch.tensor([7, 7, 1, 2, 3]))
    distinct = contrastive_loss(t2, i, 10.0, torch.tensor([7, 8, 1, 2, 3]))
    assert same.item() < distinct.item()


def test_score_retrieval_rd_and_bags_match_a_brute_force_count():
    from vlm.data import CaptionDataset, Record

    g = torch.Generator().manual_seed(1)
    n = 12
    recs = [Record(f"{k}.png", [f"h{k}"], extra={"dense_caption": f"d{k}"}) for k in range(n)]
    img = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=-1)
    noisy = torch.nn.functional.normalize(img + 0.9 * torch.randn(n, 6, generator=g), dim=-1)

    def embed(texts):
        return torch.stack([noisy[int(s[1:])] for s in texts])

    res = score_retrieval(CaptionDataset(".", recs), img, embed, n_distractors=n - 1)
    # With every other image a distractor, R@1 is plain nearest-neighbour accuracy.
    expected = float(((noisy @ img.T).argmax(1) == torch.arange(n)).float().mean())
    assert res["rd12"]["dense"]["R@1"] == pytest.approx(expected, abs=1e-4)
    assert res["rd12"]["chance_R@1"] == pytest.approx(1 / 12, abs=1e-4)

    bagged = [Record(f"{k}.png", [f"h{k}"], extra={"dense_caption": f"d{k}", "bag": {"id": f"b{k // 3}"}})
              for k in range(n)]
    res = score_retrieval(CaptionDataset(".", bagged), img, embed)
    hits = [int((noisy[b * 3:(b + 1) * 3] @ img[b * 3:(b + 1) * 3].T).argmax(1)[j] == j)
            for b in range(4) for j in range(3)]
    assert res["truematch"]["R@1"] == pytest.approx(sum(hits) / n, abs=1e-4)
    assert res["truematch"]["by_bag_size"]["3"]["chance_R@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert "rd100" not in res  # bags: the TrueMatch protocol only


def test_ties_count_as_a_random_tie_break():
    from vlm.data import CaptionDataset, Record

    ds = CaptionDataset(".", [Record(f"{k}.png", [f"c{k}"]) for k in range(4)])
    const = torch.ones(4, 2) / math.sqrt(2)
    res = score_retrieval(ds, const, lambda texts: torch.ones(len(texts), 2) / math.sqrt(2), n_distractors=3)
    assert res["rd4"]["human"]["R@1"] == pytest.approx(0.25)
    assert res["rd4"]["human"]["R@5"] == pytest.approx(1.0)


# ---- real weights --------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_protocol_shapes_and_unit_norm(towers):
    from vlm.retrieval import Retriever

    model = LiTRetriever(LiTConfig(**TINY), **towers)
    images = [Image.new("RGB", (40, 30), "red"), Image.new("L", (20, 20), 128), Image.new("RGB", (48, 48), "blue")]
    emb_i = model.encode_images(images, batch_size=2)
    emb_t = model.encode_texts(["a red circle", "two large blue squares on a beach"], batch_size=1)
    assert isinstance(model, Retriever) and model.name == "finecap:lit"
    assert emb_i.shape == (3, 32) and emb_t.shape == (2, 32)
    assert emb_i.dtype == emb_t.dtype == torch.float32 and emb_i.device.type == "cpu"
    assert torch.allclose(emb_i.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb_t.norm(dim=1), torch.ones(2), atol=1e-5)
    # Batching and the longest-first ordering do not change the result.
    assert torch.allclose(model.encode_texts(["two large blue squares on a beach"])[0], emb_t[1], atol=1e-5)
    assert model.encode_images([]).shape == (0, 32)
    assert not model.training and torch.equal(model.encode_images(images, batch_size=2), emb_i)  # deterministic
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    with pytest.raises(TypeError, match="list of strings"):
        model.encode_texts("a red circle")


@pytest.mark.real_weights
def test_only_projections_and_the_top_text_layers_are_trainable(towers):
    model = LiTRetriever(LiTConfig(**TINY, unfreeze_text_layers=1), **towers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("image_encoder.") for n in trainable)
    assert {n.split(".")[4] for n in trainable if n.startswith("text_encoder.")} == {"5"}  # MiniLM's last layer
    assert "log_scale" in trainable
    # The caller's MiniLM stays frozen: the model trains a copy of it.
    assert not any(p.requires_grad for p in towers["text_encoder"].parameters())


@pytest.mark.real_weights
def test_save_and_load_round_trip_gives_equal_embeddings(towers, tmp_path):
    torch.manual_seed(0)
    model = LiTRetriever(LiTConfig(**TINY, unfreeze_text_layers=1), **towers)
    with torch.no_grad():  # make the saved text layer differ from the packaged one
        for p in model.text_encoder.model.encoder.layer[5].parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.image_mean.normal_()
    model.save_pretrained(tmp_path / "lit")
    saved = json.loads((tmp_path / "lit" / "config.json").read_text())
    assert saved["config"]["unfreeze_text_layers"] == 1
    # Readable like any other file the umask allows (safetensors alone would make it owner-only).
    modes = {(tmp_path / "lit" / f).stat().st_mode & 0o777 for f in ("config.json", "model.safetensors")}
    assert len(modes) == 1
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "lit" / "model.safetensors")))
    assert not any(k.startswith("image_encoder.") for k in keys)
    assert {k.split(".")[4] for k in keys if k.startswith("text_encoder.")} == {"5"}

    back = LiTRetriever.from_pretrained(tmp_path / "lit", **towers)
    images = [Image.new("RGB", (48, 48), c) for c in ("red", "green")]
    texts = ["a red circle", "three purple stars at night"]
    assert torch.equal(back.encode_images(images), model.eval().encode_images(images))
    assert torch.equal(back.encode_texts(texts), model.encode_texts(texts))
    assert back.fingerprint == model.fingerprint and back.name.startswith("finecap:lit:")


@pytest.mark.real_weights
def test_from_pretrained_errors_name_the_file(towers, tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        LiTRetriever.from_pretrained(tmp_path, **towers)
    LiTRetriever(LiTConfig(**TINY), **towers).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "finecap-lit-v1", "config": {"size": 3}}))
    with pytest.raises(ValueError, match=r"config.json: field 'config': unknown LiTConfig fields \['size'\]"):
        LiTRetriever.from_pretrained(tmp_path, **towers)


@pytest.mark.real_weights
def test_training_lowers_the_loss_and_saves_a_loadable_model(towers, trained):
    model, out = trained
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    back = LiTRetriever.from_pretrained(out, **towers)
    assert back.fingerprint == model.fingerprint
    assert json.loads((out / "train_config.json").read_text())["steps"] == 40


@pytest.mark.real_weights
def test_training_an_unfrozen_text_layer_changes_only_that_layer(towers, world, feature_cache, tmp_path):
    before = {k: v.clone() for k, v in towers["text_encoder"].state_dict().items()}
    cfg = _train_cfg(steps=3, batch_size=8, text_lr=1e-3, model=LiTConfig(**TINY, unfreeze_text_layers=1))
    model = train_lit(world, cfg, out_dir=tmp_path / "run", feature_cache=feature_cache, progress=False, **towers)
    after = model.text_encoder.state_dict()
    changed = {k.split(".")[3] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"5"}  # model.encoder.layer.5.*: the top layer only
    assert all(torch.equal(before[k], v) for k, v in towers["text_encoder"].state_dict().items())  # caller's intact


@pytest.mark.real_weights
def test_killed_and_resumed_run_ends_with_the_same_weights(towers, world, feature_cache, tmp_path):
    from safetensors.torch import load_file

    cfg = _train_cfg(model=LiTConfig(**TINY, proj_dropout=0.1))  # dropout: the RNG state must resume too
    train_lit(world, cfg, out_dir=tmp_path / "full", feature_cache=feature_cache, progress=False, **towers)
    train_lit(world, cfg, out_dir=tmp_path / "part", feature_cache=feature_cache, progress=False,
              stop_after_steps=6, **towers)
    assert not (tmp_path / "part" / "model.safetensors").exists()  # stopped: no final model yet
    train_lit(world, cfg, out_dir=tmp_path / "part", feature_cache=feature_cache, progress=False, **towers)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # none lost, none logged twice
    with pytest.raises(ValueError, match="another configuration"):
        train_lit(world, _train_cfg(lr=1e-2), out_dir=tmp_path / "part", feature_cache=feature_cache,
                  progress=False, **towers)


def test_scene_attribute_targets_count_every_slot_of_the_scene_graph(world):
    from vlm.data import Record, read_imagefolder
    from vlm.world.scene import BACKGROUNDS

    records = list(read_imagefolder(world, check_images=False))
    slots = contrastive.attribute_slots()
    counts, bg = contrastive.scene_attribute_targets(records)
    assert counts.shape == (32, 216) and counts.sum() > 32
    for k, rec in enumerate(records):
        scene = rec.extra["scene"]
        assert BACKGROUNDS[int(bg[k])] == scene["background"]
        expect = {}
        for t in scene["things"]:
            key = (t.get("shape") or t.get("gender"), t["color"], t["size"])
            expect[key] = expect.get(key, 0) + 1
        got = {slots[j]: int(c) for j, c in enumerate(counts[k]) if c > 0}
        assert got == {key: min(n, 6) for key, n in expect.items()}
    bad = dict(records[0].extra["scene"], background="moon")
    with pytest.raises(ValueError, match=r"record '.*\.png': scene field 'background': unknown background 'moon'"):
        contrastive.scene_attribute_targets([records[1], Record(records[0].file_name, ["x"], extra={"scene": bad})])


def test_attribute_head_learns_the_counts_of_separable_embeddings():
    torch.manual_seed(0)
    head = contrastive.AttributeHead(16)
    emb = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    counts = torch.zeros(6, head.n_slots, dtype=torch.long)
    counts[torch.arange(6), torch.arange(6)] = torch.arange(1, 7)  # image k: k+1 things in slot k
    bg = torch.arange(6)
    before = float(head.loss(emb, counts, bg))
    # untrained: every slot starts probably empty (not uniform over counts, 216 * log 7 = 420 nats)
    assert 10 < before < 0.05 * head.n_slots * math.log(7)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        head.loss(emb, counts, bg).backward()
        opt.step()
    count_logits, bg_logits = head(emb)
    assert torch.equal(count_logits.argmax(-1), counts) and torch.equal(bg_logits.argmax(-1), bg)
    # rows without a scene (background -1) are ignored
    assert float(head.loss(emb, counts, torch.full((6,), -1))) == 0.0


def test_attribute_loss_trains_resumes_and_stays_out_of_the_saved_model(towers, world, feature_cache, tmp_path):
    from safetensors.torch import load_file

    cfg = _train_cfg(attribute_weight=0.1)
    train_lit(world, cfg, out_dir=tmp_path / "full", feature_cache=feature_cache, progress=False, **towers)
    train_lit(world, cfg, out_dir=tmp_path / "part", feature_cache=feature_cache, progress=False,
              stop_after_steps=6, **towers)
    ckpt = load_file(str(tmp_path / "part" / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert any(k.startswith("attribute_head.") for k in ckpt)  # the head resumes with the rest
    train_lit(world, cfg, out_dir=tmp_path / "part", feature_cache=feature_cache, progress=False, **towers)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys() and not any(k.startswith("attribute_head.") for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    attr = [json.loads(x)["attribute_loss"] for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(attr) == 12 and sum(attr[-3:]) < 0.85 * sum(attr[:3])  # the read-out learns
    LiTRetriever.from_pretrained(tmp_path / "full", **towers)  # loads as a plain retriever


@pytest.mark.real_weights
def test_features_are_computed_once_and_reused(towers, world, tmp_path, monkeypatch):
    calls = {"image": 0, "text": 0}
    image_features, text_features = LiTRetriever.image_features, LiTRetriever.text_features

    def count_image(self, pixels):
        calls["image"] += len(pixels)
        return image_features(self, pixels)

    def count_text(self, texts):
        calls["text"] += len(texts)
        return text_features(self, texts)

    monkeypatch.setattr(LiTRetriever, "image_features", count_image)
    monkeypatch.setattr(LiTRetriever, "text_features", count_text)
    cfg = _train_cfg(steps=3)
    train_lit(world, cfg, out_dir=tmp_path / "a", feature_cache=tmp_path / "cache", progress=False, **towers)
    from vlm.data import read_imagefolder

    n_captions = len({c for r in read_imagefolder(world) for c in r.captions + [r.extra["dense_caption"]]})
    assert calls == {"image": 32, "text": n_captions}  # every image once, every distinct caption once
    train_lit(world, cfg, out_dir=tmp_path / "b", feature_cache=tmp_path / "cache", progress=False, **towers)
    assert calls == {"image": 32, "text": n_captions}  # the second run reads both caches
    # Another preprocessing (image size) is another cache entry.
    train_lit(world, _train_cfg(steps=3, model=LiTConfig(**{**TINY, "image_size": 64})), out_dir=tmp_path / "c",
              feature_cache=tmp_path / "cache", progress=False, **towers)
    assert calls["image"] == 64


@pytest.mark.real_weights
def test_evaluate_retriever_rd_and_truematch_and_the_trained_model_beats_chance(trained, world, tmp_path):
    from vlm.world import generate_world

    model, _ = trained
    # The training images: 32 images and 40 steps fit them, but are too few to generalise from.
    res = evaluate_retriever(model, world, n_distractors=15)
    assert set(res["rd16"]) == {"chance_R@1", "chance_R@5", "dense", "human"}
    assert res["rd16"]["dense"]["n_queries"] == 32 and res["rd16"]["human"]["n_queries"] == 32 * 5
    assert res["rd16"]["chance_R@1"] == pytest.approx(1 / 16, abs=1e-4)
    assert res["rd16"]["dense"]["R@1"] > 0.5
    bags = generate_world(tmp_path / "bags", n=15, seed=7, preset="truematch", image_size=48)
    tm = evaluate_retriever(model, bags)["truematch"]
    assert {k: v["n_queries"] for k, v in tm["by_bag_size"].items()} == {"3": 3, "5": 5, "7": 7}
    assert tm["chance_R@1"] == pytest.approx(3 / 15, abs=1e-4)


@pytest.mark.real_weights
def test_ensure_default_retriever_trains_once_then_loads(towers, tmp_path, monkeypatch):
    from vlm.models.lit import load_lit_retriever

    monkeypatch.setattr(contrastive, "DEFAULT_WORLDS", (("captioning", 16),))
    monkeypatch.setattr(contrastive, "default_train_config", lambda: _train_cfg(steps=3))
    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path))
    folder = ensure_default_retriever()
    assert folder == tmp_path / "retrievers" / "lit-world-v1"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "retrievers" / ".lit-world-v1.work").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(contrastive, "train_lit", lambda *a, **k: pytest.fail("trained twice"))
    assert ensure_default_retriever() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model = load_lit_retriever("lit")
    assert model.name == "finecap:lit" and model.encode_texts(["a red circle"]).shape == (1, 32)


@pytest.mark.real_weights
def test_the_second_named_retriever_has_its_own_recipe_and_folder(towers, tmp_path, monkeypatch):
    from vlm.models.lit import load_lit_retriever

    assert contrastive.retriever_recipe("lit-world-v2")[0] == contrastive.V2_WORLDS
    seen = {}

    def fake_train(worlds, cfg, **kw):
        seen["worlds"], seen["cfg"] = [w.name for w in worlds], cfg
        return LiTRetriever(LiTConfig(**TINY), **towers)

    monkeypatch.setattr(contrastive, "V2_WORLDS", (("captioning", 12), ("truematch", 9)))
    monkeypatch.setattr(contrastive, "train_lit", fake_train)
    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path))
    model = load_lit_retriever("lit-v2")
    assert model.name == "finecap:lit-v2" and (tmp_path / "retrievers" / "lit-world-v2" / "config.json").is_file()
    assert seen["worlds"] == ["captioning-s0-n12", "truematch-s0-n9"]
    assert (seen["cfg"].model.image_pool, seen["cfg"].model.image_level, seen["cfg"].bag_fraction) == ("conv", 3, 0.5)
    assert not (tmp_path / "retrievers" / "lit-world-v1").exists()  # v1 untouched
    # v3: the same worlds, the conv head's grid pooled both ways
    v3 = load_lit_retriever("lit-v3")
    assert v3.name == "finecap:lit-v3" and (tmp_path / "retrievers" / "lit-world-v3" / "config.json").is_file()
    assert seen["worlds"] == ["captioning-s0-n12", "truematch-s0-n9"] and seen["cfg"].model.image_conv_pool == "both"
    assert contrastive.retriever_recipe("lit-world-v2")[2].model.image_conv_pool == "flatten"
    # v4: v3 plus the scene-graph attribute loss
    v4 = load_lit_retriever("lit-v4")
    assert v4.name == "finecap:lit-v4" and (tmp_path / "retrievers" / "lit-world-v4" / "config.json").is_file()
    assert seen["cfg"].model.image_conv_pool == "both" and seen["cfg"].attribute_weight > 0
    assert contrastive.retriever_recipe("lit-world-v3")[2].attribute_weight == 0
    with pytest.raises(ValueError, match="'finecap:lit-v4'"):
        load_lit_retriever("lit-v5")


def test_cli_rejects_too_small_runs_before_doing_any_work(tmp_path, capsys):
    assert contrastive.main(["--out", str(tmp_path / "run"), "--n-images", "5", "--quiet"]) == 2
    assert "--n-images >= 20" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
