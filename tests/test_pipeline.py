import json

import pytest

from benchmarks.pipeline import run_default


@pytest.mark.real_weights
def test_default_job_measures_and_resumes(tmp_path):
    report = run_default(tmp_path / "run", n=120, seed=0, batch_size=32, progress=False)
    assert report["world"]["images"] == 120
    probes = report["probes"]
    assert set(probes) == {"background", "n_things", "has_person", "color_of_largest_thing"}
    # Backgrounds are large textured regions: ImageNet features separate them far above the baseline.
    assert probes["background"]["accuracy"] >= 0.8 > probes["background"]["majority_baseline"] + 0.3
    r = report["retrieval"]
    assert r["R@1"] > 3 * r["chance_R@1"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved == report
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000
    # Second run: same world and embeddings are reused, results identical.
    world_meta = tmp_path / "run" / "world" / "metadata.jsonl"
    emb = tmp_path / "run" / "world" / "embeddings.safetensors"
    stamps = (world_meta.stat().st_mtime_ns, emb.stat().st_mtime_ns)
    again = run_default(tmp_path / "run", n=120, seed=0, batch_size=32, progress=False)
    assert (world_meta.stat().st_mtime_ns, emb.stat().st_mtime_ns) == stamps
    assert again == report


def test_default_job_rejects_tiny_worlds(tmp_path):
    with pytest.raises(ValueError, match="n >= 20"):
        run_default(tmp_path, n=5)
