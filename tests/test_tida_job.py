"""The TIDA dataset job (augment.tida, ``python -m augment tida``) on a tiny tida-biased world.

Edits come from the exact SceneEditor; verification from a cheap colour retriever registered for the tests, so
every run is fast, offline and deterministic.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augment.editors import EditResult, ImageEditor, dress_for_world, garment_clash, world_render_seed
from augment.tida import TIDAConfig, merge_tida, plan_edits, resolve_shard, run_tida, shard_log_path
from vlm.data import DatasetFormatError, Record, read_imagefolder
from vlm.retrieval import _FACTORIES, register_retriever
from vlm.world import COLORS, Scene, generate_world, render
from vlm.world.facts import score_caption

ROOT = Path(__file__).resolve().parents[1]
PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (C, 3)
WORLD_SEED = 5


class ColorRetriever:
    """Images embed by the share of their pixels nearest each world colour, texts by the colours they name."""

    name = "tidatest"

    def encode_images(self, images, *, batch_size=64):
        rows = []
        for im in images:
            px = np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3)
            nearest = ((px[:, None, :] - PALETTE[None]) ** 2).sum(-1).argmin(1)
            rows.append(np.bincount(nearest, minlength=len(PALETTE)) / len(px) + 1e-3)
        return torch.nn.functional.normalize(torch.tensor(np.array(rows)), dim=-1)

    def encode_texts(self, texts, *, batch_size=256):
        rows = [[float(c in t.lower().replace(".", " ").split()) + 1e-3 for c in COLORS] for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


class BlockingRetriever(ColorRetriever):
    """Hangs at its ``block_at``-th image batch, after touching ``marker``: a job to kill mid-run, deterministically."""

    def __init__(self, block_at: int, marker: str):
        self.calls, self.block_at, self.marker = 0, block_at, marker

    def encode_images(self, images, *, batch_size=64):
        self.calls += 1
        if self.calls == self.block_at:
            Path(self.marker).touch()
            time.sleep(600)
        return super().encode_images(images, batch_size=batch_size)


@pytest.fixture(scope="module", autouse=True)
def color_retriever():
    register_retriever("tidatest", lambda rest, device="cpu": ColorRetriever())
    yield
    _FACTORIES.pop("tidatest", None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world"), n=12, seed=WORLD_SEED, preset="tida-biased",
                          image_size=32)


def _cfg(data, out, **kw) -> TIDAConfig:
    opts = dict(skills="color,counting,gender", edits_per_record=2, batch_size=2, retriever="tidatest:x")
    opts.update(kw)
    return TIDAConfig(data=str(data), out=str(out), **opts)


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """An uninterrupted, unsharded run: (output folder, report)."""
    out = tmp_path_factory.mktemp("ref") / "tida"
    return out, run_tida(_cfg(world, out), progress=False)


def _files(out: Path) -> dict[str, bytes]:
    """metadata.jsonl and every image of an output folder (hidden temporary files excepted)."""
    files = {"metadata.jsonl": (out / "metadata.jsonl").read_bytes()}
    files.update({f"images/{p.name}": p.read_bytes() for p in sorted((out / "images").glob("[!.]*"))})
    return files


def test_end_to_end_records_and_provenance(world, reference):
    out, report = reference
    sources = {r.id: r for r in read_imagefolder(world)}
    records = list(read_imagefolder(out))  # validates every line and image
    assert report["written"] == len(records) >= 8
    assert len({r.id for r in records}) == len(records)
    per = report["per_skill"]
    assert sum(s["written"] for s in per.values()) == len(records)
    for s in per.values():
        assert s["candidates"] >= s["selected"] == s["edited"] + s["skipped"]
        assert s["edited"] == s["accepted"] + s["rejected"] == s["verified"]
    assert report["acceptance"]["all"]["accepted"] == report["edits"]["accepted"] == len(records)
    for rec in records:
        t = rec.extra["tida"]
        src = sources[t["source_id"]]
        assert t["source_file"] == src.file_name and rec.split == src.split
        assert t["caption"] == src.captions[t["caption_index"]] and t["word"] in t["caption"]
        assert rec.captions[t["caption_index"]] == t["edited_caption"] and t["new_word"] in t["edited_caption"]
        assert len(rec.captions) == len(src.captions) and t["other_captions"] == "regenerated"
        plan, _ = plan_edits(src, ["color", "counting", "gender"], edits_per_record=2)
        [planned] = [p for p in plan if p.caption_index == t["caption_index"] and p.edit.new_word == t["new_word"]
                     and p.edit.word == t["word"]]
        assert t["seed"] == planned.seed and t["editor"] == "scene" and t["retriever"] == "tidatest:x"
        assert t["accepted"] and t["verification"]["accepted"] and t["verification"]["scores"]["margin"] >= 0
        # The record carries the edited scene: every caption of it is true of it, and it renders to the image.
        scene = Scene.from_dict(rec.extra["scene"])
        assert all(score_caption(c, scene)["unsupported"] == 0 and garment_clash(c) is None for c in rec.captions)
        assert dress_for_world(t["counterfactual"]) == t["edited_caption"]
        assert rec.extra["dense_caption"] != src.extra["dense_caption"]
        img = np.asarray(Image.open(out / rec.file_name).convert("RGB"))
        again = np.asarray(render(scene, 32, jitter_seed=world_render_seed(src.id, WORLD_SEED)))
        assert (img != again).any(-1).mean() < 0.03  # edge noise of rounded positions only
        assert not np.array_equal(img, np.asarray(Image.open(world / src.file_name).convert("RGB")))
    assert json.loads((out / "tida_report.json").read_text())["written"] == len(records)


def test_rejected_edits_are_counted_not_written_unless_kept(world, tmp_path):
    report = run_tida(_cfg(world, tmp_path / "strict", margin=2.0), progress=False)
    assert report["written"] == 0 and report["edits"]["rejected"] == report["edits"]["edited"] > 0
    assert (tmp_path / "strict" / "metadata.jsonl").read_bytes() == b""
    assert not list((tmp_path / "strict").glob("images/*.png"))
    kept = run_tida(_cfg(world, tmp_path / "kept", margin=2.0, keep_rejected=True), progress=False)
    records = list(read_imagefolder(tmp_path / "kept"))
    assert len(records) == kept["edits"]["edited"] and not any(r.extra["tida"]["accepted"] for r in records)


def test_no_verify_writes_every_applied_edit(world, tmp_path):
    report = run_tida(_cfg(world, tmp_path / "o", verify=False, other_captions="none"), progress=False)
    records = list(read_imagefolder(tmp_path / "o"))
    assert report["acceptance"] is None and len(records) == report["edits"]["edited"]
    assert all(r.extra["tida"]["verification"] is None and len(r.captions) == 1 for r in records)


def test_killed_job_resumes_to_identical_output(world, reference, tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "blocked"
    script = ("import sys; from vlm.retrieval import register_retriever; "
              "from tests.test_tida_job import BlockingRetriever; "
              f"register_retriever('tidatest', lambda rest, device='cpu': BlockingRetriever(7, {str(marker)!r})); "
              "from augment.cli import main; sys.exit(main(sys.argv[1:]))")
    args = ["tida", "--data", str(world), "--out", str(out), "--skills", "color,counting,gender",
            "--edits-per-record", "2", "--batch-size", "2", "--retriever", "tidatest:x", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.time() < deadline, "the job never reached its 7th verification call"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    logged = shard_log_path(out, 0, 1).read_bytes().splitlines()
    assert 3 <= len(logged) < 6 and not (out / "metadata.jsonl").exists()
    report = run_tida(_cfg(world, out), progress=False)
    assert _files(out) == _files(reference[0])
    assert report["per_skill"] == reference[1]["per_skill"]


def test_torn_log_line_is_redone_and_rerun_of_a_finished_job_changes_nothing(world, reference, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(reference[0], out)
    log = shard_log_path(out, 0, 1)
    lines = log.read_bytes().splitlines(keepends=True)
    # Killed while appending the last chunk: half its line, no completion marker, no merged metadata.
    log.write_bytes(b"".join(lines[:-2]) + lines[-2][:len(lines[-2]) // 2])
    (out / "metadata.jsonl").unlink()
    run_tida(_cfg(world, out), progress=False)
    assert _files(out) == _files(reference[0])
    assert log.read_bytes() != b"" and log.read_bytes().count(b"\n") == len(lines)
    before = _files(out)
    run_tida(_cfg(world, out), progress=False)
    assert _files(out) == before


def test_shards_merge_to_the_unsharded_output(world, reference, tmp_path):
    out = tmp_path / "sharded"
    first = run_tida(_cfg(world, out, shard="0/2"), progress=False)
    assert first == {"shard": 0, "num_shards": 2, "complete": True, "merged": False, "waiting_for": [1]}
    with pytest.raises(ValueError, match="shard.*1/2 are not finished"):
        merge_tida(out)
    report = run_tida(_cfg(world, out, shard="1/2"), progress=False)
    assert report["shards"] == 2 and report["per_skill"] == reference[1]["per_skill"]
    assert _files(out) == _files(reference[0])
    merge_tida(out)
    assert _files(out) == _files(reference[0])


def test_shard_from_a_distributed_launch(world, tmp_path):
    assert resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "3"}) == (1, 3)
    with pytest.raises(ValueError, match="both choose the shard"):
        resolve_shard("0/2", {"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="i/N"):
        resolve_shard("2/2", {})


def test_other_settings_on_the_same_output_are_refused(world, reference, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(reference[0], out)
    with pytest.raises(ValueError, match="other settings.*edits_per_record"):
        run_tida(_cfg(world, out, edits_per_record=1), progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no TIDA job"):
        run_tida(_cfg(world, tmp_path / "foreign"), progress=False)


def _corrupt(world: Path, folder: Path, *, bad_json: bool) -> Path:
    """A copy of the world with record 3's image unreadable, record 5's scene broken and maybe line 8 not JSON."""
    shutil.copytree(world, folder)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    (folder / json.loads(lines[3])["file_name"]).write_bytes(b"not a png")
    rec = json.loads(lines[5])
    rec["scene"] = {"background": "moon", "things": []}
    lines[5] = json.dumps(rec)
    if bad_json:
        lines[8] = lines[8][:40]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_bad_records_stop_the_job_or_are_skipped_and_reported(world, reference, tmp_path):
    data = _corrupt(world, tmp_path / "bad", bad_json=False)
    out = tmp_path / "stopped"
    with pytest.raises(DatasetFormatError) as err:
        run_tida(_cfg(data, out), progress=False)
    assert err.value.line == 4 and err.value.field == "file_name" and "metadata.jsonl line 4" in str(err.value)
    assert not (out / "metadata.jsonl").exists()
    assert not list((out / "images").glob("000003_*")) and not list((out / "images").glob(".*.tmp"))

    data = _corrupt(world, tmp_path / "worse", bad_json=True)
    with pytest.raises(DatasetFormatError, match="line 9"):
        run_tida(_cfg(data, tmp_path / "stopped2"), progress=False)
    report = run_tida(_cfg(data, tmp_path / "skipped", on_error="skip"), progress=False)
    assert report["bad_records"]["n"] == 2 and report["unreadable_lines"]["n"] == 1
    first, second = report["bad_records"]["messages"]
    assert "line 4: field 'file_name'" in first and "line 6: field 'scene'" in second
    # Nothing of the bad records is written; every other record is as in the clean run.
    bad = {"000003", "000005", "000008"}
    ref = [line for line in (reference[0] / "metadata.jsonl").read_text().splitlines()
           if json.loads(line)["tida"]["source_id"] not in bad]
    assert (tmp_path / "skipped" / "metadata.jsonl").read_text().splitlines() == ref


def test_cli_runs_and_merges(world, tmp_path, capsys):
    from augment.cli import main

    out = tmp_path / "cli"
    assert main(["tida", "--data", str(world), "--out", str(out), "--skills", "color", "--no-verify", "--limit", "4",
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 4 and set(report["per_skill"]) == {"color"}
    assert all(r.extra["tida"]["skill"] == "color" for r in read_imagefolder(out))
    assert main(["tida-merge", "--out", str(out)]) == 0
    assert main(["tida", "--data", str(world), "--out", str(tmp_path / "new"), "--skills", "size,nope"]) == 2
    assert "unknown skill(s) ['nope']" in capsys.readouterr().err and not (tmp_path / "new").exists()


class Recolor(ImageEditor):
    """Paints the whole image in the new colour: a stand-in for a pixel editor on photos without scene graphs."""

    name = "recolor"

    def _edit_items(self, items):
        out = []
        for it in items:
            ok = it.request.skill == "color" and it.request.new_word.lower() in COLORS
            image = Image.new("RGB", it.image.size, COLORS[it.request.new_word.lower()]) if ok else None
            out.append(EditResult(image, None, self.name, it.seed, {"whole": True},
                                  reason=None if ok else "only colours"))
        return out


def test_karpathy_json_with_a_pixel_editor(tmp_path):
    data = tmp_path / "flickr30k"
    (data / "flickr30k-images").mkdir(parents=True)
    entries = []
    for i, (split, caps) in enumerate([("train", ["A red car.", "Two dogs run."]), ("restval", ["A blue kite."]),
                                       ("test", ["A green hat."]), ("train", ["Two women talk."])]):
        Image.new("RGB", (24, 16), "gray").save(data / "flickr30k-images" / f"{100 + i}.jpg")
        entries.append({"filename": f"{100 + i}.jpg", "imgid": i, "split": split,
                        "sentences": [{"raw": c} for c in caps]})
    (data / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    out = tmp_path / "tida-flickr"
    report = run_tida(TIDAConfig(data=str(data), out=str(out), split="train", retriever="tidatest:x",
                                 captions="first"), editor=Recolor(), progress=False)
    records = list(read_imagefolder(out))
    assert report["records"] == 3 and report["editor"] == "recolor"  # restval counts as train
    assert [r.extra["tida"]["source_id"] for r in records] == ["0", "1"]
    assert report["per_skill"]["counting"]["skip_reasons"] == {"only colours": 1}
    for r in records:
        t = r.extra["tida"]
        assert r.captions == [t["edited_caption"]] and t["other_captions"] == "none" and "scene" not in r.extra
        assert r.split == "train" and t["edit"] == {"whole": True}
        assert Image.open(out / r.file_name).getpixel((0, 0)) == COLORS[t["new_word"].lower()]


def test_plan_draws_skills_in_turn_and_is_order_free():
    rec = Record("a.png", ["Two women and a red circle.", "A man."], id="9")
    plan, found = plan_edits(rec, edits_per_record=3)
    assert sorted(p.edit.skill for p in plan) == ["color", "counting", "gender"]
    assert found["gender"] == {"captions": 2, "candidates": 2}
    assert [p.seed for p in plan] == [p.seed for p in plan_edits(rec, edits_per_record=3)[0]]
    first, _ = plan_edits(rec, captions="first", edits_per_record=0)
    assert {p.caption_index for p in first} == {0} and len(first) == 6
    drawn = {plan_edits(Record("a.png", rec.captions, id=str(i)), captions="sample")[0][0].caption_index
             for i in range(20)}
    assert drawn == {0, 1}  # one caption per record, drawn by the record's id


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    """Folders of a tiny random-weight SD inpainting pipeline and CLIPSeg (built offline from configs)."""
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    from tests.test_tida_editors import _tiny_pipeline
    from vlm.pretrained import load_clip_tokenizer

    tokenizer = load_clip_tokenizer("transformers", context_length=16)
    root = tmp_path_factory.mktemp("tiny-inpaint")
    pipe = _tiny_pipeline(StableDiffusionInpaintPipeline, 9, tokenizer, root / "inpaint")
    text = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    config = CLIPSegConfig(text_config=text, projection_dim=16, reduce_dim=8, extract_layers=(1,),
                           vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                              num_hidden_layers=2, image_size=32, patch_size=8),
                           decoder_num_attention_heads=2, decoder_intermediate_size=16)
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(config).save_pretrained(root / "clipseg")
    CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
                     tokenizer=tokenizer).save_pretrained(root / "clipseg")
    return pipe, str(root / "clipseg")


def test_inpaint_editor_job_writes_and_resumes_identically(world, tiny_inpaint, tmp_path):
    model, segmenter = tiny_inpaint
    cfg = _cfg(world, tmp_path / "inpaint", editor="inpaint", model=model, segmenter=segmenter, device="cpu",
               steps=2, margin=None, keep_rejected=True, batch_size=4)
    report = run_tida(cfg, progress=False)
    records = list(read_imagefolder(tmp_path / "inpaint"))
    assert report["editor"] == "inpaint" and len(records) == report["edits"]["edited"] > 0
    for r in records:
        t = r.extra["tida"]
        assert t["edit"]["model"] == model and t["edit"]["num_inference_steps"] == 2 and "scene" not in r.extra
        assert r.captions == [t["edited_caption"]] and t["verification"]["scores"].get("unmasked_diff", 0) == 0
    # A resumed diffusion job redoes its torn chunk with the same batch, so the pixels are the same.
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "inpaint", out)
    log = shard_log_path(out, 0, 1)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-2]))  # the last chunk and the completion marker are gone ...
    redone = [e["record"]["file_name"] for en in json.loads(lines[-2])["records"]
              for e in en["edits"] if e["record"]]
    for name in redone:  # ... and so are its images
        (out / name).unlink()
    (out / "metadata.jsonl").unlink()
    run_tida(TIDAConfig(**{**cfg.__dict__, "out": str(out)}), progress=False)
    assert redone and _files(out) == _files(tmp_path / "inpaint")
