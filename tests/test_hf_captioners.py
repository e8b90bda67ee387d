"""Hugging Face captioner families behind the common captioner API, on tiny random models built offline."""

import math

import pytest
import torch

from vlm.models import HFCaptioner, create_captioner, list_models
from vlm.models.hf_tiny import TINY_FAMILIES, build_tiny_hf_captioner
from vlm.world import iter_world, render, resolve_config

PROMPTS = ["Describe the image.", "What color is the circle?", "Describe the image."]


@pytest.fixture(scope="module")
def world():
    items = list(iter_world(resolve_config("captioning"), 3, seed=0))
    return [render(it.scene, 32) for it in items], [it.captions[0] for it in items]


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def cap(request):
    return build_tiny_hf_captioner(request.param, seed=0)


def test_generate_one_string_per_image_same_as_alone(cap, world):
    images, _ = world
    out = cap.generate(images, max_new_tokens=4)
    assert len(out) == len(images) and all(isinstance(t, str) for t in out)
    # The random tiny PaliGemma only emits newlines (empty captions); every other family says something.
    assert any(out) or cap.model.config.model_type == "paligemma"
    assert out == [cap.generate([im], max_new_tokens=4)[0] for im in images]


def test_generate_with_prompts_of_different_lengths(cap, world):
    images, _ = world
    out = cap.generate(images, PROMPTS, max_new_tokens=4)
    assert len(out) == 3
    # Grouped by prompt length ({0, 2} and {1}), never padded: each answer is what the image and prompt give alone.
    assert out == [cap.generate([im], [p], max_new_tokens=4)[0] for im, p in zip(images, PROMPTS)]
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        cap.generate(images, PROMPTS[:2])


def test_beam_search_returns_sequences_grouped_by_image(cap, world):
    images, _ = world
    out = cap.generate(images[:2], num_beams=2, num_return_sequences=2, max_new_tokens=3)
    assert len(out) == 4
    assert [out[0], out[2]] == cap.generate(images[:2], num_beams=2, max_new_tokens=3)


def test_loss_matches_the_models_own_label_loss(cap, world):
    # The model's own loss (labels=...) shifts labels itself; ours slices and shifts logits: they must agree.
    images, caps = world
    batch = {"images": images[:2], "captions": [caps[0], caps[1] + " It is sunny."]}
    enc = cap._encode_prompts(batch["images"], None)
    ids, mask, labels, fields = cap._assemble(enc, cap._encode_targets(batch["captions"], add_eos=True))
    with torch.no_grad():
        if cap.family == "encoder-decoder":  # it builds the decoder input by shifting labels right
            ref = cap.model(**cap._image_batch(enc), labels=labels[:, 1:]).loss
        else:
            ref = cap.model(**cap._image_batch(enc), input_ids=ids, attention_mask=mask, labels=labels, **fields).loss
        torch.testing.assert_close(cap.loss(batch), ref, atol=1e-5, rtol=0)


def test_loss_near_uniform_and_gradients_reach_the_image_tower(cap, world):
    images, caps = world
    loss = cap.loss({"images": images[:2], "captions": caps[:2]})
    vocab = cap.model.get_input_embeddings().weight.shape[0]
    assert torch.isfinite(loss) and abs(loss.item() - math.log(vocab)) < 1.0  # random init: near-uniform
    loss.backward()
    grads = {n: p.grad for n, p in cap.named_parameters() if p.grad is not None}
    # The image tower: "vision"/"visual" in every family's names, or the encoder of an encoder-decoder.
    vision = [g for n, g in grads.items() if "vision" in n or "visual" in n or n.startswith("encoder.")]
    assert vision and any(g.abs().sum() > 0 for g in vision)
    cap.model.zero_grad(set_to_none=True)


def test_optimizer_steps_reduce_loss(cap, world):
    model = build_tiny_hf_captioner(cap.name.removeprefix("hf-tiny-"), seed=0).train()
    images, caps = world
    batch = {"images": images[:2], "captions": caps[:2]}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = model.loss(batch).item()
    for _ in range(6):
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    with torch.no_grad():
        after = model.eval().loss(batch).item()
    assert after < before - 1.0, (before, after)


def test_token_log_probs_consistent_with_loss(cap, world):
    images, caps = world
    batch = {"images": images[:2], "captions": [caps[0], caps[1] + " It is sunny."], "prompts": PROMPTS[:2]}
    with torch.no_grad():
        loss = cap.loss(batch)
        logp, mask = cap.token_log_probs(batch["captions"], images=batch["images"], prompts=batch["prompts"])
    assert logp.shape == mask.shape and (logp[~mask] == 0).all() and (logp[mask] < 0).all()
    torch.testing.assert_close(-logp[mask].mean(), loss, atol=1e-4, rtol=0)
    n_tokens = [len(cap.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in batch["captions"]]
    assert mask.sum(1).tolist() == [n + 1 for n in n_tokens]  # + eos
    with torch.no_grad():
        no_prompt, mask_no_eos = cap.token_log_probs(batch["captions"], images=batch["images"], add_eos=False)
    assert mask_no_eos.sum(1).tolist() == n_tokens
    assert not torch.allclose(no_prompt[0, :n_tokens[0]], logp[0, :n_tokens[0]])  # the prompt conditions it


def test_log_probs_do_not_depend_on_padding(cap, world):
    images, caps = world
    with torch.no_grad():
        alone, m1 = cap.token_log_probs([caps[0]], images=images[:1], prompts=["Describe the image."])
        batch, m2 = cap.token_log_probs([caps[0], caps[1] + " " + caps[2]], images=images[:2],
                                        prompts=["Describe the image.", ""])
    n = int(m1.sum())
    assert m2[1].sum() > n  # the second text is longer, so the first row is padded
    torch.testing.assert_close(batch[0, :n], alone[0, :n], atol=1e-5, rtol=0)


def test_log_probs_do_not_see_later_caption_tokens(cap, world):
    images, caps = world
    with torch.no_grad():
        prompt = ["Describe the image."]
        short, m = cap.token_log_probs([caps[1]], images=images[1:2], prompts=prompt, add_eos=False)
        longer, _ = cap.token_log_probs([caps[1] + " It is sunny."], images=images[1:2], prompts=prompt)
    n = int(m.sum())
    torch.testing.assert_close(longer[0, :n], short[0, :n], atol=1e-5, rtol=0)


def test_save_and_reload_give_identical_outputs(cap, world, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    images, caps = world
    cap.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    again = create_captioner(str(tmp_path))
    assert isinstance(again, HFCaptioner) and type(again.model) is type(cap.model)
    assert type(again.processor) is type(cap.processor)
    assert type(again.processor.image_processor) is type(cap.processor.image_processor)
    assert type(AutoModelForImageTextToText.from_pretrained(str(tmp_path))) is type(cap.model)
    assert type(AutoProcessor.from_pretrained(str(tmp_path))) is type(cap.processor)
    assert again.generate(images, PROMPTS, max_new_tokens=4) == cap.generate(images, PROMPTS, max_new_tokens=4)
    with torch.no_grad():
        a, ma = cap.token_log_probs(caps, images=images)
        b, mb = again.token_log_probs(caps, images=images)
    assert torch.equal(ma, mb)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_registry_builds_every_tiny_family():
    names = list_models(kind="hf-tiny")
    assert len(names) == len(TINY_FAMILIES)
    families = {create_captioner(n).name.removeprefix("hf-tiny-") for n in names}
    assert families == set(TINY_FAMILIES)
    with pytest.raises(ValueError, match="unknown hf-tiny config keys"):
        create_captioner("hf-tiny-git", width=64)


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown tiny HF family 'flamingo'"):
        build_tiny_hf_captioner("flamingo")


def test_encoder_decoder_folder_without_a_processor_loads(world, tmp_path):
    # Like nlpconnect/vit-gpt2-image-captioning: model, image processor and tokenizer, no processor class.
    cap = build_tiny_hf_captioner("vision_encoder_decoder")
    cap.model.save_pretrained(tmp_path)
    cap.processor.image_processor.save_pretrained(tmp_path)
    cap.tokenizer.save_pretrained(tmp_path)
    again = HFCaptioner.from_pretrained(tmp_path)
    assert type(again.processor).__name__ == "TrOCRProcessor"
    images, _ = world
    assert again.generate(images, max_new_tokens=4) == cap.generate(images, max_new_tokens=4)
    lp_a, mask_a = again.token_log_probs(["a red circle."], images=images[:1])
    lp_b, mask_b = cap.token_log_probs(["a red circle."], images=images[:1])
    assert torch.equal(mask_a, mask_b) and torch.allclose(lp_a, lp_b, atol=1e-6)
