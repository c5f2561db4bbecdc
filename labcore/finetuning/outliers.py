"""Outlier features by reparametrisation: the same function, weights that 4-bit quantisation hurts.

Why: large LLMs have a few hidden dimensions with activations and weights an order of magnitude
larger than the rest ("emergent outlier features", Dettmers et al. 2022, LLM.int8(), arXiv
2208.07339). In blockwise absmax quantisation a block holding one such weight is scaled by it, so
the block's other 63 weights fall onto the few codes near zero — which is why 4-bit quantisation
visibly hurts large models and barely touches a small one (this lab's 2-layer base loses < 1e-3
nats to NF4). ``inject_outlier_features`` gives a small model the same weight structure *without
changing the function it computes*: a normalisation layer's output channel j is divided by s and
every linear layer reading that channel multiplies its input column j by s,

    LN(x)_j = γ_j n_j + β_j  →  (γ_j / s) n_j + β_j / s,      W[:, j]  →  s · W[:, j],

so W · LN(x) is unchanged in exact arithmetic (fp32: ~1e-7 relative). Where the output of one
linear layer is read only linearly by another (attention values → output projection), row i of
the first and column i of the second are rescaled the same way. The fp32 model is the same
model; only what a quantiser sees changes.

Supported: ``labcore`` GPT (pre-norm LayerNorm/RMSNorm blocks: ln1 → W_Q, W_K, W_V; ln2 → W_in,
W_gate; W_V rows → W_O columns) and Hugging Face Llama (input_layernorm → q, k, v;
post_attention_layernorm → gate, up; v rows → o columns, per key-value head group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["inject_outlier_features", "default_outlier_channels"]


def default_outlier_channels(d_model: int, block_size: int = 64) -> list[int]:
    """One channel per ``block_size`` input columns (channel 7 of each), so that every absmax
    block of a row-major weight with rows of ``d_model`` inputs holds exactly one outlier."""
    return [b + 7 for b in range(0, d_model, block_size) if b + 7 < d_model]


@torch.no_grad()
def _scale_norm_channels(norm: nn.Module, channels: Sequence[int], factor: float) -> None:
    inner = getattr(norm, "norm", norm)  # labcore's Norm wraps nn.LayerNorm / RMSNorm
    if getattr(inner, "weight", None) is None:
        raise ValueError(f"{type(norm).__name__} has no weight to rescale: outliers need a normalisation with a gain")
    inner.weight[list(channels)] /= factor
    if getattr(inner, "bias", None) is not None:
        inner.bias[list(channels)] /= factor


@torch.no_grad()
def _scale_columns(linears: Sequence[nn.Linear], channels: Sequence[int], factor: float) -> None:
    for lin in linears:
        lin.weight[:, list(channels)] *= factor


@torch.no_grad()
def _scale_rows(lin: nn.Linear, rows: Sequence[int], factor: float) -> None:
    lin.weight[list(rows)] /= factor
    if lin.bias is not None:
        lin.bias[list(rows)] /= factor


def _labcore_blocks(model: nn.Module, channels: Sequence[int], factor: float) -> int:
    if model.cfg.norm_position != "pre":
        raise ValueError("outlier injection needs pre-norm blocks (norm_position='pre')")
    for block in model.blocks:
        attn = block.attn
        _scale_norm_channels(block.ln1, channels, factor)
        _scale_columns([attn.W_Q, attn.W_K, attn.W_V], channels, factor)
        _scale_rows(attn.W_V, channels, factor)  # value channel i → W_O column i
        _scale_columns([attn.W_O], channels, factor)
        if getattr(block, "mlp", None) is not None:
            _scale_norm_channels(block.ln2, channels, factor)
            _scale_columns([m for m in (block.mlp.W_in, getattr(block.mlp, "W_gate", None)) if m is not None],
                           channels, factor)
    return len(model.blocks)


def _llama_layers(model: nn.Module, channels: Sequence[int], factor: float) -> int:
    layers = model.model.layers
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        _scale_norm_channels(layer.input_layernorm, channels, factor)
        _scale_columns([a.q_proj, a.k_proj, a.v_proj], channels, factor)
        # v row i (inside key-value head g) feeds o's columns i + g'·head_dim for every query head
        # of that group: rescale them all (shared keys/values, grouped-query attention)
        n_rep = a.config.num_attention_heads // a.config.num_key_value_heads
        head_dim, kv_dim = a.head_dim, a.v_proj.out_features
        rows = [c for c in channels if c < kv_dim]
        _scale_rows(a.v_proj, rows, factor)
        kv_heads = [(c // head_dim, c % head_dim) for c in rows]
        o_cols = [(g * n_rep + r) * head_dim + i for g, i in kv_heads for r in range(n_rep)]
        _scale_columns([a.o_proj], o_cols, factor)
        _scale_norm_channels(layer.post_attention_layernorm, channels, factor)
        _scale_columns([m.gate_proj, m.up_proj], channels, factor)
    return len(layers)


def inject_outlier_features(model: nn.Module, scale: float, channels: Sequence[int] | None = None) -> int:
    """Rescale ``model`` *in place* so that ``channels`` become outlier features of size ``scale``
    in every linear weight that reads them; the function computed is unchanged. Returns the
    number of blocks changed. ``channels`` defaults to ``default_outlier_channels(d_model)``."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if hasattr(model, "blocks") and hasattr(model, "cfg"):
        d = model.cfg.d_model
        run = _labcore_blocks
    elif hasattr(model, "model") and hasattr(model.model, "layers"):
        d = model.config.hidden_size
        run = _llama_layers
    else:
        raise TypeError(f"inject_outlier_features knows labcore GPT and HF Llama models, not {type(model).__name__}")
    channels = list(default_outlier_channels(d) if channels is None else channels)
    if not channels or min(channels) < 0 or max(channels) >= d:
        raise ValueError(f"channels must be in [0, {d}), got {channels}")
    return run(model, channels, float(scale))
