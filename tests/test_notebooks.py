"""Every notebook's code cells run, in order, against the installed package (no Jupyter needed)."""

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.real_weights
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    namespace: dict = {"__name__": "__notebook__"}
    for k, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        assert not cell.get("outputs"), f"{path.name}: code cell {k} has stored outputs; clear them"
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {k}]", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    out = capsys.readouterr().out
    assert "women in a kitchen" in out
