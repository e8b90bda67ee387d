"""Every notebook's code cells run, in order, against the installed package (no Jupyter needed)."""

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# What each notebook must print: its cells ran to the end and did what the text says.
EXPECTED = {
    "01_world_and_pretrained.ipynb": ["women in a kitchen"],
    "02_tida.ipynb": ["->  A man rides his bike.", "written:", '"edited_caption": '],
    "03_train_and_caption.ipynb": ["steps: 120", "'hallucination_rate'", "wrong facts by kind:"],
    "04_self_retrieval.ipynb": ["stages: ['random', 'world']", "stage world: steps 7-16", "R@1/bag5",
                                "| nn5 |", "| 2 groups, colour |"],
}


def test_there_are_notebooks():
    assert NOTEBOOKS and sorted(EXPECTED) == [p.name for p in NOTEBOOKS]


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
    for text in EXPECTED[path.name]:
        assert text in out, f"{path.name}: expected {text!r} in its output"
