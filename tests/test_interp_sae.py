"""Unit tests of labcore.interp.sae against ground truth: planted directions, identity splices, exact counts."""

import pytest
import torch

from labcore.glassbox.model import GPT, GPTConfig
from labcore.interp import sae as S


def _superposition(n_feat=128, d=32, n=8000, p=0.015, seed=0):
    """x = Σ_i a_i u_i with a_i ~ Bernoulli(p)·U(0.5, 1.5), u_i random unit directions in R^d (n_feat ≫ d)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(d, n_feat, generator=g)
    dirs /= dirs.norm(dim=0, keepdim=True)  # (d, n_feat)
    on = torch.rand(n, n_feat, generator=g) < p
    amp = 0.5 + torch.rand(n, n_feat, generator=g)
    return (on * amp) @ dirs.T, dirs  # (n, d), (d, n_feat)


def test_sae_recovers_planted_directions_and_controls_do_not():
    x, dirs = _superposition()
    g = torch.Generator().manual_seed(1)
    # 128 features in 32 dimensions, ~2 active per sample; λ = 3 lands the SAE near that L0
    sae, curve = S.train_sae(x, n_latents=256, l1=3.0, steps=3000, batch=256, lr=3e-3, generator=g)
    trained = S.direction_recovery(sae.W_dec.detach(), dirs)
    dense, _ = S.train_sae(x, n_latents=256, l1=0.0, steps=3000, batch=256, lr=3e-3,
                           generator=torch.Generator().manual_seed(1))
    untrained = S.SparseAutoencoder(32, 256, torch.Generator().manual_seed(1))
    no_l1 = S.direction_recovery(dense.W_dec.detach(), dirs)
    random = S.direction_recovery(untrained.W_dec.detach(), dirs)
    assert trained >= 0.9, f"trained SAE recovers planted directions with mean max|cos| {trained:.3f}"
    print(f"planted-direction recovery: trained {trained:.3f}, λ=0 {no_l1:.3f}, untrained {random:.3f}")
    assert no_l1 < 0.8 and random < 0.8, f"controls should not recover them: λ=0 {no_l1:.3f}, untrained {random:.3f}"
    assert curve["l0"][-1] < curve["l0"][0], "the L1 penalty should make the code sparser during training"
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(256), atol=1e-5), "decoder columns must stay unit-norm"


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, n_ctx=16, d_model=32, n_layers=2, n_heads=4)).eval()


def test_identity_splice_reproduces_clean_loss_bit_for_bit():
    model = _tiny_gpt()
    windows = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(0))
    clean = S.spliced_ce(model, windows, "blocks.1.hook_resid_pre")
    assert S.spliced_ce(model, windows, "blocks.1.hook_resid_pre", lambda a: a) == clean
    assert S.spliced_ce(model, windows, "blocks.1.hook_resid_pre", lambda a: a.clone(), skip_first=False) == clean
    zero = S.spliced_ce(model, windows, "blocks.1.hook_resid_pre", torch.zeros_like)
    assert zero != clean
    assert S.loss_recovered(3.0, 3.0, 5.0) == 1.0 and S.loss_recovered(3.0, 5.0, 5.0) == 0.0
    assert S.loss_recovered(3.0, 4.0, 5.0) == 0.5


def test_fve_endpoints_and_pca_baseline():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 9)
    assert S.fve(x, x) == 1.0
    assert abs(S.fve(x, x.mean(0).expand_as(x))) < 1e-12
    assert abs(S.fve(x, S.pca_reconstructor(x, 8)(x)) - 1) < 1e-9
    assert abs(S.fve(x, S.pca_reconstructor(x, 0)(x))) < 1e-9
    # top-k PCA keeps exactly the top-k eigenvalues' share of the variance
    ev = torch.linalg.eigvalsh(torch.cov(x.T.double())).flip(0)
    assert abs(S.fve(x, S.pca_reconstructor(x, 3)(x)) - float(ev[:3].sum() / ev.sum())) < 1e-9


def test_l0_and_dead_fraction_count_exactly():
    f = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    assert S.mean_l0(f) == pytest.approx(4 / 3)
    assert S.dead_fraction(f) == 0.5  # latents 0 and 2 never fire


def test_sae_reconstructs_in_raw_units():
    x = 100 * torch.randn(300, 8, generator=torch.Generator().manual_seed(0)) + 50
    sae = S.SparseAutoencoder(8, 16)
    sae.fit_data_(x)
    assert torch.allclose((x / sae.scale).pow(2).sum(-1).mean(), torch.tensor(8.0), rtol=1e-4)
    with torch.no_grad():
        x_hat, f = sae(x)
    assert x_hat.shape == x.shape and f.shape == (300, 16) and (f >= 0).all()


@pytest.mark.parametrize("call, match", [
    (lambda: S.train_sae(torch.randn(4, 3, 2), 8, 0.1, 10), "must be \\(N, d\\)"),
    (lambda: S.train_sae(torch.full((4, 3), float("nan")), 8, 0.1, 10), "NaN"),
    (lambda: S.train_sae(torch.randn(4, 3), 8, -1.0, 10), "l1 ≥ 0"),
    (lambda: S.SparseAutoencoder(0, 8), "≥ 1"),
    (lambda: S.fve(torch.randn(4, 3), torch.randn(4, 2)), "differ in shape"),
    (lambda: S.loss_recovered(3.0, 3.5, 2.0), "ablating should cost loss"),
    (lambda: S.pca_reconstructor(torch.randn(10, 3), 5), "k must lie"),
    (lambda: S.direction_recovery(torch.randn(4, 6), torch.randn(3, 6)), "both are \\(d"),
])
def test_bad_input_gives_one_line_errors(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_activations_match_run_with_cache():
    model = _tiny_gpt()
    windows = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(windows, names_filter=["blocks.1.hook_resid_pre"])
    full = cache["blocks.1.hook_resid_pre"]  # (3, 16, 32)
    assert torch.equal(S.activations(model, windows, "blocks.1.hook_resid_pre", skip_first=False), full.reshape(-1, 32))
    assert torch.equal(S.activations(model, windows, "blocks.1.hook_resid_pre"), full[:, 1:].reshape(-1, 32))
    with pytest.raises(ValueError, match="unknown hook"):
        S.activations(model, windows, "blocks.9.hook_resid_pre")
