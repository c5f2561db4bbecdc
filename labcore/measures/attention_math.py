"""The mathematics of scaled dot-product attention and sinusoidal positions, as functions a claim
can measure (Vaswani et al. 2017, §3.2.1 and §3.5).

Nothing here trains; these are the exact or Monte-Carlo quantities behind the paper's arguments:
why scores are divided by √d_k, and why sinusoids let a model attend by relative position.
"""

from __future__ import annotations

import math

import torch

from labcore.glassbox.model import sinusoidal_positions


def dot_product_variance(d_k: int, n_pairs: int, generator: torch.Generator) -> float:
    """Sample variance of q·k for q, k with iid N(0, 1) components (footnote 4 predicts d_k)."""
    q = torch.randn(n_pairs, d_k, generator=generator, dtype=torch.float64)
    k = torch.randn(n_pairs, d_k, generator=generator, dtype=torch.float64)
    return float((q * k).sum(-1).var())


def softmax_jacobian(scores: torch.Tensor) -> torch.Tensor:
    """∂softmax(s)/∂s = diag(p) − p pᵀ for each row of scores: (..., n) -> (..., n, n)."""
    p = scores.softmax(-1)
    return torch.diag_embed(p) - p[..., :, None] * p[..., None, :]


def attention_statistics(
    d_k: int, n_keys: int, n_queries: int, scale: float, generator: torch.Generator
) -> dict[str, float]:
    """Softmax behaviour for random unit-variance q, k at a given score scale.

    Returns the mean over queries of: the largest attention weight, the attention entropy (bits)
    and the Frobenius norm of the softmax Jacobian — the "gradient" the paper says vanishes
    when the softmax saturates.
    """
    q = torch.randn(n_queries, 1, d_k, generator=generator, dtype=torch.float64)
    k = torch.randn(n_queries, n_keys, d_k, generator=generator, dtype=torch.float64)
    scores = (q * k).sum(-1) * scale  # (n_queries, n_keys)
    p = scores.softmax(-1)
    entropy = -(p * p.clamp_min(1e-300).log2()).sum(-1)
    jac = softmax_jacobian(scores).flatten(-2).norm(dim=-1)
    return {"max_weight": float(p.max(-1).values.mean()), "entropy_bits": float(entropy.mean()),
            "jacobian_fro": float(jac.mean())}


def relative_position_map(offset: int, d_model: int) -> torch.Tensor:
    """M_k with PE(pos + k) = M_k · PE(pos) for every pos: block-diagonal 2×2 rotations by k·ω_i.

    For each frequency ω_i the pair (sin(pos·ω), cos(pos·ω)) rotates by the angle k·ω:
    sin((pos+k)ω) = sin(pos ω)cos(kω) + cos(pos ω)sin(kω); cos((pos+k)ω) = cos(pos ω)cos(kω) − sin(pos ω)sin(kω).
    """
    freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i, w in enumerate(freq.tolist()):
        c, s = math.cos(offset * w), math.sin(offset * w)
        m[2 * i, 2 * i], m[2 * i, 2 * i + 1] = c, s
        m[2 * i + 1, 2 * i], m[2 * i + 1, 2 * i + 1] = -s, c
    return m


def relative_position_error(offset: int, d_model: int, n_positions: int, dtype=torch.float64) -> float:
    """max |PE(pos + k) − M_k PE(pos)| over pos < n_positions, PE computed in `dtype`."""
    pe = sinusoidal_positions(n_positions + offset, d_model, dtype=dtype).to(torch.float64)
    m = relative_position_map(offset, d_model)
    predicted = pe[:n_positions] @ m.T  # (T, d)
    return float((pe[offset:] - predicted).abs().max())
