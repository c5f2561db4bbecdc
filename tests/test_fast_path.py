"""The GPU tier's fast paths, checked on the CPU: the fast trainer loop gives today's loss curve bit
for bit (and the same divergence step), fused attention agrees with the hand-written one and steps
aside the moment a hook looks."""

import itertools

import numpy as np
import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.training.trainer import Every, Snapshots, TrainConfig, seeded_model, train

CFG = GPTConfig(vocab_size=12, n_ctx=12, d_model=32, n_layers=2, n_heads=2)


def copy_task(step: int, g: torch.Generator):
    x = torch.randint(0, 12, (16, 12), generator=g)
    targets = x.roll(1, dims=1)
    targets[:, 0] = -100
    return x, targets


def run(seed=0, callbacks=(), **kw):
    model = seeded_model(lambda: GPT(CFG), seed)
    kw = {"steps": 40, "lr": 3e-3} | kw
    return model, train(model, copy_task, TrainConfig(seed=seed, **kw), callbacks=callbacks)


@pytest.mark.parametrize("sync_every", [1, 7, 1000])
def test_fast_path_fp32_gives_the_default_loss_curve_bit_for_bit(sync_every):
    m0, r0 = run(seed=2, schedule="warmup_cosine", warmup_steps=5, weight_decay=0.1)
    m1, r1 = run(seed=2, schedule="warmup_cosine", warmup_steps=5, weight_decay=0.1, sync_every=sync_every)
    for key in ("loss", "grad_norm", "lr"):
        np.testing.assert_array_equal(r1.metrics[key], r0.metrics[key], err_msg=key)
    for key in ("update_ratio", "adam_m_norm", "adam_v_sqrt_mean"):
        np.testing.assert_allclose(r1.metrics[key], r0.metrics[key], rtol=1e-6, err_msg=key)
    for a, b in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(a, b)
    assert r1.steps_done == r0.steps_done == 40 and not r1.diverged


@pytest.mark.parametrize("sync_every", [1, 4, 64])
def test_fast_path_reports_the_same_divergence_step(sync_every):
    _, r0 = run(steps=50, lr=1e5, grad_clip=None, optimizer="sgd")
    _, r1 = run(steps=50, lr=1e5, grad_clip=None, optimizer="sgd", sync_every=sync_every)
    assert r0.diverged and r1.diverged_at_step == r0.diverged_at_step
    assert r1.steps_done == r0.steps_done and r1.message == r0.message
    for key in r0.metrics:
        exact = key in ("loss", "grad_norm", "lr")  # the others are summed in another order
        np.testing.assert_allclose(r1.metrics[key], r0.metrics[key], rtol=0 if exact else 1e-6, err_msg=key)


def test_fast_path_callbacks_and_snapshots_see_the_same_model():
    def grade(step, m):
        return float(m.W_E.weight.sum())

    cbs = [Every(6, grade, "w"), Snapshots([0, 9])]
    _, r0 = run(callbacks=cbs, steps=20)
    _, r1 = run(callbacks=cbs, steps=20, sync_every=8)
    assert r1.evals == r0.evals and [s for s, _ in r1.evals["w"]] == [6, 12, 18, 20]
    assert sorted(r1.snapshots) == [0, 9]
    assert all(torch.equal(r1.snapshots[9][k], v) for k, v in r0.snapshots[9].items())


def test_stats_every_and_no_update_ratio():
    _, r = run(steps=20, sync_every=5, stats_every=5, track_update_ratio=False)
    m = r.metrics["adam_m_norm"]
    assert np.isfinite(m[4::5]).all() and np.isnan(np.delete(m, np.arange(4, 20, 5))).all()
    assert np.isnan(r.metrics["update_ratio"]).all()
    _, r0 = run(steps=20)
    np.testing.assert_allclose(m[4::5], r0.metrics["adam_m_norm"][4::5], rtol=1e-6)


def test_bf16_autocast_trains_on_cpu():
    _, r0 = run(steps=60)
    _, r1 = run(steps=60, precision="bf16", sync_every=20)
    assert np.isfinite(r1.metrics["loss"]).all()
    assert r1.metrics["loss"][-5:].mean() < 0.8 * r1.metrics["loss"][:5].mean()
    assert abs(r1.metrics["loss"][-5:].mean() - r0.metrics["loss"][-5:].mean()) < 0.2


@pytest.mark.parametrize("bad", [dict(sync_every=0), dict(stats_every=0), dict(precision="fp16"),
                                 dict(compile="cuda-graphs")])
def test_fast_path_options_are_checked(bad):
    with pytest.raises(ValueError):
        TrainConfig(steps=1, **bad)


def test_default_config_is_not_the_fast_path():
    assert not TrainConfig(steps=1).fast_path
    assert TrainConfig(steps=1, sync_every=10).fast_path and TrainConfig(steps=1, precision="bf16").fast_path
    assert TrainConfig(steps=1, compile="reduce-overhead").fast_path


# --- attention: SDPA when nobody looks -------------------------------------------------------------

ATTN_VARIANTS = list(itertools.product(["learned", "sinusoidal", "rope", "none"], ["layernorm", "rmsnorm", "none"],
                                       [None, 1.0, 0.3]))


def _pair(positional, norm, attn_scale, **kw):
    base = dict(vocab_size=17, n_ctx=16, d_model=48, n_layers=2, n_heads=4, positional=positional, norm=norm,
                attn_scale=attn_scale) | kw
    manual = seeded_model(lambda: GPT(GPTConfig(attn_impl="manual", **base)), 0).eval()
    fused = GPT(GPTConfig(attn_impl="sdpa", **base)).eval()
    fused.load_state_dict(manual.state_dict())
    return manual, fused


@pytest.mark.parametrize("positional,norm,attn_scale", ATTN_VARIANTS)
def test_sdpa_agrees_with_manual_attention(positional, norm, attn_scale):
    manual, fused = _pair(positional, norm, attn_scale)
    tokens = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens), manual(tokens), atol=1e-5, rtol=1e-5)


def test_sdpa_agrees_in_gradients_and_with_d_head_and_bias():
    manual, fused = _pair("rope", "rmsnorm", None, d_head=6, bias=True, mlp="swiglu")
    tokens = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(2))
    for m in (manual, fused):
        m(tokens).pow(2).mean().backward()
    for (name, a), b in zip(manual.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_hook_switches_sdpa_back_to_the_manual_path():
    manual, fused = _pair("learned", "layernorm", None)
    tokens = torch.randint(0, 17, (2, 12), generator=torch.Generator().manual_seed(3))
    _, cache = fused.run_with_cache(tokens, names_filter=lambda n: "hook_pattern" in n)
    _, ref = manual.run_with_cache(tokens, names_filter=lambda n: "hook_pattern" in n)
    assert sorted(cache) == sorted(ref) == [f"blocks.{layer}.attn.hook_pattern" for layer in (0, 1)]
    for name in ref:
        torch.testing.assert_close(cache[name], ref[name], atol=1e-6, rtol=0)
    # every documented hook still fires on the sdpa model
    _, everything = fused.run_with_cache(tokens)
    assert sorted(everything) == sorted(fused.expected_hook_names())
    # a replacement at hook_attn_scores takes effect on the sdpa model too
    kill = [("blocks.0.attn.hook_pattern", lambda p, hook: torch.zeros_like(p))]
    with fused.hooks(kill), manual.hooks(kill), torch.no_grad():
        torch.testing.assert_close(fused(tokens), manual(tokens), atol=1e-5, rtol=1e-5)
    assert fused.blocks[1].attn._use_sdpa(torch.zeros(1)) and not manual.blocks[0].attn._use_sdpa(torch.zeros(1))


def test_auto_is_the_manual_path_bit_for_bit_on_cpu():
    manual, _ = _pair("rope", "rmsnorm", None)
    auto = GPT(GPTConfig(**{**json_cfg(manual), "attn_impl": "auto"})).eval()
    auto.load_state_dict(manual.state_dict())
    tokens = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(auto(tokens), manual(tokens))
    assert GPTConfig().attn_impl == "auto"
    with pytest.raises(ValueError, match="attn_impl"):
        GPTConfig(attn_impl="flash")


def json_cfg(model):
    import json

    return json.loads(model.cfg.to_json())


# --- on CUDA the default config runs the fast path; CUDA runs are made deterministic -------------


def test_on_cuda_a_default_config_runs_the_fast_path_and_on_cpu_nothing_changes(monkeypatch):
    from labcore.training.trainer import CUDA_SYNC_EVERY, on_device

    cfg = TrainConfig(steps=5)
    monkeypatch.delenv("LAB_CUDA_DEFAULT_LOOP", raising=False)
    assert on_device(cfg, torch.device("cpu")) is cfg
    cuda = on_device(cfg, torch.device("cuda"))
    assert cuda.fast_path and cuda.sync_every == CUDA_SYNC_EVERY and cuda.precision == "fp32" and not cuda.compile
    chosen = TrainConfig(steps=5, sync_every=7)
    assert on_device(chosen, torch.device("cuda")) is chosen  # an explicit choice is kept
    monkeypatch.setenv("LAB_CUDA_DEFAULT_LOOP", "1")
    assert on_device(cfg, torch.device("cuda")) is cfg


def test_deterministic_cuda_sets_cublas_workspace_and_deterministic_kernels():
    import subprocess
    import sys

    code = ("import os, torch\n"
            "from labcore.training.reproducible import deterministic_cuda\n"
            "os.environ.pop('CUBLAS_WORKSPACE_CONFIG', None)\n"
            "deterministic_cuda()\n"
            "print(os.environ['CUBLAS_WORKSPACE_CONFIG'], torch.are_deterministic_algorithms_enabled(),\n"
            "      torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [":4096:8", "True", "False", "True"]
