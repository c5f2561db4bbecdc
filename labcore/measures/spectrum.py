"""How many directions a weight update needs: the spectrum of ΔW (Biderman et al. 2024, §4.5).

"LoRA Learns Less and Forgets Less" (arXiv 2405.09673) asks whether full fine-tuning finds a
low-rank update at all. Take the singular values σ₁ ≥ σ₂ ≥ … of ΔW = W_finetuned − W_base and
ask for the smallest rank k whose share of the spectrum's energy reaches 90 %:

    rank_for_energy(ΔW, 0.9) = min { k : (σ₁² + … + σ_k²) / Σᵢ σᵢ² ≥ 0.9 }

(the "variance explained" by the best rank-k approximation, Eckart–Young). The paper finds that
full fine-tuning's ΔW needs a rank 10–100× that of typical LoRA configurations.

``numerical_rank`` is the exact-rank check of the control: a rank-r LoRA update (α/r)·B·A has
σ_{r+1} = … = 0 up to round-off, so its numerical rank at a relative tolerance of 1e-6 is ≤ r.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["singular_values", "energy_share", "rank_for_energy", "numerical_rank"]


def singular_values(M: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Singular values of a 2-D matrix in float64, largest first."""
    M64 = torch.as_tensor(M).detach().to(torch.float64)
    if M64.ndim != 2:
        raise ValueError(f"need a 2-D matrix, got shape {tuple(M64.shape)}; pass one weight matrix")
    return torch.linalg.svdvals(M64)


def energy_share(M: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cumulative share of Σσ² held by the top-k singular values, k = 1..min(d, k)."""
    s2 = singular_values(M) ** 2
    total = float(s2.sum())
    if total == 0.0:
        raise ValueError("the matrix is all zeros: its spectrum has no energy to explain (did training run?)")
    return (torch.cumsum(s2, 0) / total).numpy()


def rank_for_energy(M: torch.Tensor | np.ndarray, frac: float = 0.9) -> int:
    """Smallest k with (σ₁² + … + σ_k²) / Σσ² ≥ ``frac`` (Biderman et al. §4.5 use 90 %)."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    share = energy_share(M)
    # a tiny slack so that frac=1.0 is reached despite round-off in the cumulative sum
    return int(np.searchsorted(share, frac - 1e-12) + 1)


def numerical_rank(M: torch.Tensor | np.ndarray, rtol: float = 1e-6) -> int:
    """Number of singular values above ``rtol`` × σ₁ (0 for the zero matrix)."""
    s = singular_values(M)
    if float(s[0]) == 0.0:
        return 0
    return int((s > rtol * s[0]).sum())
