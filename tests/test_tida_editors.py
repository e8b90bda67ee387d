"""TIDA image editors and edit verification: the exact scene editor on world scenes, the diffusion editors on
tiny pipelines built here from configs (no hub), CLIPSeg masks from a tiny model, and verification decisions
under retrievers whose embeddings are set by hand."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from augment.counterfactual import counterfactuals
from augment.editors import (CLIPSegSegmenter, EditNotApplicable, EditRequest, EditResult, InpaintEditor,
                             InstructPix2PixEditor, RegenerateEditor, SceneEditor, apply_scene_edit, resolve_phrase,
                             world_render_seed)
from augment.verify import EditDecision, EditVerifier, VerifyConfig, acceptance_stats
from vlm.pretrained import HubOfflineError
from vlm.world import COLORS, TIDA_COLORS, Scene, Thing, generate_world, render
from vlm.world.facts import caption_facts, check_fact
from vlm.world.scene import fits

# ---- fixtures ---------------------------------------------------------------------------------------------


def _scene() -> Scene:
    return Scene("grass", [
        Thing("shape", "red", "medium", 0.2, 0.25, shape="circle"),
        Thing("shape", "red", "medium", 0.2, 0.75, shape="circle"),
        Thing("shape", "blue", "large", 0.75, 0.3, shape="square"),
        Thing("person", "purple", "large", 0.7, 0.72, gender="man"),
    ])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small TIDA world at 64 px: (records, images, world seed)."""
    from vlm.data import read_imagefolder

    out = generate_world(tmp_path_factory.mktemp("world"), n=30, seed=3, preset="tida-biased", image_size=64)
    records = list(read_imagefolder(out))
    return records, [Image.open(out / r.file_name).convert("RGB") for r in records], 3


@pytest.fixture(scope="module")
def tokenizer():
    from vlm.pretrained import load_clip_tokenizer

    return load_clip_tokenizer("transformers", context_length=16)


def _tiny_pipeline(cls, in_channels: int, tokenizer, folder) -> str:
    """A Stable Diffusion pipeline of ~0.9M parameters (most in the 49,408-token text embedding)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=4, layers_per_block=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
        max_position_embeddings=16, projection_dim=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = cls(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, tokenizer):
    from diffusers import (StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline,
                           StableDiffusionPipeline)

    root = tmp_path_factory.mktemp("pipelines")
    return {
        "inpaint": _tiny_pipeline(StableDiffusionInpaintPipeline, 9, tokenizer, root / "inpaint"),
        "pix2pix": _tiny_pipeline(StableDiffusionInstructPix2PixPipeline, 8, tokenizer, root / "pix2pix"),
        "text2image": _tiny_pipeline(StableDiffusionPipeline, 4, tokenizer, root / "text2image"),
    }


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory, tokenizer):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    config = CLIPSegConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=2, max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16, reduce_dim=8, extract_layers=(1,), decoder_num_attention_heads=2,
        decoder_intermediate_size=16)
    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(config)
    processor = CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
                                 tokenizer=tokenizer)
    folder = tmp_path_factory.mktemp("clipseg")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _image(seed: int, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def _box_mask(size=(32, 32), box=(8, 8, 20, 20)) -> np.ndarray:
    m = np.zeros((size[1], size[0]), bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


# ---- edit descriptions ------------------------------------------------------------------------------------


def test_edit_request_reads_caption_edits_and_builds_instructions():
    edits = {}
    for e in counterfactuals("A woman holds two red balloons."):
        edits.setdefault(e.skill, EditRequest.from_any(e))  # the first alternative of each skill
    assert edits["color"] == EditRequest("color", "red", "green", "two red balloons", "two green balloons")
    assert edits["color"].instruction() == "make the two red balloons green"
    assert edits["gender"].instruction() == "turn the woman into a man"
    assert edits["counting"].instruction() == "turn the two red balloons into three red balloons"


def test_edit_request_from_captions_skips_article_repairs():
    r = EditRequest.from_captions("A red apple on a table.", "An orange apple on a table.")
    assert (r.skill, r.word, r.new_word, r.phrase, r.new_phrase) == (
        "color", "red", "orange", "A red apple", "An orange apple")
    with pytest.raises(EditNotApplicable, match="do not differ"):
        EditRequest.from_captions("A red apple.", "A red apple.")


# ---- the scene editor -------------------------------------------------------------------------------------


def test_scene_color_edit_is_exact_and_its_mask_is_the_changed_pixels():
    scene = _scene()
    scene.things = scene.things[1:]  # one red circle
    image = render(scene, 64, jitter_seed=7)
    [r] = SceneEditor().edit([image], ["A red circle."], ["A blue circle."], scenes=[scene], render_seeds=[7])
    assert r.ok and r.editor == "scene" and r.params["skill"] == "color"
    edited = Scene.from_dict(r.info["scene"])
    assert [t.color for t in edited.things] == ["blue", "blue", "purple"]
    assert np.array_equal(np.asarray(r.image), np.asarray(render(edited, 64, jitter_seed=7)))
    mask = np.asarray(r.mask) > 127
    assert np.array_equal(mask, (np.asarray(r.image) != np.asarray(image)).any(-1))
    ys, xs = np.nonzero(mask)  # the circle at (0.2, 0.75) of radius 0.08, with its outline
    assert xs.min() >= 0.2 * 64 - 7 and xs.max() <= 0.2 * 64 + 7 and ys.min() >= 0.75 * 64 - 7
    assert r.image.getpixel((13, 48)) == COLORS["blue"]
    [drawn] = SceneEditor(image_size=64, render_seed=7).edit([None], ["A red circle."], ["A blue circle."],
                                                             scenes=[scene.to_dict()])
    assert np.array_equal(np.asarray(drawn.image), np.asarray(r.image))


def test_scene_count_edits_add_at_free_places_and_remove():
    scene = _scene()
    add = EditRequest("counting", "two", "three", "two red circles")
    s1, changed = apply_scene_edit(scene, add, seed=1)
    reds = [t for t in s1.things if t.color == "red"]
    assert len(reds) == 3 and changed == [4] and all(fits(t, s1.things) for t in s1.things)
    s1b, _ = apply_scene_edit(scene, add, seed=1)
    s2, _ = apply_scene_edit(scene, add, seed=2)
    assert (s1b.things[4].x, s1b.things[4].y) == (s1.things[4].x, s1.things[4].y) != (s2.things[4].x, s2.things[4].y)
    s3, removed = apply_scene_edit(scene, EditRequest("counting", "two", "one", "two red circles"), seed=0)
    assert len(s3.things) == 3 and removed in ([0], [1]) and sum(t.color == "red" for t in s3.things) == 1


def test_scene_gender_and_garment_colour_edits():
    scene = _scene()
    s, changed = apply_scene_edit(scene, EditRequest("gender", "man", "woman", "A man"))
    assert s.things[3].gender == "woman" and changed == [3]
    caption = "A man in a purple shirt and two red circles."
    [color] = [e for e in counterfactuals(caption, ["color"]) if e.new_word == "green" and e.word == "purple"]
    s, _ = apply_scene_edit(scene, color, caption=caption)
    assert (s.things[3].color, s.things[3].gender) == ("green", "man")
    with pytest.raises(EditNotApplicable, match="age"):
        apply_scene_edit(scene, EditRequest("gender", "man", "girl", "a man"))


@pytest.mark.parametrize("edit, reason", [
    (EditRequest("color", "red", "green", "a red circle"), "nothing in the scene matches 'a red circle'"),
    (EditRequest("color", "green", "red", "a green star"), "nothing in the scene matches"),
    (EditRequest("color", "red", "blue", "two red circles"), None),  # would leave no group to merge with
    (EditRequest("size", "large", "medium", "a large blue square"), None),
    (EditRequest("shape", "square", "round", "a square table"), "cannot apply 'shape' edits"),
])
def test_scene_edit_skips_say_why(edit, reason):
    scene = _scene()
    if reason is None:
        apply_scene_edit(scene, edit)
    else:
        with pytest.raises(EditNotApplicable, match=reason):
            apply_scene_edit(scene, edit)


def test_scene_edit_refuses_ambiguous_phrases_and_merges():
    scene = _scene()
    scene.things[0].size = "small"  # a small and a medium red circle: "a red circle" names either
    with pytest.raises(EditNotApplicable, match="ambiguous"):
        resolve_phrase(scene, "a red circle")
    assert resolve_phrase(scene, "a small red circle") == [0]
    with pytest.raises(EditNotApplicable, match="would join"):
        apply_scene_edit(scene, EditRequest("size", "small", "medium", "a small red circle"))


def _world_edits(world, pick):
    """Per record: the image, a caption, its counterfactual edits chosen by ``pick``, the scene, the render seed."""
    records, images, world_seed = world
    rows = []
    for rec, img in zip(records, images):
        for caption, edit in pick(rec.captions):
            rows.append((img, caption, edit, rec.extra["scene"], world_render_seed(rec.id, world_seed)))
    return [list(col) for col in zip(*rows)]


def test_scene_editor_on_world_records(world):
    editor = SceneEditor()

    def every_edit_of_the_longest_caption(captions):
        caption = max(captions, key=len)
        return [(caption, e) for e in counterfactuals(caption)]

    imgs, srcs, edits, scenes, rseeds = _world_edits(world, every_edit_of_the_longest_caption)
    targets = [e.edited for e in edits]
    results = editor.edit(imgs, srcs, targets, edits=edits, scenes=scenes, render_seeds=rseeds,
                          seeds=list(range(len(edits))))
    ok = [r for r in results if r.ok]
    assert len(results) > 100 and len(ok) / len(results) > 0.8
    for r, img, src, tgt, sc in zip(results, imgs, srcs, targets, scenes):
        if not r.ok:
            assert r.reason and r.image is None
            continue
        mask = np.asarray(r.mask) > 127
        changed = (np.asarray(r.image) != np.asarray(img)).any(-1)
        assert mask.any() and np.array_equal(changed, mask)
        edited = Scene.from_dict(r.info["scene"])
        before = {f for f in caption_facts(src) if not check_fact(f, Scene.from_dict(sc))}
        assert all(check_fact(f, edited) or f in before for f in caption_facts(tgt))
    # Another record's scene graph (or render seed) is caught: it does not render to the input image.
    stale = editor.edit(imgs[:3], srcs[:3], targets[:3], edits=edits[:3], scenes=[scenes[-1]] * 3,
                        render_seeds=rseeds[:3])
    assert [r.ok for r in stale] == [False] * 3
    assert all(r.reason.startswith("the scene graph does not render to the input image") for r in stale)


# ---- diffusion editors on tiny pipelines --------------------------------------------------------------------


def test_inpaint_editor_keeps_unmasked_pixels_and_is_seeded(pipelines):
    editor = InpaintEditor(pipelines["inpaint"], num_inference_steps=2, device="cpu", batch_size=2)
    images = [_image(0), _image(0), _image(1, (40, 24))]
    masks = [_box_mask(), _box_mask(), _box_mask((40, 24), (4, 4, 30, 16))]
    results = editor.edit(images, ["A red car."] * 3, ["A blue car."] * 3, masks=masks, seeds=[0, 1, 0])
    assert [r.ok for r in results] == [True] * 3
    assert [r.image.size for r in results] == [(32, 32), (32, 32), (40, 24)]
    assert results[0].params["prompt"] == "A blue car" and results[0].params["mask_source"] == "given"
    for r, img, m in zip(results, images, masks):
        out, inp = np.asarray(r.image).astype(int), np.asarray(img).astype(int)
        assert np.array_equal(out[~m], inp[~m])  # pasted back exactly
        assert np.abs(out[m] - inp[m]).mean() > 5
        assert np.array_equal(np.asarray(r.mask) > 127, m)
    [again] = editor.edit(images[:1], ["A red car."], ["A blue car."], masks=masks[:1], seeds=[0])
    # batch-independent: the same seed gives the same image alone as in a batch, up to one uint8 level where the
    # CPU's matrix kernels (chosen by batch shape) round differently; another seed changes it by far more
    alone = np.asarray(again.image).astype(int) - np.asarray(results[0].image).astype(int)
    other = np.asarray(results[1].image).astype(int) - np.asarray(results[0].image).astype(int)
    assert np.abs(alone).max() <= 1 and np.abs(alone).mean() < 0.01 < 1 < np.abs(other).mean()
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))


def test_inpaint_editor_masks_from_tiny_clipseg(pipelines, tiny_clipseg):
    segmenter = CLIPSegSegmenter(tiny_clipseg, threshold=0.5, dilate=1)
    images = [_image(2), _image(3, (48, 32))]
    masks = segmenter.segment(images, ["the red car", "a dog"])
    assert [m.shape for m in masks] == [(32, 32), (32, 48)] and all(m.dtype == bool for m in masks)
    assert all(np.array_equal(a, b) for a, b in zip(masks, segmenter.segment(images, ["the red car", "a dog"])))
    # A random CLIPSeg still gives a partial mask at some threshold: pick one from its probabilities.
    probs = segmenter.probabilities(images[:1], ["the red car"])[0]
    assert probs.shape == (32, 32) and 0.0 <= float(probs.min()) <= float(probs.max()) <= 1.0
    segmenter.threshold, segmenter.dilate = float(probs.quantile(0.75)), 0
    editor = InpaintEditor(pipelines["inpaint"], segmenter=segmenter, num_inference_steps=2, device="cpu")
    [r] = editor.edit(images[:1], ["A red car."], ["A blue car."], edit_phrases=["the red car"], seeds=[0])
    m = np.asarray(r.mask) > 127
    assert r.ok and r.params["mask_source"] == "segmenter" and 0 < m.mean() < 1
    assert np.array_equal(np.asarray(r.image)[~m], np.asarray(images[0])[~m])

    def segment_nothing(ims, phrases):
        return [np.zeros((im.height, im.width), bool) for im in ims]

    nothing = InpaintEditor(editor.pipeline, segmenter=segment_nothing, num_inference_steps=2, device="cpu")
    [skip] = nothing.edit(images[:1], ["A red car."], ["A blue car."], seeds=[0])
    assert not skip.ok and skip.reason == "the segmenter found no region for 'A red car'"
    no_segmenter = InpaintEditor(editor.pipeline, num_inference_steps=2, device="cpu")
    with pytest.raises(ValueError, match="no segmenter"):
        no_segmenter.edit(images[:1], ["A red car."], ["A blue car."])


def test_instruct_pix2pix_editor(pipelines):
    editor = InstructPix2PixEditor(pipelines["pix2pix"], num_inference_steps=2, device="cpu")
    images = [_image(4), _image(4)]
    results = editor.edit(images, ["A man and a red car."] * 2, ["A man and a blue car."] * 2, seeds=[5, 6])
    assert [r.ok for r in results] == [True, True] and results[0].mask is None
    assert results[0].params["instruction"] == "make the red car blue"
    assert results[0].image.size == (32, 32)
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
    [again] = editor.edit(images[:1], ["A man and a red car."], ["A man and a blue car."], seeds=[5])
    assert np.array_equal(np.asarray(again.image), np.asarray(results[0].image))
    m = _box_mask()
    [masked] = editor.edit(images[:1], ["A man."], ["A woman."], masks=[m], seeds=[5])
    assert masked.params["instruction"] == "turn the man into a woman"
    assert np.array_equal(np.asarray(masked.image)[~m], np.asarray(images[0])[~m])
    [skip] = editor.edit(images[:1], ["A cat."], ["A dog."])
    assert not skip.ok and skip.reason == "no word that changes from 'A cat.' to 'A dog.' is a skill word"


def test_regenerate_editor(pipelines):
    editor = RegenerateEditor(pipelines["text2image"], num_inference_steps=2, device="cpu", image_size=32)
    results = editor.edit([None, None, _image(7, (40, 24))], ["A red car."] * 3, ["A blue car."] * 3,
                          seeds=[0, 1, 0])
    assert [r.image.size for r in results] == [(32, 32), (32, 32), (40, 24)]
    assert results[0].params["prompt"] == "A blue car." and results[0].params["guidance_scale"] == 8.0
    assert not np.array_equal(np.asarray(results[0].image), np.asarray(results[1].image))
    [again] = editor.edit([None], ["A red car."], ["A blue car."], seeds=[0])
    [same] = editor.edit([None], ["A red car."], ["A blue car."], seeds=[0])
    assert np.array_equal(np.asarray(again.image), np.asarray(same.image))
    # Alone or in a batch: the same noise, the same image up to float rounding of batched matmuls.
    assert np.abs(np.asarray(again.image).astype(int) - np.asarray(results[0].image)).max() <= 2


def test_hub_ids_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubOfflineError, match="SceneEditor"):
        InpaintEditor("finecap-test/not-a-cached-model", device="cpu")
    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE"):
        CLIPSegSegmenter("finecap-test/not-a-cached-clipseg")
    assert time.perf_counter() - start < 5


# ---- verification -------------------------------------------------------------------------------------------


class HandSetRetriever:
    """Embeddings set by hand: images by their top-left pixel's red value, texts by their string."""

    name = "hand-set"

    def __init__(self, images: dict[int, list[float]], texts: dict[str, list[float]]):
        self.images, self.texts = images, texts

    def encode_images(self, images, *, batch_size=64):
        rows = [self.images[im.getpixel((0, 0))[0]] for im in images]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)

    def encode_texts(self, texts, *, batch_size=256):
        return torch.nn.functional.normalize(torch.tensor([self.texts[t] for t in texts]), dim=-1)


def _solid(red: int, size=(4, 4)) -> Image.Image:
    return Image.new("RGB", size, (red, 0, 0))


def test_verifier_decisions_on_hand_set_embeddings():
    texts = {"old": [1.0, 0.0, 0.0], "new": [0.0, 1.0, 0.0]}
    c = 0.6  # cos of the vectors below with "old" / "new"
    retriever = HandSetRetriever({
        10: [1.0, 0.0, 0.0],    # original: the old caption
        20: [c, 0.8, 0.0],      # edited: cos new 0.8, cos old 0.6 -> margin 0.2
        30: [0.8, c, 0.0],      # edited badly: margin -0.2
        40: [0.0, 0.28, 0.96],  # edited: margin 0.28, but it moved mostly off both captions
    }, texts)
    verifier = EditVerifier(retriever, VerifyConfig(margin=0.1, gain=0.5, direction=0.7, max_unmasked_diff=0.1))
    originals = [_solid(10)] * 4
    not_applied = EditResult(None, None, "scene", 0, reason="nothing in the scene matches 'a red circle'")
    d = verifier.verify([_solid(20), _solid(30), _solid(40), not_applied], ["old"] * 4, ["new"] * 4,
                        originals=originals, skills=["color", "color", "gender", "gender"])
    assert [x.accepted for x in d] == [True, False, False, False]
    assert d[0].scores["margin"] == pytest.approx(0.2) and d[0].scores["gain"] == pytest.approx(1.2)
    # E(edited) - E(original) = (-0.4, 0.8, 0) against (-1, 1, 0): cos = 1.2 / (sqrt(0.8) sqrt(2))
    assert d[0].scores["direction"] == pytest.approx(1.2 / (0.8 ** 0.5 * 2 ** 0.5))
    assert d[1].checks == {"applied": True, "margin": False, "gain": True, "direction": True}
    assert d[2].checks["margin"] and not d[2].checks["direction"]
    assert d[2].scores["direction"] == pytest.approx(1.28 / 2)  # (-1, 0.28, 0.96) against (-1, 1, 0)
    assert d[3].checks == {"applied": False} and "nothing in the scene" in d[3].reasons[0]
    assert acceptance_stats(d) == {
        "all": {"n": 4, "accepted": 1, "rate": 0.25, "failed": {"applied": 1, "margin": 1, "direction": 1}},
        "color": {"n": 2, "accepted": 1, "rate": 0.5, "failed": {"margin": 1}},
        "gender": {"n": 2, "accepted": 0, "rate": 0.0, "failed": {"applied": 1, "direction": 1}},
    }


def test_verifier_checks_unmasked_pixels():
    retriever = HandSetRetriever({10: [1.0, 0.0], 20: [0.0, 1.0]}, {"old": [1.0, 0.0], "new": [0.0, 1.0]})
    original = _solid(10, (4, 4))
    inside = np.asarray(original).copy()
    inside[:2, :2] = (20, 255, 255)  # the top-left pixel keys the embedding: red 20 = the new caption
    outside = inside.copy()
    outside[3, 3] = (10, 255, 255)  # one pixel outside the mask: |255 - 0| on 2 of 3 channels of 1 of 12 pixels
    mask = _box_mask((4, 4), (0, 0, 2, 2))
    verifier = EditVerifier(retriever, VerifyConfig(max_unmasked_diff=0.05))
    d = verifier.verify([Image.fromarray(inside), Image.fromarray(outside)], ["old"] * 2, ["new"] * 2,
                        originals=[original] * 2, masks=[mask, mask])
    assert [x.accepted for x in d] == [True, False]
    assert d[0].scores["unmasked_diff"] == 0.0
    assert d[1].scores["unmasked_diff"] == pytest.approx(2 / 3 / 12)
    with pytest.raises(ValueError, match="need originals"):
        EditVerifier(retriever, VerifyConfig(gain=0.0)).verify([original], ["old"], ["new"])


class ColorRetriever:
    """A tiny but meaningful retriever for the world: images embed as the pixel counts of TIDA's five colours,
    texts as the TIDA colour words they use (white, black ... are background and clothing, as in TIDA)."""

    name = "colour-words"
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    tida = [list(COLORS).index(c) for c in TIDA_COLORS]

    def encode_images(self, images, *, batch_size=64):
        rows = []
        for im in images:
            px = np.asarray(im, dtype=np.float32).reshape(-1, 3)
            dist = np.linalg.norm(px[:, None] - self.palette[None], axis=-1)
            near = dist.min(1) < 20  # pixels of a thing's colour, not the background
            rows.append(np.bincount(dist.argmin(1)[near], minlength=len(COLORS))[self.tida] + 1e-3)
        return torch.nn.functional.normalize(torch.tensor(np.array(rows)), dim=-1)

    def encode_texts(self, texts, *, batch_size=256):
        rows = [[float(c in t.lower().split()) + 1e-3 for c in TIDA_COLORS] for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_scene_edits_pass_verification_and_unedited_images_do_not(world):
    def first_colour_edit(captions):
        return [(c, counterfactuals(c, ["color"])[0]) for c in captions if counterfactuals(c, ["color"])][:1]

    imgs, srcs, edits, scenes, rseeds = _world_edits(world, first_colour_edit)
    targets = [e.edited for e in edits]
    results = SceneEditor().edit(imgs, srcs, targets, edits=edits, scenes=scenes, render_seeds=rseeds)
    # Not the margin: a colour-word retriever scores "three girls in red dresses and three yellow triangles"
    # below the old caption on an image that is mostly yellow. What the edit changed is the signal.
    verifier = EditVerifier(ColorRetriever(), VerifyConfig(margin=None, gain=0.01, direction=0.5))
    decisions = verifier.verify(results, srcs, targets, originals=imgs)
    applied = [d for d, r in zip(decisions, results) if r.ok]
    assert len(applied) >= 8 and all(d.accepted for d in applied)
    assert all(d.scores["unmasked_diff"] == 0.0 for d in applied)
    stats = acceptance_stats(decisions)
    assert stats["color"]["accepted"] == len(applied) and stats["color"]["n"] == len(results)
    unedited = verifier.verify(imgs, srcs, targets, originals=imgs, skills=["color"] * len(imgs))
    assert not any(d.accepted for d in unedited)
    assert isinstance(decisions[0], EditDecision)
