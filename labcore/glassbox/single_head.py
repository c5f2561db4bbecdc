"""The one-head attention model of Paper II's sticky-chain experiment (arXiv 2512.22473 §5.2).

Unlike the glass-box GPT it has no embedding, no residual stream and no MLP: continuous inputs
go straight into one causal attention head and a linear readout, as in the authors' code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SingleHeadAttention(nn.Module):
    """The Paper II toy model: logits = softmax(causal(x W_Q (x W_K)^T / sqrt(d_k))) x W_V W_O.

    Parameters are named W_Q, W_K, W_V, W_O (so ``TrainConfig(lr_multipliers=(("W_V", 10.0),))``
    gives the EM-like schedule), stored (in, out) as in the authors' code, init N(0, init_std^2).
    x (T, d_x) or (B, T, d_x) -> logits (..., T, n_classes).
    """

    def __init__(self, d_x: int = 20, d_k: int = 10, d_v: int = 15, n_classes: int = 8,
                 init_std: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        self.d_k = d_k

        def p(*shape):
            return nn.Parameter(torch.randn(*shape, generator=generator) * init_std)

        self.W_Q, self.W_K, self.W_V, self.W_O = p(d_x, d_k), p(d_x, d_k), p(d_x, d_v), p(d_v, n_classes)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The causal attention weights alpha (..., T, T)."""
        q, k = x @ self.W_Q, x @ self.W_K
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_k)
        T = x.shape[-2]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.attention(x) @ (x @ self.W_V)) @ self.W_O
