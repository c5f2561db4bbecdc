"""The architectural-separation experiment (labcore.training.separation, claims/bayes/test_full_separation.py):
its code path runs end to end on a CPU with a tiny config, and the baselines are capacity-matched."""

import math

import pytest
import torch

from labcore.glassbox.baselines import LSTMBaseline, param_count
from labcore.training.separation import ARMS, SeparationConfig, arm_builders, run_separation

TINY = SeparationConfig(V=5, L=4, d_model=16, n_layers=1, n_heads=2, steps=3, batch=8, warmup=1, eval_size=32,
                        flat_d=4, deep_layers=3, lstm_d=8, lstm_layers=2)


def test_smoke_every_arm_trains_and_is_graded():
    results = run_separation(TINY, seed=0)  # ≈ 3 s warm, ≈ 10 s with the first meta-device builds
    assert list(results) == list(ARMS)
    for name, r in results.items():
        assert math.isfinite(r.report.entropy_mae_bits) and math.isfinite(r.report.kl_bits), name
        assert r.report.entropy_mae_bits >= 0 and 0 <= r.report.eliminated_mass <= 1
        assert len(r.loss_curve) >= 1 and math.isfinite(r.final_loss)


def test_baselines_are_capacity_matched_at_the_claim_size():
    cfg = SeparationConfig()
    with torch.device("meta"):
        counts = {name: param_count(build()) for name, build in arm_builders(cfg).items()}
    target = counts["transformer"]
    for name, n in counts.items():
        assert abs(n - target) / target < 0.02, (name, n, target)


def test_lstm_is_causal():
    torch.manual_seed(0)
    m = LSTMBaseline(vocab_size=12, d_model=8, hidden=16, n_layers=2).eval()
    x = torch.randint(0, 12, (3, 9))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 12
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.equal(a[:, 6], b[:, 6])


def test_unknown_arm_is_named():
    with pytest.raises(ValueError, match="unknown arm"):
        run_separation(TINY, seed=0, arms=("transformer", "mamba"))
