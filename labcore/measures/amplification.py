"""Is ΔW's subspace more aligned with W than chance? LoRA Table 7's "random" column as a test.

Hu et al. 2021 (arXiv 2106.09685, §7.3, Table 7) project W onto the top-r singular directions of
the learned ΔW, ‖U_ΔWᵀ W V_ΔW‖_F, and compare it with the same projection onto random directions
(0.32 vs 0.02 for GPT-3's W_q at r = 4, d = 12288). ``labcore.measures.subspace.delta_w_projection``
gives the raw numbers for one matrix; this module turns the random column into a reference that
does not move with the draw, and pools the comparison over the layers of one matrix type (the
paper reports one number per matrix type).

**The random reference, exactly.** For Haar-random U (d × r) and V (k × r), E[UUᵀ] = (r/d)·I and
E[VVᵀ] = (r/k)·I, so

    E‖UᵀWV‖²_F = tr(E[UUᵀ] W E[VVᵀ] Wᵀ) = r²‖W‖²_F / (d·k)        random_rms = r‖W‖_F / √(d·k)

(d = k = 64, r = 4: random directions see r/d = 1/16 of ‖W‖_F; in GPT-3 they see 4/12288.)

**Excess over random.** excess = ‖U_ΔWᵀ W V_ΔW‖_F / random_rms: how many times more of W the
ΔW-directions see than random directions do on average (paper, layer 48 W_q: ≈ 0.32/0.02 = 16).

**Pooled over layers.** For L matrices of one type, the statistic is the geometric mean of the L
excesses, and its null distribution is the same geometric mean over L *independent* random draws
(one Haar pair per matrix per Monte-Carlo sample). A claim asserts pooled > null p99: "ΔW's
directions see more of W than random directions do", at the 1 % level, for the matrix type as a
whole — one weak layer no longer decides the verdict alone, but a ΔW that is random in every
layer fails 99 % of the time.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["haar_batch", "random_rms", "random_projection_norms", "pooled_excess"]


def _as_float64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(t.shape)}")
    return t.to(dtype=torch.float64, device="cpu")


def haar_batch(n: int, dim: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """n independent Haar-random (dim × r) matrices with orthonormal columns: (n, dim, r) float64.

    QR of Gaussian matrices with the signs of R's diagonal fixed (as ``subspace.random_orthonormal``,
    batched).
    """
    g = torch.randn(n, dim, r, generator=generator, dtype=torch.float64)
    q, rr = torch.linalg.qr(g)  # q: (n, dim, r)
    signs = torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1))  # (n, r)
    signs[signs == 0] = 1.0
    return q * signs[:, None, :]


def random_rms(W: torch.Tensor | np.ndarray, r: int) -> float:
    """√E‖UᵀWV‖²_F for Haar-random U (d × r), V (k × r): r‖W‖_F / √(d·k), exact."""
    W64 = _as_float64(W)
    d, k = W64.shape
    return r * float(torch.linalg.matrix_norm(W64)) / math.sqrt(d * k)


def random_projection_norms(W: torch.Tensor | np.ndarray, r: int, n: int, generator: torch.Generator) -> np.ndarray:
    """‖UᵀWV‖_F for n independent Haar-random pairs (U, V): shape (n,)."""
    W64 = _as_float64(W)
    d, k = W64.shape
    U, V = haar_batch(n, d, r, generator), haar_batch(n, k, r, generator)  # (n, d, r), (n, k, r)
    P = U.transpose(1, 2) @ W64 @ V  # (n, r, r)
    return torch.linalg.matrix_norm(P).numpy()


def _top_projection(W64: torch.Tensor, M: torch.Tensor, r: int) -> float:
    """‖U_Mᵀ W V_M‖_F with U_M, V_M the top-r left/right singular vectors of M."""
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return float(torch.linalg.matrix_norm(U[:, :r].T @ W64 @ Vh[:r].T))


def pooled_excess(
    Ws: list, dWs: list, r: int = 4, n_random: int = 4000, seed: int = 0, quantile: float = 99.0
) -> dict:
    """Table 7's ΔW-vs-random comparison for L matrices of one type, per matrix and pooled.

    Returns {"per_matrix": [ {delta_w, w_top, random_rms, random_mean, random_p99, excess,
    percentile}, ... ], "excess_geomean", "null_p<quantile>" (key "null_p99" by default),
    "p_value"}. ``percentile`` is the fraction of random draws below that matrix's ΔW projection;
    ``p_value`` = (1 + #{null ≥ observed}) / (n_random + 1) for the pooled statistic.
    """
    if len(Ws) != len(dWs) or not Ws:
        raise ValueError(f"need one ΔW per W and at least one pair, got {len(Ws)} W and {len(dWs)} ΔW")
    if not 0 < quantile < 100:
        raise ValueError(f"quantile is a percentile in (0, 100), got {quantile}")
    g = torch.Generator().manual_seed(seed)
    rows, log_excess, log_null = [], [], []
    for W, dW in zip(Ws, dWs):
        W64, dW64 = _as_float64(W), _as_float64(dW)
        if W64.shape != dW64.shape:
            raise ValueError(f"W and ΔW must have the same shape, got {tuple(W64.shape)} and {tuple(dW64.shape)}")
        if not 1 <= r <= min(W64.shape):
            raise ValueError(f"need 1 ≤ r ≤ {min(W64.shape)}, got r={r}")
        rms = random_rms(W64, r)
        delta = _top_projection(W64, dW64, r)
        rand = random_projection_norms(W64, r, n_random, g)  # (n_random,)
        rows.append({
            "delta_w": delta, "w_top": _top_projection(W64, W64, r), "random_rms": rms,
            "random_mean": float(rand.mean()), "random_p99": float(np.percentile(rand, 99)),
            "excess": delta / rms, "percentile": float((rand < delta).mean()),
        })
        log_excess.append(math.log(delta / rms))
        log_null.append(np.log(rand / rms))
    observed = math.exp(float(np.mean(log_excess)))  # geometric mean over the L matrices
    null = np.exp(np.mean(log_null, axis=0))  # (n_random,) the same statistic for random ΔW-directions
    return {
        "per_matrix": rows, "excess_geomean": observed,
        f"null_p{quantile:g}": float(np.percentile(null, quantile)),
        "p_value": float((1 + (null >= observed).sum()) / (n_random + 1)),
    }
