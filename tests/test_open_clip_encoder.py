"""open_clip image towers as the prefix captioner's image encoder (``load_image_encoder("open_clip:...")``).

Everything runs on the tiny random-weight CLIP of ``vlm.retrieval.TINY_OPEN_CLIP_CONFIG`` (32 px, one layer),
offline.
"""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import open_clip
from vlm.models import PrefixCaptioner, create_captioner
from vlm.pretrained import HubOfflineError, OpenCLIPImageEncoder, load_image_encoder
from vlm.retrieval import TINY_OPEN_CLIP_CONFIG, OpenCLIPRetriever

CAPTIONS = ["a red circle on the left.", "two blue squares on the right."]


def _image(color: str, box: tuple[int, int, int, int], size: tuple[int, int] = (48, 48)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).rectangle(box, fill=color)
    return im


IMAGES = [_image("red", (4, 10, 20, 30)), _image("blue", (26, 4, 44, 40))]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip") / "finecap-test-tiny-clip.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    open_clip.add_model_config(path)  # tests build the reference model by this name, before any load
    return path


@pytest.fixture(scope="module")
def spec(config_file):
    return f"open_clip:{config_file}:random"


@pytest.fixture(scope="module")
def encoder(spec):
    return load_image_encoder(spec)


def _captioner(spec, **kw):
    return create_captioner("prefix-tiny", image_encoder=spec, train_texts=CAPTIONS * 10, vocab_size=300, **kw)


def test_features_are_the_towers_embedding_and_its_patch_tokens(encoder, spec):
    assert isinstance(encoder, OpenCLIPImageEncoder) and encoder.name == spec
    assert encoder.image_size == (32, 32) and encoder.num_features == 16 and encoder.num_spatial_features == 32
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled, tokens = encoder.features(x), encoder.features(x, kind="spatial")
        # The same spec as a retriever has the same weights: its un-normalised image embedding is ours.
        reference = OpenCLIPRetriever(spec[len("open_clip:"):-len(":random")]).model.encode_image(x)
        encoder.cpu_chunk = 0
        whole = encoder.features(x)
        encoder.cpu_chunk = 4
    assert pooled.shape == (6, 16) and tokens.shape == (6, 16, 32)  # (32 / 8) ** 2 patches of width 32
    torch.testing.assert_close(pooled, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, whole, atol=1e-5, rtol=0)  # chunks of cpu_chunk change nothing
    with pytest.raises(ValueError, match="kind must be"):
        encoder.features(x, kind="grid")


def test_random_weights_are_the_same_for_the_same_spec_and_leave_the_callers_rng_alone(encoder, spec):
    rng = torch.random.get_rng_state()
    again = load_image_encoder(spec)
    assert torch.equal(rng, torch.random.get_rng_state())
    a, b = encoder.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_preprocessing_equals_open_clips_transform(encoder, config_file):
    _, _, transform = open_clip.create_model_and_transforms(config_file.stem)
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((37, 61), (90, 20))]
    ours = encoder.preprocess(images)
    assert ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, torch.stack([transform(im) for im in images]), atol=1e-5, rtol=0)
    assert torch.equal(encoder.preprocess(np.asarray(images[1])), ours[1:])  # an HxWx3 uint8 array is an image
    # center_crop=False squashes the whole image to 32 x 32 (bicubic), then CLIP's normalisation.
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    squashed = [torch.from_numpy(np.array(im.resize((32, 32), Image.BICUBIC))).permute(2, 0, 1) / 255
                for im in images]
    torch.testing.assert_close(encoder.preprocess(images, center_crop=False),
                               torch.stack([(x - mean) / std for x in squashed]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", ["weights-file", "local-dir"])
def test_weights_from_a_file_or_a_folder_with_their_own_preprocessing(tmp_path, config_file, form):
    torch.manual_seed(1)
    model = open_clip.create_model(config_file.stem)
    if form == "weights-file":
        torch.save(model.state_dict(), tmp_path / "weights.pt")
        enc = load_image_encoder(f"open_clip:{config_file}:{tmp_path / 'weights.pt'}")
        _, _, transform = open_clip.create_model_and_transforms(config_file.stem)
    else:
        pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CONFIG,
                                                                    "preprocess_cfg": pre}))
        torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
        enc = load_image_encoder(f"open_clip:local-dir:{tmp_path}")
        _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
        assert enc.data_config["mean"] == (0.5,) * 3 and enc.data_config["interpolation"] == "bilinear"
    x = enc.preprocess(IMAGES)
    torch.testing.assert_close(x, torch.stack([transform(im) for im in IMAGES]), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(enc.features(x), model.encode_image(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["open_clip:ViT-B-32:openai", "open_clip:hf-hub:finecap-test/not-cached-clip"])
def test_hub_weights_fail_fast_offline(monkeypatch, tmp_path, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))  # not cached, on any machine
    start = time.perf_counter()
    with pytest.raises(HubOfflineError, match="cannot be"):
        load_image_encoder(name)
    assert time.perf_counter() - start < 10


def test_a_spec_without_a_tag_is_refused(config_file):
    with pytest.raises(ValueError, match="needs a pretrained tag"):
        load_image_encoder(f"open_clip:{config_file}")


def test_captioner_generates_and_its_loss_trains_the_mapper_not_the_encoder(spec):
    model = _captioner(spec).train()
    assert not model.image_encoder.training
    captions = model.generate(IMAGES, max_new_tokens=5)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    loss = model.loss({"images": IMAGES, "captions": CAPTIONS})
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mapper.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.image_encoder.parameters())


def test_adam_steps_lower_the_loss_on_two_images(spec):
    model = _captioner(spec).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = {"images": IMAGES, "captions": CAPTIONS}
    losses = []
    for _ in range(8):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_spatial_tokens_feed_the_transformer_mapper(spec):
    model = _captioner(spec, feature_kind="spatial", mapper="transformer")
    assert model.image_features(model.preprocess(IMAGES)).shape == (2, 16, 32)
    with torch.no_grad():
        assert torch.isfinite(model.loss({"images": IMAGES, "captions": CAPTIONS}))


def test_save_and_load_give_the_same_captions_and_log_probs(tmp_path, spec):
    model = _captioner(spec).eval()
    with torch.no_grad():  # a trained mapper: a random one would make most captions the same
        for p in model.mapper.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "saved")
    from safetensors.torch import load_file

    # The frozen tower is not saved: it is rebuilt from its name, with the same seeded weights.
    assert not any(k.startswith("image_encoder.") for k in load_file(tmp_path / "saved" / "model.safetensors"))
    loaded = PrefixCaptioner.from_pretrained(tmp_path / "saved")
    assert loaded.config.image_encoder == spec
    assert loaded.generate(IMAGES, max_new_tokens=6) == model.generate(IMAGES, max_new_tokens=6)
    with torch.no_grad():
        a, mask_a = model.token_log_probs(CAPTIONS, images=IMAGES)
        b, mask_b = loaded.token_log_probs(CAPTIONS, images=IMAGES)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


class _Folder:
    """The two calls ``_features_for`` makes of a dataset."""

    def __init__(self, root, images):
        self.files = []
        for i, im in enumerate(images):
            self.files.append(root / f"{i}.png")
            im.save(self.files[-1])

    def __len__(self):
        return len(self.files)

    def path(self, i):
        return self.files[i]

    def image(self, i):
        return Image.open(self.files[i]).convert("RGB")


def test_the_mle_feature_cache_keeps_encoders_apart(tmp_path, monkeypatch, spec):
    from vlm.train.mle import _features_for

    monkeypatch.setenv("FINECAP_CACHE", str(tmp_path / "cache"))
    wider = tmp_path / "finecap-test-wider-clip.json"
    wider.write_text(json.dumps({**TINY_OPEN_CLIP_CONFIG, "embed_dim": 24}))
    data = _Folder(tmp_path, IMAGES)
    for s, width in ((spec, 16), (f"open_clip:{wider}:random", 24), ("scratch:test_efficientnet", None)):
        model = _captioner(s).eval()
        feats = _features_for(model, data, progress=False)
        with torch.no_grad():
            expected = model.image_features(model.preprocess([data.image(i) for i in range(len(data))]))
        assert feats.shape == (2, width or model.image_encoder.num_features)
        torch.testing.assert_close(feats, expected, atol=1e-5, rtol=0)
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 3
