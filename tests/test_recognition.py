"""Fine-grained recognition: data loaders, features and their cache, the four protocols, parsing, reports."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.recognition import (AnswerParser, RecognitionConfig, classification_metrics, confusion_matrix,
                                    extract_features, generative_predict, k_shot_probe, linear_probe_predict,
                                    load_recognition_data, main, run_recognition, sample_k_shot,
                                    zero_shot_predict, zero_shot_weights)
from benchmarks.recognition.data import (ArrayImages, RecognitionSplit, fashion_mnist_data,
                                         world_finegrained_data)

# ----------------------------------------------------------------------------------------- test components

COLORS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ColorRetriever:
    """A deterministic retriever: images embed as their mean colour, texts as the colour words they name.

    A fourth dimension fires on the word "picture", so templates give different text embeddings and the
    template averaging is visible in the class weights.
    """

    name = "color-retriever"

    def __init__(self):
        self.texts: list[str] = []
        self.n_images = 0

    def encode_texts(self, texts):
        self.texts += list(texts)
        rows = []
        for t in texts:
            words = t.lower().replace(".", " ").split()
            v = [sum(COLORS[w][d] for w in words if w in COLORS) for d in range(3)] + [float("picture" in words)]
            rows.append(v)
        return torch.nn.functional.normalize(torch.tensor(rows), dim=1)

    def encode_images(self, images):
        self.n_images += len(images)
        rows = [list(np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) / 255.0) + [0.0] for im in images]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=1)


class ColorVLM:
    """A scripted VLM: answers from the image's dominant channel, in a different style per colour."""

    name = "scripted-vlm"
    SCRIPT = {0: "It is red.", 1: "<think>grassy</think><answer>Green</answer>", 2: "hmm, hard to say"}

    def __init__(self):
        self.calls = []

    def generate(self, images, prompts, *, max_new_tokens):
        self.calls.append((len(images), list(prompts), max_new_tokens))
        return [self.SCRIPT[int(np.asarray(im).reshape(-1, 3).mean(0).argmax())] for im in images]


def make_color_retriever():
    return ColorRetriever()


def make_color_vlm():
    return ColorVLM()


def tiny_encoder(seed: int = 0):
    """A random timm EfficientNet (356k parameters, 256-d features) at 32 px, wrapped like the real one."""
    import timm

    from vlm.pretrained import ImageEncoder

    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
           "crop_pct": 1.0}
    return ImageEncoder(model, data_config=cfg, name="tiny-test").eval()


def _solid(path: Path, rgb, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


@pytest.fixture
def color_folders(tmp_path):
    """root/{train,test}/{red,green,blue}/: 4 train images per class; test: 2 per class, one 'blue' is purple."""
    root = tmp_path / "colors"
    shades = [0, 20, 40, 60]
    for name, (r, g, b) in COLORS.items():
        for i, s in enumerate(shades):
            _solid(root / "train" / name / f"{i}.png", (int(r * (255 - s)), int(g * (255 - s)), int(b * (255 - s))))
    _solid(root / "test" / "red" / "0.png", (250, 10, 10))
    _solid(root / "test" / "red" / "1.png", (200, 30, 0))
    _solid(root / "test" / "green" / "0.png", (0, 240, 20))
    _solid(root / "test" / "green" / "1.png", (10, 180, 10))
    _solid(root / "test" / "blue" / "0.png", (0, 20, 230))
    _solid(root / "test" / "blue" / "1.png", (200, 0, 150))  # purple, nearer red: the one expected error
    return root


def _blobs(n_per_class: int, n_classes: int = 3, dim: int = 6, seed: int = 0, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(n_classes, dim) * 4
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


# --------------------------------------------------------------------------------------------- data loaders


def test_class_folders_with_split_folders(color_folders):
    data = load_recognition_data(f"folders:{color_folders}")
    assert data.class_names == ["blue", "green", "red"]
    assert len(data.train) == 12 and len(data.test) == 6
    assert np.bincount(data.train.labels).tolist() == [4, 4, 4]
    assert data.test.images[0].getpixel((0, 0)) == (0, 20, 230)  # blue/0.png, label 0
    assert data.test.labels[0] == 0


def test_class_folders_without_splits_are_divided_per_class_and_disjointly(tmp_path):
    for c in ("ant", "bee"):
        for i in range(10):
            _solid(tmp_path / c / f"{i}.png", (i, 0, 0))
    data = load_recognition_data(f"folders:{tmp_path}", seed=3)
    assert np.bincount(data.test.labels).tolist() == [2, 2]
    assert np.bincount(data.train.labels).tolist() == [8, 8]
    assert not set(data.train.images.indices) & set(data.test.images.indices)
    again = load_recognition_data(f"folders:{tmp_path}", seed=3)
    assert again.test.images.indices == data.test.images.indices
    assert load_recognition_data(f"folders:{tmp_path}", seed=4).test.images.indices != data.test.images.indices


def test_cub_layout(tmp_path):
    files = [(1, "001.Red_bird/a.png", 1, 1), (2, "001.Red_bird/b.png", 1, 0), (3, "002.Blue_jay/c.png", 2, 1),
             (4, "002.Blue_jay/d.png", 2, 0), (5, "002.Blue_jay/e.png", 2, 0)]
    for _, rel, cls, _ in files:
        _solid(tmp_path / "images" / rel, (255, 0, 0) if cls == 1 else (0, 0, 255))
    (tmp_path / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _, _ in files))
    (tmp_path / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in files))
    (tmp_path / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in files))
    (tmp_path / "classes.txt").write_text("1 001.Red_bird\n2 002.Blue_jay\n")
    data = load_recognition_data(f"cub:{tmp_path}")
    assert data.class_names == ["Red bird", "Blue jay"]
    assert data.train.labels.tolist() == [0, 1] and data.test.labels.tolist() == [0, 1, 1]
    assert data.test.images[0].getpixel((0, 0)) == (255, 0, 0)
    assert data.center_crop is True


def test_world_finegrained_is_generated_once_and_reused(tmp_path):
    data = world_finegrained_data(n=36, size=32, seed=1, cache=tmp_path)
    from vlm.world import FINE_CLASSES

    assert data.class_names == list(FINE_CLASSES) and data.center_crop is False
    assert len(data.train) + len(data.test) <= 36 and len(data.test) > 0
    assert data.train.images[0].size == (32, 32)
    meta = next(tmp_path.iterdir()) / "metadata.jsonl"
    stamp = meta.stat().st_mtime_ns
    again = world_finegrained_data(n=36, size=32, seed=1, cache=tmp_path)
    assert meta.stat().st_mtime_ns == stamp
    assert again.train.identity == data.train.identity


def test_unknown_data_spec_names_the_choices():
    with pytest.raises(ValueError, match="fashion-mnist.*world-finegrained.*cub:ROOT"):
        load_recognition_data("mnist")
    with pytest.raises(ValueError, match="k=v"):
        load_recognition_data("world-finegrained:images=10")


def test_fashion_mnist_reads_the_debian_files():
    data = fashion_mnist_data()
    assert (len(data.train), len(data.test)) == (60000, 10000)
    img = data.test.images[0]
    assert img.mode == "RGB" and img.size == (28, 28)
    assert data.class_names[data.test.labels[0]] == "Ankle boot"
    assert data.pixel_baseline == (28, True) and data.center_crop is False


# ------------------------------------------------------------------------------------ features and the cache


def test_feature_cache_is_reused_and_keyed_by_preprocessing(tmp_path):
    enc = tiny_encoder()
    calls = []
    forward = enc.features
    enc.features = lambda *a, **k: (calls.append(len(a[0])), forward(*a, **k))[1]
    rng = np.random.default_rng(0)
    split = RecognitionSplit(ArrayImages(rng.integers(0, 255, (7, 12, 12), dtype=np.uint8)), [0, 1] * 3 + [0])
    first = extract_features(enc, split, [6, 2, 3], cache_dir=tmp_path, batch_size=2, progress=False)
    assert calls == [2, 1] and first.shape == (3, 256)
    assert len(list(tmp_path.glob("tiny-test-*.safetensors"))) == 1
    again = extract_features(enc, split, [6, 2, 3], cache_dir=tmp_path, batch_size=2, progress=False)
    assert calls == [2, 1] and torch.equal(again, first)
    # Another crop, another subset or other weights are other entries.
    extract_features(enc, split, [6, 2, 3], center_crop=False, cache_dir=tmp_path, progress=False)
    extract_features(enc, split, [2, 3], cache_dir=tmp_path, progress=False)
    assert calls == [2, 1, 3, 2]
    other = tiny_encoder(seed=1)
    assert not torch.equal(extract_features(other, split, [6, 2, 3], cache_dir=tmp_path, progress=False), first)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    # Features equal a direct forward pass of the same images, in the order asked for.
    with torch.inference_mode():
        direct = forward(enc.preprocess([split.images[i] for i in (6, 2, 3)]), kind="pooled")
    assert torch.allclose(first, direct, atol=1e-5)


def test_damaged_cache_entry_is_recomputed(tmp_path):
    enc = tiny_encoder()
    split = RecognitionSplit(ArrayImages(np.zeros((3, 8, 8), np.uint8)), [0, 1, 2])
    good = extract_features(enc, split, cache_dir=tmp_path, progress=False)
    entry = next(tmp_path.glob("*.safetensors"))
    entry.write_bytes(b"not a safetensors file")
    assert torch.equal(extract_features(enc, split, cache_dir=tmp_path, progress=False), good)


# ------------------------------------------------------------------------------------------------- metrics


def test_confusion_matrix_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.1, -1, rng.integers(0, 4, 200))
    cm = confusion_matrix(y, p, 4)
    brute = [[sum(1 for a, b in zip(y, p) if a == i and b == j) for j in range(4)] for i in range(4)]
    assert cm.tolist() == brute
    m = classification_metrics(y, p, 4)
    assert m["top1"] == pytest.approx(np.mean(y == p))
    recalls = [np.mean(p[y == c] == c) for c in range(4)]
    assert m["mean_per_class_accuracy"] == pytest.approx(np.mean(recalls))
    assert m["n_unparsed"] == int((p == -1).sum()) == 200 - cm.sum()


# ------------------------------------------------------------------------------------------ answer parsing


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


@pytest.mark.parametrize("answer,label,how", [
    ("Coat", 4, "exact"),
    ("  COAT!!  ", 4, "exact"),
    ("trousers", 1, "exact"),  # plural
    ("Ankle boots.", 9, "exact"),
    ("<think>it has a heel</think><answer>Sandal</answer>", 5, "exact"),
    ("This looks like a dress to me.", 3, "contained"),
    ("T-shirt", 0, "overlap"),  # "shirt" inside "t shirt" also continues "T-shirt/top": overlap decides
    ("a t-shirt or top", 0, "overlap"),
    ("It is a shirt, not a t-shirt", 6, "contained"),  # both mentions allow "Shirt" only
    ("a boot", 9, "overlap"),
    ("a coat or a dress", None, "unparseable"),  # a hedge between two classes
    ("I cannot tell", None, "unparseable"),
    ("", None, "unparseable"),
])
def test_answer_parsing(answer, label, how):
    assert tuple(AnswerParser(FASHION)(answer)) == (label, how)


def test_answer_parsing_prefers_the_longer_name_it_contains():
    p = AnswerParser(["ringed badge", "double-ringed badge"])
    assert p("a double ringed badge").label == 1
    assert p("a ringed badge").label == 0
    assert p("a double-ringed thing").label == 1  # overlap: {double, ringed, thing} vs the names


def test_answer_parser_refuses_names_that_normalise_alike():
    with pytest.raises(ValueError, match="same words"):
        AnswerParser(["T-shirt", "t shirt"])


# ---------------------------------------------------------------------------------------------- protocols


def test_zero_shot_averages_templates_and_predicts_by_cosine(color_folders):
    data = load_recognition_data(f"folders:{color_folders}")
    r = ColorRetriever()
    templates = ("a photo of a {name}.", "a picture of a {name}.")
    w = zero_shot_weights(r, data.class_names, templates)
    assert r.texts[:2] == ["a photo of a blue.", "a picture of a blue."]
    # Brute force: class weight = normalised mean of the normalised template embeddings.
    expected = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0, 0.0]) + torch.tensor(
        [0.0, 0.0, 1.0, 1.0]) / 2 ** 0.5, dim=0)
    assert torch.allclose(w[0], expected, atol=1e-6)
    pred, scores = zero_shot_predict(r, data.test.images, data.class_names, templates=templates, batch_size=4)
    assert scores.shape == (6, 3) and r.n_images == 6
    assert pred.tolist() == [0, 2, 1, 1, 2, 2]  # the purple "blue" image goes to red
    assert classification_metrics(data.test.labels, pred, 3)["top1"] == pytest.approx(5 / 6)


def test_linear_probe_chooses_weight_decay_without_seeing_the_test_set():
    x, y = _blobs(30)
    tx, ty = _blobs(10, seed=1)
    pred, info = linear_probe_predict(x, y, tx, n_classes=3, grid=(1e-4, 1e-2, 10.0), val_fraction=0.2)
    assert (pred == ty.numpy()).all()
    assert set(info["validation_accuracy"]) == {1e-4, 1e-2, 10.0} and info["n_train"] == 90
    # Scrambled test features: same choice, since only the training data decides.
    _, info2 = linear_probe_predict(x, y, torch.randn(7, 6), n_classes=3, grid=(1e-4, 1e-2, 10.0), val_fraction=0.2)
    assert info2["weight_decay"] == info["weight_decay"]


def test_k_shot_sampling_is_exact_seeded_and_within_the_pool():
    labels = np.array([0] * 20 + [1] * 5 + [2] * 9)
    for k in (1, 2, 4, 5):
        idx = sample_k_shot(labels, k, seed=7)
        assert np.bincount(labels[idx], minlength=3).tolist() == [k, k, k]
        assert len(set(idx.tolist())) == 3 * k and idx.max() < len(labels)
        assert sample_k_shot(labels, k, seed=7).tolist() == idx.tolist()
    assert sample_k_shot(labels, 4, seed=1).tolist() != sample_k_shot(labels, 4, seed=2).tolist()
    with pytest.raises(ValueError, match="class 1 has 5 training example"):
        sample_k_shot(labels, 6, seed=0)


def test_k_shot_probe_reports_mean_and_std_over_draws_and_encodes_only_the_drawn():
    pool_x, pool_y = _blobs(20, spread=1.5)
    tx, ty = _blobs(15, seed=5, spread=1.5)
    asked = []

    def features(idx):
        asked.append(idx.copy())
        return pool_x[torch.from_numpy(idx)]

    out = k_shot_probe(pool_y.numpy(), features, tx, ty.numpy(), ks=(1, 4), n_draws=3, seed=0, n_classes=3)
    assert len(asked) == 1  # one call, for the union of every draw
    drawn = {int(i) for k in (1, 4) for d in range(3) for i in sample_k_shot(pool_y.numpy(), k, seed=d)}
    assert set(asked[0].tolist()) == drawn
    assert [r["k"] for r in out["per_k"]] == [1, 4] and [r["n_train"] for r in out["per_k"]] == [3, 12]
    assert len(out["draws"]) == 6
    one = [r["top1"] for r in out["draws"] if r["k"] == 1]
    assert out["per_k"][0]["top1_mean"] == pytest.approx(np.mean(one))
    assert out["per_k"][0]["top1_std"] == pytest.approx(np.std(one))
    assert out["per_k"][1]["top1_mean"] > 0.9  # 4 shots of well-separated blobs
    assert len(out["predictions"]) == len(ty)


def test_generative_parses_answers_and_reports_the_unparseable_rate(color_folders):
    data = load_recognition_data(f"folders:{color_folders}")
    vlm = ColorVLM()
    pred, answers, info = generative_predict(vlm, data.test.images, data.class_names, batch_size=4,
                                             max_new_tokens=9)
    assert [c[0] for c in vlm.calls] == [4, 2] and all(c[2] == 9 for c in vlm.calls)
    assert all("blue, green, red" in p for c in vlm.calls for p in c[1])
    # test order: blue (blue, purple), green x2, red x2; purple answers "It is red."
    assert answers[0] == "hmm, hard to say" and answers[1] == "It is red."
    assert pred.tolist() == [-1, 2, 1, 1, 2, 2]
    assert info["unparseable_rate"] == pytest.approx(1 / 6)
    assert info["parsed_by"] == {"exact": 2, "contained": 3, "overlap": 0, "unparseable": 1}
    m = classification_metrics(data.test.labels, pred, 3)
    assert m["top1"] == pytest.approx(4 / 6) and m["confusion_matrix"] == [[0, 0, 1], [0, 2, 0], [0, 0, 2]]


# --------------------------------------------------------------------------------------- end to end and CLI


def test_linear_probe_run_on_the_world_writes_report_and_raw_pixel_baseline(tmp_path):
    data = world_finegrained_data(n=48, size=32, seed=0, cache=tmp_path / "worlds")
    cfg = RecognitionConfig(data=data.name, protocol="linear-probe", out=str(tmp_path / "out"), device="cpu",
                            cache_dir=str(tmp_path / "cache"), baselines=("raw-pixels",), batch_size=16,
                            weight_decay=1e-3, progress=False)
    res = run_recognition(cfg, data=data, encoder=tiny_encoder())
    assert res["n_train"] == len(data.train) and res["n_test"] == len(data.test)
    assert res["feature_dim"] == 256 and res["weight_decay"] == 1e-3 and res["validation_accuracy"] is None
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (12, 12) and cm.sum() == len(data.test)
    assert res["top1"] == pytest.approx(np.trace(cm) / cm.sum())
    assert res["baseline_raw_pixels"]["feature_dim"] == 32 * 32 * 3
    saved = json.loads((tmp_path / "out" / "recognition-linear-probe.json").read_text())
    assert saved["results"]["top1"] == res["top1"] and saved["config"]["center_crop"] is False
    for png in ("confusion-linear-probe.png", "confusion-raw-pixels.png"):
        assert (tmp_path / "out" / png).stat().st_size > 5000
    assert "confusion-linear-probe.png" in (tmp_path / "out" / "recognition-linear-probe.md").read_text()


def test_k_shot_run_draws_from_train_only(color_folders, tmp_path):
    data = load_recognition_data(f"folders:{color_folders}")
    cfg = RecognitionConfig(data=data.name, protocol="k-shot", ks=(1, 2), draws=2, out=str(tmp_path / "out"),
                            device="cpu", cache_dir=str(tmp_path / "cache"), progress=False)
    res = run_recognition(cfg, data=data, encoder=tiny_encoder())
    assert [r["k"] for r in res["per_k"]] == [1, 2] and len(res["draws"]) == 4
    assert set(res) >= {"top1@1-shot", "top1_std@2-shot"}
    # The pool is the train split: drawn images are train files, never test files.
    drawn = {data.train.images.dataset.records[data.train.images.indices[i]].file_name
             for i in sample_k_shot(data.train.labels, 2, seed=0)}
    assert all(f.startswith("train/") for f in drawn)
    assert (tmp_path / "out" / "confusion-k-shot.png").is_file()


def test_cli_zero_shot_with_a_python_retriever(color_folders, tmp_path, capsys):
    rc = main(["--data", f"folders:{color_folders}", "--protocol", "zero-shot", "--retriever",
               "py:tests.test_recognition:make_color_retriever", "--out", str(tmp_path), "--device", "cpu", "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top1"] == pytest.approx(5 / 6) and printed["retriever"] == "color-retriever"
    assert printed["per_class_accuracy"] == {"blue": 0.5, "green": 1.0, "red": 1.0}
    assert (tmp_path / "confusion-zero-shot.png").is_file()


def test_cli_generative_with_a_python_vlm(color_folders, tmp_path, capsys):
    rc = main(["--data", f"folders:{color_folders}", "--protocol", "generative", "--vlm",
               "py:tests.test_recognition:make_color_vlm", "--out", str(tmp_path), "--device", "cpu", "--quiet"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["unparseable_rate"] == pytest.approx(1 / 6) and printed["top1"] == pytest.approx(4 / 6)
    assert printed["answers_sample"][0] == {"label": "blue", "answer": "hmm, hard to say", "parsed": None}


def test_cli_errors_are_one_line(color_folders, tmp_path, capsys):
    assert main(["--data", "mnist", "--protocol", "linear-probe", "--out", str(tmp_path)]) == 2
    assert "unknown --data 'mnist'" in capsys.readouterr().err
    assert main(["--data", f"folders:{color_folders}", "--protocol", "zero-shot", "--out", str(tmp_path)]) == 2
    assert "needs a retriever" in capsys.readouterr().err
    assert main(["--data", f"folders:{color_folders}", "--protocol", "generative", "--vlm", "llava",
                 "--out", str(tmp_path)]) == 2
    assert "could not load the VLM 'llava'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", "fashion-mnist", "--protocol", "few-shot"])


def test_config_validation():
    with pytest.raises(ValueError, match="RecognitionConfig.ks"):
        RecognitionConfig(data="fashion-mnist", protocol="k-shot", ks=(0, 2))
    with pytest.raises(ValueError, match="beside the linear-probe"):
        RecognitionConfig(data="fashion-mnist", protocol="k-shot", baselines=("raw-pixels",))


def test_open_clip_retriever_from_a_tiny_config(tmp_path):
    from benchmarks.recognition import load_retriever

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "recognition-tiny-clip.json").write_text(json.dumps(cfg))
    r = load_retriever(f"open_clip:{tmp_path / 'recognition-tiny-clip.json'}:random")
    t = r.encode_texts(["a photo of a red.", "a photo of a blue."])
    i = r.encode_images([Image.new("RGB", (40, 30), "red")])
    assert t.shape == (2, 16) and i.shape == (1, 16)
    assert torch.allclose(t.norm(dim=1), torch.ones(2)) and torch.allclose(i.norm(dim=1), torch.ones(1))
    assert not torch.allclose(t[0], t[1])


def test_cli_open_clip_retriever_offline_fails_at_once_with_a_clear_error(color_folders, tmp_path, capsys):
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").upper() not in ("1", "ON", "YES", "TRUE"):
        pytest.skip("the hub is allowed here: the command would download ViT-B-32's weights")
    rc = main(["--data", f"folders:{color_folders}", "--protocol", "zero-shot", "--retriever",
               "open_clip:ViT-B-32:laion2b_s34b_b79k", "--out", str(tmp_path), "--device", "cpu", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "ViT-B-32" in err and ("offline" in err.lower() or "online" in err.lower())
    assert not (tmp_path / "recognition-zero-shot.json").exists()


# ------------------------------------------------------------------------------------------- real weights


@pytest.mark.real_weights
def test_fashion_mnist_smoke_with_the_real_encoder(tmp_path):
    cfg = RecognitionConfig(data="fashion-mnist", protocol="linear-probe", train_per_class=10, test_per_class=8,
                            weight_decay=1e-2, baselines=("raw-pixels",), out=str(tmp_path / "out"), device="cpu",
                            cache_dir=str(tmp_path / "cache"), batch_size=50, progress=False)
    res = run_recognition(cfg)
    assert res["encoder"] == "efficientnet_lite0" and res["feature_dim"] == 1280
    assert (res["n_train"], res["n_test"]) == (100, 80)
    # ImageNet features separate garments far above chance (0.1) even from 10 examples per class.
    assert res["top1"] > 0.6
    assert 0.0 < res["baseline_raw_pixels"]["top1"] < 1.0
