"""Subspace similarity between LoRA factors, and how ΔW relates to W (LoRA §7.2–7.3).

Two measurements from Hu et al. 2021 (arXiv 2106.09685):

**φ, normalised subspace similarity (§7.2, Eq. 4).** For two learned A matrices (r × k, e.g.
A_{r=8} and A_{r=64}) take the SVD A = U Σ Vᵀ and keep the top-i right-singular vectors of the
first and the top-j of the second (k-dimensional input directions):

    φ(A₁, A₂, i, j) = ‖ V₁[:, :i]ᵀ V₂[:, :j] ‖²_F / min(i, j)   ∈ [0, 1]

It is the mean squared cosine of the principal angles between the two subspaces (App. G: "based
on the Grassmann distance"): 1 when the smaller subspace lies inside the larger, 0 when they are
orthogonal. The paper calls these "right-singular unitary matrices" and speaks of their "column
vectors", but what it compares is A's *row* space (A maps k inputs to r; its right-singular
vectors live in ℝ^k): the rows of ``Vh`` from ``torch.linalg.svd``. For two independent uniformly
random subspaces of ℝ^d, E‖V₁ᵀV₂‖²_F = i·j/d, hence E[φ] = max(i, j)/d (``random_phi_baseline``).

**ΔW versus W (§7.3, Table 7).** Project W onto the r-dimensional subspace of ΔW: with U, V the
top-r left/right singular vectors of ΔW (d × r, k × r), compute ‖Uᵀ W V‖_F (an r × r matrix), and
compare it with the same quantity for W's own top-r directions (= √(σ₁² + … + σ_r²) of W) and for
random directions. The paper finds random ≪ ΔW-directions ≪ W-directions (0.02 / 0.32 / 21.67 at
r = 4): ΔW amplifies directions that W already contains but does not emphasise, by a factor
‖ΔW‖_F / ‖UᵀWV‖_F ≈ 6.91 / 0.32 ≈ 21.5.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "right_singular_basis",
    "subspace_similarity",
    "phi_grid",
    "random_phi_baseline",
    "random_orthonormal",
    "delta_w_projection",
]

ArrayLike = torch.Tensor | np.ndarray


def _as_float64(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(t.shape)}")
    return t.to(dtype=torch.float64, device="cpu")


def right_singular_basis(A: ArrayLike) -> torch.Tensor:
    """Right-singular vectors of A (r × k) as the *rows* of a (min(r, k) × k) float64 matrix.

    Ordered by decreasing singular value: row 0 is A's dominant input direction.
    """
    _, _, Vh = torch.linalg.svd(_as_float64(A), full_matrices=False)
    return Vh


def _check_ij(i: int, j: int, n1: int, n2: int) -> None:
    if not (1 <= i <= n1 and 1 <= j <= n2):
        raise ValueError(f"need 1 ≤ i ≤ {n1} and 1 ≤ j ≤ {n2} (the ranks of the two matrices), got i={i}, j={j}")


def subspace_similarity(A1: ArrayLike, A2: ArrayLike, i: int, j: int) -> float:
    """φ(A₁, A₂, i, j) = ‖V₁^{i ᵀ} V₂^{j}‖²_F / min(i, j) on A's row spaces (LoRA Eq. 4).

    A1 and A2 are LoRA A matrices (r₁ × k and r₂ × k, same k). To compare B matrices (d × r),
    pass their transposes (column spaces of B). Invariant to sign flips and rotations within
    each subspace, and symmetric: φ(A₁, A₂, i, j) = φ(A₂, A₁, j, i).
    """
    V1 = right_singular_basis(A1)
    V2 = right_singular_basis(A2)
    if V1.shape[1] != V2.shape[1]:
        raise ValueError(f"A1 and A2 must have the same number of columns, got {V1.shape[1]} and {V2.shape[1]}")
    _check_ij(i, j, V1.shape[0], V2.shape[0])
    overlap = V1[:i] @ V2[:j].T  # (i × j) cosines between the two sets of basis vectors
    return float(overlap.pow(2).sum() / min(i, j))


def phi_grid(A1: ArrayLike, A2: ArrayLike) -> np.ndarray:
    """φ(A₁, A₂, i, j) for every i ≤ r₁, j ≤ r₂: entry [i-1, j-1] (the paper's Fig. 3 heat map)."""
    V1 = right_singular_basis(A1)
    V2 = right_singular_basis(A2)
    if V1.shape[1] != V2.shape[1]:
        raise ValueError(f"A1 and A2 must have the same number of columns, got {V1.shape[1]} and {V2.shape[1]}")
    sq = (V1 @ V2.T).pow(2)  # (r₁ × r₂) squared cosines
    cumulative = sq.cumsum(0).cumsum(1)  # ‖V₁[:i]ᵀ... ‖²_F for every (i, j) at once
    i = torch.arange(1, sq.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, sq.shape[1] + 1, dtype=torch.float64)[None, :]
    return (cumulative / torch.minimum(i, j)).numpy()


def random_phi_baseline(d: int, i: int, j: int) -> float:
    """E[φ] for independent uniformly random i- and j-dimensional subspaces of ℝ^d: max(i, j)/d.

    (E‖V₁ᵀV₂‖²_F = i·j/d, because each of the i·j squared cosines has mean 1/d.)
    """
    if not (1 <= i <= d and 1 <= j <= d):
        raise ValueError(f"need 1 ≤ i, j ≤ d, got d={d}, i={i}, j={j}")
    return max(i, j) / d


def random_orthonormal(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """An n × k matrix with orthonormal columns, uniformly (Haar) distributed (float64).

    QR of a Gaussian matrix, with the signs of R's diagonal fixed so the distribution is uniform.
    """
    g = torch.randn(n, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs[None, :]


def delta_w_projection(W: ArrayLike, dW: ArrayLike, r: int, seed: int = 0) -> dict[str, float]:
    """LoRA Table 7: ‖Uᵀ W V‖_F for ΔW's, W's own and random top-r directions.

    Returns a dict with
      ``delta_w``       ‖U_ΔWᵀ W V_ΔW‖_F   (U, V: top-r left/right singular vectors of ΔW)
      ``w_top``         ‖U_Wᵀ W V_W‖_F     (= √(σ₁² + … + σ_r²) of W)
      ``random``        ‖U_randᵀ W V_rand‖_F with Haar-random orthonormal U, V (seeded)
      ``norm_w``        ‖W‖_F
      ``norm_delta_w``  ‖ΔW‖_F
      ``amplification`` ‖ΔW‖_F / ‖U_ΔWᵀ W V_ΔW‖_F  (21.5 for Wq at r = 4 in the paper)

    The paper's "random" column projects onto the top-r singular directions of a random
    Gaussian matrix, which are Haar-distributed; we draw them directly.
    """
    W64 = _as_float64(W)
    dW64 = _as_float64(dW)
    if W64.shape != dW64.shape:
        raise ValueError(f"W and ΔW must have the same shape, got {tuple(W64.shape)} and {tuple(dW64.shape)}")
    d, k = W64.shape
    if not 1 <= r <= min(d, k):
        raise ValueError(f"need 1 ≤ r ≤ {min(d, k)}, got r={r}")

    def projected_norm(U: torch.Tensor, V: torch.Tensor) -> float:
        return float(torch.linalg.matrix_norm(U.T @ W64 @ V))  # Frobenius norm of an r × r matrix

    U_d, _, Vh_d = torch.linalg.svd(dW64, full_matrices=False)
    U_w, _, Vh_w = torch.linalg.svd(W64, full_matrices=False)
    gen = torch.Generator().manual_seed(seed)
    U_rand = random_orthonormal(d, r, gen)
    V_rand = random_orthonormal(k, r, gen)

    delta = projected_norm(U_d[:, :r], Vh_d[:r].T)
    norm_dw = float(torch.linalg.matrix_norm(dW64))
    return {
        "delta_w": delta,
        "w_top": projected_norm(U_w[:, :r], Vh_w[:r].T),
        "random": projected_norm(U_rand, V_rand),
        "norm_w": float(torch.linalg.matrix_norm(W64)),
        "norm_delta_w": norm_dw,
        "amplification": norm_dw / delta if delta > 0 else float("inf"),
    }
