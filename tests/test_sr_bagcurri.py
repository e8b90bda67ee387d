"""The SR + BagCurri comparison script: settings guard and table (the training itself is tested in test_sr.py)."""

import json

import pytest

from benchmarks.sr_bagcurri import _check_settings, main, markdown_table


def test_a_rerun_with_other_settings_is_refused(tmp_path):
    settings = {"mle_recipe": {"model": "prefix-small"}, "model": None, "retriever": "finecap:lit"}
    _check_settings(tmp_path, settings)
    assert json.loads((tmp_path / "sr_bagcurri_config.json").read_text()) == settings
    _check_settings(tmp_path, dict(settings))  # the same settings resume
    with pytest.raises(ValueError, match=r"other settings \(model, retriever\)"):
        _check_settings(tmp_path, {**settings, "model": "prefix-mid-pos-small", "retriever": "finecap:lit-v2"})


def test_table_rows_are_percent_for_recall_and_hallucination():
    cols = ["R@1/bag3", "R@1/bag5", "R@1/bag7", "CIDEr", "hallucination_rate", "mean_length_words", "vocabulary"]
    row = dict(zip(cols, ([0.7, 0.01], [0.6, 0.02], [0.5, 0.0], [2.5, 0.1], [0.3, 0.01], [12.0, 0.5], [80.0, 2.0])))
    md = markdown_table({"seeds": [0, 1], "wall_time_s": 12.4, "table": {"mle": row, "sr-bagcurri": row}})
    lines = md.splitlines()
    assert lines[2] == ("| MLE | 70.0 ± 1.0 | 60.0 ± 2.0 | 50.0 ± 0.0 | 2.500 ± 0.100 | 30.0 ± 1.0 | 12.0 ± 0.5 "
                        "| 80.0 ± 2.0 |")
    assert lines[3].startswith("| SR + BagCurri |") and md.endswith("seeds [0, 1]; wall time 12 s")


def test_cli_lists_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--retriever" in out and "--model" in out and "--mle-config" in out
