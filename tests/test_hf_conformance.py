"""HookedHF conformance: every supported family, a tiny random-weight model, checked against
transformers' own outputs (an unwrapped deep copy, eager attention) — never against itself.

Per family and dtype: logits, attention patterns (`output_attentions`), hidden states
(`output_hidden_states`), head ablation through hook_z (= zeroing the head's o_proj columns),
"patch with the clean activation = clean run" at every hook point, "every point, written,
changes the output", resid_mid patch = the same patch applied by hand, detach = an unwrapped twin
(eager and sdpa), and left padding = no padding.
"""

from __future__ import annotations

import copy

import pytest
import torch

from labcore.glassbox.hf import ATTN_IMPL, HookedHF

V, T = 97, 12
COMMON = {"vocab_size": V, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.2, "max_position_embeddings": 64}


def _config(arch: str, **over):
    cfg = _base_config(arch)
    for key, value in over.items():
        setattr(cfg, key, value)
    return cfg


def _base_config(arch: str):
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=V, n_positions=64, initializer_range=0.2,
                             resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    if arch.startswith("gpt_neox"):
        return tf.GPTNeoXConfig(**{k: v for k, v in COMMON.items() if k != "num_key_value_heads"}, rotary_pct=0.5,
                                use_parallel_residual=arch == "gpt_neox", hidden_dropout=0, attention_dropout=0)
    if arch == "gemma2":
        return tf.Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                               attn_logit_softcapping=2.0, final_logit_softcapping=None)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                   layer_types=["sliding_attention", "full_attention"])
    if arch == "phi3":
        return tf.Phi3Config(**COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(**COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=48, mlp_only_layers=[0])
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "mistral": tf.MistralConfig}
    return cls[arch](**COMMON, **({"head_dim": 16} if arch == "qwen3" else {}))


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gpt2", "gemma2", "gemma3_text", "phi3", "gpt_neox",
         "gpt_neox_seq", "qwen2_moe"]
# reads are exact in both dtypes; `tol` is for comparing two different computations (sum order)
DTYPES = {"fp32": (torch.float32, 1e-5), "bf16": (torch.bfloat16, 3e-2)}
O_PROJ = {"gpt2": "attn.c_proj", "gpt_neox": "attention.dense", "gpt_neox_seq": "attention.dense"}


def _build(arch: str, dtype=torch.float32, attn="eager", seed=0, **over):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, **over), attn_implementation=attn)
    return model.to(dtype).eval()


def _tokens(seed=1, batch=2):
    return torch.randint(3, V, (batch, T), generator=torch.Generator().manual_seed(seed))


def _close(a, b, tol, msg=""):
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=msg)


@pytest.fixture(scope="module", params=[(a, d) for a in ARCHS for d in DTYPES], ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request):
    """(hooked model, unwrapped eager twin with the same weights, tolerance)."""
    arch, dname = request.param
    dtype, tol = DTYPES[dname]
    model = _build(arch, dtype)
    twin = copy.deepcopy(model)
    return arch, HookedHF(model), twin, tol


@torch.no_grad()
def test_reads_match_transformers(pair):
    _, hooked, twin, tol = pair
    exact = 0.0  # reads are bit-identical to transformers' own outputs, fp32 and bf16
    ids = _tokens()
    logits, cache = hooked.run_with_cache(ids)
    ref = twin(input_ids=ids, output_attentions=True, output_hidden_states=True)
    _close(logits, ref.logits, exact, "logits")
    n = hooked.n_layers
    for layer in range(n):
        _close(cache["pattern", layer], ref.attentions[layer], exact, f"pattern {layer}")
        _close(cache["resid_pre", layer], ref.hidden_states[layer], exact, f"resid_pre {layer}")
        assert cache["q", layer].shape == (2, T, 4, 16) and cache["k", layer].shape == (2, T, 4, 16)
    # the last hidden state transformers reports is the final norm's output
    _close(cache["ln_final.hook_normalized"], ref.hidden_states[n], exact, "final norm")
    for layer in range(n):  # the residual identities of docs/hooks.md
        parts = cache["resid_pre", layer] + cache["attn_out", layer]
        if hooked.layout.parallel:
            _close(cache["resid_post", layer], parts + cache["mlp_out", layer], tol)  # another sum order
        else:
            _close(cache["resid_mid", layer], parts, exact)
            _close(cache["resid_post", layer], cache["resid_mid", layer] + cache["mlp_out", layer], exact)


@torch.no_grad()
def test_head_ablation_equals_zeroed_o_proj_columns(pair):
    arch, hooked, twin, tol = pair
    ids, layer, head, dh = _tokens(), 1, 2, 16

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with hooked.hooks([(f"blocks.{layer}.attn.hook_z", zero_head)]):
        ablated = hooked(ids)
    cut = copy.deepcopy(twin)
    layer_mod = cut.get_submodule(f"{hooked.layout.layers}.{layer}")
    w = layer_mod.get_submodule(O_PROJ.get(arch, "self_attn.o_proj")).weight
    if arch == "gpt2":  # Conv1D stores (in, out)
        w[head * dh:(head + 1) * dh] = 0
    else:
        w[:, head * dh:(head + 1) * dh] = 0
    _close(ablated, cut(input_ids=ids).logits, tol)  # a different computation
    assert not torch.equal(ablated, twin(input_ids=ids).logits)


@torch.no_grad()
def test_patch_with_clean_activation_is_the_clean_run_and_every_write_counts(pair):
    _, hooked, _, _ = pair
    ids = _tokens()
    clean, cache = hooked.run_with_cache(ids)
    for name in hooked.hook_names():
        with hooked.hooks([(name, lambda x, hook: cache[hook.name].clone())]):
            assert torch.equal(hooked(ids), clean), name
        with hooked.hooks([(name, lambda x, hook: x * 0.5 + 0.25)]):
            assert not torch.equal(hooked(ids), clean), f"writing {name} changed nothing downstream"


@torch.no_grad()
def test_resid_mid_patch_equals_the_patch_by_hand(pair):
    _arch, hooked, twin, tol = pair
    if hooked.layout.parallel:
        assert "blocks.0.hook_resid_mid" not in hooked.hook_names()
        return
    ids, lay = _tokens(), hooked.layout
    new_mid = torch.randn(2, T, 64, generator=torch.Generator().manual_seed(3)).to(twin.dtype)
    with hooked.hooks([("blocks.0.hook_resid_mid", lambda x, hook: new_mid)]):
        _, cache = hooked.run_with_cache(ids)
    layer = twin.get_submodule(f"{lay.layers}.0")
    by_hand = layer.get_submodule(lay.mlp)(layer.get_submodule(lay.ln2)(new_mid))
    if lay.mlp_out != lay.mlp:  # Gemma's post-feed-forward norm
        by_hand = layer.get_submodule(lay.mlp_out)(by_hand)
    _close(cache["mlp_out", 0], by_hand, tol)
    assert torch.equal(cache["resid_post", 0], new_mid + cache["mlp_out", 0])
    assert torch.equal(cache["resid_pre", 1], cache["resid_post", 0])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_detach_restores_the_model_bit_for_bit(arch, attn):
    if (arch, attn) == ("gemma2", "sdpa"):
        pytest.skip("transformers refuses sdpa for Gemma 2 (soft-capping needs eager)")
    model = _build(arch, attn=attn)
    twin = copy.deepcopy(model)
    ids = _tokens()
    hooked = HookedHF(model)
    assert model.config._attn_implementation == ATTN_IMPL
    with hooked.hooks([("blocks.0.attn.hook_z", lambda z, hook: torch.zeros_like(z))]):
        hooked(ids)
        hooked.detach_hooks()  # also inside a live hooks() block: nothing of labcore stays
        after = model(input_ids=ids).logits
    assert model.config._attn_implementation == attn
    assert torch.equal(after, twin(input_ids=ids).logits)
    assert not any(hasattr(m, "_labcore_hooks") for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_left_padding_gives_the_unpadded_activations(arch):
    hooked = HookedHF(_build(arch, sliding_window=64) if arch.startswith("gemma") else _build(arch))
    ids, pad = _tokens(batch=2), 4
    padded = ids.clone()
    padded[1, pad:] = ids[1, :-pad]
    padded[1, :pad] = 0
    mask = torch.ones_like(padded)
    mask[1, :pad] = 0
    logits, cache = hooked.run_with_cache(padded, attention_mask=mask)
    alone_logits, alone = hooked.run_with_cache(ids[1:, :-pad])
    _close(logits[1, pad:], alone_logits[0], 1e-4, "logits")
    for name in ("resid_post", "attn_out", "mlp_out"):
        _close(cache[name, 1][1, pad:], alone[name, 1][0], 1e-4, name)
    _close(cache["pattern", 1][1, :, pad:, pad:], alone["pattern", 1][0], 1e-5, "pattern")
    if "hook_pos_embed" in cache:  # GPT-2: (B, T, d), like every other point
        assert cache["hook_pos_embed"].shape == (2, T, 64)


@torch.no_grad()
def test_moe_router_logits_are_readable_and_steer_routing():
    hooked = HookedHF(_build("qwen2_moe"))
    ids = _tokens()
    _, cache = hooked.run_with_cache(ids)
    assert "blocks.0.mlp.hook_router_logits" not in cache  # layer 0 is dense (mlp_only_layers)
    logits = cache["blocks.1.mlp.hook_router_logits"]
    assert logits.shape == (2, T, 4)
    gate = hooked.hf.model.layers[1].mlp.gate
    _close(logits, torch.nn.functional.linear(cache["blocks.1.ln2.hook_normalized"], gate.weight), 1e-5)
    force = torch.tensor([0.0, 0.0, -1e4, -1e4])  # route every token to experts 0 and 1 only
    with hooked.hooks([("blocks.1.mlp.hook_router_logits", lambda x, hook: x + force)]):
        _, forced = hooked.run_with_cache(ids)
    experts = hooked.hf.model.layers[1].mlp.experts
    x = forced["blocks.1.ln2.hook_normalized"].reshape(-1, 64)
    w = torch.softmax(forced["blocks.1.mlp.hook_router_logits"].reshape(-1, 4), dim=-1)[:, :2]
    w = w / w.sum(-1, keepdim=True) if hooked.hf.config.norm_topk_prob else w
    by_hand = sum(w[:, e:e + 1] * experts.forward(x, torch.full((x.shape[0], 1), e), torch.ones(x.shape[0], 1))
                  for e in range(2))
    _close(forced["blocks.1.mlp.hook_experts_out"].reshape(-1, 64), by_hand, 1e-5)
