"""labcore.interp.tracing (ROME's causal trace) against one-at-a-time re-runs, and the tuned lens's KL
training on cached residuals and its ridge initialisation.

Models are tiny glass-box GPTs (vocab 20, d_model 32, 3 layers, 4 heads), as in tests/test_interp.py.
"""

from __future__ import annotations

import pytest
import torch
from interp_helpers import trained_on_repeats

from labcore import GPT, GPTConfig
from labcore.interp import heads, lenses, tracing
from labcore.training.trainer import seeded_model

V = 20


def make(seed: int = 0, **kw) -> GPT:
    cfg = GPTConfig(**({"vocab_size": V, "n_ctx": 16, "d_model": 32, "n_layers": 3, "n_heads": 4, "init_std": 0.3} | kw))
    return seeded_model(lambda: GPT(cfg), seed).eval()


def _manual(model, tokens, answer, subject, noise, restore=()):
    """p(answer) of one corrupted run, restoring ``restore`` = [(hook name, pos, clean value)]."""
    def add_noise(x, hook):
        x = x.clone()
        x[:, subject[0]:subject[1]] += noise
        return x

    def patch(pos, value):
        def fn(x, hook):
            x = x.clone()
            x[:, pos] = value
            return x
        return fn

    hooks = [("hook_embed", add_noise)] + [(name, patch(pos, value)) for name, pos, value in restore]
    with torch.no_grad(), model.hooks(hooks):
        return float(model(tokens[None])[0, -1].softmax(-1)[answer])


@pytest.mark.parametrize("window", [1, 2])
def test_causal_trace_equals_one_restoration_at_a_time(window):
    model = make()
    tokens = torch.randint(0, V, (8,), generator=torch.Generator().manual_seed(3))
    answer, subject, std = 5, (1, 3), 0.7
    tr = tracing.causal_trace(model, tokens, answer, subject, std, torch.Generator().manual_seed(4),
                              layers=[0, 2], positions=[0, 2, 7], windows={"mlp_out": window}, chunk=5)
    noise = torch.randn(2, 32, generator=torch.Generator().manual_seed(4)) * std  # the same draw
    with torch.no_grad():
        logits, clean = model.run_with_cache(tokens[None])
    assert tr.p_clean == pytest.approx(float(logits[0, -1].softmax(-1)[answer]), abs=1e-6)
    assert tr.p_corrupt == pytest.approx(_manual(model, tokens, answer, subject, noise), abs=1e-6)
    for li, layer in enumerate([0, 2]):
        for pi, pos in enumerate([0, 2, 7]):
            name = f"blocks.{layer}.hook_resid_post"
            want = _manual(model, tokens, answer, subject, noise, [(name, pos, clean[name][0, pos])])
            assert tr.restored.values[0, li, pi].item() == pytest.approx(want, abs=1e-6)
            mlp = [f"blocks.{l}.hook_mlp_out" for l in range(layer, layer + window) if l < 3]
            want = _manual(model, tokens, answer, subject, noise, [(n, pos, clean[n][0, pos]) for n in mlp])
            assert tr.restored.values[1, li, pi].item() == pytest.approx(want, abs=1e-6)
    # a position before the subject reads no noise: restoring it changes nothing
    assert torch.allclose(tr.restored.values[:, :, 0], torch.tensor(tr.p_corrupt, dtype=torch.float64), atol=1e-6)
    # restoring the last token's final hidden state restores the clean output exactly
    assert tr.restored.values[0, 1, 2].item() == pytest.approx(tr.p_clean, abs=1e-6)
    ie = tr.indirect_effect(normalise=True)
    assert ie[0, 1, 2].item() == pytest.approx(1.0, abs=1e-5)


def test_causal_trace_axes_with_several_noise_samples():
    model = make()
    tokens = torch.randint(0, V, (6,), generator=torch.Generator().manual_seed(0))
    tr = tracing.causal_trace(model, tokens, 1, (0, 2), 0.5, torch.Generator().manual_seed(0), samples=2)
    assert tr.restored.values.shape == (2, 3, 6) and tr.restored.axes == ("kind", "layer", "pos")
    assert tracing.embedding_std(model, tokens[None]) > 0


@pytest.fixture(scope="module")
def trained():
    """A 3-layer model trained briefly on repeated random sequences (induction-style data)."""
    return trained_on_repeats(make(3, init_std=0.02), V)


def _held_out_kl(model, lens, tokens, layers):
    return lenses.tuned_lens_kl(model, lens, tokens).values[layers]


def test_kl_training_on_cached_residuals_lowers_held_out_kl_at_the_trained_layers_only(trained):
    train = lenses.lens_residuals(trained, heads.repeated_random_tokens(64, 8, V, torch.Generator().manual_seed(11)))
    held_out = heads.repeated_random_tokens(32, 8, V, torch.Generator().manual_seed(12))
    lens = lenses.TunedLens(32, 3)
    identity = _held_out_kl(trained, lens, held_out, [0, 1, 2])
    losses = lenses.train_translators_kl(trained, lens, train, [0, 2], steps=60, lr=1e-2, batch_tokens=128,
                                         generator=torch.Generator().manual_seed(0))
    after = _held_out_kl(trained, lens, held_out, [0, 1, 2])
    assert losses[-1] < losses[0]
    assert after[0] < identity[0] and after[2] < identity[2]
    assert after[1] == identity[1]  # layer 1 was not trained: still the logit lens
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())


def test_ridge_translators_fit_the_final_residual_and_the_shuffled_control_does_not(trained):
    tokens = heads.repeated_random_tokens(64, 8, V, torch.Generator().manual_seed(11))
    resids = lenses.lens_residuals(trained, tokens)
    ridge = lenses.fit_translators_ridge(lenses.TunedLens(32, 3), resids, [0, 1, 2], ridge=1e-6)
    shuffled = lenses.fit_translators_ridge(lenses.TunedLens(32, 3), resids, [0, 1, 2], ridge=1e-6,
                                            perm=torch.randperm(64 * 16, generator=torch.Generator().manual_seed(0)))
    y = resids[-1]
    for layer in range(3):
        with torch.no_grad():
            err = (ridge(resids[layer], layer) - y).pow(2).mean()
            err_shuffled = (shuffled(resids[layer], layer) - y).pow(2).mean()
        assert err < err_shuffled
    # the last block's input predicts its output better than the embedding does
    with torch.no_grad():
        assert (ridge(resids[2], 2) - y).pow(2).mean() < (ridge(resids[0], 0) - y).pow(2).mean()
