"""Tiny random-weight Hugging Face captioners of each family, built offline, for tests.

Each family is its real transformers model class and processor class, shrunk: 32 px images, 8 px patches,
width 32, one or two layers. The tokenizer is a byte-level BPE (:func:`vlm.models.train_caption_tokenizer`)
learned from built-in world captions and questions, plus the special tokens each processor needs, so
nothing is downloaded. Chat-templated families (LLaVA, Idefics3, Qwen2-VL) get a small template in their
real model's format. The models are what the registry builds for ``hf-tiny-*`` names.

Example:
    >>> from vlm.models.hf_tiny import TINY_FAMILIES, build_tiny_hf_captioner
    >>> TINY_FAMILIES
    ('blip', 'git', 'llava', 'idefics3', 'qwen2_vl', 'paligemma', 'vision_encoder_decoder')
    >>> type(build_tiny_hf_captioner("blip").model).__name__
    'BlipForConditionalGeneration'
"""

from __future__ import annotations

from functools import lru_cache

TINY_FAMILIES = ("blip", "git", "llava", "idefics3", "qwen2_vl", "paligemma", "vision_encoder_decoder")
IMAGE_SIZE = 32
"""Side of the images every tiny image processor outputs (4 x 4 patches of 8 px)."""
PATCH = 8
WIDTH = 32
"""Hidden size of every tiny vision and text tower."""
VOCAB_SIZE = 400
"""BPE vocabulary learned from the world captions (before each family's special tokens)."""

# Chat templates in the format of the real checkpoints (llava-1.5-hf, SmolVLM, Qwen2-VL-Instruct), cut down
# to user text + images and an assistant reply.
_LLAVA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: {{ m['content'][0]['text'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
_IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
_QWEN2_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    """World captions, questions and answers, plus the words of the chat templates."""
    from vlm.world import iter_world, resolve_config

    texts = ["Describe the image.", "A picture of", "USER: ASSISTANT: User: Assistant: user assistant"]
    for item in iter_world(resolve_config("vqa"), n=60, seed=0):
        texts += item.captions + [item.dense_caption]
        texts += [q["question"] + " " + q["answer"] for q in item.extra.get("qa", [])]
    return tuple(texts)


def _tokenizer(extra_special: tuple[str, ...] = ()):
    from vlm.models.tokenizer import train_caption_tokenizer

    tok = train_caption_tokenizer(_corpus(), vocab_size=VOCAB_SIZE)
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return tok


def _ids(tok) -> dict:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _tower(**kw) -> dict:
    """A one/two-layer transformer of width 32 (vision or text), overridable per family."""
    return {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_hidden_layers": 1,
            "num_attention_heads": 2, **kw}


def _vision(**kw) -> dict:
    return _tower(image_size=IMAGE_SIZE, patch_size=PATCH, **kw)


def _llama(tok, **kw) -> dict:
    return _tower(model_type="llama", vocab_size=len(tok), num_key_value_heads=1, max_position_embeddings=128,
                  **_ids(tok), **kw)


def _image_processor(cls_name: str, **kw):
    """An image processor of the backend ``AutoImageProcessor`` picks by default, so that a saved folder
    reloads to the same class (and the same pixels)."""
    import transformers

    return getattr(transformers, cls_name)(**kw)


def _blip():
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    tok = _tokenizer()
    text = _tower(vocab_size=len(tok), max_position_embeddings=128, encoder_hidden_size=WIDTH,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, bos_token_id=tok.bos_token_id,
                  sep_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    # BLIP's vision default initializer_range is 1e-10 (pretrained weights overwrite it): every image would
    # look the same to a random model.
    config = BlipConfig(text_config=text, vision_config=_vision(initializer_range=0.02), projection_dim=WIDTH)
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = BlipProcessor(_image_processor("BlipImageProcessor", size=size), tok)
    return BlipForConditionalGeneration(config), processor


def _git():
    from transformers import GitConfig, GitForCausalLM, GitProcessor

    tok = _tokenizer()
    config = GitConfig(vision_config=_vision(), vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=128,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **_ids(tok))
    image_processor = _image_processor("CLIPImageProcessor", size={"shortest_edge": IMAGE_SIZE},
                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return GitForCausalLM(config), GitProcessor(image_processor, tok)


def _llava():
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _tokenizer(("<image>",))
    image_token = tok.convert_tokens_to_ids("<image>")
    # vision_feature_layer=-2 reads the second-last hidden state, as llava-1.5 does: two vision layers.
    vision = _vision(model_type="clip_vision_model", num_hidden_layers=2, projection_dim=WIDTH)
    config = LlavaConfig(vision_config=vision, text_config=_llama(tok), image_token_index=image_token,
                         image_seq_length=(IMAGE_SIZE // PATCH) ** 2, vision_feature_select_strategy="default",
                         vision_feature_layer=-2)
    image_processor = _image_processor("CLIPImageProcessor", size={"shortest_edge": IMAGE_SIZE},
                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # CLIP's class token is one extra feature; the "default" strategy drops it again.
    processor = LlavaProcessor(image_processor, tok, patch_size=PATCH, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=_LLAVA_TEMPLATE)
    return LlavaForConditionalGeneration(config), processor


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    tok = _tokenizer(("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|im_start|>"))
    scale = 2  # pixel shuffle: (32 / 8)^2 = 16 patches -> 4 image tokens
    config = Idefics3Config(vision_config=_vision(), text_config=_llama(tok), scale_factor=scale,
                            image_token_id=tok.convert_tokens_to_ids("<image>"))
    image_processor = _image_processor("Idefics3ImageProcessor", size={"longest_edge": IMAGE_SIZE},
                           max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False)
    processor = Idefics3Processor(image_processor, tok, image_seq_len=(IMAGE_SIZE // PATCH // scale) ** 2,
                                  chat_template=_IDEFICS3_TEMPLATE)
    return Idefics3ForConditionalGeneration(config), processor


def _qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    specials = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tok = _tokenizer(specials)
    sid = {s: tok.convert_tokens_to_ids(s) for s in specials}
    vision = {"depth": 1, "embed_dim": WIDTH, "hidden_size": WIDTH, "num_heads": 2, "mlp_ratio": 2,
              "patch_size": PATCH, "spatial_merge_size": 2, "temporal_patch_size": 2}
    # head_dim 16: the multimodal RoPE splits its 8 frequencies into (temporal, height, width) = 4 + 2 + 2.
    text = _tower(vocab_size=len(tok), num_key_value_heads=1, max_position_embeddings=128,
                  rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2]}, **_ids(tok))
    config = Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=sid["<|image_pad|>"],
                           video_token_id=sid["<|video_pad|>"], vision_start_token_id=sid["<|vision_start|>"],
                           vision_end_token_id=sid["<|vision_end|>"])
    pixels = {"min_pixels": IMAGE_SIZE * IMAGE_SIZE, "max_pixels": IMAGE_SIZE * IMAGE_SIZE, "patch_size": PATCH,
              "merge_size": 2, "temporal_patch_size": 2}
    processor = Qwen2VLProcessor(_image_processor("Qwen2VLImageProcessor", **pixels), tok,
                                 Qwen2VLVideoProcessor(**pixels), chat_template=_QWEN2_VL_TEMPLATE)
    return Qwen2VLForConditionalGeneration(config), processor


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    tok = _tokenizer()
    image_processor = _image_processor("SiglipImageProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH) ** 2
    processor = PaliGemmaProcessor(image_processor, tok)  # adds <image> and 1152 <loc>/<seg> tokens
    vision = _vision(model_type="siglip_vision_model")
    text = _tower(model_type="gemma", vocab_size=len(tok), num_key_value_heads=1, head_dim=16,
                  max_position_embeddings=128, **_ids(tok))
    config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=WIDTH, hidden_size=WIDTH,
                             image_token_index=processor.image_token_id, vocab_size=len(tok))
    return PaliGemmaForConditionalGeneration(config), processor


def _vision_encoder_decoder():
    from transformers import (GPT2Config, TrOCRProcessor, ViTConfig, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    tok = _tokenizer()
    encoder = ViTConfig(**_vision(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    decoder = GPT2Config(vocab_size=len(tok), n_embd=WIDTH, n_layer=1, n_head=2, n_positions=128,
                         add_cross_attention=True, is_decoder=True, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, **_ids(tok))
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tok.bos_token_id
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    image_processor = _image_processor("ViTImageProcessor", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return VisionEncoderDecoderModel(config), TrOCRProcessor(image_processor, tok)


_BUILDERS = {"blip": _blip, "git": _git, "llava": _llava, "idefics3": _idefics3, "qwen2_vl": _qwen2_vl,
             "paligemma": _paligemma, "vision_encoder_decoder": _vision_encoder_decoder}


def build_tiny_hf_captioner(family: str, *, seed: int = 0, device: str = "cpu"):
    """A tiny random-weight :class:`~vlm.models.HFCaptioner` of one of :data:`TINY_FAMILIES`.

    Args:
        family: ``"blip"``, ``"git"``, ``"llava"``, ``"idefics3"``, ``"qwen2_vl"``, ``"paligemma"`` or
            ``"vision_encoder_decoder"`` (ViT + GPT-2).
        seed: weight initialisation seed (same seed, same weights).
        device: where the model lives.

    Returns:
        An :class:`~vlm.models.HFCaptioner` in eval mode, with generation ids (bos, eos, pad) set.

    Example:
        >>> cap = build_tiny_hf_captioner("qwen2_vl", seed=1)
        >>> cap.family, cap.eos_token_id == cap.tokenizer.eos_token_id
        ('decoder', True)
    """
    import torch

    from vlm.models.hf import HFCaptioner

    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny HF family {family!r}; choose from {list(TINY_FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = _BUILDERS[family]()
    tok = processor.tokenizer
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    if family == "vision_encoder_decoder":
        gen.decoder_start_token_id = tok.bos_token_id
    return HFCaptioner(model.to(device), processor, name=f"hf-tiny-{family}")
