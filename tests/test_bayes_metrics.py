"""Calibration metrics: closed forms, perfect and uniform predictors, KL, support errors."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labcore.measures import posterior as bayes
from labcore.tasks.bijection import BijectionTask
from labcore.tasks.hmm import HMMTask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perfect_logits(batch, task, dtype=torch.float64):
    """Logits whose value-slice softmax is the exact posterior and whose key slice is empty."""
    B = batch.tokens.shape[0]
    logits = torch.full((B, task.seq_len, task.vocab_size), -math.inf, dtype=dtype)
    logits[:, task.query_positions, task.V:] = batch.posterior.log().to(dtype)
    return logits


def uniform_logits(task, B):
    return torch.zeros(B, task.seq_len, task.vocab_size)


# --- closed forms ----------------------------------------------------------------------


def test_plateau_closed_forms():
    assert bayes.mlp_plateau_mae_bits(20, 19) == pytest.approx(1.107, abs=1e-3)
    assert bayes.mlp_plateau_mae_bits(10, 9) == pytest.approx(0.901, abs=1e-3)
    # log2 V - log2(V!/(V-L)!)/L
    assert bayes.mlp_plateau_mae_bits(20, 19) == pytest.approx(
        math.log2(20) - math.log2(math.factorial(20)) / 19, abs=1e-12)
    assert bayes.mlp_plateau_eliminated_mass(20, 19) == pytest.approx(0.45, abs=1e-12)
    assert bayes.mlp_plateau_eliminated_mass(10, 9) == pytest.approx(8 / 20, abs=1e-12)
    with pytest.raises(ValueError, match="L=12 > V=10"):
        bayes.mlp_plateau_mae_bits(10, 12)
    with pytest.raises(ValueError):
        bayes.mlp_plateau_eliminated_mass(0, 1)


@pytest.mark.parametrize("V,L", [(20, 19), (10, 9), (6, 6)])
def test_uniform_predictor_hits_the_plateau(V, L):
    task = BijectionTask(V, L)
    b = task.sample(64, gen(0))
    r = bayes.evaluate_bijection(uniform_logits(task, 64), b, task)
    plateau = bayes.mlp_plateau_mae_bits(V, L)
    assert abs(r.entropy_mae_bits - plateau) <= 1e-9
    assert abs(r.mean_curve_mae_bits - plateau) <= 1e-9
    assert abs(r.kl_bits - plateau) <= 1e-9                  # KL(p || uniform) = log2 V - H(p)
    assert abs(r.eliminated_mass - bayes.mlp_plateau_eliminated_mass(V, L)) <= 1e-9
    assert abs(r.offslice_mass - 0.5) <= 1e-9                # half the vocab is key tokens
    assert np.allclose(r.entropy_model_curve, math.log2(V), atol=1e-9)
    assert np.allclose(r.entropy_bayes_curve, np.log2(V - np.arange(L)), atol=1e-12)


@pytest.mark.parametrize("replacement", [False, True])
def test_perfect_predictor_scores_zero(replacement):
    task = BijectionTask(10, 14 if replacement else 9, replacement=replacement)
    b = task.sample(64, gen(1))
    r = bayes.evaluate_bijection(perfect_logits(b, task), b, task)
    assert r.entropy_mae_bits <= 1e-12 and r.mean_curve_mae_bits <= 1e-12
    assert abs(r.kl_bits) <= 1e-12 and r.eliminated_mass == 0 and r.offslice_mass == 0
    assert np.allclose(r.entropy_model_curve, r.entropy_bayes_curve, atol=1e-12)
    assert r.kl_curve.shape == (task.L,) and r.n_sequences == 64
    json.dumps(r.as_dict())  # recordable


def test_perfect_predictor_float32_with_finite_logits():
    """What a trained model looks like: float32, large negative instead of -inf."""
    task = BijectionTask(10, 9)
    b = task.sample(32, gen(2))
    logits = torch.full((32, task.seq_len, task.vocab_size), -1e4)
    logits[:, task.query_positions, task.V:] = b.posterior.clamp_min(1e-40).log().float()
    r = bayes.evaluate_bijection(logits, b, task)
    assert r.entropy_mae_bits < 1e-6 and r.kl_bits < 1e-6 and r.eliminated_mass < 1e-6


def test_right_entropy_wrong_support():
    """A model uniform over the wrong V-t values: zero entropy MAE, yet infinite KL and mass on
    eliminated values. This is why the entropy MAE is never reported alone."""
    task = BijectionTask(10, 9)
    b = task.sample(32, gen(3))
    shifted = torch.roll(b.posterior, shifts=1, dims=-1)                  # same entropy
    lq = shifted.log()
    assert bayes.entropy_mae_bits(lq, b.posterior) <= 1e-12
    assert bayes.kl_bits(b.posterior, lq) == math.inf
    assert bayes.eliminated_mass(shifted, b.eliminated) > 0.1


# --- individual metrics ----------------------------------------------------------------


def test_entropy_bits():
    assert bayes.entropy_bits(torch.full((4,), math.log(1 / 4))).item() == pytest.approx(2.0)
    one_hot = torch.tensor([0.0, -math.inf, -math.inf])
    assert bayes.entropy_bits(one_hot).item() == 0.0
    assert bayes.entropy_bits(torch.zeros(3, 5, 8) - math.log(8)).shape == (3, 5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 10.0))
def test_kl_zero_only_at_the_posterior(seed, scale):
    task = BijectionTask(8, 7)
    b = task.sample(16, gen(seed))
    assert abs(bayes.kl_bits(b.posterior, b.posterior.log())) <= 1e-12
    noise = scale * torch.randn(16, 7, 8, dtype=torch.float64, generator=gen(seed + 1))
    lq = torch.log_softmax(b.posterior.clamp_min(1e-300).log() + noise, -1)
    kl = bayes.kl_bits(b.posterior, lq, reduction="none")
    assert kl.shape == (16, 7)
    assert torch.all(kl >= -1e-12)
    assert bayes.kl_bits(b.posterior, lq) > 0
    # the authors' mean-curve MAE never exceeds the per-sample MAE
    strict = bayes.entropy_mae_bits(lq, b.posterior)
    assert bayes.mean_curve_mae_bits(lq, b.posterior) <= strict + 1e-12


def test_kl_known_value():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)
    # 0.5 log2(0.5/0.25) + 0.5 log2(1) = 0.5 bits; the p=0 entry contributes 0
    assert bayes.kl_bits(p, q.log()) == pytest.approx(0.5, abs=1e-15)


def test_mean_curve_is_weaker():
    """One over-confident and one under-confident sample: per-sample MAE sees both errors, the
    authors' mean-curve MAE lets them cancel."""
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64).expand(2, 1, 4)   # 1 bit
    flat = torch.full((4,), math.log(0.25), dtype=torch.float64)                 # 2 bits
    sharp = torch.tensor([0.0, -math.inf, -math.inf, -math.inf], dtype=torch.float64)  # 0 bits
    lq = torch.stack([flat, sharp])[:, None, :]                                  # (2, 1, 4)
    assert bayes.entropy_mae_bits(lq, p) == pytest.approx(1.0, abs=1e-12)
    assert bayes.mean_curve_mae_bits(lq, p) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="batch axis"):
        bayes.mean_curve_mae_bits(lq[:, 0], p[:, 0])


def test_offslice_and_value_slice():
    task = BijectionTask(5, 4)
    task.sample(3, gen(0))
    logits = torch.zeros(3, task.seq_len, task.vocab_size + 6)   # padded vocabulary
    lq = bayes.value_slice_log_probs(logits, task)
    assert lq.shape == (3, 4, 5) and lq.dtype == torch.float64
    assert torch.allclose(lq, torch.full_like(lq, -math.log(5)))
    assert bayes.full_vocab_offslice_mass(logits, task) == pytest.approx(11 / 16)
    assert bayes.full_vocab_offslice_mass(logits, task, reduction="none").shape == (3, 4)
    # only the query (key) positions are read
    logits[:, 1::2] = torch.randn(3, task.L - 1, task.vocab_size + 6)
    assert torch.equal(bayes.value_slice_log_probs(logits, task), lq)


def test_logit_lens_kl_per_layer():
    task = BijectionTask(10, 9)
    b = task.sample(32, gen(4))
    exact = perfect_logits(b, task)
    noisy = exact.clone()
    noisy[:, task.query_positions, task.V:] = (
        b.posterior.clamp_min(1e-3).log() + 0.3 * torch.randn(32, 9, 10, generator=gen(5),
                                                               dtype=torch.float64))
    layers = [uniform_logits(task, 32), noisy, exact]
    kls = bayes.logit_lens_kl_per_layer(layers, b, task)
    assert len(kls) == 3
    assert kls[0] == pytest.approx(bayes.mlp_plateau_mae_bits(10, 9), abs=1e-9)
    assert kls[0] > kls[1] > kls[2] and abs(kls[2]) <= 1e-12
    rev = bayes.logit_lens_kl_per_layer(layers, b, task, reverse=True)
    assert all(math.isfinite(x) for x in rev) and rev[0] > rev[1] > rev[2]
    assert abs(rev[2]) < 1e-9
    with pytest.raises(ValueError):
        bayes.logit_lens_kl_per_layer([], b, task)


# --- HMM -------------------------------------------------------------------------------


def test_evaluate_hmm():
    b = HMMTask(S=4, O=4, K=12).sample(64, gen(6))
    perfect = bayes.evaluate_hmm(b.posterior.log(), b.posterior)
    assert abs(perfect.kl_bits) <= 1e-12 and perfect.entropy_mae_bits <= 1e-12
    assert perfect.per_position_kl.shape == (12,)
    uni = bayes.evaluate_hmm(torch.zeros(64, 12, 4), b.posterior)
    # KL(alpha || uniform) = log2 S - H(alpha)
    assert uni.kl_bits == pytest.approx(2.0 - b.entropy_bits.mean().item(), abs=1e-9)
    assert uni.entropy_mae_bits == pytest.approx(uni.kl_bits, abs=1e-9)
    json.dumps(uni.as_dict())
    with pytest.raises(ValueError):
        bayes.evaluate_hmm(torch.zeros(64, 12, 5), b.posterior)
    with pytest.raises(ValueError):
        bayes.evaluate_hmm(torch.zeros(64, 4), b.posterior)


# --- argument errors -------------------------------------------------------------------


def test_bad_arguments():
    task = BijectionTask(5, 4)
    b = task.sample(2, gen(0))
    with pytest.raises(ValueError, match="T=6"):
        bayes.value_slice_log_probs(torch.zeros(2, 6, 10), task)
    with pytest.raises(ValueError, match="vocab 8"):
        bayes.value_slice_log_probs(torch.zeros(2, 7, 8), task)
    with pytest.raises(ValueError, match=r"\(B, T, vocab\)"):
        bayes.value_slice_log_probs(torch.zeros(7, 10), task)
    with pytest.raises(ValueError, match="same shape"):
        bayes.kl_bits(b.posterior, torch.zeros(2, 4, 6))
    with pytest.raises(ValueError, match="same shape"):
        bayes.entropy_mae_bits(torch.zeros(2, 4, 6), b.posterior)
    with pytest.raises(ValueError, match="bool"):
        bayes.eliminated_mass(b.posterior, b.eliminated.float())
    with pytest.raises(ValueError, match="reduction"):
        bayes.kl_bits(b.posterior, b.posterior.log(), reduction="sum")
    with pytest.raises(ValueError, match="batch"):
        bayes.evaluate_bijection(torch.zeros(3, 7, 10), b, task)
