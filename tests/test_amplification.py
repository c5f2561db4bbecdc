"""labcore.measures.amplification: the exact random RMS, Haar batches, and the pooled
ΔW-vs-random test of LoRA Table 7 (detects planted mid-spectrum directions, rejects random ones
at about its nominal 1 % rate, refuses bad input)."""

import numpy as np
import pytest
import torch

from labcore.measures import amplification as A
from labcore.measures.subspace import random_orthonormal


def planted_w(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W = U diag(σ) Vᵀ with a decaying spectrum σ_i = 1/i (float64), and its U, V."""
    g = torch.Generator().manual_seed(seed)
    U, V = random_orthonormal(d, d, g), random_orthonormal(d, d, g)
    sigma = 1.0 / torch.arange(1, d + 1, dtype=torch.float64)
    return U @ torch.diag(sigma) @ V.T, U, V


def test_haar_batch_has_orthonormal_columns():
    Q = A.haar_batch(50, 32, 4, torch.Generator().manual_seed(0))  # (50, 32, 4)
    assert Q.shape == (50, 32, 4)
    eye = torch.eye(4, dtype=torch.float64)
    assert torch.allclose(Q.transpose(1, 2) @ Q, eye.expand(50, 4, 4), atol=1e-12)


def test_random_rms_is_the_exact_mean_square():
    """E‖UᵀWV‖²_F = r²‖W‖²_F/(d·k): Monte Carlo within 3 standard errors."""
    W = torch.randn(48, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sq = A.random_projection_norms(W, 3, 20000, torch.Generator().manual_seed(2)) ** 2
    se = sq.std() / np.sqrt(len(sq))
    assert abs(sq.mean() - A.random_rms(W, 3) ** 2) < 3 * se
    assert A.random_rms(W, 3) == pytest.approx(3 * float(torch.linalg.matrix_norm(W)) / np.sqrt(48 * 40))


def test_planted_mid_spectrum_delta_w_passes_and_is_not_w_top():
    """ΔW along W's 9th–12th singular directions: present in W, not emphasised (the paper's case)."""
    Ws, dWs = [], []
    for seed in (3, 4):
        W, U, V = planted_w(64, seed)
        Ws.append(W)
        dWs.append(0.5 * U[:, 8:12] @ V[:, 8:12].T)
    out = A.pooled_excess(Ws, dWs, r=4, n_random=2000, seed=0)
    assert out["excess_geomean"] > out["null_p99"]
    assert out["p_value"] < 0.01
    for row in out["per_matrix"]:
        assert row["random_p99"] < row["delta_w"] < row["w_top"]
        assert row["percentile"] > 0.99


def test_delta_w_in_the_null_space_of_w_fails():
    W, U, V = planted_w(32, 5)
    W_low = U[:, :8] @ U[:, :8].T @ W  # rank 8: directions 9..32 carry nothing
    dW = U[:, 20:24] @ V[:, 20:24].T
    out = A.pooled_excess([W_low], [dW], r=4, n_random=1000, seed=0)
    assert out["excess_geomean"] < 1e-8 < out["null_p99"]
    assert out["p_value"] > 0.99


def test_random_delta_w_passes_at_about_the_nominal_rate():
    """ΔW independent of W: the pooled test (p99) should pass ~1 % of the time, p-values ~ uniform."""
    g = torch.Generator().manual_seed(6)
    passes, p_values = 0, []
    for trial in range(40):
        Ws = [planted_w(32, 100 + 2 * trial + i)[0] for i in range(2)]
        dWs = [torch.randn(32, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 32, generator=g, dtype=torch.float64)
               for _ in range(2)]
        out = A.pooled_excess(Ws, dWs, r=4, n_random=400, seed=trial)
        passes += out["excess_geomean"] > out["null_p99"]
        p_values.append(out["p_value"])
    assert passes <= 3  # Binomial(40, 0.01): P(> 3) < 1e-3
    assert 0.3 < np.mean(p_values) < 0.7


def test_bad_input_is_refused_with_the_fix():
    W = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="one ΔW per W"):
        A.pooled_excess([W], [])
    with pytest.raises(ValueError, match="same shape"):
        A.pooled_excess([W], [torch.zeros(8, 4)])
    with pytest.raises(ValueError, match="1 ≤ r ≤ 8"):
        A.pooled_excess([W], [W], r=9)
    with pytest.raises(ValueError, match="percentile"):
        A.pooled_excess([W], [W], quantile=1.5e2)
    with pytest.raises(ValueError, match="2-D"):
        A.random_rms(torch.zeros(3), 1)
