"""labcore: the library behind the LLM Learning Lab's claims.

Two halves, one direction (docs/architecture.md):

    science    glassbox/    the transformer you can see into, and hook names on transformers models
               training/    trainer, the one model cache, the shared trained models
               tasks/       data sources whose exact answer is known
               measures/    what claims measure: attention maths, posteriors, probes, subspaces
               finetuning/  LoRA, quantisation, fine-tuning recipes
               pretrained/  SmolLM2 and local checkpoints, the text corpus, GPU/unsloth runs
    notebook   notebook/    claims, history, report, calibrate, the pytest plugin, the CLI
    shared     files.py     where results go and how files are written (no torch)

`from labcore import GPT, GPTConfig` works as usual; the names are resolved lazily so that the
pytest plugin and the `lab` command start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "GPT": "labcore.glassbox.model",
    "GPTConfig": "labcore.glassbox.model",
    "ConfigError": "labcore.glassbox.model",
    "HookPoint": "labcore.glassbox.hooks",
    "ActivationCache": "labcore.glassbox.hooks",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:
    from labcore.glassbox.hooks import ActivationCache, HookPoint
    from labcore.glassbox.model import GPT, ConfigError, GPTConfig


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labcore' has no attribute {name!r}")
