"""Attention-free baselines: shapes, (no) context, causality, parameter budgets."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labcore.measures import posterior as bayes
from labcore.glassbox.baselines import (
    FlattenedContextMLP,
    PerPositionMLP,
    match_param_count,
    param_count,
)
from labcore.tasks.bijection import BijectionTask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens_for(vocab, B, T, seed=0):
    return torch.randint(0, vocab, (B, T), generator=gen(seed))


def test_shapes():
    torch.manual_seed(0)
    m = PerPositionMLP(vocab_size=20, d_model=16, n_blocks=2, d_mlp=32)
    assert m(tokens_for(20, 3, 17)).shape == (3, 17, 20)
    m = PerPositionMLP(vocab_size=20, d_model=16, n_blocks=0, d_mlp=32, n_positions=17)
    assert m(tokens_for(20, 3, 17)).shape == (3, 17, 20)
    f = FlattenedContextMLP(vocab_size=20, seq_len=17, d_model=8, hidden=24, n_layers=2)
    assert f(tokens_for(20, 3, 17)).shape == (3, 17, 20)
    assert f(tokens_for(20, 3, 5)).shape == (3, 5, 20)     # shorter sequences are fine


def test_per_position_mlp_sees_no_context():
    torch.manual_seed(0)
    m = PerPositionMLP(vocab_size=20, d_model=16, n_blocks=2, d_mlp=32).eval()
    x = tokens_for(20, 4, 11)
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 20
    with torch.no_grad():
        a, b = m(x), m(y)
    others = [t for t in range(11) if t != 5]
    assert torch.equal(a[:, others], b[:, others])
    assert not torch.equal(a[:, 5], b[:, 5])


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 15), seed=st.integers(0, 1000))
def test_flattened_mlp_is_causal(t, seed):
    """Changing token t+1 leaves the logits at positions <= t unchanged, and does change t+1."""
    torch.manual_seed(seed)
    f = FlattenedContextMLP(vocab_size=20, seq_len=17, d_model=8, hidden=24, n_layers=2).eval()
    x = tokens_for(20, 4, 17, seed)
    y = x.clone()
    y[:, t + 1] = (y[:, t + 1] + 1 + seed % 19) % 20
    with torch.no_grad():
        a, b = f(x), f(y)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_flattened_mlp_sees_the_whole_prefix():
    """Not trivially local: the last position depends on the first token."""
    torch.manual_seed(0)
    f = FlattenedContextMLP(vocab_size=10, seq_len=9, d_model=8, hidden=16, n_layers=1).eval()
    x = tokens_for(10, 2, 9)
    y = x.clone()
    y[:, 0] = (y[:, 0] + 3) % 10
    with torch.no_grad():
        assert not torch.allclose(f(x)[:, -1], f(y)[:, -1])


def test_param_count_formula():
    V, T, d, h, n = 40, 37, 8, 24, 3
    f = FlattenedContextMLP(V, T, d, h, n)
    expected = (V * d + T * d + (T * d * h + h) + T * h
                + n * (2 * h + 2 * (h * h + h)) + 2 * h + h * V)
    assert param_count(f) == expected
    m = PerPositionMLP(V, d, 2, 32)
    assert param_count(m) == V * d + 2 * (2 * d + d * 32 + 32 + 32 * d + d) + 2 * d + d * V
    m.tok_emb.weight.requires_grad_(False)
    assert param_count(m) == V * d + 2 * (2 * d + d * 32 + 32 + 32 * d + d) + 2 * d


def test_match_param_count():
    target = 102_000  # a small GPT's budget
    build = lambda h: FlattenedContextMLP(20, 17, 16, h, 2)  # noqa: E731
    h = match_param_count(build, target)
    counts = {w: param_count(build(w)) for w in (h - 1, h, h + 1)}
    assert abs(counts[h] - target) <= abs(counts[h - 1] - target)
    assert abs(counts[h] - target) <= abs(counts[h + 1] - target)
    assert abs(counts[h] - target) / target < 0.02
    d = match_param_count(lambda w: PerPositionMLP(40, w, 4, 4 * w), 138_000)
    assert abs(param_count(PerPositionMLP(40, d, 4, 4 * d)) - 138_000) / 138_000 < 0.02
    with pytest.raises(ValueError):
        match_param_count(build, 0)
    with pytest.raises(ValueError):
        match_param_count(build, 10, lo=5, hi=4)


def test_untrained_per_position_mlp_is_graded_like_any_model():
    """The baselines plug straight into the bijection metrics."""
    task = BijectionTask(10, 9)
    b = task.sample(16, gen(0))
    torch.manual_seed(0)
    m = PerPositionMLP(task.vocab_size, 16, 1, 32, n_positions=task.seq_len)
    with torch.no_grad():
        r = bayes.evaluate_bijection(m(b.tokens), b, task)
    assert r.entropy_mae_bits > 0 and r.kl_bits > 0


@pytest.mark.parametrize("build", [
    lambda: PerPositionMLP(0, 16, 1, 32),
    lambda: PerPositionMLP(10, 16, -1, 32),
    lambda: PerPositionMLP(10, 16, 1, 32, n_positions=0),
    lambda: FlattenedContextMLP(10, 0, 8, 16, 1),
    lambda: FlattenedContextMLP(10, 9, 8, 16.0, 1),
    lambda: FlattenedContextMLP(10, 9, 8, 16, -1),
])
def test_bad_constructor_arguments(build):
    with pytest.raises(ValueError):
        build()


def test_bad_inputs():
    f = FlattenedContextMLP(10, 9, 8, 16, 1)
    with pytest.raises(ValueError, match="sequence length 10 > the model's 9"):
        f(tokens_for(10, 2, 10))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        f(torch.zeros(9, dtype=torch.long))
    m = PerPositionMLP(10, 8, 1, 16, n_positions=5)
    with pytest.raises(ValueError, match="sequence length 6"):
        m(tokens_for(10, 2, 6))
