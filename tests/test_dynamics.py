"""labcore.dynamics, each instrument against a brute-force reference.

optimizer_state ↔ a hand-written Adam; sharpness ↔ eigvalsh of the explicit Hessian and a quadratic
of known spectrum; noise_scale two-batch ↔ per-example ↔ the analytic Σ of linear regression;
landscape ↔ direct evaluation; lr_sweep ↔ the 2/λ_max edge of gradient descent on a quadratic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labcore import GPT, GPTConfig
from labcore.dynamics.landscape import (
    filter_normalize,
    linear_path,
    loss_at,
    named_params,
    random_direction,
    slice_1d,
    slice_2d,
)
from labcore.dynamics.lr_sweep import geometric_lrs, lr_sweep
from labcore.dynamics.noise_scale import (
    measure_noise_scale,
    noise_scale_two_batch,
    per_example_grads,
    per_example_noise_scale,
)
from labcore.dynamics.optimizer_state import OptimizerStateProbe
from labcore.dynamics.sharpness import (
    explicit_hessian,
    full_batch_sharpness,
    hessian_vector_product,
    minibatch_sharpness,
    top_hessian_eigenvalue,
)
from labcore.dynamics.toy import (
    LinearRegressionTask,
    QuadraticBowl,
    bowl_loss,
    bowl_noise,
)
from labcore.training.trainer import TrainConfig, seeded_model, train

TINY_GPT = GPTConfig(vocab_size=12, n_ctx=12, d_model=16, n_layers=1, n_heads=2)


def mlp(d_in=6, hidden=16, d_out=4, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()


def classification_batch(n=32, d_in=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def copy_task(step: int, g: torch.Generator):
    x = torch.randint(0, 12, (8, 12), generator=g)
    targets = x.roll(1, dims=1)
    targets[:, 0] = -100
    return x, targets


# ---------------------------------------------------------------- optimizer_state


def _hand_adam_run(steps=6, lr=0.01, betas=(0.8, 0.95), eps=1e-6, wd=0.1):
    """Train with torch AdamW + the probe, recomputing every Adam quantity by hand alongside."""
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=wd)
    probe = OptimizerStateProbe(model, opt, group_by="parameter", dtype=torch.float64)
    probe_mod = OptimizerStateProbe(model, opt, group_by="module", dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    m = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    v = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    hand = []  # per step: name -> dict of hand-computed stats
    for t in range(1, steps + 1):
        opt.zero_grad()
        ce(model, classification_batch(seed=t)).backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        probe()
        probe_mod()
        row = {}
        for n, p in model.named_parameters():
            g = p.grad
            m[n] = betas[0] * m[n] + (1 - betas[0]) * g
            v[n] = betas[1] * v[n] + (1 - betas[1]) * g * g
            bc1, bc2 = 1 - betas[0] ** t, 1 - betas[1] ** t
            s = lr * (m[n] / bc1) / ((v[n] / bc2).sqrt() + eps)
            expected = before[n] * (1 - lr * wd) - s
            torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)  # hand Adam == torch
            row[n] = dict(m=m[n], vhat=v[n] / bc2, s=s, delta=p.detach() - before[n], w=p.detach().clone(), bc1=bc1, bc2=bc2)
        hand.append(row)
    return names, probe.result(), probe_mod.result(), hand


def test_adam_probe_matches_a_hand_written_adam():
    names, res, res_mod, hand = _hand_adam_run()
    assert res.groups == names and res.steps == len(hand)
    for t, row in enumerate(hand):
        for j, n in enumerate(names):
            h = row[n]
            want = {
                "update_ratio": float(h["delta"].norm() / h["w"].norm()),
                "m_norm": float(h["m"].norm()),
                "m_hat_norm": float(h["m"].norm() / h["bc1"]),
                "v_hat_sqrt_mean": float(h["vhat"].sqrt().mean()),
                "step_abs_mean": float(h["s"].abs().mean()),
                "step_rms": float(h["s"].pow(2).mean().sqrt()),
                "step_abs_max": float(h["s"].abs().max()),
                "bias_correction1": h["bc1"],
                "bias_correction2": h["bc2"],
            }
            for key, value in want.items():
                assert res.metrics[key][t, j] == pytest.approx(value, rel=1e-9), (key, t, n)
    # per module: layer "0" = its weight and bias together
    assert res_mod.groups == ["0", "2"]
    last = hand[-1]
    s0 = torch.cat([last["0.weight"]["s"].flatten(), last["0.bias"]["s"].flatten()])
    d0 = torch.cat([last["0.weight"]["delta"].flatten(), last["0.bias"]["delta"].flatten()])
    w0 = torch.cat([last["0.weight"]["w"].flatten(), last["0.bias"]["w"].flatten()])
    assert res_mod.metrics["step_rms"][-1, 0] == pytest.approx(float(s0.pow(2).mean().sqrt()), rel=1e-9)
    assert res_mod.metrics["step_abs_max"][-1, 0] == pytest.approx(float(s0.abs().max()), rel=1e-9)
    assert res_mod.metrics["update_ratio"][-1, 0] == pytest.approx(float(d0.norm() / w0.norm()), rel=1e-9)
    # the effective step is ~lr whatever the gradient scale (Adam's scale invariance). Cauchy–Schwarz on
    # m = Σ a_i g_i, v = Σ b_i g_i² gives |m̂|/√v̂ ≤ √(Σ a_i²/b_i) · √(1−β2^t)/(1−β1^t), a bound in lr units.
    b1, b2 = 0.8, 0.95
    for t in range(1, len(hand) + 1):
        k = np.arange(t)
        cs = math.sqrt(np.sum(((1 - b1) * b1**k) ** 2 / ((1 - b2) * b2**k))) * math.sqrt(1 - b2**t) / (1 - b1**t)
        assert res.metrics["step_abs_max"][t - 1].max() <= 0.01 * cs * (1 + 1e-9)


def test_sgd_probe_reports_the_momentum_buffer_and_no_adam_terms():
    model, batch = mlp(), classification_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    probe = OptimizerStateProbe(model, opt)
    for _ in range(3):
        opt.zero_grad()
        ce(model, batch).backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        probe()
    res = probe.result()
    for j, (p, b) in enumerate(zip(model.parameters(), before)):
        assert res.metrics["update_ratio"][-1, j] == pytest.approx(float((p.detach() - b).norm() / p.detach().norm()), rel=1e-5)
        assert res.metrics["m_norm"][-1, j] == pytest.approx(float(opt.state[p]["momentum_buffer"].norm()), rel=1e-5)
    assert np.isnan(res.metrics["v_hat_sqrt_mean"]).all() and np.isnan(res.metrics["bias_correction1"]).all()


def test_the_probe_never_syncs_to_the_host(monkeypatch):
    model = seeded_model(lambda: GPT(TINY_GPT), 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    probe = OptimizerStateProbe(model, opt, group_by="module")
    x, y = copy_task(0, torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).backward()
        opt.step()
        with monkeypatch.context() as mp:
            for attr in ("item", "__float__", "tolist", "numpy", "__bool__"):
                mp.setattr(torch.Tensor, attr, lambda *a, _attr=attr, **k: pytest.fail(f"probe called .{_attr}()"))
            probe()
    res = probe.result()
    assert res.metrics["update_ratio"].shape == (2, len(res.groups)) and np.isfinite(res.metrics["update_ratio"]).all()


# ---------------------------------------------------------------- sharpness


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    bowl = QuadraticBowl([5.0, 2.0, 1.0, 0.5, -0.3], seed=1)
    r = top_hessian_eigenvalue(bowl, bowl.parameters())
    assert r.converged and not r.shifted and r.eigenvalue == pytest.approx(5.0, rel=1e-5)
    torch.testing.assert_close(explicit_hessian(bowl, bowl.parameters()), bowl.A)
    # a dominant *negative* eigenvalue: power iteration meets −7 first, the shifted run finds +3
    saddle = QuadraticBowl([-7.0, 3.0, 1.0, 0.2], seed=2)
    r = top_hessian_eigenvalue(saddle, saddle.parameters(), iters=500)
    assert r.shifted and r.eigenvalue == pytest.approx(3.0, rel=1e-4)


def test_sharpness_matches_eigvalsh_of_the_explicit_hessian():
    model, batch = mlp(), classification_batch(n=64)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100 < n_params < 400
    H = explicit_hessian(lambda: ce(model, batch), model.parameters())
    torch.testing.assert_close(H, H.T, rtol=1e-8, atol=1e-10)
    v = [torch.randn_like(p) for p in model.parameters()]
    hv = torch.cat([h.flatten() for h in hessian_vector_product(lambda: ce(model, batch), list(model.parameters()), v)])
    torch.testing.assert_close(hv, H @ torch.cat([x.flatten() for x in v]))
    top = float(torch.linalg.eigvalsh(H)[-1])
    r = full_batch_sharpness(model, ce, batch, iters=1000, tol=1e-10)
    assert r.eigenvalue == pytest.approx(top, rel=1e-5)
    # mini-batch variant: each half's sharpness equals its own explicit Hessian's top eigenvalue
    halves = [(batch[0][:32], batch[1][:32]), (batch[0][32:], batch[1][32:])]
    mean, each = minibatch_sharpness(model, ce, halves, iters=1000, tol=1e-10)
    for b, value in zip(halves, each):
        want = float(torch.linalg.eigvalsh(explicit_hessian(lambda b=b: ce(model, b), model.parameters()))[-1])
        assert value == pytest.approx(want, rel=1e-4)
    assert mean >= top * (1 - 1e-6)  # λ_max is convex in H: the mean over halves is ≥ the full batch's


# ---------------------------------------------------------------- noise_scale


def test_the_two_batch_formulas_invert_the_expectation_exactly():
    g2, trace = 2.5, 40.0
    r = noise_scale_two_batch(g2 + trace / 8, g2 + trace / 128, 8, 128)
    assert r.g2 == pytest.approx(g2) and r.trace_sigma == pytest.approx(trace) and r.b_simple == pytest.approx(16.0)


def test_noise_scale_estimators_agree_with_the_analytic_linear_regression():
    task = LinearRegressionTask(d=8, noise_std=1.0, seed=0)
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(8, generator=g, dtype=torch.float64)
    w = task.w_star + delta / delta.norm()  # |δ| = 1 → B_simple = 8·(1 + 1) + 1 = 17
    truth = task.true_b_simple(w)
    assert truth == pytest.approx(17.0)
    model = task.model(w)
    brute = per_example_noise_scale(model, task.loss, task.sample(40_000, g))
    assert brute.trace_sigma == pytest.approx(task.true_trace_sigma(w), rel=0.05)
    assert brute.b_simple == pytest.approx(truth, rel=0.05)
    two = measure_noise_scale(model, task.loss, task.sample, b_small=8, b_big=128, n_draws=300, seed=2)
    assert abs(two.b_simple - truth) <= max(4 * two.b_simple_se, 0.02 * truth), (two, truth)
    assert two.b_simple == pytest.approx(truth, rel=0.08)  # s.e. ≈ 1.5 % at 300 draws
    assert two.b_simple == pytest.approx(brute.b_simple, rel=0.08)


def test_per_example_gradients_vmap_equals_loop_and_average_to_the_batch_gradient():
    model, batch = mlp(), classification_batch(n=10)
    torch.testing.assert_close(per_example_grads(model, ce, batch, "vmap"), per_example_grads(model, ce, batch, "loop"))
    gpt = seeded_model(lambda: GPT(TINY_GPT), 0)  # vmap cannot trace the GPT: "auto" falls back to the loop
    tokens = copy_task(0, torch.Generator().manual_seed(3))
    per = per_example_grads(gpt, _loss_gpt, tokens)
    full = torch.autograd.grad(_loss_gpt(gpt, tokens), list(gpt.parameters()))
    # each example supervises the same number of positions, so the batch loss is the mean of theirs
    torch.testing.assert_close(per.mean(0), torch.cat([g.flatten() for g in full]), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- landscape


def test_filter_normalisation_gives_each_filter_its_weights_norm():
    model = seeded_model(lambda: GPT(TINY_GPT), 0)
    d = random_direction(model, torch.Generator().manual_seed(0))
    weights = named_params(model)
    checked = 0
    for k, w in weights.items():
        if w.dim() == 1:
            assert torch.count_nonzero(d[k]) == 0, k  # biases / norm gains are not perturbed
            continue
        rows_d = d[k].reshape(d[k].shape[0], -1).norm(dim=1)
        rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(rows_d, rows_w, rtol=1e-5, atol=1e-8)
        checked += 1
    assert checked >= 3
    # filter_dim=1 normalises columns instead
    col = filter_normalize({"w": torch.randn(3, 5)}, {"w": torch.arange(15.0).reshape(3, 5)}, filter_dim=1)["w"]
    torch.testing.assert_close(col.norm(dim=0), torch.arange(15.0).reshape(3, 5).norm(dim=0))


def _loss_gpt(model, batch):
    return F.cross_entropy(model(batch[0]).flatten(0, 1), batch[1].flatten(), ignore_index=-100)


def test_linear_path_endpoints_are_the_two_models_and_slices_are_direct_evaluations():
    model = seeded_model(lambda: GPT(TINY_GPT), 0)
    init = named_params(model)
    train(model, copy_task, TrainConfig(steps=15, lr=3e-3, progress=False))
    final = named_params(model)
    batch = copy_task(0, torch.Generator().manual_seed(9))
    init_model = seeded_model(lambda: GPT(TINY_GPT), 0).eval()
    _, losses = linear_path(model, init, final, _loss_gpt, batch, alphas=[0.0, 0.5, 1.0])
    with torch.no_grad():
        assert losses[0] == pytest.approx(float(_loss_gpt(init_model, batch)), rel=1e-6)
        assert losses[-1] == pytest.approx(float(_loss_gpt(model, batch)), rel=1e-6)
    mid = {k: 0.5 * (init[k] + final[k]) for k in init}
    assert losses[1] == pytest.approx(loss_at(model, mid, _loss_gpt, batch), rel=1e-6)
    for k, p in model.named_parameters():  # the model is left as it was
        assert torch.equal(p.detach(), final[k])
    d1 = random_direction(model, torch.Generator().manual_seed(1))
    d2 = random_direction(model, torch.Generator().manual_seed(2))
    _, line = slice_1d(model, d1, _loss_gpt, batch, alphas=[-0.5, 0.0, 0.5])
    assert line[1] == pytest.approx(loss_at(model, final, _loss_gpt, batch), rel=1e-6)
    grid = slice_2d(model, d1, d2, _loss_gpt, batch, alphas=[-0.5, 0.0, 0.5], betas=[0.0, 0.25])
    assert grid.shape == (3, 2) and grid[:, 0] == pytest.approx(line, rel=1e-6)
    corner = {k: final[k] + 0.5 * d1[k] + 0.25 * d2[k] for k in final}
    assert grid[2, 1] == pytest.approx(loss_at(model, corner, _loss_gpt, batch), rel=1e-6)


# ---------------------------------------------------------------- lr_sweep


def test_lr_sweep_finds_the_two_over_lambda_edge_and_a_u_shape_on_a_quadratic():
    eig = [4.0, 1.0, 0.25]  # gradient descent is stable iff lr < 2/λ_max = 0.5
    bowl = QuadraticBowl(eig, seed=0)
    assert top_hessian_eigenvalue(bowl, bowl.parameters()).eigenvalue == pytest.approx(4.0, rel=1e-5)
    lrs = geometric_lrs(0.01, 1.0, per_decade=6)
    cfg = TrainConfig(steps=100, optimizer="sgd", grad_clip=None, track_update_ratio=False)
    # noiseless: the loss falls all the way to the cliff at 2/λ_max; no U before it
    clean = lr_sweep(lambda: QuadraticBowl(eig, seed=0, x0_scale=3.0), lambda step, g: None, cfg, lrs,
                     loss_fn=bowl_loss, tail=50)
    lo, hi = clean.edge
    assert lo < 2 / max(eig) < hi
    assert not clean.diverged[lrs < 0.5].any() and clean.diverged[lrs > 0.5].all()
    assert clean.best_lr == lo and not clean.u_shaped
    # noisy gradients (ξ ~ N(0, I)): the noise floor ησ²/(2(2 − ηλ)) per direction grows with η, so
    # the final loss is a U inside the stable range; the cliff stays where it was
    noisy = lr_sweep(lambda: QuadraticBowl(eig, seed=0, x0_scale=3.0), bowl_noise(3, 1.0), cfg, lrs,
                     loss_fn=bowl_loss, tail=50)
    assert noisy.edge == clean.edge and noisy.u_shaped
    assert 0.01 < noisy.best_lr < 0.2
    stable = noisy.final_loss[~noisy.diverged]
    assert stable[0] > 10 * stable.min() and stable[-1] > 10 * stable.min()


def test_lr_sweep_on_a_tiny_gpt_flags_divergence():
    cfg = TrainConfig(steps=12, optimizer="sgd", grad_clip=None, track_update_ratio=False)
    sweep = lr_sweep(lambda: GPT(TINY_GPT), copy_task, cfg, [0.3, 1e5], tail=3)
    assert not sweep.diverged[0] and sweep.diverged[1] and sweep.edge == (0.3, 1e5)
