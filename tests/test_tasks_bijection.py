"""Bijection elimination: format, exact posterior against brute-force enumeration, seed purity."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labcore.tasks.bijection import (
    IGNORE_INDEX,
    BijectionTask,
    _exact_posterior,
    analytic_entropy_bits,
    batch_fn,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ALL_PERMS_5 = torch.tensor(list(itertools.permutations(range(5))))  # (120, 5)


def brute_force_posterior(keys: torch.Tensor, values: torch.Tensor, perms: torch.Tensor,
                          chunk: int = 4096):
    """p(pi(k_t) = y | pairs < t) by enumerating every bijection: keep the permutations that agree
    with the pairs seen before t, count where each sends k_t. keys/values (C, L) -> (C, L, V)."""
    if keys.shape[0] > chunk:  # bound the (C, P, L) intermediates
        return torch.cat([brute_force_posterior(k, v, perms, chunk)
                          for k, v in zip(keys.split(chunk), values.split(chunk))])
    C, L = keys.shape
    P, V = perms.shape
    images = perms[:, keys].permute(1, 0, 2)                     # (C, P, L): pi_p(k_s)
    agree = images == values[:, None, :]                         # (C, P, L)
    # consistent[c, p, t] = pi_p agrees with every pair s < t (exclusive cumulative "and")
    prefix_ok = torch.cumprod(agree.to(torch.int64), dim=2)
    consistent = torch.cat([torch.ones(C, P, 1, dtype=torch.int64), prefix_ok[:, :, :-1]], 2)
    out = torch.zeros(C, L, V, dtype=torch.float64)
    for t in range(L):
        counts = torch.zeros(C, V, dtype=torch.float64)
        counts.scatter_add_(1, images[:, :, t], consistent[:, :, t].to(torch.float64))
        out[:, t] = counts / counts.sum(-1, keepdim=True)
    return out


# --- the exact posterior ---------------------------------------------------------------


def test_posterior_exhaustive_without_replacement():
    """Every (key order, bijection) pair of V=5, L=5 (14,400 sequences), every prefix."""
    perms = ALL_PERMS_5
    idx = torch.cartesian_prod(torch.arange(120), torch.arange(120))
    keys = perms[idx[:, 0]]                                       # (14400, 5) all key orders
    values = torch.gather(perms[idx[:, 1]], 1, keys)              # pi(k_t)
    post, elim = _exact_posterior(keys, values, 5)
    brute = brute_force_posterior(keys, values, perms)
    assert (post - brute).abs().max().item() <= 1e-12
    assert torch.equal(elim, brute == 0)


def test_posterior_exhaustive_with_replacement():
    """Every key sequence of length 4 over V=5 (625, with repeats) times every bijection."""
    perms = ALL_PERMS_5
    key_seqs = torch.cartesian_prod(*[torch.arange(5)] * 4)                  # (625, 4)
    idx = torch.cartesian_prod(torch.arange(625), torch.arange(120))
    keys = key_seqs[idx[:, 0]]
    values = torch.gather(perms[idx[:, 1]], 1, keys)
    post, elim = _exact_posterior(keys, values, 5)
    brute = brute_force_posterior(keys, values, perms)
    assert (post - brute).abs().max().item() <= 1e-12
    assert torch.equal(elim, brute == 0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), replacement=st.booleans())
def test_sampled_posterior_matches_brute_force(seed, replacement):
    task = BijectionTask(V=5, L=9 if replacement else 5, replacement=replacement)
    b = task.sample(32, gen(seed))
    brute = brute_force_posterior(b.keys, b.values, ALL_PERMS_5)
    assert (b.posterior - brute).abs().max().item() <= 1e-12
    assert torch.equal(b.eliminated, b.posterior == 0)
    # entropy of the exact posterior, also for the sawtooth (repeated keys -> 0 bits)
    h = -(torch.where(brute > 0, brute * brute.log2(), torch.zeros_like(brute))).sum(-1)
    assert (b.entropy_bits - h).abs().max().item() <= 1e-12


def test_entropy_curve_is_log2_V_minus_t():
    task = BijectionTask(V=20, L=19)
    b = task.sample(256, gen(0))
    curve = analytic_entropy_bits(20, 19)
    assert curve.dtype == torch.float64 and curve.shape == (19,)
    assert curve[0].item() == pytest.approx(math.log2(20), abs=1e-12)
    assert curve[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert (b.entropy_bits - curve).abs().max().item() <= 1e-12
    # the eliminated set at query t is exactly the t values shown so far
    assert torch.equal(b.eliminated.sum(-1), torch.arange(19).expand(256, 19))


def test_with_replacement_sawtooth():
    b = BijectionTask(V=4, L=12, replacement=True).sample(64, gen(3))
    repeat = torch.zeros(64, 12, dtype=torch.bool)
    expected = torch.zeros(64, 12, dtype=torch.float64)
    for i in range(64):
        seen = set()
        for t, k in enumerate(b.keys[i].tolist()):
            repeat[i, t] = k in seen
            # a fresh key: uniform over the 4 - |seen| values not shown yet
            expected[i, t] = 0.0 if k in seen else math.log2(4 - len(seen))
            seen.add(k)
    assert repeat.any()
    assert torch.all(b.entropy_bits[repeat] == 0)
    assert (b.entropy_bits - expected).abs().max().item() <= 1e-12
    # a repeated key's posterior is a point mass on its true value
    point = torch.gather(b.posterior, 2, b.values.unsqueeze(-1)).squeeze(-1)
    assert torch.all(point[repeat] == 1)


# --- format ----------------------------------------------------------------------------


@pytest.mark.parametrize("replacement", [False, True])
def test_token_format(replacement):
    V, L = 7, 6
    task = BijectionTask(V, L, replacement=replacement)
    assert task.vocab_size == 14 and task.seq_len == 11
    assert torch.equal(task.query_positions, torch.tensor([0, 2, 4, 6, 8, 10]))
    b = task.sample(50, gen(1))
    assert b.tokens.shape == (50, 11) and b.targets.shape == (50, 11)
    assert b.posterior.shape == (50, L, V) and b.posterior.dtype == torch.float64
    assert b.entropy_bits.shape == (50, L) and b.eliminated.shape == (50, L, V)
    assert torch.equal(b.tokens[:, 0::2], b.keys)                       # keys 0..V-1
    assert torch.equal(b.tokens[:, 1::2], b.values[:, :-1] + V)         # values V..2V-1
    assert torch.equal(b.targets[:, 0::2], b.values + V)                # every key is a query
    assert torch.all(b.targets[:, 1::2] == IGNORE_INDEX)
    assert torch.equal(torch.sort(b.perm, 1).values, torch.arange(V).expand(50, V))
    assert torch.equal(b.values, torch.gather(b.perm, 1, b.keys))
    assert torch.allclose(b.posterior.sum(-1), torch.ones(50, L, dtype=torch.float64))
    # the true value always has positive posterior probability
    assert torch.all(torch.gather(b.posterior, 2, b.values.unsqueeze(-1)) > 0)
    if not replacement:
        s = torch.sort(b.keys, 1).values
        assert torch.all(s[:, 1:] != s[:, :-1])


def test_keys_and_bijection_are_uniform():
    """Both argsorts give uniform permutations: each of the 24 orders of V=4 about 1/24."""
    b = BijectionTask(V=4, L=4).sample(24_000, gen(5))
    for x in (b.keys, b.perm):
        code = (x * torch.tensor([64, 16, 4, 1])).sum(1)
        counts = torch.bincount(code, minlength=256)
        counts = counts[counts > 0]
        assert len(counts) == 24
        assert counts.min() > 1000 - 5 * 31 and counts.max() < 1000 + 5 * 31  # 5 sigma


@pytest.mark.parametrize("replacement", [False, True])
def test_seed_purity(replacement):
    task = BijectionTask(V=10, L=9, replacement=replacement)
    a, b, c = task.sample(16, gen(7)), task.sample(16, gen(7)), task.sample(16, gen(8))
    for name in ("tokens", "targets", "keys", "values", "perm", "posterior", "entropy_bits",
                 "eliminated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.tokens, c.tokens)


def test_batch_fn():
    task = BijectionTask(V=10, L=9)
    fn = batch_fn(task, 8)
    tokens, targets = fn(0, gen(2))
    ref = task.sample(8, gen(2))
    assert torch.equal(tokens, ref.tokens) and torch.equal(targets, ref.targets)
    with pytest.raises(ValueError):
        batch_fn("not a task", 8)
    with pytest.raises(ValueError):
        batch_fn(task, 0)


# --- argument errors -------------------------------------------------------------------


def test_L_greater_than_V_without_replacement():
    with pytest.raises(ValueError, match=r"L=12 > V=10: without replacement at most V keys"):
        BijectionTask(V=10, L=12)
    BijectionTask(V=10, L=12, replacement=True)  # fine with replacement
    BijectionTask(V=10, L=10)                    # L = V is fine: the last key is determined


@pytest.mark.parametrize("kwargs", [dict(V=1, L=1), dict(V=5, L=0), dict(V=5.0, L=3),
                                    dict(V=5, L=True), dict(V=5, L=3, replacement="yes")])
def test_bad_task_arguments(kwargs):
    with pytest.raises(ValueError):
        BijectionTask(**kwargs)


def test_bad_sample_arguments():
    task = BijectionTask(V=5, L=4)
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, gen(0))
    with pytest.raises(TypeError, match="torch.Generator"):
        task.sample(4, None)
    with pytest.raises(TypeError, match="torch.Generator"):
        task.sample(4, 0)


def test_analytic_entropy_errors():
    with pytest.raises(ValueError, match="L=6 > V=5"):
        analytic_entropy_bits(5, 6)
    with pytest.raises(ValueError):
        analytic_entropy_bits(5, 0)
