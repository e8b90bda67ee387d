"""What every benchmark run writes: a results JSON and a readable Markdown report with its plots.

One helper for all benchmarks, so that every run records the same provenance: the resolved config, the
seed, the package versions, the device and the time it took.

Example:
    >>> import tempfile, json
    >>> out = tempfile.mkdtemp()
    >>> paths = write_results(out, "demo", {"R@1": 0.5}, config={"n": 3}, seed=0)
    >>> json.load(open(paths["json"]))["results"]["R@1"]
    0.5
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from vlm.devices import autocast, resolve_device  # noqa: F401  (re-exported for benchmarks)

_VERSIONED = ("finecap", "torch", "torchvision", "transformers", "diffusers", "open_clip_torch", "timm",
              "accelerate", "peft", "pycocoevalcap", "datasets", "numpy", "Pillow")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(x))
    return x


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _md_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A Markdown table: from a flat ``{metric: value}`` dict, or from a list of row dicts.

    Example:
        >>> print(markdown_table({"BLEU_4": 0.25}))
        | metric | value |
        |---|---|
        | BLEU_4 | 0.2500 |
    """
    if isinstance(rows, dict):
        lines = ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_md_value(v)} |" for k, v in rows.items() if not isinstance(v, (dict, list))]
        return "\n".join(lines)
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_value(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out_dir: str | Path, name: str, results: dict, *, config: dict | None = None,
                  seed: int | None = None, figures: list[str | Path] = (), sections: dict[str, str] | None = None,
                  wall_time_s: float | None = None, device: str | None = None) -> dict[str, Path]:
    """Write ``<name>.json`` (results + provenance) and ``<name>.md`` (tables + figures) into ``out_dir``.

    Args:
        out_dir: folder for the files (created).
        name: base file name, e.g. ``"truematch"``.
        results: the metrics; flat values become the main table, nested dicts become their own tables.
        config: the resolved configuration of the run.
        seed: the seed the run used.
        figures: image files (already in ``out_dir`` or elsewhere) to show in the report.
        sections: extra Markdown sections ``{title: body}``.
        wall_time_s: how long the run took.
        device: where it ran.

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "results": _jsonable(results),
        "config": _jsonable(config or {}),
        "seed": seed,
        "device": device,
        "wall_time_s": None if wall_time_s is None else round(wall_time_s, 3),
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    json_path = out / f"{name}.json"
    _atomic_text(json_path, json.dumps(record, indent=2, sort_keys=False) + "\n")

    md = [f"# {name}", ""]
    flat = {k: v for k, v in record["results"].items() if not isinstance(v, (dict, list))}
    if flat:
        md += [markdown_table(flat), ""]
    for k, v in record["results"].items():
        if isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
            md += [f"## {k}", "", markdown_table(v), ""]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            md += [f"## {k}", "", markdown_table(v), ""]
    for title, body in (sections or {}).items():
        md += [f"## {title}", "", body, ""]
    for fig in figures:
        fig = Path(fig)
        rel = os.path.relpath(fig, out) if fig.is_absolute() else str(fig)
        md += [f"![{fig.stem}]({rel})", ""]
    md += ["## Provenance", "", f"- seed: {seed}", f"- device: {device}",
           f"- wall time: {record['wall_time_s']} s",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v),
           "", "```json", json.dumps(record["config"], indent=2), "```", ""]
    md_path = out / f"{name}.md"
    _atomic_text(md_path, "\n".join(md))
    return {"json": json_path, "markdown": md_path}


class StageTimings:
    """Seconds per finished stage of a multi-stage benchmark, kept in a JSON file across reruns, so that a
    comparison resumed or extended over several invocations still reports what the whole of it cost."""

    def __init__(self, path: str | os.PathLike):
        from vlm.data import read_json

        self.path = Path(path)
        self.data: dict[str, float] = (read_json(self.path, "stage-timings JSON",
                                                 fix="delete it to start the timings anew")
                                       if self.path.is_file() else {})

    def record(self, stage: str, seconds: float) -> None:
        """Store (or replace) one stage's time and write the file at once."""
        from vlm.data import atomic_write_text

        self.data[stage] = round(float(seconds), 2)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n", fsync=False)

    @property
    def total(self) -> float:
        return round(sum(self.data.values()), 1)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Lay out a Matplotlib figure, write it to ``path`` (folders made as needed), close it; the path.

    Example:
        >>> import tempfile, matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> save_figure(plt.figure(), Path(tempfile.mkdtemp()) / "a" / "f.png").is_file()
        True
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
