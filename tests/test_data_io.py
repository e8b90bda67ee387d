"""Dataset I/O: the imagefolder format, its validation, the foreign readers and Fashion-MNIST."""

import os

# Before datasets is imported anywhere: without these a hub lookup retries for ~25 s before failing.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datetime
import doctest
import gzip
import io
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlm  # noqa: F401  (installs the torchvision fix before datasets pulls anything in)
import vlm.data
from vlm.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    CaptionDataset,
    DatasetFormatError,
    ImageFolderWriter,
    Record,
    export_fashion_mnist,
    read_class_folders,
    read_cub,
    read_fashion_mnist,
    read_idx,
    read_imagefolder,
    read_karpathy_json,
    write_imagefolder,
)

HAVE_FASHION_MNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST, reason=f"Fashion-MNIST not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist"
)


def _image(colour, size=(8, 6)):
    return Image.new("RGB", size, colour)


def _records():
    return [
        Record("images/000000.png", ["a red square", "a square"], id="a", split="train", label=0,
               extra={"scene": {"objects": [{"shape": "square", "colour": "red"}, {"shape": "ball", "x": 0.5}],
                                "relations": [{"subject": 0, "relation": "left of", "object": 1}],
                                "background": "plain"},
                      "bag": 3}),
        Record("images/000001.png", ["a blue square"], id="b", split="train", label=1,
               extra={"question": "what colour is the square?", "answer": "blue"}),
        Record("images/000002.png", ["a green square with a ü"], id="c", split="test", label=2),
    ]


def _write_fixture(root):
    records = _records()
    write_imagefolder(root, records, [_image("red"), _image("blue"), _image("green")])
    return records


def _write_lines(root, lines, *, images=("0.png", "1.png", "2.png")):
    root.mkdir(parents=True, exist_ok=True)
    for name in images:
        _image("red").save(root / name)
    (root / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


GOOD = '{"file_name": "0.png", "captions": ["a red square"]}'


# ------------------------------------------------------------------------------------------ imagefolder


def test_round_trip_keeps_records_and_pixels(tmp_path):
    records = _write_fixture(tmp_path)
    ds = read_imagefolder(tmp_path)
    assert ds.records == records
    assert ds.n_skipped == 0
    assert ds.splits == ["test", "train"]
    assert ds.image(1).getpixel((3, 2)) == (0, 0, 255)
    assert ds.image(0).size == (8, 6)
    assert ds.path(2) == tmp_path / "images/000002.png"
    assert [r.id for r in read_imagefolder(tmp_path, split="train")] == ["a", "b"]


def test_metadata_key_order_is_fixed(tmp_path):
    _write_fixture(tmp_path)
    first = (tmp_path / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert list(json.loads(first)) == ["file_name", "captions", "bag", "id", "label", "scene", "split"]
    assert list(json.loads(first)["scene"]) == ["background", "objects", "relations"]  # nested keys sorted too


def test_rewrite_gives_byte_identical_files(tmp_path):
    _write_fixture(tmp_path / "a")
    # same records, extras built in another key order, written twice into the second folder
    records = _records()
    records[0].extra = dict(reversed(list(records[0].extra.items())))
    for _ in range(2):
        write_imagefolder(tmp_path / "b", records, [_image("red"), _image("blue"), _image("green")])
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b == [Path("images/000000.png"), Path("images/000001.png"),
                                  Path("images/000002.png"), Path("metadata.jsonl")]
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_huggingface_imagefolder_reads_the_same_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = _write_fixture(tmp_path / "data")
    hf = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert list(hf) == ["train"]  # one split: ours live in the 'split' column
    rows = hf["train"]
    assert rows.num_rows == len(records)
    assert rows["captions"] == [r.captions for r in records]
    assert rows["split"] == ["train", "train", "test"]
    assert rows["label"] == [0, 1, 2]
    assert rows[1]["answer"] == "blue"
    assert rows[0]["scene"]["relations"] == [{"subject": 0, "relation": "left of", "object": 1}]
    assert rows[0]["image"].getpixel((0, 0)) == (255, 0, 0)


def test_writer_refuses_mixed_json_types_that_datasets_cannot_read(tmp_path):
    with ImageFolderWriter(tmp_path) as w:
        with pytest.raises(DatasetFormatError, match=r"field 'scene\.relations\[\]\[\]': is a string here but a "
                                                     r"number elsewhere in this record") as e:
            w.add(_image("red"), Record("images/0.png", ["a"], extra={"scene": {"relations": [[0, "below", 1]]}}))
        # ints with floats, nulls and missing keys are fine for pyarrow
        w.add(_image("red"), Record("images/1.png", ["a"], extra={"scene": {"x": 1, "tags": ["a", None]}}))
        w.add(_image("red"), Record("images/2.png", ["a"], extra={"scene": {"x": 0.5}, "bag": None}))
        with pytest.raises(DatasetFormatError, match=r"field 'scene\.x': is a string here but a number in record 0"):
            w.add(_image("red"), Record("images/3.png", ["a"], extra={"scene": {"x": "left"}}))
    assert "object" in str(e.value)  # says what to store instead
    assert [r.file_name for r in read_imagefolder(tmp_path)] == ["images/1.png", "images/2.png"]


def test_reader_warns_about_mixed_json_types(tmp_path, caplog):
    _write_lines(tmp_path, [GOOD, '{"file_name": "1.png", "captions": ["a"], "bag": "x"}',
                            '{"file_name": "2.png", "captions": ["a"], "bag": 3}'])
    with caplog.at_level(logging.WARNING, logger="vlm.data.io"):
        ds = read_imagefolder(tmp_path)
    assert len(ds) == 3  # our reader copes; only datasets would fail
    assert "1 record(s) mix JSON types" in caplog.text and "line 3: field 'bag'" in caplog.text


def test_split_keyword_list_matches_installed_datasets():
    data_files = pytest.importorskip("datasets.data_files")
    theirs = sorted(k for keywords in data_files.SPLIT_KEYWORDS.values() for k in keywords)
    assert sorted(vlm.data.io.HF_SPLIT_KEYWORDS) == theirs
    assert data_files.NON_WORDS_CHARS == "-._ 0-9"


def test_writer_refuses_file_names_that_datasets_reads_as_splits(tmp_path):
    with ImageFolderWriter(tmp_path) as w:
        with pytest.raises(DatasetFormatError, match="split word 'train'") as e:
            w.add(_image("red"), Record("images/train-0001.png", ["a red square"]))
        w.add(_image("red"), Record("images/trainer.png", ["a red square"]))  # 'trainer' is no split word
    assert e.value.field == "file_name"
    assert not (tmp_path / "images/train-0001.png").exists()


@pytest.mark.parametrize(
    "bad_line, field, words",
    [
        ('{"file_name": "1.png", "captions": ["a"]', None, "invalid JSON"),
        ('{"file_name": "1.png", "captions": ["a"], "bag": NaN}', None, "NaN is not valid JSON"),
        ('{"file_name": "1.png", "file_name": "2.png", "captions": ["a"]}', None, "appears twice"),
        ('["1.png", "a"]', None, "expected a JSON object"),
        ('{"captions": ["a"]}', "file_name", "missing"),
        ('{"file_name": 3, "captions": ["a"]}', "file_name", "must be a string"),
        ('{"file_name": "1.png"}', "captions", "missing"),
        ('{"file_name": "1.png", "captions": "a cat"}', "captions", "must be a list of strings"),
        ('{"file_name": "1.png", "captions": ["a cat", 5]}', "captions", "caption 1 must be a string"),
        ('{"file_name": "1.png", "captions": []}', "captions", "at least one caption"),
        ('{"file_name": "1.png", "captions": ["a cat", "  "]}', "captions", "caption 1 is empty"),
        ('{"file_name": "1.png", "captions": ["a"], "label": 1.5}', "label", "must be an int"),
        ('{"file_name": "1.png", "captions": ["a"], "label": true}', "label", "bool"),
        ('{"file_name": "1.png", "captions": ["a"], "label": "cat"}', "label", "use one label type"),
        ('{"file_name": "1.png", "captions": ["a"], "split": 2}', "split", "non-empty string"),
        ('{"file_name": "0.png", "captions": ["a"]}', "file_name", "already used by line 1"),
        ('{"file_name": "9.png", "captions": ["a"]}', "file_name", "does not exist"),
        ('{"file_name": "bad.png", "captions": ["a"]}', "file_name", "not a readable image"),
        ('{"file_name": "cut.png", "captions": ["a"]}', "file_name", "not a readable image"),
    ],
)
def test_bad_line_error_names_file_line_and_field(tmp_path, bad_line, field, words):
    first = '{"file_name": "0.png", "captions": ["a red square"], "label": 0}'
    _write_lines(tmp_path, [first, bad_line])
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    png = io.BytesIO()
    _image("red", (64, 64)).save(png, format="PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:-30])  # truncated: the final chunks are gone
    with pytest.raises(DatasetFormatError) as e:
        read_imagefolder(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'metadata.jsonl'} line 2: ")
    assert words in message
    assert (e.value.line, e.value.field) == (2, field)
    if field:
        assert f"field '{field}'" in message


def test_invalid_json_message_reads_like_the_docs(tmp_path):
    lines = [GOOD] + [GOOD.replace("0.png", f"{i}.png") for i in (1, 2)] + ['{"file_name": ']
    _write_lines(tmp_path, lines[:3] + [""] * 3 + lines[3:])  # blank lines still count
    with pytest.raises(DatasetFormatError, match=r"metadata\.jsonl line 7: invalid JSON: Expecting value"):
        read_imagefolder(tmp_path)


def test_skip_mode_drops_and_counts_bad_records(tmp_path, caplog):
    lines = [
        GOOD,
        '{"file_name": "1.png", "captions": []}',
        "not json",
        '{"file_name": "2.png", "captions": ["a"]}',
        '{"file_name": "../2.png", "captions": ["a"]}',
    ]
    _write_lines(tmp_path, lines)
    with caplog.at_level(logging.WARNING, logger="vlm.data.io"):
        ds = read_imagefolder(tmp_path, on_error="skip")
    assert [r.file_name for r in ds] == ["0.png", "2.png"]
    assert ds.n_skipped == 3
    assert [m.split(": ")[0].rsplit(" ", 2)[-2:] for m in ds.skipped] == [["line", "2"], ["line", "3"], ["line", "5"]]
    assert "skipped 3 bad record(s)" in caplog.text


def test_unknown_on_error_and_unknown_split_are_refused(tmp_path):
    _write_fixture(tmp_path)
    with pytest.raises(ValueError, match="on_error must be"):
        read_imagefolder(tmp_path, on_error="ignore")
    with pytest.raises(ValueError, match="no record has split 'val'; splits present: test, train"):
        read_imagefolder(tmp_path, split="val")


def test_missing_metadata_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl not found.*write_imagefolder"):
        read_imagefolder(tmp_path)


@pytest.mark.parametrize("file_name, words", [("/etc/passwd", "absolute"), ("images/../../x.png", "'..'")])
def test_file_name_escaping_the_root_is_refused(tmp_path, file_name, words):
    _write_lines(tmp_path / "d", [json.dumps({"file_name": file_name, "captions": ["a"]})])
    _image("red").save(tmp_path / "x.png")
    with pytest.raises(DatasetFormatError, match=words) as e:
        read_imagefolder(tmp_path / "d", check_images=False)
    assert (e.value.line, e.value.field) == (1, "file_name")


def test_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _image("red").save(outside / "x.png")
    _write_lines(tmp_path / "d", [GOOD, '{"file_name": "link/x.png", "captions": ["a"]}'])
    (tmp_path / "d/link").symlink_to(outside, target_is_directory=True)
    (tmp_path / "d/inner").symlink_to(tmp_path / "d/0.png")  # a link that stays inside is fine
    with pytest.raises(DatasetFormatError, match="outside the dataset root") as e:
        read_imagefolder(tmp_path / "d")
    assert (e.value.line, e.value.field) == (2, "file_name")
    with ImageFolderWriter(tmp_path / "d") as w:
        with pytest.raises(DatasetFormatError, match="outside the dataset root"):
            w.add(_image("blue"), Record("link/y.png", ["a blue square"]))
        w.add(None, Record("inner", ["a red square"]))
    assert not (outside / "y.png").exists()


def test_record_validates_on_construction():
    with pytest.raises(DatasetFormatError, match="field 'captions': caption 0 is empty"):
        Record("a.png", [""])
    with pytest.raises(DatasetFormatError, match="field 'extra': 'label' is a Record attribute"):
        Record("a.png", ["a"], extra={"label": 1})
    with pytest.raises(DatasetFormatError, match="field 'file_name'.*absolute"):
        Record("/a.png", ["a"])
    assert Record("a.png", ("x", "y"), label=np.int64(4)).label == 4
    assert type(Record("a.png", ["x"], label=np.int64(4)).label) is int


def test_writer_leaves_no_temporary_files_and_refuses_bad_images(tmp_path):
    with ImageFolderWriter(tmp_path) as w:
        png = io.BytesIO()
        _image("red").save(png, format="PNG")
        w.add(png.getvalue(), Record("images/0.png", ["a red square"]))
        with pytest.raises(DatasetFormatError, match="bytes are PNG but 'images/1.jpg' says JPEG"):
            w.add(png.getvalue(), Record("images/1.jpg", ["a red square"]))
        with pytest.raises(DatasetFormatError, match="not a readable image"):
            w.add(b"garbage", Record("images/2.png", ["a red square"]))
        with pytest.raises(DatasetFormatError, match="cannot save a RGBA image as JPEG"):
            w.add(Image.new("RGBA", (4, 4)), Record("images/3.jpg", ["a red square"]))
        with pytest.raises(DatasetFormatError, match="already used"):
            w.add(_image("red"), Record("images/0.png", ["again"]))
        with pytest.raises(DatasetFormatError, match=r"field 'extra': bag\.when is a date, which JSON cannot"):
            w.add(_image("red"), Record("images/4.png", ["a"], extra={"bag": {"when": datetime.date(2020, 1, 1)}}))
        w.add(tmp_path / "images/0.png", Record("images/5.png", ["a copy"]))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["0.png", "5.png", "metadata.jsonl"]
    assert [r.file_name for r in read_imagefolder(tmp_path)] == ["images/0.png", "images/5.png"]
    with pytest.raises(RuntimeError, match="closed"):
        w.add(_image("red"), Record("images/6.png", ["a"]))


def test_writer_keeps_finished_work_on_error_and_resumes_with_append(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with ImageFolderWriter(tmp_path) as w:
            w.add(_image("red"), Record("images/0.png", ["a red square"], id="0"))
            raise KeyboardInterrupt  # a killed job
    assert len(read_imagefolder(tmp_path)) == 1
    with ImageFolderWriter(tmp_path, append=True) as w:
        assert "images/0.png" in w and len(w) == 1
        w.add(_image("blue"), Record("images/1.png", ["a blue square"], id="1"))
    assert [r.id for r in read_imagefolder(tmp_path)] == ["0", "1"]


def test_write_imagefolder_validates_everything_before_writing(tmp_path):
    _write_fixture(tmp_path)
    before = (tmp_path / "metadata.jsonl").read_bytes()
    records = [Record("images/new.png", ["x"], label=0), Record("images/new2.png", ["y"], label="cat")]
    with pytest.raises(DatasetFormatError, match="record 1 .*field 'label'"):
        write_imagefolder(tmp_path, records, [_image("red"), _image("red")])
    assert (tmp_path / "metadata.jsonl").read_bytes() == before
    assert not (tmp_path / "images/new.png").exists()
    with pytest.raises(DatasetFormatError, match="does not exist"):  # images=None: they must be in place
        write_imagefolder(tmp_path, [Record("images/missing.png", ["x"])])


# --------------------------------------------------------------------------------------------- Karpathy


def _karpathy(tmp_path, images):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def _coco_entry(k, split):
    return {"filepath": "val2014", "filename": f"COCO_val2014_{k:012d}.jpg", "imgid": k, "cocoid": 1000 + k,
            "split": split, "sentids": [2 * k, 2 * k + 1],
            "sentences": [{"raw": f"A dog number {k}. ", "tokens": ["a", "dog"], "imgid": k, "sentid": 2 * k},
                          {"raw": "Another caption.", "tokens": ["another"], "imgid": k, "sentid": 2 * k + 1}]}


def test_karpathy_reader_maps_fields_and_restval(tmp_path):
    (tmp_path / "coco/val2014").mkdir(parents=True)
    entries = [_coco_entry(k, s) for k, s in enumerate(["train", "restval", "val", "test"])]
    for e in entries:
        _image("red").convert("RGB").save(tmp_path / "coco" / e["filepath"] / e["filename"], format="JPEG")
    path = _karpathy(tmp_path, entries)
    ds = read_karpathy_json(path, tmp_path / "coco")
    assert [r.split for r in ds] == ["train", "restval", "val", "test"]
    r = ds[0]
    assert (r.file_name, r.captions, r.id) == ("val2014/COCO_val2014_000000000000.jpg",
                                               ["A dog number 0.", "Another caption."], "1000")
    assert r.extra == {"imgid": 0, "cocoid": 1000, "sentids": [0, 1]}
    assert ds.image(3).size == (8, 6)
    train = read_karpathy_json(path, tmp_path / "coco", split="train", restval_as_train=True)
    assert [r.id for r in train] == ["1000", "1001"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"filename": None}, "images[1].filename"),
        ({"split": 3}, "images[1].split"),
        ({"sentences": []}, "images[1].sentences"),
        ({"sentences": [{"raw": "ok"}, {"tokens": ["no", "raw"]}]}, "images[1].sentences[1].raw"),
        ({"imgid": "7"}, "images[1].imgid"),
        ({"filepath": ".."}, "images[1].filename"),
    ],
)
def test_karpathy_errors_name_the_entry_and_field(tmp_path, change, field):
    entries = [_coco_entry(0, "train"), {**_coco_entry(1, "train"), **change}]
    path = _karpathy(tmp_path, entries)
    with pytest.raises(DatasetFormatError) as e:
        read_karpathy_json(path, tmp_path, check_images=False)
    assert e.value.field == field
    assert str(e.value).startswith(f"{path}: field '{field}': ")
    ds = read_karpathy_json(path, tmp_path, check_images=False, on_error="skip")
    assert (len(ds), ds.n_skipped) == (1, 1)


def test_karpathy_missing_image_and_bad_json(tmp_path):
    path = _karpathy(tmp_path, [_coco_entry(0, "train")])
    with pytest.raises(DatasetFormatError, match="COCO_val2014_000000000000.jpg does not exist"):
        read_karpathy_json(path, tmp_path)
    path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(DatasetFormatError,
                       match=r"dataset_coco\.json line 2: not a valid Karpathy split JSON \(column 24"):
        read_karpathy_json(path, tmp_path)


# -------------------------------------------------------------------------------------------------- CUB


def _cub(root, *, images_txt=None, labels_txt=None, split_txt=None):
    files = {
        "images.txt": images_txt or "1 001.Black_footed_Albatross/Black_Footed_Albatross_0001.jpg\n"
                                    "2 001.Black_footed_Albatross/Black_Footed_Albatross_0002.jpg\n"
                                    "3 002.Laysan_Albatross/Laysan_Albatross_0001.jpg\n",
        "image_class_labels.txt": labels_txt or "1 1\n2 1\n3 2\n",
        "train_test_split.txt": split_txt or "1 1\n2 0\n3 1\n",
        "classes.txt": "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for line in files["images.txt"].splitlines():
        rel = line.split()[-1]
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        _image("yellow").save(root / "images" / rel, format="JPEG")


def test_cub_reader_labels_names_and_splits(tmp_path):
    _cub(tmp_path)
    ds = read_cub(tmp_path)
    assert ds.class_names == ["Black footed Albatross", "Laysan Albatross"]
    assert [(r.id, r.label, r.split) for r in ds] == [("1", 0, "train"), ("2", 0, "test"), ("3", 1, "train")]
    assert ds[2].file_name == "images/002.Laysan_Albatross/Laysan_Albatross_0001.jpg"
    assert ds[2].captions == ["a photo of a Laysan Albatross"]
    assert ds[2].extra == {"class_name": "Laysan Albatross"}
    assert [r.id for r in read_cub(tmp_path, split="test")] == ["2"]


def test_cub_reads_reed_captions(tmp_path):
    _cub(tmp_path)
    text = tmp_path / "text_c10"
    for r in read_cub(tmp_path):
        p = text / Path(r.file_name).relative_to("images").with_suffix(".txt")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"this bird {r.id} has a white belly.\n\nit has long wings.\n")
    ds = read_cub(tmp_path, captions_dir=text)
    assert ds[1].captions == ["this bird 2 has a white belly.", "it has long wings."]


@pytest.mark.parametrize(
    "kwargs, file, line, words",
    [
        ({"images_txt": "1 001.Black_footed_Albatross/a.jpg\n2\n"}, "images.txt", 2, "expected '<image_id> <path>'"),
        ({"labels_txt": "1 1\n2 1\nx 2\n"}, "image_class_labels.txt", 3, "image_id must be an integer"),
        ({"labels_txt": "1 1\n2 1\n3 9\n"}, "image_class_labels.txt", 3, "class id 9 is not in classes.txt"),
        ({"split_txt": "1 1\n2 0\n3 2\n"}, "train_test_split.txt", 3, "is_train must be 0 or 1"),
        ({"split_txt": "1 1\n2 0\n2 1\n"}, "train_test_split.txt", 3, "image id 2 already appears on line 2"),
    ],
)
def test_cub_errors_name_file_and_line(tmp_path, kwargs, file, line, words):
    _cub(tmp_path, **kwargs)
    with pytest.raises(DatasetFormatError, match=words) as e:
        read_cub(tmp_path)
    assert (Path(e.value.file).name, e.value.line) == (file, line)
    assert str(e.value).startswith(f"{tmp_path / file} line {line}: ")


def test_cub_missing_entry_and_missing_image(tmp_path):
    _cub(tmp_path, split_txt="1 1\n2 0\n")
    with pytest.raises(DatasetFormatError, match="train_test_split.txt: has no line for image id 3"):
        read_cub(tmp_path)
    _cub(tmp_path)
    (tmp_path / "images/002.Laysan_Albatross/Laysan_Albatross_0001.jpg").unlink()
    with pytest.raises(DatasetFormatError, match="images.txt line 3: field 'file_name': image .* does not exist"):
        read_cub(tmp_path)
    ds = read_cub(tmp_path, on_error="skip")
    assert (len(ds), ds.n_skipped) == (2, 1)


# ---------------------------------------------------------------------------------------- class folders


def test_class_folders_flat_layout(tmp_path):
    for cls, n in [("zebra", 2), ("ant_eater", 1)]:
        (tmp_path / cls).mkdir()
        for i in range(n):
            _image("white").save(tmp_path / cls / f"{i}.png")
    (tmp_path / "zebra/notes.txt").write_text("not an image")
    ds = read_class_folders(tmp_path)
    assert ds.class_names == ["ant_eater", "zebra"]
    assert [(r.file_name, r.label, r.split) for r in ds] == [
        ("ant_eater/0.png", 0, None), ("zebra/0.png", 1, None), ("zebra/1.png", 1, None)]
    assert ds[0].captions == ["a photo of an ant eater"]


def test_class_folders_split_layout_shares_labels(tmp_path):
    for split, cls in [("train", "cat"), ("train", "dog"), ("val", "dog"), ("val", "emu")]:
        (tmp_path / split / cls).mkdir(parents=True)
        _image("white").save(tmp_path / split / cls / "0.png")
    ds = read_class_folders(tmp_path, caption_template="a {name}")
    assert ds.class_names == ["cat", "dog", "emu"]
    assert [(r.split, r.label, r.captions[0]) for r in ds] == [
        ("train", 0, "a cat"), ("train", 1, "a dog"), ("val", 1, "a dog"), ("val", 2, "a emu")]
    assert [r.label for r in read_class_folders(tmp_path, split="val")] == [1, 2]


def test_class_folders_refuse_empty_class_and_skip_corrupt_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _image("white").save(tmp_path / "a/0.png")
    with pytest.raises(DatasetFormatError, match="'b' hold no images"):
        read_class_folders(tmp_path)
    (tmp_path / "b/0.png").write_bytes(b"broken")
    with pytest.raises(DatasetFormatError, match=r"b/0\.png: field 'file_name': image .* not a readable image"):
        read_class_folders(tmp_path)
    ds = read_class_folders(tmp_path, on_error="skip")
    assert ([r.file_name for r in ds], ds.n_skipped, ds.class_names) == (["a/0.png"], 1, ["a", "b"])


# ---------------------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion_mnist
@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real_files(split, n):
    fm = read_fashion_mnist(split)
    assert fm.images.shape == (n, 28, 28) and fm.images.dtype == np.uint8
    assert fm.labels.shape == (n,)
    assert np.bincount(fm.labels, minlength=10).tolist() == [n // 10] * 10
    assert fm.class_names == FASHION_MNIST_CLASSES
    assert fm.class_names[2] == "Pullover" and fm.class_names[9] == "Ankle boot"
    assert 0 < fm.images.mean() < 255


@needs_fashion_mnist
def test_fashion_mnist_export_is_a_deterministic_dataset(tmp_path):
    meta = export_fashion_mnist(tmp_path / "a", splits=("test",), per_class=2)
    export_fashion_mnist(tmp_path / "b", splits=("test",), per_class=2)
    assert meta.read_bytes() == (tmp_path / "b/metadata.jsonl").read_bytes()
    ds = read_imagefolder(tmp_path / "a")
    assert len(ds) == 20
    assert sorted(r.label for r in ds) == sorted(list(range(10)) * 2)
    fm = read_fashion_mnist("test")
    pullover = next(r for r in ds if r.label == 2)
    assert pullover.captions == ["a photo of a pullover"]
    assert next(r for r in ds if r.label == 9).captions == ["a photo of an ankle boot"]
    index = int(pullover.id.split("/")[1])
    assert np.array_equal(np.asarray(Image.open(ds.root / pullover.file_name)), fm.images[index])


def _idx_bytes(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def test_idx_magic_number_and_size_errors_name_the_file(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    images, labels = root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"
    images.write_bytes(gzip.compress(_idx_bytes(0x0803, (2, 28, 28), bytes(2 * 28 * 28)), mtime=0))
    labels.write_bytes(gzip.compress(_idx_bytes(0x0801, (2,), bytes([3, 9])), mtime=0))
    fm = read_fashion_mnist("test", root=root)
    assert fm.images.shape == (2, 28, 28) and fm.labels.tolist() == [3, 9]

    labels.write_bytes(gzip.compress(_idx_bytes(0x0803, (2, 1, 1), bytes([3, 9])), mtime=0))  # wrong file type
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte\.gz: field 'magic number': .*0x00000803 "
                                                 r"declares 3 dimension\(s\), expected 1"):
        read_fashion_mnist("test", root=root)
    labels.write_bytes(_idx_bytes(0x12345678, (2,), bytes([3, 9])))  # not even gzip
    with pytest.raises(DatasetFormatError, match=r"t10k-labels-idx1-ubyte\.gz: not a complete gzip file"):
        read_fashion_mnist("test", root=root)
    raw = tmp_path / "x-idx1-ubyte"
    raw.write_bytes(_idx_bytes(0x12345678, (2,), bytes([3, 9])))
    with pytest.raises(DatasetFormatError, match=r"x-idx1-ubyte: field 'magic number': magic number 0x12345678"):
        read_idx(raw)
    raw.write_bytes(_idx_bytes(0x0801, (5,), bytes([3, 9])))
    with pytest.raises(DatasetFormatError, match=r"field 'dimensions': dimensions \(5,\) need 5 bytes .* holds 2"):
        read_idx(raw)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        read_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        read_fashion_mnist("t10k")


# ------------------------------------------------------------------------------------------- docstrings


@pytest.mark.parametrize("module", ["vlm.data", "vlm.data.records", "vlm.data.io", "vlm.data.formats",
                                    "vlm.data.fashion_mnist"])
def test_docstring_examples_run(module):
    import importlib

    if module.endswith("fashion_mnist") and not HAVE_FASHION_MNIST:
        pytest.skip(f"Fashion-MNIST not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist")
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_public_names_are_exported():
    for name in vlm.data.__all__:
        assert hasattr(vlm.data, name), name
    assert isinstance(read_imagefolder.__doc__, str) and CaptionDataset.__doc__


def test_read_json_names_the_file_line_and_column_in_the_callers_error(tmp_path):
    from benchmarks.captions.io import CaptionInputError
    from vlm.data import read_json

    f = tmp_path / "summary.json"
    f.write_text('{"a": 1,\n  "b": [1, 2,]\n}')
    with pytest.raises(ValueError) as e:
        read_json(f, "stage summary", fix="delete it")
    assert str(e.value).startswith(f"{f} line 2: not a valid stage summary (column 14: ")
    assert str(e.value).endswith("; delete it") and type(e.value) is ValueError
    with pytest.raises(DatasetFormatError) as e:  # the dataset error gets the file and line as fields
        read_json(f, "bags file", error=DatasetFormatError)
    assert (e.value.file, e.value.line) == (str(f), 2) and e.value.reason.startswith("not a valid bags file")
    with pytest.raises(CaptionInputError, match=r"summary\.json line 2: not a valid predictions file"):
        read_json(f, "predictions file", error=CaptionInputError)
    f.write_bytes(b'{"caption": "caf\xe9"}')  # Latin-1, not UTF-8: no line to name
    with pytest.raises(ValueError, match=r"summary\.json: not a valid JSON file: not UTF-8 text"):
        read_json(f)
    f.write_text('{"caption": "café", "n": [1, 2]}', encoding="utf-8")
    assert read_json(f) == {"caption": "café", "n": [1, 2]}
    with pytest.raises(FileNotFoundError):  # whether a missing file is an error is the caller's question
        read_json(tmp_path / "missing.json")


def test_world_settings_read_a_finished_world_and_name_a_damaged_marker(tmp_path):
    from vlm.world import generate_world, world_matches, world_settings

    out = generate_world(tmp_path / "w", n=3, seed=5, preset="vqa", image_size=32)
    assert world_settings(out)["n"] == 3 and world_matches(out, preset="vqa", n=3, seed=5)
    assert not world_matches(out, preset="vqa", n=3, seed=6) and not world_matches(tmp_path / "none", n=3)
    (out / "world.json").write_text('{"n": 3,')
    with pytest.raises(ValueError, match=r"w/world\.json line 1: not a valid world marker .*delete the folder"):
        world_matches(out, n=3)


def test_file_identity_sees_through_linked_folders_and_notices_changes(tmp_path):
    (tmp_path / "real").mkdir()
    f = tmp_path / "real" / "a.bin"
    f.write_bytes(b"abc")
    (tmp_path / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    same = vlm.data.file_identity(tmp_path / "linked" / "a.bin")
    assert same == vlm.data.file_identity(f) and same.startswith(str(f.resolve()) + "|3|")
    f.write_bytes(b"abcd")  # new size: another identity, through either path
    assert vlm.data.file_identity(tmp_path / "linked" / "a.bin") != same
