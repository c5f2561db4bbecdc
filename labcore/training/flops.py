"""The arithmetic of one training step, for throughput and MFU (model-FLOPs utilisation).

A matmul of an (m × k) by a (k × n) matrix is 2·m·k·n FLOPs. Training does it three times per
weight (forward, and two in the backward: the input's gradient and the weight's), so each weight
costs 6 FLOPs per token — Kaplan et al. (2020) §2.1's C ≈ 6·N·D. Causal attention adds the
scores QKᵀ and the weighted sum AV, 2·T²·d each per sequence in the forward (counted whole here,
as PaLM's MFU does, not halved for the mask), ×3 for training: 6·L·T²·d·B.
MFU = achieved FLOP/s / the GPU's peak (labcore.notebook.hardware.peak_flops).
"""

from __future__ import annotations

from torch import nn


def weight_params(model: nn.Module) -> int:
    """Parameters that are multiplied by activations: every matrix except the learned position
    table (a lookup, no FLOPs). Embeddings count (as the tied unembedding they are a matmul)."""
    return sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "W_pos" not in name)


def train_flops_per_step(model: nn.Module, batch: int, seq: int) -> float:
    """6·N·(B·T) for the weights + 6·L·T²·d·B for attention: FLOPs of one forward + backward."""
    cfg = model.cfg
    return 6.0 * weight_params(model) * batch * seq + 6.0 * cfg.n_layers * seq * seq * cfg.d_model * batch
