"""labcore: the library behind the LLM Learning Lab's claims.

A glass-box transformer with named hook points, a trainer that keeps per-step metrics, data
generators with exact answers, probes, LoRA/quantisation tools, and the claim/history framework.

`from labcore import GPT, GPTConfig` works as usual; the names are resolved lazily so that the
pytest plugin and the `lab` command start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "GPT": "labcore.model",
    "GPTConfig": "labcore.model",
    "ConfigError": "labcore.model",
    "HookPoint": "labcore.hooks",
    "ActivationCache": "labcore.hooks",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:
    from labcore.hooks import ActivationCache, HookPoint
    from labcore.model import GPT, ConfigError, GPTConfig


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labcore' has no attribute {name!r}")
