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
