"""labcore.measures.routing and labcore.glassbox.state_head: the routing law on tiny cases, the sticky Markov chain
(rows, H_min closed form vs Monte Carlo, the authors' quirk), the toy model and the speed-up
bookkeeping, and the state-head GPT's hooks."""

import math

import numpy as np
import pytest
import torch

from labcore import GPTConfig
from labcore.glassbox.single_head import SingleHeadAttention
from labcore.measures.routing import routing_gradients, routing_gradients_heads, uncentred_score_gradient
from labcore.tasks.sticky_chain import (
    circular_distance,
    conditional_entropy_nats,
    sample_sticky_markov,
    stationary_distribution,
    sticky_transition_matrix,
)
from labcore.training.em_vs_sgd import steps_to_threshold, sticky_loss
from labcore.glassbox.state_head import StateHeadGPT, hmm_state_loss
from labcore.tasks.hmm import HMMTask

# --- the routing law ---------------------------------------------------------------------------


def test_routing_law_by_hand_two_keys():
    """One query, two keys, scalar values: dL/ds = alpha (b - E b) written out by hand."""
    s = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    v = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    u = torch.tensor([[0.5]], dtype=torch.float64)
    a = torch.softmax(s, -1)[0]
    b = torch.tensor([0.5 * 2.0, 0.5 * -1.0], dtype=torch.float64)
    eb = a @ b
    ds, dv = routing_gradients(s, v, u)
    assert torch.allclose(ds[0], a * (b - eb), atol=0, rtol=1e-15)
    assert torch.allclose(dv[:, 0], a * 0.5, atol=0, rtol=1e-15)
    # the score gradient of one query sums to zero (softmax is shift-invariant)
    assert abs(float(ds.sum())) < 1e-15


@pytest.mark.parametrize("causal", [False, True])
def test_routing_gradients_match_autograd(causal):
    g = torch.Generator().manual_seed(0)
    T, dk, dv_ = 5, 3, 4
    q, k = torch.randn(2, T, dk, generator=g, dtype=torch.float64), torch.randn(2, T, dk, generator=g, dtype=torch.float64)
    v = torch.randn(2, T, dv_, generator=g, dtype=torch.float64, requires_grad=True)
    s = q @ k.transpose(-1, -2)
    if causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    s = s.detach().requires_grad_()
    o = s.softmax(-1) @ v
    o.retain_grad()
    (o.sin().sum() + o.pow(2).sum()).backward()
    ds, dv = routing_gradients(s.detach(), v.detach(), o.grad)
    assert torch.allclose(ds, s.grad, atol=1e-14, rtol=0)
    assert torch.allclose(dv, v.grad, atol=1e-14, rtol=0)
    if causal:
        assert bool((ds.triu(1) == 0).all())  # masked scores get no gradient
    wrong = uncentred_score_gradient(s.detach(), v.detach(), o.grad)
    assert (wrong - s.grad).abs().max() > 1e-3


def test_routing_gradients_heads_layout():
    g = torch.Generator().manual_seed(1)
    B, H, T, dh = 2, 3, 4, 5
    s = torch.randn(B, H, T, T, generator=g)
    v = torch.randn(B, T, H, dh, generator=g)
    dz = torch.randn(B, T, H, dh, generator=g)
    ds, dv = routing_gradients_heads(s, v, dz)
    ds2, dv2 = routing_gradients(s, v.permute(0, 2, 1, 3), dz.permute(0, 2, 1, 3))
    assert ds.shape == (B, H, T, T) and dv.shape == (B, T, H, dh)
    assert torch.equal(ds, ds2) and torch.equal(dv, dv2.permute(0, 2, 1, 3))


def test_routing_gradients_shape_errors():
    with pytest.raises(ValueError, match="T_k"):
        routing_gradients(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="upstream"):
        routing_gradients(torch.zeros(3, 4), torch.zeros(4, 2), torch.zeros(3, 3))


# --- the sticky Markov chain -------------------------------------------------------------------


def test_circular_distance():
    d = circular_distance(8)
    assert d[0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]
    assert (d == d.T).all()


@pytest.mark.parametrize("authors_code", [False, True])
def test_transition_rows_sum_to_one_and_are_circulant(authors_code):
    P = sticky_transition_matrix(8, 0.3, authors_code=authors_code)
    assert np.allclose(P.sum(1), 1.0, atol=1e-15, rtol=0)
    assert (P > 0).all()
    for i in range(8):  # every row is row 0 rotated: the chain is symmetric under rotation
        assert np.allclose(P[i], np.roll(P[0], i), atol=1e-15, rtol=0)
    assert np.allclose(stationary_distribution(P), np.full(8, 1 / 8), atol=1e-12, rtol=0)


def test_transition_matrix_values():
    P = sticky_transition_matrix(8, 0.3)
    assert P[0, 0] == pytest.approx(0.3, abs=1e-15)
    inv = np.array([1, 1 / 2, 1 / 3, 1 / 4, 1 / 3, 1 / 2, 1])
    assert np.allclose(P[0, 1:], 0.7 * inv / inv.sum(), atol=1e-15, rtol=0)
    # the authors' make_transition_matrix: self entry normalised with the rest, then +0.3
    Pa = sticky_transition_matrix(8, 0.3, authors_code=True)
    assert Pa[0, 0] == pytest.approx(0.3 + 0.7 * 0.3 / (0.3 + inv.sum()), abs=1e-15)
    assert Pa[0, 0] == pytest.approx(0.34980237, abs=1e-8)


def test_h_min_closed_form():
    """H(Y_t | Y_{t-1}) = entropy of one row (uniform stationary law): 1.883 nats, the number
    the description gives; the authors' code matrix gives 1.829."""
    P = sticky_transition_matrix()
    row = P[0]
    assert conditional_entropy_nats(P) == pytest.approx(float(-(row * np.log(row)).sum()), abs=1e-12)
    assert conditional_entropy_nats(P) == pytest.approx(1.88325, abs=1e-5)
    assert conditional_entropy_nats(sticky_transition_matrix(authors_code=True)) == pytest.approx(1.82919, abs=1e-5)


def test_h_min_non_uniform_stationary():
    P = np.array([[0.9, 0.1], [0.5, 0.5]])
    pi = stationary_distribution(P)
    assert np.allclose(pi, [5 / 6, 1 / 6])
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert conditional_entropy_nats(P) == pytest.approx(5 / 6 * h([0.9, 0.1]) + 1 / 6 * h([0.5, 0.5]), abs=1e-12)


def test_h_min_monte_carlo():
    """The empirical mean of -log P[y_{t-1}, y_t] along a long sampled chain converges to H_min;
    so do the empirical transition frequencies to P."""
    data = sample_sticky_markov(200_001, torch.Generator().manual_seed(0))
    y = data.states.numpy()
    nll = -np.log(data.P[y[:-1], y[1:]])
    se = nll.std() / math.sqrt(len(nll))
    assert abs(nll.mean() - data.h_min) < 4 * se, (nll.mean(), data.h_min, se)
    counts = np.zeros((8, 8))
    np.add.at(counts, (y[:-1], y[1:]), 1)
    freq = counts / counts.sum(1, keepdims=True)
    assert np.abs(freq - data.P).max() < 0.01


def test_sample_sticky_markov_layout_and_seeds():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, b, c = sample_sticky_markov(50, g(1)), sample_sticky_markov(50, g(1)), sample_sticky_markov(50, g(2))
    assert a.inputs.shape == (49, 20) and a.targets.shape == (49,) and a.states.shape == (50,)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.states, b.states)
    assert not torch.equal(a.states, c.states)
    assert torch.equal(a.means, c.means)  # the means are fixed (means_seed), not drawn per run
    assert torch.equal(a.targets, a.states[1:])
    # x_t = mu[y_{t-1}] + N(0, I): the residual has unit variance
    big = sample_sticky_markov(5001, g(3))
    resid = big.inputs - big.means[big.states[:-1]]
    assert abs(float(resid.var()) - 1.0) < 0.05


def test_single_head_attention_is_causal_and_named():
    m = SingleHeadAttention(generator=torch.Generator().manual_seed(0))
    assert {n for n, _ in m.named_parameters()} == {"W_Q", "W_K", "W_V", "W_O"}
    assert m.W_V.shape == (20, 15) and m.W_O.shape == (15, 8)
    assert abs(float(m.W_Q.detach().std()) - 0.1) < 0.03
    x = torch.randn(10, 20)
    out = m(x)
    x2 = x.clone()
    x2[6:] += 5.0
    assert torch.allclose(m(x2)[:6], out[:6], atol=1e-6)  # the future does not leak
    a = m.attention(x)
    assert torch.allclose(a.sum(-1), torch.ones(10)) and bool((a.triu(1) == 0).all())
    assert float(sticky_loss(m, (x, torch.zeros(10, dtype=torch.long))).detach()) > 0


def test_steps_to_threshold():
    losses = np.array([3.0, 2.5, 2.1, 1.9, 1.8])
    assert steps_to_threshold(losses, 2.0) == 3
    assert steps_to_threshold(losses, 1.0) == 5
    assert steps_to_threshold(losses, 5.0) == 0


# --- the state-head GPT ------------------------------------------------------------------------


def test_state_head_gpt_keeps_hooks_and_reads_states():
    task = HMMTask(S=3, O=3, K=4)
    cfg = GPTConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len(), d_model=16, n_layers=2, n_heads=2)
    torch.manual_seed(0)
    model = StateHeadGPT(cfg, n_states=3)
    batch = task.sample(5, torch.Generator().manual_seed(0))
    logits, cache = model.run_with_cache(batch.tokens)
    assert logits.shape == (5, task.seq_len(), 3)
    assert set(model.expected_hook_names()) <= set(cache)
    resid = cache["blocks.1.hook_resid_post"]
    assert torch.allclose(model.state_lens(resid), logits, atol=1e-6)
    assert model.unembed(resid).shape[-1] == task.vocab_size  # token logit lens still works
    loss = hmm_state_loss(model, batch.as_dict())
    assert loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert model.state_head.weight.grad is not None


def test_state_head_gpt_rejects_bad_state_count():
    cfg = GPTConfig(vocab_size=10, n_ctx=8, d_model=8, n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="n_states"):
        StateHeadGPT(cfg, n_states=1)


def test_full_hmm_claim_code_path_runs_on_cpu():
    """claims/bayes/test_full_hmm.py skips without a GPU; run its train/evaluate path here with a
    tiny model and 3 steps, so a GPU session does not find a crash."""
    import importlib.util

    from labcore.files import repo_root

    path = repo_root() / "claims" / "bayes" / "test_full_hmm.py"
    spec = importlib.util.spec_from_file_location("full_hmm_claim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tiny = GPTConfig(vocab_size=mod.TASK.vocab_size, n_ctx=mod.N_CTX, d_model=16, n_layers=1, n_heads=2)
    out = mod.train_and_evaluate(0, "cpu", steps=3, config=tiny, eval_size=4)
    assert set(out["per_k"]) == set(mod.EVAL_KS)
    for K, v in out["per_k"].items():
        assert len(v["per_position_kl"]) == K and math.isfinite(v["kl_bits"])
        assert v["uniform_kl_bits"] > 0
    full = StateHeadGPT(mod.MODEL_CONFIG, 5)
    assert 7.0e6 < full.num_params() < 7.5e6
