import pytest
import torch

from vlm.models.prefix import PrefixCaptioner, PrefixCaptionerConfig, build_prefix_captioner, count_parameters
from vlm.models.tokenizer import train_caption_tokenizer
from vlm.world import iter_world, render, resolve_config

TINY_LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=96)


@pytest.fixture(scope="module")
def world():
    items = list(iter_world(resolve_config("captioning"), 24, seed=0))
    return [render(it.scene, 48) for it in items], [it.captions[0] for it in items], items


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_caption_tokenizer([c for it in world[2] for c in it.captions], vocab_size=400)


def _model(tokenizer, **kw):
    cfg = PrefixCaptionerConfig(**{"image_encoder": "scratch:test_efficientnet", **kw}, prefix_length=3,
                                scratch_lm=TINY_LM)
    return build_prefix_captioner(cfg, tokenizer=tokenizer, seed=0).eval()


def test_loss_is_mean_negative_token_log_prob(world, tokenizer):
    images, caps, _ = world
    m = _model(tokenizer)
    with torch.no_grad():
        loss = m.loss({"images": images[:4], "captions": caps[:4]})
        logp, mask = m.token_log_probs(caps[:4], images=images[:4])
    assert torch.isfinite(loss)
    assert logp.shape == mask.shape and (logp[~mask] == 0).all()
    torch.testing.assert_close(-(logp.sum() / mask.sum()), loss, atol=1e-5, rtol=0)
    # Each caption's token count: its BPE tokens + EOS.
    n_tokens = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1 for c in caps[:4]]
    assert mask.sum(1).tolist() == n_tokens


def test_a_training_step_changes_mapper_and_lm_not_the_frozen_encoder(world, tokenizer):
    images, caps, _ = world
    m = _model(tokenizer).train()
    assert not m.image_encoder.training  # frozen: BatchNorm statistics must not drift
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    loss0 = m.loss({"images": images[:8], "captions": caps[:8]})
    loss0.backward()
    opt.step()
    after = m.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"mapper", "lm"}
    with torch.no_grad():
        assert m.loss({"images": images[:8], "captions": caps[:8]}) < loss0


def test_batched_generation_equals_one_by_one_with_prompts_of_different_lengths(world, tokenizer):
    images, _, _ = world
    m = _model(tokenizer)
    prompts = ["How many?", "What color is the big one?", "Describe.", "Is there a woman in the kitchen?"]
    batched = m.generate(images[:4], prompts, max_new_tokens=6)
    single = [m.generate([im], [p], max_new_tokens=6)[0] for im, p in zip(images[:4], prompts)]
    assert batched == single
    beams = m.generate(images[:4], num_beams=3, max_new_tokens=6, num_return_sequences=2)
    assert len(beams) == 8 and all(isinstance(c, str) for c in beams)


def test_save_and_load_round_trip_gives_equal_outputs(world, tokenizer, tmp_path):
    images, caps, _ = world
    m = _model(tokenizer, mapper="transformer", feature_kind="spatial", mapper_hidden=64, mapper_layers=1)
    m.save_pretrained(tmp_path / "m")
    back = PrefixCaptioner.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a, _ = m.token_log_probs(caps[:3], images=images[:3])
        b, _ = back.token_log_probs(caps[:3], images=images[:3])
    assert torch.equal(a, b)
    assert m.generate(images[:3], max_new_tokens=5) == back.generate(images[:3], max_new_tokens=5)


def test_lora_trains_only_adapters_and_mapper(tokenizer):
    m = _model(tokenizer, lm_training="lora", lora_r=4, lora_alpha=8)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("mapper.") or "lora_" in n for n in trainable)
    counts = count_parameters(m)
    assert 0 < counts["trainable"] < counts["total"]


@pytest.mark.parametrize("bad, match", [
    (dict(mapper="rnn"), "mapper"),
    (dict(feature_kind="spatial"), "transformer"),
    (dict(lm_training="half"), "lm_training"),
    (dict(feature_kind="level:3"), "need mapper='transformer'"),
    (dict(feature_kind="level:x", mapper="transformer"), "expected 'level:<k>'"),
    (dict(feature_kind="pooled", spatial_pool=2), "spatial_pool pools a feature map"),
    (dict(feature_kind="spatial", mapper="transformer", spatial_pool=0), "spatial_pool must be"),
    (dict(mapper_positions=True), "mapper_positions needs mapper='transformer'"),
    (dict(image_encoder="finecap:lit-v3", image_encoder_training="full"), "tower .* is locked"),
    (dict(mapper="transformer", mapper_hidden=30, mapper_positions=True), "divisible by 4"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        PrefixCaptionerConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        PrefixCaptionerConfig.from_dict({"prefix_len": 3})


def test_mid_level_tokens_come_from_the_encoders_intermediate_map(world, tokenizer):
    images, caps, _ = world
    m = _model(tokenizer, feature_kind="level:2", mapper="transformer", mapper_hidden=32, mapper_layers=1,
               spatial_pool=2)
    enc = m.image_encoder
    level2 = enc.model.feature_info[2]
    assert m.mapper.proj_in.in_features == level2["num_chs"]
    px = m.preprocess(images[:3])
    fmap = enc.feature_level(px, 2)  # (B, C, H, W), H = image side / reduction
    assert fmap.shape[1] == level2["num_chs"] and fmap.shape[2] == px.shape[2] // level2["reduction"]
    tokens = m.image_features(px)
    pooled = torch.nn.functional.avg_pool2d(fmap, 2, ceil_mode=True)
    assert tokens.shape == (3, pooled.shape[2] * pooled.shape[3], fmap.shape[1])
    assert torch.allclose(tokens, pooled.flatten(2).transpose(1, 2), atol=1e-5)
    batch = {"images": images[:4], "captions": caps[:4]}
    assert torch.isfinite(m.loss(batch))
    out = m.generate(images[:2], max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(c, str) for c in out)
    with pytest.raises(ValueError, match="feature level 9"):
        enc.features(px, kind="level:9")


def test_mapper_positions_tell_where_a_token_is():
    from vlm.models.prefix import TransformerMapper, grid_positions

    pe = grid_positions(16, 8)  # a 4x4 map
    assert pe.shape == (16, 8) and len({tuple(r.tolist()) for r in pe}) == 16  # every cell its own code
    assert torch.equal(pe[1, :4], pe[5, :4]) and torch.equal(pe[4, 4:], pe[5, 4:])  # column half, row half
    assert grid_positions(5, 8).shape == (5, 8)  # not square: one row
    torch.manual_seed(0)
    tokens = torch.randn(1, 16, 6)
    swapped = tokens[:, [1, 0, *range(2, 16)]]  # two cells trade places
    plain = TransformerMapper(6, 12, k=2, width=8, layers=1).eval()
    placed = TransformerMapper(6, 12, k=2, width=8, layers=1, positions=True).eval()
    placed.load_state_dict(plain.state_dict())  # the codes have no parameters
    # Without codes the mapper reads a set: a permutation changes nothing. With them it does.
    assert torch.allclose(plain(tokens), plain(swapped), atol=1e-5)
    assert not torch.allclose(placed(tokens), placed(swapped), atol=1e-3)
    assert PrefixCaptionerConfig(mapper="transformer", feature_kind="level:3", mapper_positions=True).mapper_positions


def test_a_captioner_reads_a_lit_retrievers_tower_and_reloads_it_by_name(world, tokenizer, tmp_path):
    from safetensors.torch import load_file

    from vlm.models.lit import LiTConfig, LiTImageTower, LiTRetriever

    images, caps, _ = world
    torch.manual_seed(0)
    lit = LiTRetriever(LiTConfig(image_encoder="scratch:test_efficientnet", embed_dim=16, image_size=64,
                                 image_pool="conv", image_level=2, head_width=8))
    with torch.no_grad():
        lit.image_proj[0].weight.mul_(3.0)  # weights of its own: the reloaded tower must have them, not fresh ones
    lit.save_pretrained(tmp_path / "lit")
    spec = f"finecap:{tmp_path / 'lit'}"
    m = _model(tokenizer, image_encoder=spec, feature_kind="spatial", mapper="transformer", mapper_hidden=32,
               mapper_layers=1, mapper_positions=True)
    assert isinstance(m.image_encoder, LiTImageTower) and m.image_encoder.fingerprint == lit.fingerprint
    px = m.preprocess(images[:2])
    assert px.shape[-1] == 64  # the retriever's own input size
    grid = lit.image_pooler.convs((lit.image_features(px).float() - lit.image_mean[:, None, None])
                                  / lit.image_std[:, None, None])  # (2, 4, 4, 4): the head's grid
    tokens = m.image_features(px)
    assert tokens.shape == (2, 16, 4) and m.mapper.proj_in.in_features == 4
    assert torch.allclose(tokens, grid.flatten(2).transpose(1, 2), atol=1e-5)
    pooled = m.image_encoder.features(px)  # the retriever's own embedding
    assert torch.allclose(pooled, lit.encode_images(images[:2]), atol=1e-5)
    m.save_pretrained(tmp_path / "cap")
    back = PrefixCaptioner.from_pretrained(tmp_path / "cap")
    saved = load_file(str(tmp_path / "cap" / "model.safetensors"))
    assert saved and not any(k.startswith("image_encoder.") for k in saved)  # the tower reloads by name
    with torch.no_grad():
        a, _ = m.token_log_probs(caps[:2], images=images[:2])
        b, _ = back.token_log_probs(caps[:2], images=images[:2])
    assert torch.equal(a, b)
    plain = LiTRetriever(LiTConfig(image_encoder="scratch:test_efficientnet", embed_dim=16, image_size=64))
    with pytest.raises(ValueError, match="spatial features are the conv head's grid"):
        LiTImageTower(plain).features(px, kind="spatial")


def test_model_configs_resolve_their_base_and_refuse_bad_ones(tmp_path, monkeypatch):
    from vlm.models import registry

    lit4 = registry.model_config("prefix-lit4-small")  # holds only the encoder it changes
    lit = registry.model_config("prefix-lit-small")
    assert lit4["config"] == {**lit["config"], "image_encoder": "finecap:lit-v4"} and lit4["kind"] == "prefix"
    assert lit4["config"]["scratch_lm"] == lit["config"]["scratch_lm"] and "base" not in lit4
    assert "lit-v4" in lit4["_comment"] and lit4["_comment"] != lit["_comment"]
    assert registry.model_config("prefix-mid-pos-small")["config"] == {
        **registry.model_config("prefix-mid-small")["config"], "mapper_positions": True}

    def configs(files):
        for name, text in files.items():
            (tmp_path / f"{name}.json").write_text(text)
        monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
        registry._configs.cache_clear()
        try:
            return registry._configs()
        finally:
            registry._configs.cache_clear()

    got = configs({"a": '{"kind": "prefix", "config": {"x": 1, "lm": {"h": 2, "l": 3}}}',
                   "b": '{"base": "a", "config": {"lm": {"h": 4}}}'})
    assert got["b"] == {"kind": "prefix", "config": {"x": 1, "lm": {"h": 4, "l": 3}}}  # nested fields merge
    with pytest.raises(ValueError, match=r"c\.json: field 'base': no shipped model config 'z'"):
        configs({"c": '{"base": "z", "config": {}}'})
    with pytest.raises(ValueError, match=r"field 'base': configs based on each other"):
        configs({"c": '{"base": "d", "config": {}}', "d": '{"base": "c", "config": {}}'})
    for f in tmp_path.glob("*.json"):
        f.unlink()
    with pytest.raises(ValueError, match=r"e\.json line 1: not a valid model config"):
        configs({"e": '{"kind": '})
