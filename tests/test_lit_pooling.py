"""LiT's attention pools (LiTConfig.text_pool / image_pool = "attention"): heads over cached, locked tower outputs."""

import hashlib
import itertools
import json

import pytest
import torch
from PIL import Image, ImageDraw

import vlm  # noqa: F401  (installs the torchvision fix before timm is imported)
from vlm.models.lit import POOLING_FIELDS, LiTConfig, LiTRetriever
from vlm.train import contrastive
from vlm.train.contrastive import LiTTrainConfig, image_feature_table, text_feature_table, train_lit

# Tiny heads over the real towers: 48 px images (a 2x2 feature map), 32-wide heads, 24 token states.
TINY = dict(image_size=48, embed_dim=32, proj_hidden=64, head_width=32, head_heads=4, text_max_tokens=24)
ATTENTION = dict(TINY, text_pool="attention", image_pool="attention")


def _train_cfg(**kw):
    base = dict(model=LiTConfig(**ATTENTION), steps=30, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=30,
                log_every=1, feature_batch_size=32)
    base.update(kw)
    return LiTTrainConfig(**base)


@pytest.fixture(scope="module")
def world(lit_world):
    return lit_world  # conftest.py


@pytest.fixture(scope="module")
def trained(towers, world, feature_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "run"
    torch.manual_seed(0)
    model = train_lit(world, _train_cfg(), out_dir=out, feature_cache=feature_cache, progress=False, **towers)
    return model, out


# ---- no weights ----------------------------------------------------------------------------------------


def test_pool_options_are_validated_and_configs_saved_before_them_load():
    with pytest.raises(ValueError, match="LiTConfig.text_pool must be 'mean' or 'attention', got 'max'"):
        LiTConfig(text_pool="max")
    with pytest.raises(ValueError, match=r"LiTConfig.head_width \(30\) must be a multiple of head_heads \(4\)"):
        LiTConfig(head_width=30)
    with pytest.raises(ValueError, match="LiTConfig.text_head_layers"):
        LiTConfig(text_head_layers=-1)
    old = {k: v for k, v in LiTConfig().to_dict().items() if k not in POOLING_FIELDS}
    assert LiTConfig.from_dict(old) == LiTConfig()
    assert LiTConfig().identity() == old  # defaults hash as before the pooling fields existed
    assert LiTConfig(image_pool="attention").identity() == {**old, "image_pool": "attention"}


def test_a_checkpoint_written_before_the_pool_fields_resumes_as_the_same_config():
    cfg = LiTTrainConfig(steps=7)
    saved = cfg.to_dict()
    for k in POOLING_FIELDS:
        del saved["model"][k]
    assert contrastive._saved_config(saved) == cfg
    assert contrastive._saved_config({**saved, "steps": 8}) != cfg
    assert contrastive._saved_config({"bogus": 1}) is None


def test_cli_passes_the_pool_options_and_bag_fraction(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(out, cfg, **kw):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(contrastive, "run_train_retriever", fake_run)
    assert contrastive.main(["--out", str(tmp_path), "--quiet", "--text-pool", "attention", "--image-pool",
                             "attention", "--bag-fraction", "0.5"]) == 0
    cfg = seen["cfg"]
    assert (cfg.model.text_pool, cfg.model.image_pool, cfg.bag_fraction) == ("attention", "attention", 0.5)
    assert cfg.model.head_width == LiTConfig().head_width and cfg.steps == contrastive.default_train_config().steps
    contrastive.main(["--out", str(tmp_path), "--quiet"])
    assert (seen["cfg"].model.text_pool, seen["cfg"].model.image_pool) == ("mean", "mean")  # defaults unchanged
    capsys.readouterr()


# ---- real weights --------------------------------------------------------------------------------------


@pytest.mark.real_weights
def test_default_pools_keep_the_old_fingerprint_and_old_saved_models_load(towers, tmp_path):
    torch.manual_seed(0)
    model = LiTRetriever(LiTConfig(**{k: v for k, v in TINY.items() if k not in POOLING_FIELDS}), **towers)
    # The fingerprint as it was computed before the pooling fields existed.
    h = hashlib.sha256(json.dumps({k: v for k, v in model.config.to_dict().items() if k not in POOLING_FIELDS},
                                  sort_keys=True).encode())
    for k, v in sorted(model.trainable_state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    assert model.fingerprint == h.hexdigest()[:16]
    assert not any("pooler" in k for k in model.trainable_state_dict())
    # A folder written before: its config.json has no pooling fields.
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["config"] = {k: v for k, v in saved["config"].items() if k not in POOLING_FIELDS}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    back = LiTRetriever.from_pretrained(tmp_path, **towers)
    assert back.fingerprint == model.fingerprint
    assert torch.equal(back.encode_texts(["a red circle"]), model.encode_texts(["a red circle"]))


@pytest.mark.real_weights
def test_attention_heads_train_and_the_towers_stay_locked(towers):
    model = LiTRetriever(LiTConfig(**ATTENTION), **towers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("image_encoder.", "text_encoder.")) for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"image_pooler", "text_pooler", "image_proj", "text_proj",
                                                    "log_scale"}
    assert model.image_grid == (2, 2) and model.image_pooler.pos.shape == (4, 32)  # 48 px: a 2x2 map
    assert model.text_pooler.pos is None and len(model.text_pooler.blocks.layers) == 2
    assert model.image_proj[0].in_features == model.text_proj[0].in_features == 32  # from the heads' width
    keys = set(model.trainable_state_dict())
    assert {"image_pooler.pos", "text_pooler.query", "image_mean"} <= keys and model.image_mean.shape == (1280,)
    assert model.fingerprint != LiTRetriever(LiTConfig(**TINY), **towers).fingerprint


@pytest.mark.real_weights
def test_text_features_are_token_states_with_zero_padding(towers):
    model = LiTRetriever(LiTConfig(**ATTENTION), **towers)
    texts = ["a red circle", "two large blue squares and three small green stars on a beach at night " * 3]
    feats = model.text_features(texts)
    assert feats.shape == (2, 24, 384) and feats.dtype == torch.float16
    tokens = model.text_encoder.tokenize(texts[:1])
    n = int(tokens["attention_mask"].sum())  # [CLS] a red circle [SEP]
    states = model.text_encoder.model(**tokens).last_hidden_state[0]  # (n, 384)
    # Alone or padded in a batch of two, MiniLM's numbers differ in the last float32 bits only.
    assert torch.allclose(feats[0, :n].float(), states, atol=2e-3)
    assert bool(feats[0, :n].ne(0).any(-1).all()) and bool((feats[0, n:] == 0).all())
    assert bool(feats[1].ne(0).any(-1).all())  # the long caption fills all 24 kept positions


@pytest.mark.real_weights
def test_training_with_attention_pools_lowers_the_loss(trained):
    model, out = trained
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert json.loads((out / "train_config.json").read_text())["model"]["text_pool"] == "attention"
    assert float(model.image_std.min()) > 0 and not torch.equal(model.image_mean, torch.zeros(1280))


@pytest.mark.real_weights
def test_cached_tables_give_the_direct_embeddings(trained, world, feature_cache):
    from vlm.data import read_imagefolder

    model, _ = trained
    ds = read_imagefolder(world)
    texts = [ds[i].extra["dense_caption"] for i in range(8)] + ["a red circle", "two blue squares"]
    table = text_feature_table(model, texts, cache_dir=feature_cache, progress=False)  # fp16 token states
    assert table.shape == (10, 24, 384) and table.dtype == torch.float16
    with torch.no_grad():
        cached = model.embed_text_features(table)
    assert torch.allclose(cached, model.encode_texts(texts, batch_size=3), atol=1e-5)
    maps = image_feature_table(model, ds, cache_dir=feature_cache, progress=False)  # read from train_lit's cache
    assert maps.shape == (32, 1280, 2, 2) and maps.dtype == torch.float16
    with torch.no_grad():
        cached = model.embed_image_features(maps[:6])
    assert torch.allclose(cached, model.encode_images([ds.image(i) for i in range(6)], batch_size=4), atol=1e-5)


@pytest.mark.real_weights
def test_save_and_load_give_identical_embeddings(trained, world, towers):
    from safetensors.torch import load_file

    from vlm.data import read_imagefolder

    model, out = trained
    assert json.loads((out / "config.json").read_text())["config"]["image_pool"] == "attention"
    assert {"text_pooler.query", "image_pooler.pos"} <= set(load_file(str(out / "model.safetensors")))
    back = LiTRetriever.from_pretrained(out, **towers)
    ds = read_imagefolder(world)
    images, texts = [ds.image(i) for i in range(4)], [ds[i].captions[0] for i in range(4)]
    assert torch.equal(back.encode_images(images), model.encode_images(images))
    assert torch.equal(back.encode_texts(texts), model.encode_texts(texts))
    assert back.fingerprint == model.fingerprint


@pytest.mark.real_weights
def test_attention_text_head_tells_captions_with_swapped_attributes_apart(towers, tmp_path):
    from vlm.data import CaptionDataset, Record

    # Every caption has a twin with the very same words: "a red circle and a blue square" and
    # "a blue circle and a red square". Only word order says which image is which.
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 220, 30)}
    records, images = [], []
    for k, (a, b) in enumerate(itertools.permutations(colours, 2)):
        image = Image.new("RGB", (48, 48), "white")
        draw = ImageDraw.Draw(image)
        draw.ellipse((3, 14, 21, 32), fill=colours[a])
        draw.rectangle((27, 14, 45, 32), fill=colours[b])
        image.save(tmp_path / f"{k}.png")
        images.append(image)
        records.append(Record(f"{k}.png", [f"a {a} circle and a {b} square"]))
    # A capacity check, so no dropout. (Measured: the mean pool with an MLP fits these 12 pairs too; telling
    # swapped attributes apart in captions never seen is what the world's TrueMatch bags measure.)
    head = LiTConfig(**dict(TINY, text_pool="attention"), proj_dropout=0.0, head_dropout=0.0)
    cfg = _train_cfg(model=head, steps=100, batch_size=len(records), dense_prob=0.0, checkpoint_every=100)
    model = train_lit(CaptionDataset(tmp_path, records), cfg, out_dir=tmp_path / "run",
                      feature_cache=tmp_path / "cache", progress=False, **towers)
    texts = [r.captions[0] for r in records]
    scores = model.encode_texts(texts) @ model.encode_images(images).T  # (12 captions, 12 images)
    assert (scores.argmax(1) == torch.arange(len(texts))).float().mean().item() == 1.0  # R@1


# ---- the conv head over a mid-level map (image_pool="conv", image_level) -------------------------------


def test_conv_pool_and_image_level_are_validated():
    with pytest.raises(ValueError, match="LiTConfig.image_pool must be one of"):
        LiTConfig(image_pool="max")
    with pytest.raises(ValueError, match="image_level selects a feature map for a trained image head"):
        LiTConfig(image_level=3)
    with pytest.raises(ValueError, match="LiTConfig.image_level must be -1"):
        LiTConfig(image_pool="conv", image_level=-2)
    assert LiTConfig(image_pool="conv", image_level=3).identity()["image_level"] == 3
    assert "image_level" not in LiTConfig().identity()  # the default still hashes as before the field


def test_conv_head_keeps_positions_and_checks_the_grid():
    from vlm.models.lit import ConvPoolHead

    torch.manual_seed(0)
    head = ConvPoolHead(3, width=8, grid=(6, 6), dropout=0.0).eval()
    a = torch.zeros(1, 3, 6, 6)
    a[0, :, 1, 1] = 1.0  # one "thing" top left
    b = torch.zeros(1, 3, 6, 6)
    b[0, :, 4, 4] = 1.0  # the same thing bottom right: a mean pool could not tell them apart
    assert not torch.allclose(head(a), head(b), atol=1e-3)
    assert head(torch.cat([a, b])).shape == (2, 8)
    with pytest.raises(ValueError, match=r"ConvPoolHead: a \(5, 5\) map, but the head was built for \(6, 6\)"):
        head(torch.zeros(1, 3, 5, 5))


def test_conv_pools_mean_and_both_are_translation_invariant_where_flatten_is_not():
    from vlm.models.lit import ConvPoolHead

    torch.manual_seed(0)
    a = torch.zeros(2, 3, 12, 12)
    a[0, :, 4, 4] = 1.0  # one thing ...
    a[1, :, 4, 4] = a[1, :, 4, 6] = 1.0  # ... and two
    b = torch.roll(a, shifts=(4, 2), dims=(2, 3))  # the same things two downsampled cells down, one right
    heads = {p: ConvPoolHead(3, width=8, grid=(12, 12), dropout=0.0, pool=p).eval()
             for p in ("flatten", "mean", "both")}
    assert torch.allclose(heads["mean"](a), heads["mean"](b), atol=1e-6)
    assert not torch.allclose(heads["flatten"](a), heads["flatten"](b), atol=1e-3)
    assert not torch.allclose(heads["both"](a), heads["both"](b), atol=1e-3)  # "both" keeps positions ...
    assert not torch.allclose(heads["mean"](a[:1]), heads["mean"](a[1:]), atol=1e-3)  # ... and "mean" counts
    # "both" is the sum of the two paths
    both = heads["both"]
    h = both.convs(a)
    cells = h.flatten(2)
    expect = both.out(h) + both.glob(torch.cat([cells.mean(-1), cells.amax(-1)], -1))
    assert torch.allclose(both(a), expect)
    assert heads["mean"].out is None and heads["flatten"].glob is None
    with pytest.raises(ValueError, match="pool must be one of"):
        ConvPoolHead(3, width=8, grid=(4, 4), dropout=0.0, pool="max")
    with pytest.raises(ValueError, match="LiTConfig.image_conv_pool must be one of"):
        LiTConfig(image_pool="conv", image_conv_pool="sum")
    assert "image_conv_pool" not in LiTConfig(image_pool="conv").identity()  # the default hashes as before
    assert LiTConfig(image_pool="conv", image_conv_pool="both").identity()["image_conv_pool"] == "both"


def test_cli_passes_image_level(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(contrastive, "run_train_retriever", lambda out, cfg, **kw: seen.setdefault("cfg", cfg) and {})
    assert contrastive.main(["--out", str(tmp_path), "--quiet", "--image-pool", "conv", "--image-level", "3"]) == 0
    assert (seen["cfg"].model.image_pool, seen["cfg"].model.image_level) == ("conv", 3)
    assert seen["cfg"].model.image_conv_pool == "flatten"
    seen.clear()
    assert contrastive.main(["--out", str(tmp_path), "--quiet", "--image-pool", "conv", "--image-level", "3",
                             "--image-conv-pool", "both"]) == 0
    assert seen["cfg"].model.image_conv_pool == "both"
    assert contrastive.main(["--out", str(tmp_path), "--quiet", "--image-level", "3", "--image-pool", "mean"]) == 2
    assert "image_level selects a feature map" in capsys.readouterr().err


@pytest.mark.real_weights
def test_mid_level_maps_are_the_towers_and_a_conv_head_trains(towers, world, feature_cache, tmp_path):
    from vlm.data import read_imagefolder

    cfg = LiTConfig(**dict(TINY, image_size=64, image_pool="conv", image_level=3))
    model = LiTRetriever(cfg, **towers)
    assert model.image_grid == (4, 4)  # level 3 is 16x downsampled: 64 px -> 4x4, 112 channels
    ds = read_imagefolder(world)
    px = model.preprocess([ds.image(i) for i in range(5)])
    feats = model.image_features(px)
    assert feats.shape == (5, 112, 4, 4) and feats.dtype == torch.float16
    # The same map as running EfficientNet's stem and first five blocks by hand (blocks.4 is level 3).
    m = towers["image_encoder"].model
    with torch.no_grad():
        x = m.bn1(m.conv_stem(px))
        for blk in m.blocks[:5]:
            x = blk(x)
    assert torch.allclose(feats.float(), x, atol=2e-2, rtol=1e-2)
    torch.manual_seed(0)
    out = tmp_path / "run"
    trained = train_lit(world, _train_cfg(model=cfg), out_dir=out, feature_cache=feature_cache, progress=False,
                        **towers)
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert trained.image_mean.shape == (112,) and float(trained.image_std.min()) > 0
    maps = image_feature_table(trained, ds, cache_dir=feature_cache, progress=False)
    assert maps.shape == (32, 112, 4, 4)
    with torch.no_grad():
        cached = trained.embed_image_features(maps[:6])
    assert torch.allclose(cached, trained.encode_images([ds.image(i) for i in range(6)], batch_size=4), atol=1e-4)
    back = LiTRetriever.from_pretrained(out, **towers)
    assert torch.equal(back.encode_images([ds.image(0)]), trained.encode_images([ds.image(0)]))
    assert back.config.image_level == 3 and back.fingerprint == trained.fingerprint
    # The evaluation's baselines (a mean-pooled twin, the ridge fit) read pooled features, not the level-3 map.
    twin = contrastive._pooled_twin(trained)
    assert (twin.config.image_pool, twin.config.image_level) == ("mean", -1)
    ridge = contrastive.fit_ridge_retriever(torch.randn(40, 1280), torch.randn(40, 384), config=trained.config,
                                            image_encoder=towers["image_encoder"], text_encoder=twin.text_encoder)
    assert ridge.encode_images([ds.image(0)]).shape == (1, 384)


@pytest.mark.real_weights
def test_captions_that_fill_the_token_budget_are_logged_on_a_cache_hit_too(trained, feature_cache, caplog):
    model, _ = trained
    long = "two large blue squares and three small green stars on a beach at night " * 3
    for _ in range(2):  # computed, then read from the cache
        caplog.clear()
        with caplog.at_level("WARNING", logger=contrastive.logger.name):
            text_feature_table(model, ["a red circle", long], cache_dir=feature_cache, progress=False)
        assert "1 of 2 captions fill LiTConfig.text_max_tokens=24 tokens" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=contrastive.logger.name):
        text_feature_table(model, ["a red circle"], cache_dir=feature_cache, progress=False)
    assert "captions fill" not in caplog.text
