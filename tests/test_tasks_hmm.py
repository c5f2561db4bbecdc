"""HMM filtering: forward filter vs path enumeration, the 0.01 grid, tokens, seed purity."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labcore.tasks.hmm import (
    EMIT,
    OBS,
    SEP,
    SYMBOL_OFFSET,
    TRANS,
    HMMTask,
    batch_fn,
    discretise_rows,
    forward_filter,
    soft_label_ce,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force_filter(T, E, obs):
    """p(s_t | o_1..o_t) by summing over all S^K hidden paths (one HMM, float64).

    The joint of a path is pi0(s_1) E[s_1, o_1] prod_{u=2..K} T[s_{u-1}, s_u] E[s_u, o_u]. The
    filtering posterior at t uses only the factors up to t; summing those over all S^K paths
    counts each length-t prefix S^(K-t) times, a constant that the normalisation removes."""
    S, K = T.shape[0], len(obs)
    out = torch.zeros(K, S, dtype=torch.float64)
    for path in itertools.product(range(S), repeat=K):
        w = 1.0 / S * E[path[0], obs[0]].item()
        out[0, path[0]] += w
        for t in range(1, K):
            w *= T[path[t - 1], path[t]].item() * E[path[t], obs[t]].item()
            out[t, path[t]] += w
    return out / out.sum(-1, keepdim=True)


def test_forward_filter_matches_729_paths():
    task = HMMTask(S=3, O=3, K=6)
    b = task.sample(6, gen(0))
    assert b.posterior.shape == (6, 6, 3)
    for i in range(6):
        brute = brute_force_filter(b.T[i], b.E[i], b.observations[i].tolist())
        assert (b.posterior[i] - brute).abs().max().item() <= 1e-10


def test_forward_filter_non_uniform_prior():
    T = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]], dtype=torch.float64)
    E = torch.tensor([[[0.7, 0.3], [0.4, 0.6]]], dtype=torch.float64)
    pi0 = torch.tensor([0.25, 0.75], dtype=torch.float64)
    obs = torch.tensor([[1]])
    post = forward_filter(T, E, obs, pi0=pi0)
    expected = torch.tensor([0.25 * 0.3, 0.75 * 0.6])
    assert torch.allclose(post[0, 0], (expected / expected.sum()).double(), atol=1e-15)


def test_entropy_matches_posterior():
    b = HMMTask(S=4, O=3, K=10).sample(32, gen(1))
    assert torch.allclose(b.posterior.sum(-1), torch.ones(32, 10, dtype=torch.float64),
                          atol=1e-12)
    h = -(b.posterior * b.posterior.log2()).sum(-1)
    assert (b.entropy_bits - h).abs().max().item() <= 1e-12
    assert torch.all(b.entropy_bits <= math.log2(4) + 1e-12)


# --- the 0.01 grid ---------------------------------------------------------------------


@pytest.mark.parametrize("S,O,min_prob", [(5, 5, 0.05), (3, 3, 0.05), (4, 7, 0.1), (2, 10, 0.08)])
def test_matrices_on_grid(S, O, min_prob):
    b = HMMTask(S=S, O=O, K=3, min_prob=min_prob).sample(500, gen(2))
    for M in (b.T, b.E):
        cents = torch.round(100 * M)
        assert (100 * M - cents).abs().max().item() < 1e-9            # on the grid
        assert torch.all(cents.to(torch.int64).sum(-1) == 100)         # rows sum to 1 exactly
        assert torch.all(M >= min_prob - 1e-12) and torch.all(M <= 1.0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 20), m=st.integers(5, 20), seed=st.integers(0, 2**31 - 1),
       spread=st.floats(0.05, 20.0))
def test_discretise_rows_property(n, m, seed, spread):
    """Any probability rows: integer cents, sum exactly 100, floor m respected, and within one
    cent of the floor-adjusted target (largest-remainder rounding never moves an entry by >= 1)."""
    if n * m > 100:
        with pytest.raises(ValueError):
            discretise_rows(torch.full((1, n), 1.0 / n, dtype=torch.float64), m / 100)
        return
    g = gen(seed)
    raw = torch.rand(8, n, generator=g, dtype=torch.float64) ** spread   # very peaked to flat
    p = raw / raw.sum(-1, keepdim=True)
    cents = discretise_rows(p, m / 100)
    assert cents.dtype == torch.int64
    assert torch.all(cents.sum(-1) == 100)
    assert torch.all(cents >= m)
    # rows that needed no flooring: plain largest-remainder rounding of 100 p
    ok = (100 * p >= m).all(-1)
    assert torch.all((cents[ok] - 100 * p[ok]).abs() < 1)


def test_largest_remainder_example():
    # 100 p = [33.4, 33.3, 33.3]: floors 33, 33, 33, one leftover cent to the largest remainder
    p = torch.tensor([[0.334, 0.333, 0.333]], dtype=torch.float64)
    assert discretise_rows(p, 0.05).tolist() == [[34, 33, 33]]
    # an entry below the floor is raised to 5 cents and the others pay for it
    p = torch.tensor([[0.01, 0.49, 0.50]], dtype=torch.float64)
    c = discretise_rows(p, 0.05)
    assert c[0, 0] == 5 and c.sum() == 100


# --- tokens ----------------------------------------------------------------------------


def test_paper_layout_S5_O5():
    task = HMMTask()
    assert task.vocab_size == 105 and task.header_len == 53
    assert task.seq_len() == 53 + 40 and task.seq_len(50) == 153
    assert torch.equal(task.obs_positions(), 53 + 2 * torch.arange(20) + 1)


@pytest.mark.parametrize("S,O,K", [(5, 5, 20), (3, 3, 6), (4, 6, 9)])
def test_token_round_trip(S, O, K):
    task = HMMTask(S=S, O=O, K=K)
    b = task.sample(16, gen(4))
    N = task.seq_len()
    assert b.tokens.shape == (16, N) and b.tokens.dtype == torch.long
    assert b.tokens.min() >= 0 and b.tokens.max() < task.vocab_size
    assert torch.all(b.tokens[:, 0] == TRANS)
    assert torch.all(b.tokens[:, 1 + S * S] == EMIT)
    assert torch.all(b.tokens[:, task.header_len - 1] == SEP)
    assert torch.all(b.tokens[:, 1:task.header_len - 1][:, [i for i in range(S * S + S * O + 1)
                                                          if i != S * S]] < 96)
    pos = task.obs_positions()
    assert torch.equal(b.obs_positions, pos)
    assert torch.all(b.tokens[:, pos - 1] == OBS)
    assert torch.equal(b.tokens[:, pos], b.observations + SYMBOL_OFFSET)
    T, E = task.decode_header(b.tokens)
    assert torch.equal(T, b.T) and torch.equal(E, b.E)
    assert torch.equal(task.encode(T, E, b.observations), b.tokens)
    # probability token = round(100 p) - 5
    assert b.tokens[0, 1].item() == round(100 * b.T[0, 0, 0].item()) - 5


def test_decode_header_checks_markers():
    task = HMMTask(S=3, O=3, K=4)
    tokens = task.sample(2, gen(0)).tokens.clone()
    tokens[0, 0] = 0
    with pytest.raises(ValueError, match=r"\[TRANS\]"):
        task.decode_header(tokens)


def test_encode_rejects_probabilities_below_005():
    task = HMMTask(S=2, O=2, K=1)
    T = torch.tensor([[[0.97, 0.03], [0.5, 0.5]]], dtype=torch.float64)
    E = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="0.05..1.00"):
        task.encode(T, E, torch.zeros(1, 1, dtype=torch.long))


# --- sampling --------------------------------------------------------------------------


def test_paths_follow_T_and_E():
    """Martingale check: E[onehot(s_t) - T[s_{t-1}, :]] = 0 and E[onehot(o_t) - E[s_t, :]] = 0."""
    task = HMMTask(S=4, O=3, K=12)
    b = task.sample(4000, gen(6))
    B, K = b.states.shape
    bi = torch.arange(B)[:, None]
    d_trans = torch.nn.functional.one_hot(b.states[:, 1:], 4) - b.T[bi, b.states[:, :-1]]
    d_emit = torch.nn.functional.one_hot(b.observations, 3) - b.E[bi, b.states]
    for d in (d_trans, d_emit):
        d = d.reshape(-1, d.shape[-1])
        se = d.std(0) / math.sqrt(d.shape[0])
        assert torch.all(d.mean(0).abs() < 5 * se)
    # uniform pi0
    counts = torch.bincount(b.states[:, 0], minlength=4).double()
    assert torch.all((counts - 1000).abs() < 5 * math.sqrt(1000 * 0.75))


def test_seed_purity():
    task = HMMTask(S=3, O=4, K=8)
    a, b, c = task.sample(8, gen(9)), task.sample(8, gen(9)), task.sample(8, gen(10))
    for name in ("tokens", "obs_positions", "posterior", "entropy_bits", "T", "E",
                 "observations", "states"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.tokens, c.tokens)


def test_length_override():
    task = HMMTask(S=3, O=3, K=5)
    b = task.sample(4, gen(0), K=30)
    assert b.tokens.shape == (4, task.header_len + 60)
    assert b.posterior.shape == (4, 30, 3) and b.obs_positions.shape == (30,)
    fn = batch_fn(task, 4, K=7)
    d = fn(0, gen(1))
    assert isinstance(d, dict) and d["posterior"].shape == (4, 7, 3)
    ref = task.sample(4, gen(1), K=7)
    assert all(torch.equal(d[k], v) for k, v in ref.as_dict().items())
    moved = ref.to("cpu")
    assert type(moved) is type(ref) and torch.equal(moved.tokens, ref.tokens)
    with pytest.raises(ValueError):
        batch_fn(object(), 4)


# --- the loss --------------------------------------------------------------------------


def test_soft_label_ce():
    b = HMMTask(S=5, O=5, K=10).sample(16, gen(3))
    exact_logits = b.posterior.log()
    ce = soft_label_ce(exact_logits, b.posterior)
    # at q = alpha the soft-label CE is the mean posterior entropy (in nats)
    assert ce.item() == pytest.approx(b.entropy_bits.mean().item() * math.log(2), abs=1e-12)
    logits = torch.randn(16, 10, 5, dtype=torch.float64, generator=gen(0), requires_grad=True)
    loss = soft_label_ce(logits, b.posterior)
    assert loss.item() > ce.item()
    loss.backward()
    # d/dlogits of mean CE = (softmax - alpha) / (B K)
    expected = (torch.softmax(logits.detach(), -1) - b.posterior) / (16 * 10)
    assert torch.allclose(logits.grad, expected, atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        soft_label_ce(torch.zeros(16, 10, 4), b.posterior)


# --- argument errors -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(min_prob=0.04), "0.05"),
    (dict(min_prob=0.055), "grid"),
    (dict(S=5, min_prob=0.25), "impossible"),
    (dict(S=1), "S=1"),
    (dict(O=1), "O=1"),
    (dict(K=0), "K=0"),
    (dict(S=3.0), "S must be an int"),
    (dict(min_prob="0.05"), "number"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HMMTask(**kwargs)


def test_bad_sample_arguments():
    task = HMMTask(S=3, O=3, K=4)
    with pytest.raises(ValueError):
        task.sample(0, gen(0))
    with pytest.raises(ValueError):
        task.sample(2, gen(0), K=0)
    with pytest.raises(TypeError):
        task.sample(2, 123)
