"""unsloth as a fine-tuning backend: 4-bit loading + LoRA for Llama-family models, where it exists.

unsloth (``FastLanguageModel``) wraps transformers + peft + bitsandbytes with fused GPU kernels.
Its 2026.10.9 release pins transformers ≤ 5.17.0 and pulls a torchvision that does not load beside
the CPU torch, so it cannot share the lab's main ``.venv``; ``scripts/setup-unsloth.sh`` builds
``.venv-unsloth`` (measured: ~8 min, 3.2 GB). On a machine without a GPU unsloth prints "no GPU
found, training on CPU" and runs plain transformers + peft + bitsandbytes underneath (its
``unsloth_zoo.cpu`` loader, which also disables bitsandbytes' CPU weight repacking — the pitfall
``labcore.finetuning.quant.guard_linear4bit_cpu`` guards against): the API can be tested on a CPU, the speed
only on a GPU.

Two rules this module keeps:

* ``import unsloth`` must happen before transformers is imported (it patches transformers and
  peft); ``import_unsloth()`` warns when that order was not kept, which is harmless on the CPU
  path. Nothing here imports unsloth at module import time, so ``labcore`` stays importable.
* Everything that can fail because unsloth is missing raises :class:`UnslothUnavailable` with the
  reason and the fix, so a claim can turn it into a clear skip.

``build_tiny_llama`` writes a small Llama-architecture model and a character-level tokenizer to a
folder (no hub, no downloads): the model unsloth loads in the CPU claim.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

__all__ = [
    "UnslothUnavailable",
    "SETUP_HINT",
    "unsloth_status",
    "import_unsloth",
    "load_model",
    "add_lora",
    "build_tiny_llama",
]

SETUP_HINT = (
    "unsloth lives in its own environment (it pins transformers<=5.17): run "
    "`bash scripts/setup-unsloth.sh`, then `.venv-unsloth/bin/pytest <claim>`"
)


class UnslothUnavailable(RuntimeError):
    """unsloth cannot be used in this environment; the message says why and how to get it."""


def unsloth_status() -> tuple[bool, str]:
    """(usable, reason). Cheap unless unsloth is installed, in which case it is imported once."""
    if importlib.util.find_spec("unsloth") is None:
        return False, f"unsloth is not installed in this environment ({sys.prefix}); {SETUP_HINT}"
    try:
        import_unsloth()
    except UnslothUnavailable as error:
        return False, str(error)
    return True, "ok"


def import_unsloth():
    """``import unsloth`` (once) and return ``unsloth.FastLanguageModel``.

    Raises :class:`UnslothUnavailable` if it is missing or fails to import (e.g. the torchvision
    that pip pulls in beside a CPU torch: ``operator torchvision::nms does not exist`` — uninstall
    torchvision, as the setup script does).
    """
    if importlib.util.find_spec("unsloth") is None:
        raise UnslothUnavailable(f"unsloth is not installed in this environment ({sys.prefix}); {SETUP_HINT}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network calls from the loader
    try:
        import unsloth  # noqa: F401  (patches transformers/peft; must precede their import for GPU kernels)
        from unsloth import FastLanguageModel
    except Exception as error:  # noqa: BLE001 - any import failure is a reason to skip, with its text
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        hint = " (pip uninstall -y torchvision)" if "torchvision" in str(error) else ""
        raise UnslothUnavailable(f"`import unsloth` failed: {type(error).__name__}: {first}{hint}") from error
    return FastLanguageModel


def load_model(path: str | os.PathLike, load_in_4bit: bool = True, max_seq_length: int = 512, dtype=None):
    """``FastLanguageModel.from_pretrained`` on a local folder → (model, tokenizer).

    ``load_in_4bit=True`` is QLoRA's storage: bitsandbytes NF4 with double quantisation, the
    output layer kept in 16/32 bits. ``dtype`` is the compute dtype (None: unsloth's choice —
    bf16 on a CPU that has it; pass ``torch.float32`` for numerics comparable with the main venv).
    """
    FastLanguageModel = import_unsloth()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: point load_model at a transformers model folder")
    return FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=max_seq_length,
        dtype=dtype,
        load_in_4bit=load_in_4bit,
        local_files_only=True,
    )


def add_lora(model, r: int = 8, alpha: int = 16, target_modules=None, seed: int = 0,
             use_gradient_checkpointing: bool | str = False):
    """``FastLanguageModel.get_peft_model``: LoRA on q, k, v, o, gate, up, down by default.

    ``seed`` is unsloth's ``random_state`` (it seeds torch before peft draws A), so two calls with
    the same seed on models of the same shape start from the same adapters.
    """
    FastLanguageModel = import_unsloth()
    if target_modules is None:
        target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return FastLanguageModel.get_peft_model(
        model,
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(target_modules),
        bias="none",
        use_gradient_checkpointing=use_gradient_checkpointing,
        random_state=seed,
    )


def build_tiny_llama(folder: str | os.PathLike, text: str, *, hidden_size: int = 128, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, intermediate: int = 256, seed: int = 0,
                     state_dict=None) -> Path:
    """Write a small Llama (random init from ``seed``, or ``state_dict``) and a character-level
    tokenizer covering ``text`` to ``folder``; returns the folder. Offline, ~1 s.

    Hidden size ≥ 64 because bitsandbytes' CPU 4-bit path rejects narrower layers; every linear
    layer's size is a multiple of the 4-bit block (64).
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = sorted(set(text))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)

    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, tie_word_embeddings=False,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.save_pretrained(folder)
    (folder / "lab_tiny_llama.json").write_text(json.dumps({"seed": seed, "chars": len(chars)}))
    return folder
