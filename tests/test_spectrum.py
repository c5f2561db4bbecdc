"""labcore.measures.spectrum: rank needed for 90 % of a matrix's spectral energy."""

import numpy as np
import pytest
import torch

from labcore.measures.spectrum import energy_share, numerical_rank, rank_for_energy


def test_rank_for_energy_on_a_known_spectrum():
    # σ² = 50, 30, 15, 5 → cumulative 0.5, 0.8, 0.95, 1.0
    M = torch.diag(torch.tensor([50.0, 30.0, 15.0, 5.0], dtype=torch.float64).sqrt())
    assert np.allclose(energy_share(M), [0.5, 0.8, 0.95, 1.0])
    assert rank_for_energy(M, 0.9) == 3
    assert rank_for_energy(M, 0.5) == 1
    assert rank_for_energy(M, 1.0) == 4


def test_low_rank_product_has_exact_rank_and_random_matrix_is_spread():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(64, 3, generator=g), torch.randn(3, 64, generator=g)
    assert numerical_rank(B @ A) == 3
    assert rank_for_energy(B @ A) <= 3
    assert rank_for_energy(torch.randn(64, 64, generator=g)) >= 26  # ~33 of 64 for a square Gaussian
    assert numerical_rank(torch.zeros(4, 4)) == 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2-D"):
        rank_for_energy(torch.zeros(3))
    with pytest.raises(ValueError, match="all zeros"):
        rank_for_energy(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="frac"):
        rank_for_energy(torch.eye(3), 1.5)
