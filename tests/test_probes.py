"""Geometry probes and ablation hooks: each probe on inputs whose answer is known."""

import math

import numpy as np
import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.measures import probes
from labcore.training.trainer import seeded_model


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    cfg = GPTConfig(vocab_size=12, n_ctx=9, d_model=32, n_layers=3, n_heads=4, init_std=0.2)
    return seeded_model(lambda: GPT(cfg), 0).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 12, (5, 9), generator=gen(1))


# --- keys ---------------------------------------------------------------------------------------


def test_mean_offdiag_abs_cos_orthogonal_and_parallel():
    assert probes.mean_offdiag_abs_cos(torch.eye(5)) == pytest.approx(0.0, abs=1e-12)
    same = torch.ones(4, 3)
    assert probes.mean_offdiag_abs_cos(same) == pytest.approx(1.0, abs=1e-12)
    flipped = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]])
    assert probes.mean_offdiag_abs_cos(flipped) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        probes.mean_offdiag_abs_cos(torch.ones(1, 3))


def _plain_model(d=8, heads=2, norm="none"):
    cfg = GPTConfig(vocab_size=8, n_ctx=4, d_model=d, n_layers=1, n_heads=heads, norm=norm)
    return GPT(cfg).eval()


def test_key_orthogonality_orthogonal_embeddings_give_zero():
    m = _plain_model()
    with torch.no_grad():
        m.W_E.weight.copy_(torch.eye(8))            # one-hot embeddings
        m.blocks[0].attn.W_K.weight.copy_(torch.eye(8))  # identity W_K: head h sees dims 4h..4h+3
    o = probes.key_orthogonality(m, [0, 1, 2, 3, 4, 5, 6, 7], normalize=False)
    assert o.shape == (2,)
    # tokens 4..7 project to zero in head 0 (cos defined as 0), 0..3 are orthogonal: all zero
    assert np.allclose(o, 0.0, atol=1e-12)
    c = probes.key_cosine_matrices(m, [0, 1, 2, 3], normalize=False)
    assert c.shape == (2, 4, 4)
    assert np.allclose(c[0], np.eye(4))


def test_key_orthogonality_identical_embeddings_give_one():
    m = _plain_model(norm="layernorm")
    with torch.no_grad():
        m.W_E.weight.copy_(torch.randn(8, 8, generator=gen(0))[0].expand(8, 8))
    o = probes.key_orthogonality(m, range(8))
    assert np.allclose(o, 1.0, atol=1e-9)


def test_random_vectors_match_theory():
    """Isotropic random vectors in dh dims: E|cos| = Γ(dh/2)/(√π Γ((dh+1)/2)) ≈ √(2/(π dh))."""
    dh = 32
    v = torch.randn(200, dh, generator=gen(0), dtype=torch.float64)
    expected = math.gamma(dh / 2) / (math.sqrt(math.pi) * math.gamma((dh + 1) / 2))
    assert probes.mean_offdiag_abs_cos(v) == pytest.approx(expected, rel=0.03)


def test_key_orthogonality_random_init_is_not_orthogonal():
    """At init W_K·ln1(E) is random but not isotropic (W_K Wᵀ_K is a Wishart matrix), so the
    mean |cos| sits a little above the isotropic value 0.142 for dh = 32; never near 0."""
    cfg = GPTConfig(vocab_size=64, n_ctx=4, d_model=128, n_layers=1, n_heads=4)
    values = np.concatenate([probes.key_orthogonality(seeded_model(lambda: GPT(cfg), s), range(64))
                             for s in range(3)])
    assert np.all((values > 0.12) & (values < 0.2))


def test_key_orthogonality_uses_ln1(model):
    with_norm = probes.key_orthogonality(model, range(6), normalize=True)
    without = probes.key_orthogonality(model, range(6), normalize=False)
    assert with_norm.shape == without.shape == (4,)
    assert not np.allclose(with_norm, without)  # LayerNorm's centring changes the geometry
    with pytest.raises(ValueError):
        probes.key_orthogonality(model, range(6), layer=5)


def test_qk_alignment_shape_and_self_alignment(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_q", "hook_k")))
    a = probes.qk_alignment_by_prefix(cache, query_positions=[0, 2, 4, 8], key_positions=[0, 2, 4, 6])
    assert a.shape == (3, 4)
    assert np.isnan(a[:, 0]).all()                     # no earlier key before position 0
    assert np.isfinite(a[:, 1:]).all() and (np.abs(a[:, 1:]) <= 1 + 1e-9).all()
    # a cache whose keys equal its queries aligns perfectly with identical earlier positions
    q = torch.ones(2, 5, 2, 3)
    fake = {"blocks.0.attn.hook_q": q, "blocks.0.attn.hook_k": q}
    from labcore.glassbox.hooks import ActivationCache
    a = probes.qk_alignment_by_prefix(ActivationCache(fake), [4], [0, 1, 2, 3])
    assert a.shape == (1, 1) and a[0, 0] == pytest.approx(1.0)


# --- representations ----------------------------------------------------------------------------


def test_pca_rank_one():
    g = gen(0)
    direction = torch.randn(6, generator=g, dtype=torch.float64)
    scores = torch.randn(200, generator=g, dtype=torch.float64)
    x = scores[:, None] * direction + 3.0                   # rank 1 after centring
    ratio, comps, proj = probes.pca(x)
    assert ratio[0] == pytest.approx(1.0, abs=1e-12)
    assert ratio.sum() == pytest.approx(1.0)
    cos = abs(comps[0] @ direction.numpy()) / np.linalg.norm(direction.numpy())
    assert cos == pytest.approx(1.0, abs=1e-9)
    assert comps.shape == (6, 6) and proj.shape == (200, 6)
    assert abs(np.corrcoef(proj[:, 0], scores.numpy())[0, 1]) == pytest.approx(1.0, abs=1e-9)


def test_pca_isotropic_spreads_variance():
    x = torch.randn(5000, 4, generator=gen(1))
    ratio, _, _ = probes.pca(x)
    assert np.allclose(ratio, 0.25, atol=0.03)


def test_ridge_r2_linear_and_noise():
    g = gen(0)
    X = torch.randn(600, 10, generator=g, dtype=torch.float64)
    w = torch.randn(10, generator=g, dtype=torch.float64)
    y = X @ w + 0.01 * torch.randn(600, generator=g, dtype=torch.float64)
    assert probes.ridge_probe_r2(X, y, alpha=1e-6, generator=gen(1)) > 0.999
    noise = torch.randn(600, generator=g, dtype=torch.float64)
    r2 = probes.ridge_probe_r2(X, noise, alpha=1e-3, generator=gen(1))
    assert -0.15 < r2 < 0.05
    # multi-column targets average the per-column R²
    Y = torch.stack([y, 2 * y + 1], 1)
    assert probes.ridge_probe_r2(X, Y, alpha=1e-6, generator=gen(1)) > 0.999


def test_ridge_r2_is_seeded():
    X = torch.randn(100, 3, generator=gen(0))
    y = X[:, 0] + torch.randn(100, generator=gen(1))
    assert probes.ridge_probe_r2(X, y, generator=gen(5)) == probes.ridge_probe_r2(X, y, generator=gen(5))
    with pytest.raises(ValueError):
        probes.ridge_probe_r2(X, y, train_frac=1.0)


@pytest.mark.parametrize("method", ["logistic", "lstsq"])
def test_linear_probe_separable_and_shuffled(method):
    g = gen(0)
    X = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    W = torch.randn(8, 3, generator=g, dtype=torch.float64)
    labels = (X @ W + torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)) > 0   # linearly separable
    res = probes.linear_probe_balanced_accuracy(X, labels, method=method, generator=gen(1))
    assert res.per_column.shape == (3,)
    assert res.mean > (0.98 if method == "logistic" else 0.9)
    shuffled = labels[torch.randperm(2000, generator=gen(2))]
    ctrl = probes.linear_probe_balanced_accuracy(X, shuffled, method=method, generator=gen(1))
    assert abs(ctrl.mean - 0.5) < 0.06


def test_balanced_accuracy_ignores_class_imbalance():
    # a probe that always says "False" on 95 % False labels has accuracy 0.95 but BA 0.5
    X = torch.zeros(400, 2)
    labels = torch.zeros(400, 1, dtype=torch.bool)
    labels[:20] = True
    res = probes.linear_probe_balanced_accuracy(X, labels, method="lstsq", generator=gen(0))
    assert res.mean == pytest.approx(0.5, abs=1e-9)


def test_spearman():
    a = np.arange(20.0)
    assert probes.spearman(a, a**3) == pytest.approx(1.0)
    assert probes.spearman(a, -np.exp(a)) == pytest.approx(-1.0)
    assert math.isnan(probes.spearman(a, np.ones(20)))
    with pytest.raises(ValueError):
        probes.spearman(a, a[:5])


# --- attention maps -----------------------------------------------------------------------------


def test_attention_map_correlation(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    p = cache["pattern", 1]
    r = probes.attention_map_correlation(p, p)
    assert r.shape == (4,) and np.allclose(r, 1.0)
    # uniform causal attention vs a model's pattern: not the same map
    T = p.shape[-1]
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    r_u = probes.attention_map_correlation(p, uniform.expand_as(p))
    assert np.all(np.isnan(r_u) | (r_u < 0.999))
    # the zeros above the diagonal do not count: two patterns that differ only in their causal
    # entries, and randomly, are uncorrelated however many zeros they share
    g = gen(3)
    a = torch.rand(50, 1, 12, 12, generator=g).tril()
    b = torch.rand(50, 1, 12, 12, generator=g).tril()
    assert abs(probes.attention_map_correlation(a, b)[0]) < 0.05
    with pytest.raises(ValueError):
        probes.attention_map_correlation(a, b[:, :, :5, :5])


# --- residual readouts and ablations ------------------------------------------------------------


def test_logit_lens_last_layer_is_the_output(model, tokens):
    lens = probes.logit_lens(model, tokens)
    assert len(lens) == model.cfg.n_layers + 1
    assert torch.allclose(lens[-1], model(tokens), atol=1e-6)
    assert len(probes.layer_residuals(model, tokens, include_embed=False)) == model.cfg.n_layers


def test_bypass_block_makes_resid_post_equal_resid_pre(model, tokens):
    names = ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"]
    clean, clean_cache = model.run_with_cache(tokens, names_filter=names)
    with model.hooks(fwd_hooks=probes.bypass_block(1)):
        ablated, cache = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["blocks.2.hook_resid_pre"], cache["blocks.1.hook_resid_pre"])
    assert torch.equal(cache["blocks.1.hook_resid_pre"], clean_cache["blocks.1.hook_resid_pre"])
    assert not torch.allclose(ablated, clean)
    # hooks are gone after the with block
    assert torch.equal(model(tokens), clean)


def test_zero_head_changes_only_that_head(model, tokens):
    name = "blocks.1.attn.hook_result"
    _, clean = model.run_with_cache(tokens, names_filter=[name])
    with model.hooks(fwd_hooks=probes.zero_head(1, 2)):
        _, cache = model.run_with_cache(tokens, names_filter=[name, "blocks.0.attn.hook_result"])
    r, r0 = cache[name], clean[name]
    assert torch.all(r[:, :, 2] == 0)
    keep = [0, 1, 3]
    assert torch.allclose(r[:, :, keep], r0[:, :, keep], atol=1e-6)  # einsum may reorder sums
    assert not torch.equal(r[:, :, 2], r0[:, :, 2])


def test_zero_attention_and_mlp(model, tokens):
    names = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"]
    with model.hooks(fwd_hooks=probes.zero_attention(0)):
        _, c = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(c["blocks.0.hook_resid_mid"], c["blocks.0.hook_resid_pre"])
    with model.hooks(fwd_hooks=probes.zero_mlp(0)):
        _, c = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.0.hook_resid_mid"])
    # hook lists compose
    with model.hooks(fwd_hooks=probes.zero_attention(0) + probes.zero_mlp(0)):
        _, c = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.0.hook_resid_pre"])
