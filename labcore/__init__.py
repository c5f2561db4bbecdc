"""labcore: the library behind the LLM Learning Lab's claims.

A glass-box transformer with named hook points, a trainer that keeps per-step metrics, data
generators with exact answers, probes, LoRA/quantisation tools, and the claim/history framework.
"""

from labcore.hooks import ActivationCache, HookPoint
from labcore.model import GPT, ConfigError, GPTConfig

__all__ = ["GPT", "GPTConfig", "ConfigError", "HookPoint", "ActivationCache"]
