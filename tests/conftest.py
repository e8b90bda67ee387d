"""Test-wide settings: everything offline, torchvision fix installed before any test imports timm."""

import os
import tempfile

# Without these a hub id fails only after ~25 s of retries; with them it fails at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One converted-model cache per test session, never the user's ~/.cache/finecap.
os.environ["FINECAP_CACHE"] = tempfile.mkdtemp(prefix="finecap-test-cache-")

import vlm  # noqa: E402,F401  (installs the torchvision fix)


# ---- shared by the LiT tests (test_lit_retriever.py, test_lit_pooling.py) ---------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def towers():
    """The real locked towers (EfficientNet-Lite0, MiniLM), loaded once per session."""
    from vlm.pretrained import load_image_encoder, load_text_encoder

    return {"image_encoder": load_image_encoder(), "text_encoder": load_text_encoder()}


@pytest.fixture(scope="session")
def lit_world(tmp_path_factory):
    """A 32-image captioning world at 48 px (read-only for the tests that use it)."""
    from vlm.world import generate_world

    return generate_world(tmp_path_factory.mktemp("lit") / "world", n=32, seed=0, preset="captioning", image_size=48)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    """One on-disk feature cache for the LiT tests (entries are keyed by encoder, kind and files)."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def launch_two_cpu_processes():
    """``launch(config, cwd)``: ``python -m vlm train --config config`` under ``accelerate launch`` with two CPU
    processes (one thread each), as a user runs data-parallel training; returns the finished process."""
    import subprocess
    import sys

    def launch(config, cwd):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "-m", "vlm", "train", "--config", str(config)],
                              capture_output=True, text=True, timeout=300, env=env, cwd=cwd)

    return launch
