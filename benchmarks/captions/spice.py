"""SPICE through pycocoevalcap's bundled ``spice-1.0.jar``, only when Stanford CoreNLP is already there.

SPICE parses captions into scene graphs with Stanford CoreNLP 3.6.0, whose two jars (~400 MB) are not part
of pycocoevalcap: its ``Spice()`` downloads them at first use. This module never downloads anything:
:func:`spice_status` says whether the jars are in place and, if not, exactly what to fetch and where to
put it; :class:`Spice` raises :class:`SpiceUnavailableError` with that message.

The run itself is pycocoevalcap's (``java -jar -Xmx8G spice-1.0.jar IN -cache DIR -out OUT -subset
-silent``, corpus score = mean over images of the "All" F-score), with a timeout, the parse cache under
``$FINECAP_CACHE/spice`` instead of inside site-packages, and temporary files that are always removed.

Example:
    >>> ok, message = spice_status()
    >>> isinstance(ok, bool) and isinstance(message, str)
    True
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
from pathlib import Path

from benchmarks.captions.meteor import _pycocoevalcap_dir, java_executable
from vlm.metrics.ngrams import check_gts_res

__all__ = ["Spice", "SpiceUnavailableError", "spice_status", "CORENLP_JARS", "CORENLP_URL"]

log = logging.getLogger(__name__)

CORENLP_URL = "https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class SpiceUnavailableError(RuntimeError):
    """SPICE cannot run here (Stanford CoreNLP jars missing, or no SPICE jar)."""


def _spice_dir(spice_dir: str | Path | None = None) -> Path:
    return Path(spice_dir) if spice_dir is not None else _pycocoevalcap_dir() / "spice"


def spice_status(spice_dir: str | Path | None = None) -> tuple[bool, str]:
    """``(available, message)``: whether SPICE can run, and what to do when it cannot.

    ``spice_dir`` is the folder holding ``spice-1.0.jar`` and ``lib/`` (default: pycocoevalcap's).
    """
    d = _spice_dir(spice_dir)
    if not (d / "spice-1.0.jar").is_file():
        return False, f"SPICE is unavailable: {d / 'spice-1.0.jar'} not found (reinstall pycocoevalcap)."
    missing = [j for j in CORENLP_JARS if not (d / "lib" / j).is_file()]
    if missing:
        return False, (
            f"SPICE is unavailable: it needs Stanford CoreNLP 3.6.0 and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing from {d / 'lib'}. This package never downloads "
            f"it. To enable SPICE: download {CORENLP_URL} (~400 MB), unzip it, and copy "
            f"stanford-corenlp-full-2015-12-09/{CORENLP_JARS[0]} and "
            f"stanford-corenlp-full-2015-12-09/{CORENLP_JARS[1]} into {d / 'lib'}/. "
            f"(SPICE 1.0 was built for Java 8; newer JREs may fail.)")
    return True, f"SPICE available ({d})"


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


class Spice:
    """pycocoevalcap's ``Spice`` interface: ``compute_score(gts, res) -> (SPICE, [per-image score dicts])``.

    Args:
        timeout: seconds for the whole run (parsing is slow: minutes for thousands of captions).
        java: the Java executable (default: ``java`` on PATH).
        memory: JVM heap; pycocoevalcap uses ``8G``.
        spice_dir: folder with ``spice-1.0.jar`` and ``lib/`` (default: pycocoevalcap's).
        cache_dir: SPICE's parse cache (default ``$FINECAP_CACHE/spice``, ``~/.cache/finecap/spice``); ``""``
            for no cache.
    """

    def __init__(self, timeout: float = 3600.0, java: str | None = None, memory: str = "8G",
                 spice_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        ok, message = spice_status(spice_dir)
        if not ok:
            raise SpiceUnavailableError(message)
        self.timeout = timeout
        self.java = java
        self.memory = memory
        self.spice_dir = _spice_dir(spice_dir)
        if cache_dir is None:
            cache_dir = Path(os.environ.get("FINECAP_CACHE", Path.home() / ".cache" / "finecap")) / "spice"
        self.cache_dir = Path(cache_dir) if cache_dir != "" else None

    def method(self) -> str:
        return "SPICE"

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[dict]]:
        ids = check_gts_res(gts, res, "Spice")
        java = java_executable(self.java)
        # SPICE writes image ids back as given: use positions, map back afterwards
        data = [{"image_id": i, "test": res[k][0], "refs": list(gts[k])} for i, k in enumerate(ids)]
        with tempfile.TemporaryDirectory(prefix="finecap-spice-") as tmp:
            in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
            in_file.write_text(json.dumps(data))
            cmd = [java, "-jar", f"-Xmx{self.memory}", "spice-1.0.jar", str(in_file)]
            if self.cache_dir is not None:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                cmd += ["-cache", str(self.cache_dir)]
            cmd += ["-out", str(out_file), "-subset", "-silent"]
            try:
                run = subprocess.run(cmd, cwd=self.spice_dir, stdin=subprocess.DEVNULL, capture_output=True,
                                     timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"SPICE timed out after {self.timeout:g} s") from None
            if run.returncode != 0 or not out_file.is_file():
                tail = (run.stderr or b"")[-2000:].decode("utf-8", "replace").strip()
                raise RuntimeError(f"SPICE failed (exit code {run.returncode}): {tail or '(no stderr)'}")
            results = json.loads(out_file.read_text())
        by_position = {int(item["image_id"]): item["scores"] for item in results}
        if sorted(by_position) != list(range(len(ids))):
            raise RuntimeError(f"SPICE returned scores for {len(by_position)} images, expected {len(ids)}")
        per_image = [{cat: {k: _float(v) for k, v in s.items()} for cat, s in by_position[i].items()}
                     for i in range(len(ids))]
        f_scores = [p["All"]["f"] for p in per_image]
        # pycocoevalcap: np.mean of the per-image F-scores (NaN if any is NaN)
        return (sum(f_scores) / len(f_scores) if f_scores else math.nan), per_image
