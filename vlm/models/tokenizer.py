"""Small tokenizers trained on a caption corpus, for language models trained from scratch on CPU.

A byte-level BPE (as GPT-2's, but with a vocabulary of a few hundred to a few thousand tokens learned from
the captions at hand) decodes back to the exact text, so generated captions need no detokenisation rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def train_caption_tokenizer(texts: Iterable[str], *, vocab_size: int = 1000, lowercase: bool = False):
    """Train a byte-level BPE tokenizer on ``texts``; returns a transformers ``PreTrainedTokenizerFast``.

    Example:
        >>> tok = train_caption_tokenizer(["A red circle.", "Two blue squares on the grass."] * 20, vocab_size=300)
        >>> ids = tok("A red circle.")["input_ids"]
        >>> tok.decode(ids)
        'A red circle.'
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token=None))
    if lowercase:
        tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, **SPECIALS)


def load_caption_tokenizer(folder: str | Path):
    """A tokenizer saved with ``save_pretrained`` (ours or any transformers one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
