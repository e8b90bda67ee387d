"""MLE training on several dataset folders (``MLEConfig.extra_train_data``): originals + TIDA pairs."""

import json

import pytest
from safetensors.torch import load_file

from vlm.data import read_imagefolder
from vlm.train.mle import ConcatCaptionDataset, MLEConfig, train_mle, training_set


@pytest.fixture(scope="module")
def two_worlds(tmp_path_factory):
    from vlm.world import generate_world

    root = tmp_path_factory.mktemp("multi")
    # Both folders hold images/000000.png ...: each record must be read from its own folder.
    generate_world(root / "a", n=24, seed=0, preset="captioning", image_size=32)
    generate_world(root / "b", n=24, seed=1, preset="tida-biased", image_size=32)
    return root


def _cfg(root, name, **kw):
    base = dict(model="prefix-tiny", train_data=str(root / "a"), extra_train_data=[str(root / "b")], vocab_size=300,
                epochs=50, max_steps=6, batch_size=16, lr=3e-3, warmup_steps=2, checkpoint_every=4, eval_split="",
                test_split="", out_dir=str(root / name), progress=False)
    base.update(kw)
    return MLEConfig(**base)


def _train_captions(folder) -> tuple[int, int]:
    recs = [r for r in read_imagefolder(folder, check_images=False) if r.split == "train"]
    return len(recs), sum(len(r.captions) for r in recs)


def test_training_set_concatenates_train_splits_and_resolves_each_folder(two_worlds):
    cfg = _cfg(two_worlds, "unused")
    ds = training_set(cfg, read_imagefolder(two_worlds / "a", check_images=False))
    (na, _), (nb, _) = _train_captions(two_worlds / "a"), _train_captions(two_worlds / "b")
    assert isinstance(ds, ConcatCaptionDataset) and len(ds) == na + nb
    assert ds.path(0).parent.parent == two_worlds / "a" and ds.path(na).parent.parent == two_worlds / "b"
    first_b = next(r for r in read_imagefolder(two_worlds / "b", check_images=False) if r.split == "train")
    assert ds[na].captions == first_b.captions and ds[na].file_name == first_b.file_name
    assert ds.image(na).size == (32, 32)


def test_trains_the_given_steps_on_both_folders_and_resumes_to_the_same_weights(two_worlds):
    (na, ca), (nb, cb) = _train_captions(two_worlds / "a"), _train_captions(two_worlds / "b")
    full = train_mle(_cfg(two_worlds, "full"))
    assert full["steps"] == 6  # max_steps, although 50 epochs were allowed
    assert full["examples"] == ca + cb and full["train_images"] == na + nb
    assert full["train_images_per_folder"] == {str(two_worlds / "a"): na, str(two_worlds / "b"): nb}
    part = _cfg(two_worlds, "part")
    assert train_mle(part, stop_after_steps=3) == {"stopped_at": 3}
    assert train_mle(part)["steps"] == 6  # resumes from the step-3 checkpoint
    a = load_file(str(two_worlds / "full" / "final" / "model.safetensors"))
    b = load_file(str(two_worlds / "part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    saved = json.loads((two_worlds / "part" / "config.json").read_text())
    assert saved["extra_train_data"] == [str(two_worlds / "b")]


def test_extra_folder_without_train_records_is_an_error(two_worlds, tmp_path):
    from vlm.data import write_imagefolder

    from PIL import Image

    from vlm.data import Record

    write_imagefolder(tmp_path / "valonly", [Record("images/0.png", ["a red circle"], split="val")],
                      [Image.new("RGB", (8, 8))])
    cfg = _cfg(two_worlds, "unused", extra_train_data=[str(tmp_path / "valonly")])
    with pytest.raises(ValueError, match="valonly.*no records in split 'train'"):
        training_set(cfg, read_imagefolder(two_worlds / "a", check_images=False))


def test_config_checks_extra_train_data():
    assert MLEConfig(extra_train_data="x").extra_train_data == ["x"]
    with pytest.raises(ValueError, match="extra_train_data"):
        MLEConfig(extra_train_data=["world"])
    with pytest.raises(ValueError, match="extra_train_data"):
        MLEConfig(extra_train_data=3)


@pytest.mark.slow
def test_two_process_accelerate_run_on_two_folders(two_worlds, tmp_path, launch_two_cpu_processes):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(f"model: prefix-tiny\ntrain_data: {two_worlds / 'a'}\nextra_train_data: [{two_worlds / 'b'}]\n"
                   f"vocab_size: 300\nepochs: 1\nbatch_size: 16\nwarmup_steps: 1\neval_split: ''\ntest_split: ''\n"
                   f"out_dir: {tmp_path / 'ddp'}\nprogress: false\n")
    res = launch_two_cpu_processes(cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    (_, ca), (_, cb) = _train_captions(two_worlds / "a"), _train_captions(two_worlds / "b")
    assert summary["examples"] == ca + cb and summary["steps"] == -(-(ca + cb) // 16)
