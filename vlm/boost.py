"""Visual Caption Boosting: blend an image's reference captions into one fine-grained, anchored caption.

MLE on terse human captions teaches a captioner to be terse. VCB (Gaur et al., 2024) makes the targets
richer without inventing anything: an instruct LLM merges the references ("BlendCap"), optionally with other
detail sources such as a dense captioner's output or tool results ("HolisticCap"). The LLM only merges, so
every boosted caption is checked: each content word it adds (object, colour, number, size, relation,
person...) must occur in some source. A caption that fails is rejected and a deterministic merger of the
sources is used instead; the rejection rate is reported.

``python -m vlm boost --data DIR --out DIR`` writes a copy of a dataset with a ``boosted_caption`` field
(train on it with ``captions: field:boosted_caption``). The job is resumable.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

# Function words and caption boilerplate: words that carry no visual fact.
STOPWORDS = frozenset("""
a an the and or of in on at to with without is are was were be been being there here this that these those it its
their his her them they he she we you i as by for from into onto over under up down out off near next than then
has have had having do does did can could will would should may might must very some several few many each every
all both either neither any no not only also just one's picture image photo photograph shows showing shown
depicts depicting features featuring seen see scene view close-up closeup which who whom whose while where when
what how about
""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_IRREGULAR = {"men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot",
              "teeth": "tooth", "mice": "mouse", "geese": "goose"}


def _singular(w: str) -> str:
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def content_words(text: str) -> set[str]:
    """Lower-cased, singularised words that can state a visual fact.

    Example:
        >>> sorted(content_words("There are two small red circles on the grass."))
        ['circle', 'grass', 'red', 'small', 'two']
    """
    return {_singular(w) for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS}


def unanchored_words(candidate: str, sources: Sequence[str]) -> set[str]:
    """Content words of ``candidate`` found in none of ``sources`` (empty set: the candidate is anchored).

    Example:
        >>> sorted(unanchored_words("Two red circles and a blue star.", ["two red circles", "a star"]))
        ['blue']
    """
    allowed = set().union(*(content_words(s) for s in sources)) if sources else set()
    return content_words(candidate) - allowed


def _phrases(text: str) -> list[tuple[str, ...]]:
    """Maximal runs of adjacent content words ("two large purple circles" -> ('two', 'large', 'purple', 'circle'))."""
    runs: list[tuple[str, ...]] = []
    cur: list[str] = []
    for w in _TOKEN.findall(text.lower()):
        if w in STOPWORDS:
            if cur:
                runs.append(tuple(cur))
            cur = []
        else:
            cur.append(_singular(w))
    if cur:
        runs.append(tuple(cur))
    return runs


def _is_subsequence(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    it = iter(b)
    return all(w in it for w in a)


def unbound_phrases(candidate: str, sources: Sequence[str]) -> list[str]:
    """Phrases of ``candidate`` whose words are anchored one by one but not together.

    A phrase (a run of content words, e.g. "three purple circles") is bound when it is a subsequence of a
    phrase of some source: dropping a modifier is fine ("purple circles" from "two large purple circles"),
    recombining modifiers across objects is not ("three purple circles" from "two purple circles" and
    "three black circles"). This catches the LLM's typical merge error, attribute or count binding.

    Example:
        >>> unbound_phrases("Three purple circles and large circles.", ["Two large purple circles.", "Three black circles."])
        ['three purple circle']
    """
    allowed = [ph for s in sources for ph in _phrases(s)]
    return [" ".join(ph) for ph in _phrases(candidate)
            if len(ph) > 1 and not any(_is_subsequence(ph, a) for a in allowed)]


def anchoring_violations(candidate: str, sources: Sequence[str], *, check_phrases: bool = True) -> list[str]:
    """Why ``candidate`` fails the anchoring check: its unanchored words, then its unbound phrases (sorted).

    Example:
        >>> anchoring_violations("Two red circles and a dog.", ["two red circles"])
        ['dog']
        >>> anchoring_violations("Two red circles.", ["two red circles on the grass"])
        []
    """
    bad = sorted(unanchored_words(candidate, sources))
    if check_phrases and not bad:
        bad = sorted(set(unbound_phrases(candidate, sources)))
    return bad


_OPENERS = re.compile(r"^(a picture of|an image of|a photo of|this is|these are|there is|there are|a close-up of)\s+",
                      re.I)


def merge_captions(sources: Sequence[str]) -> str:
    """Deterministic merger: the most detailed source, then each other sentence that adds a content word.

    Anchored by construction (it only copies sources). Used when the LLM's blend is rejected.

    Example:
        >>> merge_captions(["A circle.", "Two red circles on the grass.", "A photo of a woman."])
        'Two red circles on the grass. A woman.'
    """
    sents = []
    for s in sources:
        for part in re.split(r"(?<=[.!?])\s+", s.strip()):
            part = part.strip()
            if part:
                sents.append(part if part[-1] in ".!?" else part + ".")
    if not sents:
        return ""
    order = sorted(range(len(sents)), key=lambda i: (-len(content_words(sents[i])), i))
    merged = [sents[order[0]]]
    covered = content_words(merged[0])
    for i in range(len(sents)):
        if i == order[0]:
            continue
        new = content_words(sents[i]) - covered
        if new:
            text = _OPENERS.sub("", sents[i])
            merged.append(text[:1].upper() + text[1:])
            covered |= content_words(sents[i])
    return " ".join(merged)


@dataclass
class BoostResult:
    """One boosted caption and how it was made."""

    caption: str
    source: str
    """``"llm"`` (the blend passed the anchoring check) or ``"merge"`` (rejected, deterministic merger)."""
    llm_caption: str = ""
    """What the LLM wrote (kept for inspection, also when rejected)."""
    unanchored: list[str] = field(default_factory=list)
    """The content words that made the LLM caption fail the check."""


PROMPT = ("Here are several descriptions of the same image:\n{sources}\n"
          "Write one detailed description of the image that combines all of their details. "
          "Use only details stated above; do not add anything. Answer with the description only.")

# One worked example shown before each request (few-shot): small instruct models copy its form, one
# sentence that keeps every source detail and adds none.
FEW_SHOT = (("A dog.", "A photo of a brown dog on a sofa.", "A small brown dog lying next to a red cushion."),
            "A small brown dog lying on a sofa next to a red cushion.")


def _clean(text: str) -> str:
    text = text.strip().split("\n")[0].strip().strip('"').strip()
    text = re.sub(r"^(description|answer)\s*:\s*", "", text, flags=re.I)
    return text


def boost_messages(sources: Sequence[str], *, few_shot: bool = True) -> list[dict]:
    """The chat messages that ask the LLM to blend ``sources`` (with the worked example when ``few_shot``).

    Example:
        >>> [m["role"] for m in boost_messages(["A circle."])]
        ['user', 'assistant', 'user']
    """
    def ask(srcs):
        return {"role": "user", "content": PROMPT.format(sources="\n".join(f"- {s}" for s in srcs))}

    shots = [ask(FEW_SHOT[0]), {"role": "assistant", "content": FEW_SHOT[1]}] if few_shot else []
    return shots + [ask(sources)]


def boost_captions(sources: Sequence[Sequence[str]], *, lm: Any = None, max_new_tokens: int = 60,
                   batch_size: int = 8, use_llm: bool = True, progress: bool = False, few_shot: bool = True,
                   check_phrases: bool = True, min_detail: float = 1.0) -> list[BoostResult]:
    """Blend each list of source captions into one anchored caption.

    Args:
        sources: per image, its reference captions plus any extra detail sources.
        lm: a :class:`vlm.pretrained.LanguageModel` (default: SmolLM2-135M-Instruct, offline).
        max_new_tokens: LLM budget per caption.
        batch_size: prompts generated together (left-padded, KV-cached).
        use_llm: False skips the LLM and returns the deterministic merger (the ablation).
        progress: show a progress bar.
        few_shot: show the LLM one worked example first (:data:`FEW_SHOT`).
        check_phrases: also reject unbound phrases (:func:`unbound_phrases`), not only unanchored words.
        min_detail: also reject a blend with fewer distinct content words than ``min_detail`` times those of
            the most detailed single source (a blend that drops details is a worse target; 0 turns it off).

    Example:
        >>> r = boost_captions([["A circle.", "Two red circles on the grass."]], use_llm=False)
        >>> r[0].caption, r[0].source
        ('Two red circles on the grass.', 'merge')
    """
    from tqdm import tqdm

    results: list[BoostResult] = []
    if not use_llm:
        return [BoostResult(merge_captions(s), "merge") for s in sources]
    import torch

    if lm is None:
        from vlm.pretrained import load_language_model

        lm = load_language_model()
    tok = lm.tokenizer
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    for start in tqdm(range(0, len(sources), batch_size), desc="boost", disable=not progress):
        group = sources[start:start + batch_size]
        prompts = [tok.apply_chat_template(boost_messages(srcs, few_shot=few_shot), tokenize=False,
                                           add_generation_prompt=True) for srcs in group]
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.model.device)
        with torch.inference_mode():
            out = lm.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for srcs, text in zip(group, texts):
            cand = _clean(text)
            bad = anchoring_violations(cand, srcs, check_phrases=check_phrases) if cand else ["<empty>"]
            if not bad and min_detail and srcs:
                need = min_detail * max(len(content_words(x)) for x in srcs)
                if len(content_words(cand)) < need:
                    bad = [f"<fewer details: {len(content_words(cand))} < {need:g}>"]
            if cand and not bad:
                results.append(BoostResult(cand, "llm", cand))
            else:
                results.append(BoostResult(merge_captions(srcs), "merge", cand, bad))
    return results


def boost_dataset(data: str | Path, out: str | Path, *, split: str | None = None, extra_fields: Sequence[str] = (),
                  limit: int | None = None, use_llm: bool = True, batch_size: int = 8, progress: bool = True,
                  lm: Any = None, **boost_kw: Any) -> dict:
    """Write a copy of dataset ``data`` to ``out`` with a ``boosted_caption`` (+ ``boost_source``) field.

    Resumable: results are appended to ``out/boost_progress.jsonl`` batch by batch, and a rerun boosts
    only the images not yet done. ``extra_fields`` names record fields used as additional detail sources
    (e.g. a dense captioner's output). ``boost_kw`` go to :func:`boost_captions` (``few_shot``,
    ``check_phrases``, ``min_detail``, ``max_new_tokens``). Returns counts, the LLM rejection rate and the
    rejections by reason (unanchored word, unbound phrase, fewer details, empty).
    """
    from vlm.data import ImageFolderWriter, Record, read_imagefolder

    ds = read_imagefolder(data, split=split, check_images=False)
    records = list(ds)[:limit] if limit else list(ds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prog = out / "boost_progress.jsonl"
    done: dict[str, dict] = {}
    if prog.exists():
        for line in prog.read_text().splitlines():
            try:
                obj = json.loads(line)
                done[obj["file_name"]] = obj
            except (json.JSONDecodeError, KeyError):
                logger.warning("%s: dropping a malformed line (an interrupted write)", prog)
    todo = [r for r in records if r.file_name not in done]
    srcs = [list(r.captions) + [str(r.extra[f]) for f in extra_fields if r.extra.get(f)] for r in todo]
    if lm is None and use_llm and todo:
        from vlm.pretrained import load_language_model

        lm = load_language_model()
    with prog.open("a") as f:
        for start in range(0, len(todo), batch_size * 4):
            chunk = slice(start, start + batch_size * 4)
            res = boost_captions(srcs[chunk], lm=lm, batch_size=batch_size, use_llm=use_llm, progress=False,
                                 **boost_kw)
            for r, b in zip(todo[chunk], res):
                obj = {"file_name": r.file_name, "caption": b.caption, "source": b.source,
                       "llm_caption": b.llm_caption, "unanchored": b.unanchored}
                done[r.file_name] = obj
                f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if progress:
                logger.info("boosted %d / %d", min(start + batch_size * 4, len(todo)), len(todo))
    with ImageFolderWriter(out) as w:
        for r in records:
            b = done[r.file_name]
            extra = dict(r.extra)
            extra["boosted_caption"] = b["caption"]
            extra["boost_source"] = b["source"]
            w.add(ds.root / r.file_name, Record(file_name=r.file_name, captions=list(r.captions), id=r.id,
                                                split=r.split, label=r.label, extra=extra))
    n_llm = sum(done[r.file_name]["source"] == "llm" for r in records)
    reasons = {"unanchored_word": 0, "unbound_phrase": 0, "fewer_details": 0, "empty": 0}
    for r in records:
        bad = done[r.file_name]["unanchored"]
        if bad:
            key = ("empty" if bad[0] == "<empty>" else "fewer_details" if bad[0].startswith("<fewer")
                   else "unbound_phrase" if " " in bad[0] else "unanchored_word")
            reasons[key] += 1
    return {"images": len(records), "llm_accepted": n_llm, "merged": len(records) - n_llm,
            "rejection_rate": round(1 - n_llm / max(len(records), 1), 4) if use_llm else None,
            "rejections": reasons if use_llm else None, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    """``python -m vlm boost --data DIR --out DIR [--split train] [--limit N] [--no-llm]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vlm boost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (imagefolder + metadata.jsonl)")
    p.add_argument("--out", required=True, help="output dataset folder (a copy with boosted_caption)")
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--extra-field", action="append", default=[], help="record field used as a detail source")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-llm", action="store_true", help="deterministic merger only (ablation)")
    p.add_argument("--no-few-shot", action="store_true", help="ask without the worked example")
    p.add_argument("--words-only", action="store_true", help="anchor single words only, not phrases")
    p.add_argument("--min-detail", type=float, default=1.0,
                   help="reject blends with fewer content words than this times the most detailed source (0: off)")
    args = p.parse_args(argv)
    stats = boost_dataset(args.data, args.out, split=args.split, extra_fields=args.extra_field, limit=args.limit,
                          use_llm=not args.no_llm, batch_size=args.batch_size, few_shot=not args.no_few_shot,
                          check_phrases=not args.words_only, min_detail=args.min_detail)
    print(json.dumps(stats, indent=2))
    return 0
