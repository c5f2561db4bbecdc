"""Trainer fast path vs today's loop on a tiny model, on the CPU (ratios in one run).

The fast path's wins are GPU wins (no host sync per step, fused AdamW, SDPA, compile, bf16); on a
CPU a host sync costs nothing, so what is left to measure here is the bookkeeping: the default loop
computes the update ratio and Adam's moment statistics in Python every step, the fast path on the
device every ``stats_every`` steps. ``benchmarks/gpu_speed.py`` measures the GPU (scripts/gpu-check.sh).
"""

import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.tasks.bijection import BijectionTask, batch_fn
from labcore.training.trainer import TrainConfig, seeded_model, train

TASK = BijectionTask(V=10, L=10)
CFG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=64, n_layers=2, n_heads=4, norm="rmsnorm")
STEPS, BATCH = 30, 32


def _train(**fast):
    model = seeded_model(lambda: GPT(CFG), 0)
    train(model, batch_fn(TASK, BATCH), TrainConfig(steps=STEPS, lr=1e-3, **fast))


@pytest.mark.benchmark(group="trainer")
def test_trainer_default_loop(benchmark):
    benchmark.pedantic(_train, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="trainer")
def test_trainer_fast_path(benchmark):
    benchmark.pedantic(_train, kwargs=dict(sync_every=STEPS, stats_every=STEPS), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="trainer")
def test_trainer_fast_path_with_per_step_stats(benchmark):
    benchmark.pedantic(_train, kwargs=dict(sync_every=STEPS), rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="attention")
def test_attention_manual(benchmark):
    _forward_backward(benchmark, "manual")


@pytest.mark.benchmark(group="attention")
def test_attention_sdpa(benchmark):
    _forward_backward(benchmark, "sdpa")


def _forward_backward(benchmark, impl):
    cfg = GPTConfig(vocab_size=64, n_ctx=64, d_model=128, n_layers=2, n_heads=4, attn_impl=impl)
    model = seeded_model(lambda: GPT(cfg), 0)
    tokens = torch.randint(0, 64, (16, 64), generator=torch.Generator().manual_seed(0))

    def step():
        model.zero_grad(set_to_none=True)
        model(tokens).logsumexp(-1).mean().backward()

    benchmark(step)
