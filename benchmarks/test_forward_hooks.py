"""Forward pass: every hook cached vs no hooks, same model, same batch (goal ≤ 1.10×)."""

import pytest
import torch

from labcore import GPT, GPTConfig

CFG = GPTConfig(vocab_size=64, n_ctx=64, d_model=128, n_layers=4, n_heads=4)


@pytest.fixture(scope="module")
def model_and_tokens():
    torch.manual_seed(0)
    return GPT(CFG).eval(), torch.randint(0, 64, (32, 64))


@pytest.mark.benchmark(group="forward")
def test_forward_no_hooks(benchmark, model_and_tokens):
    model, tokens = model_and_tokens
    with torch.no_grad():
        benchmark(model, tokens)


@pytest.mark.benchmark(group="forward")
def test_forward_cache_every_hook(benchmark, model_and_tokens):
    model, tokens = model_and_tokens
    with torch.no_grad():
        _, cache = benchmark(model.run_with_cache, tokens)
    assert len(cache) == len(model.expected_hook_names())
