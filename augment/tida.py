"""The TIDA dataset job: counterfactual captions, edited images, verification and provenance, written in the
package's dataset format.

Usage::

    # the built-in world: exact scene edits (the default editor when records carry scene graphs)
    python -m augment tida --data data/world --split train --skills color,counting,gender --out tida-world/
    # Flickr30K (Karpathy JSON + images) with Stable Diffusion inpainting on a GPU
    python -m augment tida --data flickr30k/ --split train --editor inpaint \\
        --model stabilityai/stable-diffusion-2-inpainting --device cuda --dtype float16 \\
        --retriever open_clip:ViT-B-32:openai --out tida-flickr/
    # shards: one per process, the last one to finish merges (torchrun --nproc-per-node 4 -m ... alike)
    accelerate launch --num_processes 4 -m augment tida --data flickr30k/ ... --out tida-flickr/
    python -m augment tida ... --shard 0/2 ; python -m augment tida ... --shard 1/2   # any machines, one OUT
    python -m augment tida-merge --out tida-flickr/                                   # merge again by hand

Per record (TIDA steps 1-5, METHODS.md section 1): the captions of the record (``--captions all``, ``first``
or one drawn at random among those with a skill word, ``sample``) are scanned for skill words
(:func:`augment.find_skills`); every counterfactual of them (:func:`augment.counterfactuals`) is a candidate;
``--edits-per-record N`` of them are drawn (:func:`plan_edits`: skills in turn, a word then its alternative;
0 takes every candidate). Each drawn edit is applied to the image by the editor (:mod:`augment.editors`),
checked by :class:`augment.verify.EditVerifier`, and, when accepted, written as a new record:

- ``file_name`` ``images/<source id>_<hash>.png`` (PNG: lossless and byte-deterministic), ``id``
  ``<source id>-tida-c<caption index>-w<char offset>-<new word>``, the source's ``split`` and ``label``;
- ``captions``: the edited caption; on world data (the editor returns the edited scene graph) the record gets
  as many captions as its source, the edited one at its source index and the others regenerated from the
  edited scene (:func:`vlm.world.human_captions`), plus ``scene`` (the edited scene graph, so
  :mod:`vlm.world.facts` can score captions of the image) and ``dense_caption`` when the source had one;
- ``tida``: provenance: ``source_id``, ``source_file``, ``skill``, ``word``, ``new_word``, ``phrase``,
  ``new_phrase``, ``caption_index``, ``caption`` (original), ``edited_caption``, ``counterfactual`` (the edited
  caption as :func:`augment.counterfactuals` wrote it: on world data a gender edit's garment is put right,
  "Two men in red dresses." -> "Two men in red shirts.", since the world draws men in shirts), ``other_captions``
  ("regenerated" or "none"), ``editor``, ``seed``, ``edit`` (the editor's settings), ``edit_info`` (what it
  changed), ``retriever``, ``verification`` (scores, checks, reasons; None with ``--no-verify``), ``accepted``.

Rejected edits (and edits the editor could not apply) are not written by default but counted, with their
reasons, in ``OUT/tida_report.json``; ``--keep-rejected`` writes rejected (applied) edits too, with
``tida.accepted`` false, to inspect or tune thresholds. Other fields of the source record are not copied:
they describe the original image.

Determinism and resume: the edits of a record and their seeds are functions of (``--seed``, record id,
caption index, skill, word offset, new word) through :func:`augment.editors.stable_seed`, never of the
processing order. A shard works through its records in chunks of ``--batch-size``; after a chunk its images
are written atomically (and fsynced) and one line describing the whole chunk is appended to
``OUT/tida-work/shard-<i>-of-<N>.jsonl`` and fsynced. A rerun skips the chunks of the log, drops a torn last
line, and redoes a chunk from its start, so batches are the same and a job killed at any point (SIGKILL
included) ends byte-identical to an uninterrupted one. ``OUT/tida_config.json`` holds the resolved settings
and the input's identity: a rerun with other settings or a changed input is refused (use a new ``--out``).

Shards: ``--shard i/N`` takes the records whose index (in the dataset after ``--split``/``--limit``) is
``i`` modulo ``N``; under ``accelerate launch`` / ``torchrun`` the ``RANK`` / ``WORLD_SIZE`` environment sets
the shard (and ``cuda`` becomes ``cuda:$LOCAL_RANK``). All shards write into one ``OUT``: images land in the
shared ``OUT/images/`` under names unique to their record, each shard keeps its own log. The process that
completes the last shard merges: it writes ``OUT/metadata.jsonl`` through :class:`vlm.data.ImageFolderWriter`
(records in source order, so any sharding gives the same file) and ``OUT/tida_report.json``;
``python -m augment tida-merge --out OUT`` (:func:`merge_tida`) does it again by hand, e.g. after copying the
shards of several machines into one folder. Verification runs per record (its edits are one batch), so
decisions and scores do not depend on the sharding; the scene editor edits image by image, so with it the
output is identical for every sharding. Diffusion editors batch the images of a chunk, and another batch
composition (another sharding, not a resume) may change their pixels by float rounding.

Bad records (unreadable image, bad scene graph, bad metadata line) stop the job with a
:class:`vlm.data.DatasetFormatError` naming the file, line and field (``--on-error raise``, the default), or
are skipped and listed in the report (``--on-error skip``); nothing of a bad record is written.

Example:
    >>> import tempfile
    >>> from vlm.data import read_imagefolder
    >>> from vlm.world import generate_world
    >>> data = generate_world(tempfile.mkdtemp(), n=6, seed=0, preset="tida-biased", image_size=32)
    >>> out = tempfile.mkdtemp() + "/tida"
    >>> report = run_tida(TIDAConfig(data=str(data), out=out, verify=False), progress=False)
    >>> report["written"] == len(read_imagefolder(out)) > 0
    True
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augment.counterfactual import CaptionEdit, counterfactuals
from augment.editors.base import stable_seed

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from vlm.data import Record

logger = logging.getLogger(__name__)

EDITORS = ("auto", "scene", "inpaint", "instruct-pix2pix", "regenerate")
"""Editor names of :class:`TIDAConfig`; "auto" is "scene" when records carry scene graphs, else "inpaint"."""

CONFIG_FILE = "tida_config.json"
REPORT_FILE = "tida_report.json"
WORK_DIR = "tida-work"

# Settings that may differ between the runs (and shards) of one output folder. The device is among them so that
# each rank of a launch may take its own GPU; moving a diffusion job between CPU and GPU changes its pixels.
_RUN_ONLY = ("data", "out", "shard", "device", "on_error")


@dataclass
class TIDAConfig:
    """One TIDA job: what to read, how to edit and verify, where to write. Checked on construction.

    Example:
        >>> TIDAConfig(data="data/world", out="tida", edits_per_record=2).captions
        'all'
        >>> TIDAConfig(data="d", out="o", captions="some")
        Traceback (most recent call last):
        ...
        ValueError: TIDAConfig.captions must be one of ('all', 'first', 'sample'), got 'some'
    """

    data: str
    """The input: a dataset folder (``metadata.jsonl`` + images), a Karpathy JSON (``dataset_flickr30k.json``),
    or a folder holding one (images in ``flickr30k-images/``, ``images/`` or the folder itself)."""
    out: str
    """The output folder (a dataset folder once the job is done); must be new, empty, or this job's."""
    split: str | None = None
    """Only the records of this split (TIDA augments ``train``); None: every record. Karpathy ``restval``
    counts as ``train``."""
    limit: int | None = None
    """Only the first ``limit`` records (after ``split``)."""
    image_dir: str | None = None
    """Where a Karpathy JSON's images are, when not next to it."""
    skills: tuple[str, ...] | None = None
    """Skill names (shipped or from ``skill_files``); None: gender, color, counting and the files' skills."""
    skill_files: tuple[str, ...] = ()
    """YAML skill files or folders of them (see ``augment/skill_data/``)."""
    captions: str = "all"
    """Which captions of a record are edited: "all", "first", or "sample" (one drawn among those with a skill
    word, seeded by the record)."""
    edits_per_record: int = 1
    """Edits drawn per record from the candidates of its captions (skills in turn); 0: every candidate."""
    seed: int = 0
    """Seed of the draws and of every edit (with the record id, caption index, skill, word and new word)."""
    editor: str = "auto"
    """One of :data:`EDITORS`."""
    model: str | None = None
    """Diffusion editors: a hub id or a ``save_pretrained`` folder; None: the editor's default model."""
    segmenter: str | None = None
    """Inpainting: the CLIPSeg model (hub id or folder) that finds the edited phrase; None: the default."""
    device: str = "auto"
    """Device of the diffusion editor, segmenter and retriever ("auto": CUDA when present)."""
    dtype: str = "auto"
    """Dtype of the diffusion editor ("auto": float16 on CUDA, float32 on CPU)."""
    steps: int = 50
    """Denoising steps of the diffusion editors."""
    guidance: float | None = None
    """Classifier-free guidance of the diffusion editors; None: the editor's default (7.5; regenerate: 8)."""
    world_seed: int | None = None
    """Scene editor: the world's seed (to re-render images exactly); None: read from ``DATA/world.json``."""
    other_captions: str = "regenerate"
    """World data: "regenerate" the source's other captions from the edited scene, or "none" (only the
    edited caption)."""
    verify: bool = True
    """Verify edits with :class:`augment.verify.EditVerifier`; False writes every applied edit."""
    retriever: str = "finecap:lit"
    """Retriever spec of the verifier (:func:`vlm.retrieval.load_retriever`)."""
    margin: float | None = 0.0
    """Verifier: least ``cos(edited, target) - cos(edited, source)``; None turns the check off."""
    gain: float | None = None
    """Verifier: least rise of that margin over the original image; None: off."""
    direction: float | None = None
    """Verifier: least directional similarity (image change vs caption change); None: off."""
    max_unmasked_diff: float | None = 0.02
    """Verifier: largest mean pixel change outside the edit mask (0-1); None: off."""
    keep_rejected: bool = False
    """Also write applied edits the verifier rejected (``tida.accepted`` false)."""
    batch_size: int = 8
    """Records per chunk (the unit of work that is committed to the log) and images per pipeline call."""
    shard: str | None = None
    """"i/N": process only records with index % N == i; None: from RANK/WORLD_SIZE, else all (0/1)."""
    on_error: str = "raise"
    """Bad records: "raise" (stop, naming file, line and field) or "skip" (report them)."""

    def __post_init__(self) -> None:
        if isinstance(self.skills, str):
            self.skills = tuple(s for s in self.skills.split(",") if s)
        elif self.skills is not None:
            self.skills = tuple(self.skills)
        self.skill_files = tuple(str(p) for p in self.skill_files)
        choices = {"captions": ("all", "first", "sample"), "editor": EDITORS,
                   "other_captions": ("regenerate", "none"), "on_error": ("raise", "skip")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TIDAConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, least in (("edits_per_record", 0), ("batch_size", 1), ("steps", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < least:
                raise ValueError(f"TIDAConfig.{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"TIDAConfig.limit must be >= 1 or None, got {self.limit}")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.verify:
            self.verify_config()  # thresholds in range

    def verify_config(self):
        """The :class:`augment.verify.VerifyConfig` of the thresholds."""
        from augment.verify import VerifyConfig

        return VerifyConfig(margin=self.margin, gain=self.gain, direction=self.direction,
                            max_unmasked_diff=self.max_unmasked_diff, batch_size=max(self.batch_size, 1))


# ---- which edits ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedEdit:
    """One edit the job will try: a counterfactual of caption ``caption_index`` and the seed of its image edit."""

    caption_index: int
    edit: CaptionEdit
    seed: int
    counterfactual: str | None = None
    """The caption as :func:`augment.counterfactuals` wrote it, where the job changed ``edit.edited`` (the
    world's garments: "Two men in red dresses." -> "Two men in red shirts."); None otherwise."""


def record_key(record: Record) -> str:
    """What identifies a record in seeds, ids and file names: its id, else its file name."""
    return record.id if record.id is not None else record.file_name


def edit_seed(seed: int, key: str, caption_index: int, edit: CaptionEdit) -> int:
    """The seed of one edit: a function of the job seed, the record, the caption, the skill and the word change.

    Example:
        >>> e = counterfactuals("A red circle.")[0]
        >>> edit_seed(0, "000017", 0, e) == stable_seed("tida", 0, "000017", 0, "color", 2, "green")
        True
    """
    return stable_seed("tida", seed, key, caption_index, edit.skill, edit.start, edit.new_word.lower())


def plan_edits(record: Record, skills=None, *, captions: str = "all", edits_per_record: int = 1,
               seed: int = 0) -> tuple[list[PlannedEdit], dict[str, dict[str, int]]]:
    """The edits to try on a record, and what was found: ``{skill: {"captions": n, "candidates": n}}``.

    Candidates are the counterfactuals (:func:`augment.counterfactuals`) of the chosen captions. With
    ``edits_per_record`` N > 0, N are drawn: the skills present take turns (in a seeded order), each turn
    draws a skill word (caption and position) uniformly, then one of its unused alternatives. The draw and the
    seeds depend on the record and ``seed`` only. Edits come back in caption and text order.

    Example:
        >>> from vlm.data import Record
        >>> rec = Record("a.png", ["Two women and a red circle.", "A circle."], id="7")
        >>> plan, found = plan_edits(rec, edits_per_record=0)
        >>> [p.edit.edited for p in plan][:3]
        ['Three women and a red circle.', 'Two men and a red circle.', 'Two women and a blue circle.']
        >>> found["color"], len(plan)
        ({'captions': 1, 'candidates': 4}, 6)
        >>> len(plan_edits(rec, edits_per_record=2)[0])
        2
    """
    from augment.skills import resolve_skills

    skill_objs = resolve_skills(skills)
    key = record_key(record)
    rng = random.Random(stable_seed("tida-select", seed, key))
    # "first" reads caption 0 only; "sample" must know every caption's skill words to draw among them.
    per_caption = [counterfactuals(c, skill_objs) if captions != "first" or k == 0 else []
                   for k, c in enumerate(record.captions)]
    if captions == "first":
        chosen = [0]
    elif captions == "sample":
        with_skill = [k for k, c in enumerate(per_caption) if c]
        chosen = [rng.choice(with_skill)] if with_skill else []
    else:
        chosen = list(range(len(record.captions)))
    found = {s.name: {"captions": 0, "candidates": 0} for s in skill_objs}
    for k in chosen:
        for name in {e.skill for e in per_caption[k]}:
            found[name]["captions"] += 1
        for e in per_caption[k]:
            found[e.skill]["candidates"] += 1
    candidates = [(k, e) for k in chosen for e in per_caption[k]]
    if edits_per_record > 0:
        candidates = _draw(candidates, edits_per_record, [s.name for s in skill_objs], rng)
    candidates.sort(key=lambda ke: (ke[0], ke[1].start, ke[1].skill, ke[1].new_word))
    return [PlannedEdit(k, e, edit_seed(seed, key, k, e)) for k, e in candidates], found


def _draw(candidates: list[tuple[int, CaptionEdit]], n: int, skill_order: list[str],
          rng: random.Random) -> list[tuple[int, CaptionEdit]]:
    # skill -> (caption, word offset) -> its alternatives, in a fixed order for the seeded draws
    pool: dict[str, dict[tuple[int, int], list[tuple[int, CaptionEdit]]]] = {}
    for k, e in candidates:
        pool.setdefault(e.skill, {}).setdefault((k, e.start), []).append((k, e))
    order = [s for s in skill_order if s in pool]
    rng.shuffle(order)
    out: list[tuple[int, CaptionEdit]] = []
    while len(out) < n and order:
        for s in list(order):
            if len(out) >= n:
                break
            words = pool[s]
            word = rng.choice(sorted(words))
            alts = words[word]
            out.append(alts.pop(rng.randrange(len(alts))))
            if not alts:
                del words[word]
            if not words:
                order.remove(s)
    return out


# ---- shards -----------------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` as ``(i, N)``, checked.

    Example:
        >>> parse_shard("1/4")
        (1, 4)
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None or not int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"shard {text!r}: write it as i/N with 0 <= i < N (e.g. 0/2)")
    return int(m.group(1)), int(m.group(2))


def resolve_shard(shard: str | None = None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """The shard ``(i, N)`` of this process: ``shard`` when given, else ``RANK`` / ``WORLD_SIZE`` (set by
    ``accelerate launch`` and ``torchrun``), else ``(0, 1)``.

    Example:
        >>> resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}), resolve_shard("0/3", {}), resolve_shard(None, {})
        ((1, 2), (0, 3), (0, 1))
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if shard is not None:
        if world > 1:
            raise ValueError(f"--shard {shard} and a distributed launch (WORLD_SIZE={world}) both choose the shard; "
                             "drop --shard under accelerate launch / torchrun")
        return parse_shard(shard)
    if world > 1:
        return parse_shard(f"{env.get('RANK', '0')}/{world}")
    return 0, 1


def _shard_device(device: str, env: dict[str, str] | None = None) -> str:
    """``cuda`` (or ``auto``) becomes this process's GPU under a distributed launch."""
    env = os.environ if env is None else env
    if device in ("cuda", "auto") and int(env.get("WORLD_SIZE", "1") or 1) > 1 and "LOCAL_RANK" in env:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(env['LOCAL_RANK'])}"
    return device


# ---- the input --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    root: Path
    records: list
    file: Path
    lines: dict[str, int]
    skipped: list[str]
    world_seed: int | None

    def error(self, record: Record, reason: str, field_name: str):
        from vlm.data import DatasetFormatError

        line = self.lines.get(record.file_name)
        if line is None:  # a Karpathy entry: name it
            reason = f"entry {record_key(record)!r} ({record.file_name}): {reason}"
        return DatasetFormatError(reason, file=self.file, line=line, field=field_name)


def _find_karpathy(folder: Path) -> Path:
    found = sorted(folder.glob("dataset_*.json")) + sorted((folder / "annotations").glob("dataset_*.json"))
    if not found:
        raise FileNotFoundError(f"{folder} holds neither a metadata.jsonl (the package's format) nor a Karpathy "
                                "split file dataset_*.json; pass a dataset folder or the JSON itself")
    if len(found) > 1:
        raise ValueError(f"{folder} holds several Karpathy files ({', '.join(p.name for p in found)}); pass one "
                         "of them as --data")
    return found[0]


def _load_source(cfg: TIDAConfig) -> _Source:
    from vlm.data import METADATA_FILE, read_imagefolder, read_karpathy_json

    path = Path(cfg.data)
    if path.is_dir() and (path / METADATA_FILE).is_file():
        meta = path / METADATA_FILE
        ds = read_imagefolder(path, split=cfg.split, on_error=cfg.on_error, check_images=False)
        lines: dict[str, int] = {}
        for number, raw in enumerate(meta.read_bytes().split(b"\n"), start=1):
            try:
                name = json.loads(raw).get("file_name")
            except (ValueError, AttributeError):
                continue
            if isinstance(name, str):
                lines.setdefault(name, number)
        source_file = meta
    else:
        js = path if path.is_file() else _find_karpathy(path)
        base = js.parent.parent if js.parent.name == "annotations" else js.parent
        if cfg.image_dir is not None:
            image_dir = Path(cfg.image_dir)
        else:
            image_dir = next((d for d in (base / "flickr30k-images", base / "images") if d.is_dir()), base)
        ds = read_karpathy_json(js, image_dir, split=cfg.split, restval_as_train=True, on_error=cfg.on_error,
                                check_images=False)
        lines, source_file = {}, js
    records = list(ds)[:cfg.limit] if cfg.limit else list(ds)
    world_seed = cfg.world_seed
    world_json = Path(ds.root) / "world.json"
    if world_seed is None and world_json.is_file():
        from vlm.data import DatasetFormatError, read_json

        marker = read_json(world_json, "world marker", error=DatasetFormatError, fix="pass --world-seed")
        seed = marker.get("seed") if isinstance(marker, dict) else None
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise DatasetFormatError(f"not a world marker with an integer 'seed' (got {seed!r}); pass --world-seed",
                                     file=world_json, field="seed")
        world_seed = seed
    return _Source(Path(ds.root), records, source_file, lines, list(ds.skipped), world_seed)


def _load_image(src: _Source, record: Record) -> Image.Image:
    from PIL import Image

    from vlm.data import DatasetFormatError, resolve_inside

    try:
        path = resolve_inside(src.root, record.file_name)
        with Image.open(path) as im:
            return im.convert("RGB")
    except DatasetFormatError as err:
        raise src.error(record, err.reason, "file_name") from None
    except Exception as err:  # Pillow reports bad files as OSError, SyntaxError, ValueError ...
        what = "does not exist" if isinstance(err, FileNotFoundError) else \
            f"is not a readable image (Pillow: {type(err).__name__}: {err})"
        raise src.error(record, f"image {src.root / record.file_name} {what}; replace or remove the record",
                        "file_name") from None


def _load_scene(src: _Source, record: Record) -> dict:
    from vlm.world import Scene

    scene = record.extra.get("scene")
    if scene is None:
        raise src.error(record, "is missing; the scene editor needs each record's scene graph (or use another "
                        "--editor)", "scene")
    if record.id is None or not record.id.isdigit():
        raise src.error(record, f"is {record.id!r}; the scene editor re-renders world images, whose ids are their "
                        "numbers (the render seed derives from them)", "id")
    try:
        Scene.from_dict(scene)
    except Exception as err:
        raise src.error(record, f"is not a scene graph of the world ({type(err).__name__}: {err})", "scene") from None
    return scene


# ---- editors and the retriever ---------------------------------------------------------------------------


def build_editor(cfg: TIDAConfig, editor: str, *, device: str | None = None):
    """The :class:`augment.editors.ImageEditor` that ``editor`` names, with the config's settings.

    Example:
        >>> build_editor(TIDAConfig(data="d", out="o"), "scene").name
        'scene'
    """
    from augment import editors

    if editor == "scene":
        return editors.SceneEditor(check_garments=True, seed=cfg.seed)
    device = device or cfg.device
    kw: dict[str, Any] = {"device": device, "dtype": cfg.dtype, "num_inference_steps": cfg.steps,
                          "batch_size": cfg.batch_size, "seed": cfg.seed}
    if cfg.guidance is not None:
        kw["guidance_scale"] = cfg.guidance
    if editor == "inpaint":
        seg = editors.CLIPSegSegmenter(cfg.segmenter or editors.DEFAULT_CLIPSEG, device=device)
        return editors.InpaintEditor(cfg.model, segmenter=seg, **kw)
    if editor == "instruct-pix2pix":
        return editors.InstructPix2PixEditor(cfg.model, **kw)
    if editor == "regenerate":
        return editors.RegenerateEditor(cfg.model, **kw)
    raise ValueError(f"unknown editor {editor!r}; choose one of {EDITORS[1:]}")


# ---- the work log -----------------------------------------------------------------------------------------


class _ShardLog:
    """``OUT/tida-work/shard-i-of-N.jsonl``: one fsynced line per finished chunk, then ``{"complete": true}``.

    Opened with an exclusive lock (a second process on the same shard is refused); a torn last line (a kill
    during the write) is cut off, so its chunk is redone.
    """

    def __init__(self, out: Path, shard: int, n: int, *, lock: bool = True) -> None:
        self.path = shard_log_path(out, shard, n)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+b")
        if lock:
            try:
                import fcntl

                fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover  (not POSIX)
                pass
            except BlockingIOError:
                self.file.close()
                raise RuntimeError(f"shard {shard}/{n} of {out} is being processed by another process "
                                   f"({self.path} is locked)") from None
        self.file.seek(0)
        data = self.file.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            logger.warning("%s: dropping a torn last line (the job was killed while writing it)", self.path)
            self.file.truncate(cut)
        self.chunks: dict[int, dict] = {}
        self.final: dict | None = None
        for number, raw in enumerate(data[:cut].split(b"\n")[:-1], start=1):
            try:
                obj = json.loads(raw)
            except ValueError as err:
                raise ValueError(f"{self.path} line {number}: not JSON ({err}); the work log is damaged: delete "
                                 "the output folder and run again") from None
            if obj.get("complete"):
                self.final = obj
            else:
                self.chunks[int(obj["chunk"])] = obj

    def append(self, obj: dict) -> None:
        self.file.write((json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())
        if obj.get("complete"):
            self.final = obj
        else:
            self.chunks[int(obj["chunk"])] = obj

    def close(self) -> None:
        self.file.close()  # releases the lock


def shard_log_path(out: str | Path, shard: int, n: int) -> Path:
    """Where shard ``shard`` of ``n`` logs its finished chunks."""
    return Path(out) / WORK_DIR / f"shard-{shard}-of-{n}.jsonl"


# ---- the job ----------------------------------------------------------------------------------------------


def _settings(cfg: TIDAConfig, editor: str, num_shards: int, src: _Source) -> dict[str, Any]:
    from vlm.data import file_identity

    conf = {k: v for k, v in asdict(cfg).items() if k not in _RUN_ONLY}
    conf.update(editor=editor, num_shards=num_shards, world_seed=src.world_seed,
                skills=list(cfg.skills) if cfg.skills is not None else None, skill_files=list(cfg.skill_files))
    # Through JSON, so that it compares equal to what a previous run wrote.
    return json.loads(json.dumps({"settings": conf, "input": file_identity(src.file), "records": len(src.records)}))


def _check_out(out: Path, settings: dict[str, Any], data: Path) -> None:
    """Write ``OUT/tida_config.json``, or check that a previous run of ``OUT`` used the same settings."""
    from vlm.data import atomic_write_text

    if out.resolve() == data.resolve() or data.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} is inside --data {data}; write the augmented dataset elsewhere")
    path = out / CONFIG_FILE
    if path.is_file():
        from vlm.data import read_json

        before = read_json(path, "TIDA job settings file", fix="delete it to start the job anew, or pass a new --out")
        if before != settings:
            diff = sorted(k for k in set(before["settings"]) | set(settings["settings"])
                          if before["settings"].get(k) != settings["settings"].get(k))
            if before["input"] != settings["input"]:
                diff.append(f"input ({before['input']} -> {settings['input']})")
            raise ValueError(f"{out} holds a TIDA job with other settings ({', '.join(diff) or 'records'}); use a "
                             "new --out, or delete the folder to start again")
        return
    # Another shard may be writing the config right now (its temporary file is all there is): not foreign.
    if out.exists() and any(not p.name.startswith(f".{CONFIG_FILE}.") for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no TIDA job ({CONFIG_FILE}); use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def run_tida(cfg: TIDAConfig, *, editor: Any = None, retriever: Any = None, progress: bool = True) -> dict:
    """Run (or resume) this process's shard of a TIDA job; merge when it completes the last shard.

    Args:
        cfg: the job.
        editor: an :class:`augment.editors.ImageEditor` to use instead of the one ``cfg.editor`` names; its
            ``name`` is recorded (and checked on resume) as the editor.
        retriever: a :class:`vlm.retrieval.Retriever` instead of loading ``cfg.retriever``.
        progress: show a tqdm progress bar.

    Returns:
        The job report (also in ``OUT/tida_report.json``) when this call merged, else a summary of the shard
        (``{"shard", "num_shards", "complete", "merged": False, "waiting_for"}``).
    """
    from tqdm import tqdm

    from augment.skills import load_skills, resolve_skills

    shard, n = resolve_shard(cfg.shard)
    registry = load_skills(cfg.skill_files)
    skills = resolve_skills([registry[s] for s in _skill_names(cfg, registry)])
    src = _load_source(cfg)
    name = cfg.editor
    if editor is not None:
        name = getattr(editor, "name", name)
    elif name == "auto":
        name = "scene" if src.records and "scene" in src.records[0].extra else "inpaint"
    if name == "scene" and src.world_seed is None:
        raise ValueError(f"the scene editor re-renders world images and needs the world's seed: {src.root}/"
                         "world.json is missing; pass --world-seed")
    out = Path(cfg.out)
    _check_out(out, _settings(cfg, name, n, src), Path(cfg.data))
    log = _ShardLog(out, shard, n)
    try:
        mine = list(range(shard, len(src.records), n))
        chunks = [mine[s:s + cfg.batch_size] for s in range(0, len(mine), cfg.batch_size)]
        todo = [j for j in range(len(chunks)) if j not in log.chunks]
        if log.final is None and todo:
            device = _shard_device(cfg.device)
            if editor is None:
                editor = build_editor(cfg, name, device=device)
            verifier = None
            if cfg.verify:
                from augment.verify import EditVerifier

                if retriever is None:
                    from vlm.devices import resolve_device
                    from vlm.retrieval import load_retriever

                    retriever = load_retriever(cfg.retriever, device=resolve_device(device))
                verifier = EditVerifier(retriever, cfg.verify_config())
            done = sum(len(chunks[j]) for j in log.chunks if j < len(chunks))
            bar = tqdm(total=len(mine), initial=done, unit="img", desc=f"tida {shard}/{n}", disable=not progress)
            for j in todo:
                t0 = time.perf_counter()
                entries = _process_chunk(cfg, src, chunks[j], skills, editor, verifier, name, out)
                log.append({"chunk": j, "elapsed_s": round(time.perf_counter() - t0, 3), "records": entries})
                bar.update(len(chunks[j]))
            bar.close()
        if log.final is None:
            log.append({"complete": True, "chunks": len(chunks), "read_skipped": src.skipped})
    finally:
        log.close()
    waiting = [i for i in range(n) if not _complete(out, i, n)]
    if waiting:
        logger.info("shard %d/%d of %s is done; waiting for shard(s) %s before the merge", shard, n, out, waiting)
        return {"shard": shard, "num_shards": n, "complete": True, "merged": False, "waiting_for": waiting}
    return merge_tida(out)


def _skill_names(cfg: TIDAConfig, registry: dict) -> list[str]:
    from augment.skills import SKILLS, load_skills

    if cfg.skills:
        unknown = [s for s in cfg.skills if s not in registry]
        if unknown:
            raise ValueError(f"unknown skill(s) {unknown}; known: {sorted(registry)}")
        return list(dict.fromkeys(cfg.skills))
    user = [s for s in load_skills(cfg.skill_files, shipped=False) if s not in SKILLS]
    return list(SKILLS) + user


def _complete(out: Path, shard: int, n: int) -> bool:
    path = shard_log_path(out, shard, n)
    if not path.is_file():
        return False
    data = path.read_bytes()
    last = data[:data.rfind(b"\n")].rsplit(b"\n", 1)[-1] if data.endswith(b"\n") else b""
    try:
        return bool(last) and json.loads(last).get("complete") is True
    except ValueError:
        return False


def _process_chunk(cfg: TIDAConfig, src: _Source, indices: list[int], skills, editor, verifier, editor_name: str,
                   out: Path) -> list[dict]:
    """Plan, edit, verify and write the edits of some records; one log entry per record."""
    from augment.editors.scene import world_render_seed

    entries: list[dict] = []
    jobs: list[tuple[int, PlannedEdit]] = []  # (entry index, edit)
    images: dict[int, Any] = {}
    scenes: dict[int, dict] = {}
    for i in indices:
        rec = src.records[i]
        entry: dict[str, Any] = {"index": i, "source": rec.file_name, "error": None, "found": {}, "edits": []}
        try:
            images[len(entries)] = _load_image(src, rec)
            if editor_name == "scene":
                scenes[len(entries)] = _load_scene(src, rec)
        except ValueError as err:  # DatasetFormatError
            if cfg.on_error == "raise":
                raise
            logger.warning("skipping a bad record: %s", err)
            entry["error"] = str(err)
            entries.append(entry)
            continue
        plan, entry["found"] = plan_edits(rec, skills, captions=cfg.captions, edits_per_record=cfg.edits_per_record,
                                          seed=cfg.seed)
        if editor_name == "scene":  # the world draws men in shirts: "two men in red dresses" -> "... shirts"
            from augment.editors.scene import dress_for_world

            plan = [replace(p, edit=replace(p.edit, edited=fixed), counterfactual=p.edit.edited)
                    if (fixed := dress_for_world(p.edit.edited)) != p.edit.edited else p for p in plan]
        jobs.extend((len(entries), p) for p in plan)
        entries.append(entry)
    if not jobs:
        return entries
    records = [src.records[entries[e]["index"]] for e, _ in jobs]
    originals = [images[e] for e, _ in jobs]
    sources = [rec.captions[p.caption_index] for rec, (_, p) in zip(records, jobs)]
    targets = [p.edit.edited for _, p in jobs]
    kw: dict[str, Any] = {"edits": [p.edit for _, p in jobs], "seeds": [p.seed for _, p in jobs]}
    if editor_name == "scene":
        kw.update(scenes=[scenes[e] for e, _ in jobs],
                  render_seeds=[world_render_seed(rec.id, src.world_seed) for rec in records])
    results = editor.edit(originals, sources, targets, **kw)
    decisions: list[Any] = [None] * len(jobs)
    if verifier is not None:
        # One call per record: a retriever's float rounding may depend on what else is in the batch, and a
        # decision must not depend on the sharding or on where a resumed job restarted.
        by_record: dict[int, list[int]] = {}
        for k, r in enumerate(results):
            if r.ok:
                by_record.setdefault(jobs[k][0], []).append(k)
        for ks in by_record.values():
            got = verifier.verify([results[k] for k in ks], [sources[k] for k in ks], [targets[k] for k in ks],
                                  originals=[originals[k] for k in ks], skills=[jobs[k][1].edit.skill for k in ks])
            for k, d in zip(ks, got):
                decisions[k] = d
    for k, ((e, p), rec, result) in enumerate(zip(jobs, records, results)):
        d = decisions[k]
        accepted = result.ok and (d is None or d.accepted)
        item: dict[str, Any] = {"skill": p.edit.skill, "caption_index": p.caption_index, "word": p.edit.word,
                                "new_word": p.edit.new_word, "seed": p.seed, "applied": result.ok,
                                "reason": result.reason, "decision": _decision_dict(d), "accepted": accepted,
                                "record": None}
        if result.ok and (accepted or cfg.keep_rejected):
            item["record"] = _write_edit(out, rec, p, result, d, cfg, editor_name)
        entries[e]["edits"].append(item)
    return entries


def _decision_dict(d) -> dict | None:
    if d is None:
        return None
    out = d.to_dict()
    out["scores"] = {k: round(float(v), 6) for k, v in out["scores"].items()}
    return out


def _file_stem(key: str) -> str:
    from vlm.data import hf_split_keyword

    stem = re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-")[-40:].strip("-")
    return "" if not stem or hf_split_keyword(stem + "_") else stem + "_"


def _write_edit(out: Path, rec: Record, p: PlannedEdit, result, decision, cfg: TIDAConfig, editor_name: str) -> dict:
    """Write the edited image (atomically, fsynced) and return its metadata object."""
    import hashlib

    from vlm.data import Record, atomic_write_bytes, record_to_json

    key = record_key(rec)
    e = p.edit
    new_id = f"{key}-tida-c{p.caption_index}-w{e.start}-{e.new_word.lower()}"
    digest = hashlib.sha256(new_id.encode("utf-8")).hexdigest()[:10]
    file_name = f"images/{_file_stem(key)}{digest}.png"
    info = {k: v for k, v in result.info.items() if k != "scene"}
    scene = result.info.get("scene")
    extra: dict[str, Any] = {}
    captions = [e.edited]
    other = "none"
    if scene is not None:
        from vlm.world import Scene, dense_caption, human_captions

        extra["scene"] = scene
        edited_scene = Scene.from_dict(scene)
        if cfg.other_captions == "regenerate" and len(rec.captions) > 1:
            captions = human_captions(edited_scene, random.Random(p.seed), len(rec.captions))
            captions[p.caption_index] = e.edited
            other = "regenerated"
        if "dense_caption" in rec.extra:
            extra["dense_caption"] = dense_caption(edited_scene)
    extra["tida"] = {
        "source_id": rec.id, "source_file": rec.file_name, "skill": e.skill, "word": e.word,
        "new_word": e.new_word, "phrase": e.phrase, "new_phrase": e.new_phrase, "caption_index": p.caption_index,
        "caption": e.caption, "edited_caption": e.edited, "counterfactual": p.counterfactual or e.edited,
        "other_captions": other, "editor": editor_name,
        "seed": p.seed, "edit": result.params, "edit_info": info,
        "retriever": cfg.retriever if decision is not None else None,
        "verification": _decision_dict(decision), "accepted": decision is None or decision.accepted,
    }
    record = Record(file_name, captions, id=new_id, split=rec.split, label=rec.label, extra=extra)
    line = record_to_json(record)  # refuses what JSON cannot hold, before anything is written
    buf = io.BytesIO()
    result.image.convert("RGB").save(buf, format="PNG")  # no metadata chunks: bytes follow the pixels
    path = out / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue(), fsync=True)
    return json.loads(line)


# ---- merge and report ------------------------------------------------------------------------------------


def merge_tida(out: str | Path) -> dict:
    """Write ``OUT/metadata.jsonl`` from the logs of all shards (source order) and ``OUT/tida_report.json``.

    Raises ``ValueError`` naming the shards that are not finished. Returns the report.
    """
    from vlm.data import ImageFolderWriter, atomic_write_text, read_json, record_from_json

    out = Path(out)
    conf_path = out / CONFIG_FILE
    if not conf_path.is_file():
        raise FileNotFoundError(f"{conf_path} not found: {out} is not the output of `python -m augment tida`")
    settings = read_json(conf_path, "TIDA job settings file")
    n = settings["settings"]["num_shards"]
    waiting = [i for i in range(n) if not _complete(out, i, n)]
    if waiting:
        raise ValueError(f"{out}: shard(s) {', '.join(f'{i}/{n}' for i in waiting)} are not finished; run "
                         f"`python -m augment tida ... --shard i/{n}` for each (same --out), then merge again")
    entries: list[dict] = []
    final: list[dict] = []
    elapsed = 0.0
    for i in range(n):
        log = _ShardLog(out, i, n, lock=False)
        log.close()
        for j in sorted(log.chunks):
            entries.extend(log.chunks[j]["records"])
            elapsed += log.chunks[j].get("elapsed_s", 0.0)
        final.append(log.final or {})
    entries.sort(key=lambda en: en["index"])
    with ImageFolderWriter(out) as writer:
        for en in entries:
            for item in en["edits"]:
                if item["record"] is not None:
                    writer.add(None, record_from_json(item["record"]))
    for tmp in (out / "images").glob(".*.tmp") if (out / "images").is_dir() else ():
        tmp.unlink(missing_ok=True)  # left by a killed write; every shard is done, so none is in flight
    report = _report(entries, settings, final[0].get("read_skipped", []) if final else [])
    report.update(out=str(out), processing_s=round(elapsed, 3))
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    logger.info("merged %d shard(s) of %s: %d records written", n, out, report["written"])
    return report


def reason_key(reason: str) -> str:
    """A skip reason without its particulars, to count reasons: quoted text becomes '…', details are cut.

    Example:
        >>> reason_key("nothing in the scene matches 'a red circle' (the scene has two blue squares)")
        'nothing in the scene matches …'
        >>> reason_key("'two circles' is ambiguous: it matches two red circles, two blue circles")
        '… is ambiguous'
    """
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", reason)
    text = re.split(r":|\s\(", text, maxsplit=1)[0]
    return re.sub(r"\d+", "N", text).strip()


def _report(entries: list[dict], settings: dict, read_skipped: list[str]) -> dict:
    from augment.verify import EditDecision, acceptance_stats

    conf = settings["settings"]
    skills: dict[str, dict[str, Any]] = {}

    def row(s: str) -> dict[str, Any]:
        return skills.setdefault(s, {"records_found": 0, "captions_found": 0, "candidates": 0, "selected": 0,
                                     "edited": 0, "skipped": 0, "verified": 0, "accepted": 0, "rejected": 0,
                                     "written": 0, "skip_reasons": Counter()})

    decisions = []
    bad = [en for en in entries if en["error"]]
    for en in entries:
        for s, f in en["found"].items():
            r = row(s)
            r["records_found"] += f["captions"] > 0
            r["captions_found"] += f["captions"]
            r["candidates"] += f["candidates"]
        for item in en["edits"]:
            r = row(item["skill"])
            r["selected"] += 1
            if not item["applied"]:
                r["skipped"] += 1
                r["skip_reasons"][reason_key(item["reason"] or "not applied")] += 1
                continue
            r["edited"] += 1
            d = item["decision"]
            if d is not None:
                r["verified"] += 1
                decisions.append(EditDecision(d["accepted"], d["skill"], d["scores"], d["checks"], tuple(d["reasons"])))
            r["accepted" if item["accepted"] else "rejected"] += 1
            r["written"] += item["record"] is not None
    for r in skills.values():
        r["skip_reasons"] = dict(r["skip_reasons"].most_common())
    return {
        "data": settings["input"].rsplit("|", 2)[0],
        "editor": conf["editor"], "retriever": conf["retriever"] if conf["verify"] else None,
        "records": settings["records"], "processed": len(entries), "shards": conf["num_shards"],
        "bad_records": {"n": len(bad), "messages": [en["error"] for en in bad[:20]]},
        "unreadable_lines": {"n": len(read_skipped), "messages": read_skipped[:20]},
        "edits": {k: sum(r[k] for r in skills.values())
                  for k in ("candidates", "selected", "edited", "skipped", "verified", "accepted", "rejected",
                            "written")},
        "written": sum(r["written"] for r in skills.values()),
        "per_skill": skills,
        "acceptance": acceptance_stats(decisions) if conf["verify"] else None,
        "config": conf,
    }


__all__ = ["CONFIG_FILE", "EDITORS", "PlannedEdit", "REPORT_FILE", "TIDAConfig", "build_editor", "edit_seed",
           "merge_tida", "parse_shard", "plan_edits", "reason_key", "record_key", "resolve_shard", "run_tida",
           "shard_log_path"]
