"""METEOR 1.5 through the jar bundled with pycocoevalcap, without its hangs.

pycocoevalcap's ``Meteor`` keeps ``java -jar meteor-1.5.jar - - -stdio -l en -norm`` running and talks to
it line by line over pipes. It is known to hang or die with a broken pipe: stderr is a pipe nobody reads
(the JVM blocks once it fills), a caption containing a newline or ``|||`` desynchronises the line
protocol so a read waits forever, there is no timeout, and the process is only killed in ``__del__``.

This wrapper speaks the same protocol (so the scores are the same: one ``SCORE ||| refs ||| hyp`` line per
image, then ``EVAL ||| stats ...``), but: captions are sanitised (newlines and ``|||`` removed, spaces
collapsed), stderr goes to a file, stdout is read by a thread with a deadline, a writer thread feeds
stdin so neither pipe can fill up, and the process is always closed (killed on timeout or error) before
the call returns. METEOR answers only numbers; the JVM itself may print a line to stdout (HotSpot's
``OpenJDK 64-Bit Server VM warning: ...``, e.g. under memory pressure), which would shift every answer
by one: the JVM is asked to print such messages to stderr, and any line that is not numbers is skipped
(and logged), so answers are matched to requests by their form, never by position alone. Several subsets
can be scored from one run (METEOR's corpus score aggregates per-image statistics, so a subset needs its
own ``EVAL``, not the mean of per-image scores).

Example (needs Java; ~10 s to load METEOR's paraphrase tables; tests/test_caption_metrics.py runs it)::

    gts = {"1": ["a dog runs on the grass"], "2": ["two cats sleep on a bed"]}
    res = {"1": ["a dog running on grass"], "2": ["a cat on a bed"]}
    score, per_image = Meteor().compute_score(gts, res)
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vlm.metrics.ngrams import check_gts_res

__all__ = ["Meteor", "JavaNotFoundError", "MeteorError", "meteor_jar"]

log = logging.getLogger(__name__)


class JavaNotFoundError(RuntimeError):
    """No ``java`` executable: METEOR and SPICE are Java programs."""


class MeteorError(RuntimeError):
    """METEOR failed, timed out or answered something unexpected."""


def _pycocoevalcap_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pycocoevalcap is not installed: pip install pycocoevalcap")
    return Path(list(spec.submodule_search_locations)[0])


def meteor_jar() -> Path:
    """Path of pycocoevalcap's ``meteor-1.5.jar`` (its ``data/paraphrase-en.gz`` must sit beside it)."""
    jar = _pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"METEOR jar not found at {jar}; reinstall pycocoevalcap "
                                f"(pip install --force-reinstall pycocoevalcap)")
    if not (jar.parent / "data" / "paraphrase-en.gz").is_file():
        raise FileNotFoundError(f"METEOR's paraphrase table {jar.parent / 'data' / 'paraphrase-en.gz'} is missing; "
                                f"reinstall pycocoevalcap")
    return jar


def java_executable(java: str | None = None) -> str:
    """The ``java`` to run, or :class:`JavaNotFoundError` saying how to get one."""
    found = shutil.which(java or "java")
    if found is None:
        raise JavaNotFoundError(
            "METEOR and SPICE need Java (a JRE >= 8) and no 'java' executable is on PATH. Install one "
            "(e.g. 'apt-get install default-jre-headless' or 'conda install openjdk') or leave out "
            "--meteor / --spice.")
    return found


_BARS = re.compile(r"\|\|\|")
_SPACES = re.compile(r"\s+")


def _clean(text: str) -> str:
    # one line, no field separator, single spaces: the line protocol depends on it
    return _SPACES.sub(" ", _BARS.sub("", text)).strip()


class Meteor:
    """pycocoevalcap's ``Meteor`` interface: ``compute_score(gts, res) -> (METEOR, [per image])``.

    Args:
        timeout: seconds for one whole call (start-up ~10 s included); on expiry the process is killed
            and :class:`MeteorError` raised.
        java: the Java executable (default: ``java`` on PATH).
        memory: JVM heap (``-Xmx``), pycocoevalcap uses ``2G``.
    """

    def __init__(self, timeout: float = 600.0, java: str | None = None, memory: str = "2G") -> None:
        if timeout <= 0:
            raise ValueError(f"Meteor: timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self.java = java
        self.memory = memory

    def method(self) -> str:
        return "METEOR"

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        ids = check_gts_res(gts, res, "Meteor")
        scores, per_image = self.score_subsets(gts, res, [ids])
        return scores[0], per_image

    def score_subsets(self, gts: dict, res: dict, subsets: list[list]) -> tuple[list[float], list[float]]:
        """Corpus METEOR of each subset of ids (one METEOR run), and the per-image scores of all ids.

        Example (with ``gts``/``res`` of the module example)::

            Meteor().score_subsets(gts, res, [["1", "2"], ["1"]])  # ([0.3206, 0.4139], [0.4139, 0.2244])
        """
        ids = check_gts_res(gts, res, "Meteor")
        position = {k: i for i, k in enumerate(ids)}
        for sub in subsets:
            unknown = [k for k in sub if k not in position]
            if unknown or not sub:
                raise ValueError(f"Meteor: subsets must be non-empty lists of ids of gts; unknown: {unknown[:5]}")
        lines = [" ||| ".join(["SCORE"] + [_clean(r) for r in gts[k]] + [_clean(res[k][0])]) for k in ids]
        java = java_executable(self.java)
        jar = meteor_jar()
        # VM messages to stderr (ignored by JVMs that lack the option), so stdout carries METEOR's answers alone
        cmd = [java, "-XX:+IgnoreUnrecognizedVMOptions", "-XX:+DisplayVMOutputToStderr", "-jar",
               f"-Xmx{self.memory}", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
        deadline = time.monotonic() + self.timeout
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, bufsize=0)
            ok = False
            try:
                result = self._talk(proc, lines, ids, position, subsets, deadline)
                ok = True
                return result
            except MeteorError as e:
                err.seek(0)
                tail = err.read()[-2000:].decode("utf-8", "replace").strip()
                raise MeteorError(f"{e}; METEOR's stderr: {tail or '(empty)'}") from None
            finally:
                _close(proc, grace=5.0 if ok else 0.0)

    def _talk(self, proc, lines, ids, position, subsets, deadline):
        out: queue.Queue = queue.Queue()

        noise: list[str] = []  # lines that are not METEOR answers (JVM messages), skipped

        def reader() -> None:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if _numbers(line) is None:
                    log.warning("METEOR printed a line that is not an answer, skipped: %r", line[:200])
                    noise.append(line)
                    continue
                out.put(line)
            out.put(None)  # end of output

        def writer(payload: bytes) -> None:
            try:
                proc.stdin.write(payload)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the process died; the reader reports it

        def read_line(what: str) -> str:
            remaining = deadline - time.monotonic()
            try:
                line = out.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise MeteorError(f"METEOR timed out after {self.timeout:g} s waiting for {what}") from None
            if line is None:
                said = f"; it printed {noise[-3:]!r}" if noise else ""
                raise MeteorError(f"METEOR exited (code {proc.poll()}) while {what} was expected{said}")
            return line

        threading.Thread(target=reader, daemon=True).start()
        w = threading.Thread(target=writer, args=("".join(x + "\n" for x in lines).encode("utf-8"),), daemon=True)
        w.start()
        stats = [_stats(read_line(f"the statistics of image {ids[i]!r}"), ids[i]) for i in range(len(ids))]
        w.join(timeout=max(deadline - time.monotonic(), 0.001))

        def evaluate(chosen: list[str]) -> tuple[float, list[float]]:
            writer(("EVAL ||| " + " ||| ".join(chosen) + "\n").encode("utf-8"))
            segment = [_number(read_line("a per-image score"), "per-image score") for _ in chosen]
            return _number(read_line("the corpus score"), "corpus score"), segment

        overall, per_image = evaluate(stats)
        corpus = []
        for sub in subsets:
            if len(sub) == len(ids) and set(sub) == set(ids):
                corpus.append(overall)
            else:
                corpus.append(evaluate([stats[position[k]] for k in sub])[0])
        return corpus, per_image


def _numbers(line: str) -> list[float] | None:
    """The numbers of a line of METEOR's answers, or None where the line is something else."""
    try:
        values = [float(x) for x in line.split()]
    except ValueError:
        return None
    return values or None


def _stats(line: str, image) -> str:
    # a statistics line holds many numbers (matches, lengths, chunks, ...); a lone number is a score
    if len(line.split()) < 2:
        raise MeteorError(f"METEOR answered {line[:200]!r} where the statistics of image {image!r} were expected")
    return line


def _number(text: str, what: str) -> float:
    values = _numbers(text)
    if values is None or len(values) != 1:
        raise MeteorError(f"METEOR answered {text[:200]!r} where a {what} was expected")
    return values[0]


def _close(proc: subprocess.Popen, grace: float) -> None:
    """Close stdin, give METEOR ``grace`` seconds to exit, then kill it; never raises, never leaves a zombie."""
    try:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=grace) if grace > 0 else proc.kill()
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        try:
            proc.stdout.close()
        except OSError:
            pass
    log.debug("METEOR process %s closed with code %s", proc.pid, proc.returncode)
