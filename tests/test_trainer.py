"""The trainer: reproducible to the bit, schedules as written, divergence reported not raised."""

import math

import numpy as np
import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.training.trainer import Every, Snapshots, TrainConfig, lr_at, seeded_model, train, vaswani_lr

CFG = GPTConfig(vocab_size=12, n_ctx=12, d_model=32, n_layers=1, n_heads=2)


def copy_task(step: int, g: torch.Generator):
    x = torch.randint(0, 12, (16, 12), generator=g)
    targets = x.roll(1, dims=1)
    targets[:, 0] = -100
    return x, targets


def run(seed=0, **kw):
    model = seeded_model(lambda: GPT(CFG), seed)
    kw = {"steps": 30, "lr": 3e-3} | kw
    return model, train(model, copy_task, TrainConfig(seed=seed, **kw))


def test_same_seed_gives_bitwise_identical_runs():
    m1, r1 = run(seed=3)
    m2, r2 = run(seed=3)
    for key in r1.metrics:
        np.testing.assert_array_equal(r1.metrics[key], r2.metrics[key])
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    _, r3 = run(seed=4)
    assert not np.array_equal(r1.metrics["loss"], r3.metrics["loss"])


def test_training_learns_and_keeps_per_step_metrics():
    _, r = run(steps=150, schedule="warmup_cosine", warmup_steps=10)
    assert r.metrics["loss"][-10:].mean() < 0.5 * r.metrics["loss"][:10].mean()
    for key in ("loss", "grad_norm", "lr", "update_ratio", "adam_m_norm", "adam_v_sqrt_mean"):
        assert r.metrics[key].shape == (150,) and np.isfinite(r.metrics[key][:-1]).all(), key
    assert r.metrics["lr"].argmax() == 9  # the peak is at the end of warmup (step 10)


def test_divergence_is_a_result_not_a_crash():
    _, r = run(steps=50, lr=1e5, grad_clip=None, optimizer="sgd")
    assert r.diverged and r.message.startswith(f"diverged at step {r.diverged_at_step}")
    assert len(r.metrics["loss"]) == r.diverged_at_step


def test_callbacks_and_snapshots():
    model = seeded_model(lambda: GPT(CFG), 0)
    r = train(model, copy_task, TrainConfig(steps=20, lr=1e-3),
              callbacks=[Every(5, lambda step, m: step * 2, name="double"), Snapshots([0, 10])])
    assert r.evals["double"] == [(5, 10), (10, 20), (15, 30), (20, 40)]
    assert sorted(r.snapshots) == [0, 10]
    assert not torch.equal(r.snapshots[0]["W_E.weight"], r.snapshots[10]["W_E.weight"])


def test_gradient_clipping_bounds_the_applied_norm():
    model = seeded_model(lambda: GPT(CFG), 0)

    def loss_fn(m, batch):
        loss = 1e3 * torch.nn.functional.cross_entropy(m(batch[0]).flatten(0, 1), batch[1].flatten(), ignore_index=-100)
        return loss

    r = train(model, copy_task, TrainConfig(steps=3, lr=1e-3, grad_clip=0.5), loss_fn=loss_fn)
    assert (r.metrics["grad_norm"] > 0.5).all()  # recorded before clipping: they were large


def test_lr_multipliers_scale_one_parameter_group():
    model = seeded_model(lambda: GPT(CFG), 0)
    cfg = TrainConfig(steps=1, lr=1e-2, optimizer="sgd", grad_clip=None, lr_multipliers=(("W_V", 10.0),))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = copy_task(0, torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    train(model, lambda s, g: (x, y), cfg)
    for n, p in model.named_parameters():
        factor = 10.0 if "W_V" in n else 1.0
        torch.testing.assert_close(before[n] - p.detach(), 1e-2 * factor * grads[n], rtol=1e-4, atol=1e-7)


def test_inverse_sqrt_schedule_is_vaswani_eq3():
    d_model, warmup = 512, 4000
    cfg = TrainConfig(steps=10_000, lr=(d_model * warmup) ** -0.5, schedule="inverse_sqrt", warmup_steps=warmup)
    for step in (1, 10, 3999, 4000, 4001, 9000):
        assert math.isclose(lr_at(step, cfg), vaswani_lr(step, d_model, warmup), rel_tol=1e-12)
    assert max(range(1, 10_000), key=lambda s: lr_at(s, cfg)) == warmup


@pytest.mark.parametrize("bad, match", [(dict(steps=0), "steps"), (dict(lr=0), "lr"),
                                        (dict(schedule="step"), "schedule"),
                                        (dict(schedule="inverse_sqrt"), "warmup_steps")])
def test_bad_train_configs_fail_clearly(bad, match):
    kwargs = dict(steps=10) | bad
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
