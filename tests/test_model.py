"""The glass-box transformer: attention is causal and normalised, every documented hook exists
with its documented shape, hooks never outlive their `with` block, configs fail clearly."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labcore import GPT, ConfigError, GPTConfig
from labcore.glassbox.hooks import HOOK_SHAPES, shape_pattern

configs = st.builds(
    lambda n_heads, d_head, n_layers, positional, norm, mlp, tied: GPTConfig(
        vocab_size=23, n_ctx=12, d_model=n_heads * d_head, n_layers=n_layers, n_heads=n_heads,
        positional=positional, norm=norm, mlp=mlp, tied_embeddings=tied, init_std=0.3,
    ),
    n_heads=st.integers(1, 4),
    d_head=st.sampled_from([2, 4, 8]),
    n_layers=st.integers(1, 3),
    positional=st.sampled_from(["learned", "sinusoidal", "rope", "none"]),
    norm=st.sampled_from(["layernorm", "rmsnorm", "none"]),
    mlp=st.sampled_from(["gelu", "swiglu", "none"]),
    tied=st.booleans(),
)


def dims(cfg: GPTConfig, B: int, T: int) -> dict[str, int]:
    return {"B": B, "T": T, "T_q": T, "T_k": T, "d": cfg.d_model, "H": cfg.n_heads,
            "dh": cfg.head_dim, "m": cfg.mlp_dim}


@settings(max_examples=25, deadline=None)
@given(cfg=configs, B=st.integers(1, 3), T=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_every_documented_hook_is_present_with_its_documented_shape(cfg, B, T, seed):
    model = GPT(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (B, T, cfg.vocab_size)
    assert sorted(cache) == sorted(model.expected_hook_names())
    size = dims(cfg, B, T)
    for name, act in cache.items():
        expected = tuple(size[s.strip()] for s in shape_pattern(name).strip("()").split(","))
        assert tuple(act.shape) == expected, name


@settings(max_examples=25, deadline=None)
@given(cfg=configs, T=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_attention_rows_sum_to_one_and_never_look_ahead(cfg, T, seed):
    g = torch.Generator().manual_seed(seed)
    model = GPT(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, T), generator=g)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(cfg.n_layers):
        pattern = cache["pattern", layer]  # (B, H, T, T)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        assert (pattern.triu(diagonal=1) == 0).all()
    # Causality end to end: changing the last token leaves every earlier position's logits alone.
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % cfg.vocab_size
    torch.testing.assert_close(model(changed)[:, :-1], logits[:, :-1], rtol=0, atol=0)


def test_shorthand_keys_match_full_names():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8))
    _, cache = model.run_with_cache(torch.zeros(1, 5, dtype=torch.long))
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", 0] is cache["blocks.0.hook_resid_post"]
    assert cache["mlp_out", 1] is cache["blocks.1.hook_mlp_out"]
    assert cache["post", 0] is cache["blocks.0.mlp.hook_post"]
    assert ("q", 0) in cache and ("nonexistent", 0) not in cache


def test_names_filter_keeps_only_what_is_asked():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8))
    _, cache = model.run_with_cache(torch.zeros(1, 5, dtype=torch.long), names_filter="blocks.0.attn.hook_q")
    assert list(cache) == ["blocks.0.attn.hook_q"]


def test_hooks_are_removed_after_the_block_even_when_it_raises():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8))
    tokens = torch.arange(6)[None]
    clean = model(tokens)
    zero = ("blocks.0.hook_attn_out", lambda x, hook: torch.zeros_like(x))
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([zero]):
            assert not torch.equal(model(tokens), clean)
            raise RuntimeError("boom")
    assert all(not p._forward_hooks for p in model.hook_points().values())
    assert torch.equal(model(tokens), clean)


def test_hook_replacement_changes_the_forward_pass_as_intended():
    """Zeroing every head's result equals zeroing the attention output (the sum over heads)."""
    cfg = GPTConfig(vocab_size=10, n_ctx=8, init_std=0.2)
    model = GPT(cfg)
    tokens = torch.arange(6)[None]
    with model.hooks([("blocks.1.attn.hook_result", lambda x, hook: torch.zeros_like(x))]):
        a = model(tokens)
    with model.hooks([("blocks.1.hook_attn_out", lambda x, hook: torch.zeros_like(x))]):
        b = model(tokens)
    torch.testing.assert_close(a, b)


def test_result_heads_sum_to_attention_output():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8, bias=True, init_std=0.2))
    _, cache = model.run_with_cache(torch.arange(7)[None])
    summed = cache["result", 0].sum(2) + model.blocks[0].attn.W_O.bias
    torch.testing.assert_close(summed, cache["attn_out", 0])


def test_unscaled_attention_uses_raw_dot_products():
    cfg = GPTConfig(vocab_size=10, n_ctx=8, attn_scale=1.0)
    model = GPT(cfg)
    _, cache = model.run_with_cache(torch.arange(5)[None])
    q, k = cache["q", 0], cache["k", 0]
    raw = torch.einsum("bqhd,bkhd->bhqk", q, k)
    torch.testing.assert_close(cache["attn_scores", 0][..., 0], raw[..., 0])


def test_hook_table_documents_every_hook_the_model_has():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8))
    for name in model.hook_names():
        assert re.sub(r"blocks\.\d+\.", "blocks.{l}.", name) in HOOK_SHAPES


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(d_model=30, n_heads=4), "d_model"),
        (dict(n_layers=0), "n_layers"),
        (dict(positional="alibi"), "positional"),
        (dict(norm="batchnorm"), "norm"),
        (dict(mlp="relu"), "mlp"),
        (dict(positional="rope", d_model=12, n_heads=4), "d_head"),
    ],
)
def test_impossible_configs_fail_with_a_message_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"GPTConfig\.{field}="):
        GPTConfig(**kwargs)


def test_bad_tokens_fail_clearly():
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8))
    with pytest.raises(ValueError, match="exceeds n_ctx=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
        model(torch.full((1, 3), 10))


@pytest.mark.parametrize("bias", [False, True])
def test_per_head_path_gives_the_same_function_as_the_fused_path(bias):
    """With a hook on hook_result the model splits W_O per head; the output must not change."""
    model = GPT(GPTConfig(vocab_size=10, n_ctx=8, bias=bias, init_std=0.2))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    tokens = torch.arange(7)[None]
    fused = model(tokens)
    with model.hooks([("blocks.0.attn.hook_result", lambda x, hook: None)]):
        split = model(tokens)
    torch.testing.assert_close(split, fused, rtol=1e-5, atol=1e-6)


def test_per_head_results_follow_a_wrapped_w_o():
    """A LoRA-wrapped W_O changes hook_result consistently with the fused output."""
    from labcore.finetuning.lora import apply_lora

    model = GPT(GPTConfig(vocab_size=10, n_ctx=8, init_std=0.2))
    apply_lora(model, ["W_O"], r=2, alpha=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tokens = torch.arange(7)[None]
    fused = model(tokens)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["result", 0].sum(2), cache["attn_out", 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.unembed(cache["resid_post", 1]), fused, rtol=1e-5, atol=1e-5)


def _by_hand(model: GPT, tokens: torch.Tensor, post: bool) -> torch.Tensor:
    """The block written out: pre-norm x + f(LN(x)) with a final LN, or post-norm LN(x + f(x)) without."""
    import torch.nn.functional as F

    def ln(norm, x):
        return F.layer_norm(x, (x.shape[-1],), norm.norm.weight, None, model.cfg.norm_eps)

    x = model.W_E(tokens) + model.W_pos.weight[: tokens.shape[1]]
    for b in model.blocks:
        if post:
            x = ln(b.ln1, x + b.attn(x, None))
            x = ln(b.ln2, x + b.mlp(x))
        else:
            x = x + b.attn(ln(b.ln1, x), None)
            x = x + b.mlp(ln(b.ln2, x))
    return (x if post else ln(model.ln_final, x)) @ model.W_E.weight.T


def test_post_norm_block_is_norm_after_the_residual_add():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, n_ctx=8, d_model=16, n_layers=3, n_heads=2, init_std=0.3,
                          norm_position="post"))
    with torch.no_grad():
        for b in model.blocks:
            b.ln1.norm.weight.uniform_(0.5, 1.5)
    tokens = torch.randint(0, 11, (2, 7))
    torch.testing.assert_close(model(tokens), _by_hand(model, tokens, post=True), rtol=1e-5, atol=1e-5)
    assert not any("ln_final" in name for name, _ in model.named_parameters())  # no final norm in post-LN
    _, cache = model.run_with_cache(tokens)
    rms = cache["resid_post", 2].pow(2).mean(-1).sqrt()  # every block output is normalised
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)


def test_pre_norm_default_is_unchanged_bitwise():
    cfg = GPTConfig(vocab_size=11, n_ctx=8, d_model=16, n_layers=3, n_heads=2, init_std=0.3)
    assert cfg.norm_position == "pre" and GPTConfig.from_json(cfg.to_json()) == cfg
    torch.manual_seed(0)
    model = GPT(cfg)
    tokens = torch.randint(0, 11, (2, 7))
    assert torch.equal(model(tokens), _by_hand(model, tokens, post=False))
    with pytest.raises(ConfigError, match="norm_position"):
        GPTConfig(norm_position="middle")
