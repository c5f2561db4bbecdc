"""Training step: the glass-box GPT vs transformers' GPT2LMHeadModel of the same size (goal ≥ 1.2× faster),
and vs TransformerLens's own model where transformer-lens is installed (.venv-tl, see docs/performance.md)."""

import pytest
import torch
import torch.nn.functional as F

from labcore import GPT, GPTConfig

V, T, B, D, L, H = 64, 32, 64, 64, 2, 4  # the size measured in DEVELOPERS.md's speed table


def _step_fn(model, forward):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (B, T), generator=g)

    def step():
        logits = forward(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@pytest.mark.benchmark(group="train_step")
def test_train_step_glassbox(benchmark):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_ctx=T, d_model=D, n_layers=L, n_heads=H)).train()
    benchmark(_step_fn(model, model))


@pytest.mark.benchmark(group="train_step")
def test_train_step_hf_gpt2(benchmark):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=D, n_layer=L, n_head=H, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).train()
    benchmark(_step_fn(model, lambda t: model(input_ids=t).logits))


@pytest.mark.benchmark(group="train_step_tl")
def test_train_step_glassbox_tl_size(benchmark):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, n_ctx=T, d_model=D, n_layers=L, n_heads=H, norm="layernorm")).train()
    benchmark(_step_fn(model, model))


@pytest.mark.benchmark(group="train_step_tl")
def test_train_step_transformer_lens(benchmark):
    tl = pytest.importorskip("transformer_lens", reason="transformer-lens not installed (see docs/performance.md: .venv-tl)")
    from benchmarks.tl_native import build_tl_model

    torch.manual_seed(0)
    model = build_tl_model(tl, vocab=V, n_ctx=T, d_model=D, n_layers=L, n_heads=H).train()
    benchmark(_step_fn(model, model))
