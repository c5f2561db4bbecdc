"""labcore.finetuning.lora: LoRALinear against peft, zero-init, merge/unmerge, parameter counts, and the
QLoRA gradient check (4-bit base + LoRA vs an fp32 model holding the dequantised weights)."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from labcore.finetuning import lora as L


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


def tokens(seed=0, shape=(2, 12)):
    return torch.randint(0, 64, shape, generator=torch.Generator().manual_seed(seed))


def randomise_lora(*models, seed=1, std=0.1):
    """Give the LoRA factors of several models the same random values (B ≠ 0, so A gets grads)."""
    g = torch.Generator().manual_seed(seed)
    per_model = [list(zip(*sorted(_lora_named(m).items()))) for m in models]
    names0 = per_model[0][0]
    with torch.no_grad():
        for idx in range(len(names0)):
            shape = per_model[0][1][idx].shape
            value = torch.randn(shape, generator=g) * std
            for names, params in per_model:
                params[idx].copy_(value)


def _lora_named(model):
    """LoRA factors keyed by (layer path, 'A'|'B'), the same key for peft and LoRALinear models."""
    out = {}
    for n, p in model.named_parameters():
        if "lora_A" in n or "lora_B" in n:
            key = n.replace("base_model.model.", "").replace(".default.weight", "")
            key = key.replace("lora_A", "A").replace("lora_B", "B")
            out[key] = p
    return out


def grads(model):
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in _lora_named(model).items()}


# ---------------------------------------------------------------------------- counts


def test_parameter_count_formula_gpt3():
    # 2 · L̂ · d_model · r, GPT-3 175B: 96 layers, d = 12288 (LoRA §4.2, Table 4, §7.1).
    assert L.count_lora_params(12288, 96, 2, 1) == 4_718_592  # q, v, r = 1: "4.7M"
    assert L.count_lora_params(12288, 96, 2, 8) == 37_748_736  # q, v, r = 8: "37.7M"
    assert L.count_lora_params(12288, 96, 1, 8) == 18_874_368  # "18M" budget, one type, r = 8
    assert L.count_lora_params(12288, 96, 2, 4) == 18_874_368  # ... or two types, r = 4
    assert L.count_lora_params(12288, 96, 4, 2) == 18_874_368  # ... or four types, r = 2


def test_counted_parameters_match_a_real_model():
    model = tiny_llama()
    L.apply_lora(model, L.resolve_targets("llama", "qv"), r=4, alpha=8)
    n = sum(p.numel() for p in L.lora_parameters(model))
    assert n == L.count_lora_params(64, 2, 2, 4)
    assert all(p.requires_grad for p in L.lora_parameters(model))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n  # base frozen


# ---------------------------------------------------------------------------- targets


def test_target_presets():
    assert L.resolve_targets("llama", "qv") == ["q_proj", "v_proj"]
    assert L.resolve_targets("llama", ["q", "v", "mlp"]) == ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    assert L.resolve_targets("labcore", "qkvo") == ["W_Q", "W_K", "W_V", "W_O"]
    assert L.resolve_targets("labcore", "mlp") == ["W_in", "W_out", "W_gate"]
    assert L.resolve_targets("gpt2", "qkv") == ["c_attn"]
    assert L.resolve_targets("llama", "all_linear") == "all_linear"
    with pytest.raises(ValueError, match="has no LoRA target 'x'"):
        L.resolve_targets("llama", "qx")
    with pytest.raises(ValueError, match="unknown model family"):
        L.resolve_targets("bert", "q")


def test_apply_lora_names_and_errors():
    model = tiny_llama()
    names = L.apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=2)
    assert names == [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    assert all(isinstance(model.get_submodule(n), L.LoRALinear) for n in names)
    with pytest.raises(ValueError, match="already carry LoRA"):
        L.apply_lora(model, "q_proj", r=2, alpha=2)
    assert all(p.requires_grad for p in L.lora_parameters(model))  # the failed call froze nothing
    with pytest.raises(ValueError, match="no nn.Linear module matches"):
        L.apply_lora(tiny_llama(), ["W_Q"], r=2, alpha=2)
    all_names = L.apply_lora(tiny_llama(), "all_linear", r=2, alpha=2)
    assert len(all_names) == 14 and "lm_head" not in all_names


def test_apply_lora_on_labcore_gpt():
    model_mod = pytest.importorskip("labcore.glassbox.model")
    try:
        cfg = model_mod.GPTConfig(vocab_size=20, n_ctx=32, d_model=64, n_layers=2, n_heads=4)
        model = model_mod.GPT(cfg)
    except Exception as exc:  # the glass-box model is built by another engineer; its API may move
        pytest.skip(f"labcore.glassbox.model GPT not constructible yet: {exc!r}")
    x = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    before = model(x)
    names = L.apply_lora(model, L.resolve_targets("labcore", "qv"), r=4, alpha=4)
    assert names == [f"blocks.{i}.attn.{m}" for i in range(2) for m in ("W_Q", "W_V")]
    assert torch.equal(model(x), before)  # B = 0
    # W_O is read as a weight (per-head split), not called: LoRALinear.weight must be W₀ + ΔW.
    L.apply_lora(model, L.resolve_targets("labcore", "o"), r=4, alpha=4)
    randomise_lora(model)
    adapted = model(x)
    assert not torch.allclose(adapted, before)
    adapted.sum().backward()
    wo = model.get_submodule("blocks.0.attn.W_O")
    assert wo.lora_A.grad is not None and wo.lora_A.grad.abs().max() > 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, L.LoRALinear):
                m.merge()
        assert (model(x) - adapted).abs().max() <= 1e-5


# ---------------------------------------------------------------------------- zero init


def test_zero_init_b_starts_exactly_at_base_model():
    """LORA-0a: ΔW = BA = 0 at step 0, so the output is bitwise the base model's; ∂L/∂A = 0
    exactly (it is Bᵀ·(…), with B = 0) and only B receives gradient at step 0."""
    base = tiny_llama()
    adapted = copy.deepcopy(base)
    L.apply_lora(adapted, L.resolve_targets("llama", "qv"), r=4, alpha=8)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(adapted(x).logits, base(x).logits)
    adapted(x, labels=x).loss.backward()
    for module in adapted.modules():
        if isinstance(module, L.LoRALinear):
            assert torch.count_nonzero(module.lora_A.grad) == 0
            assert module.lora_B.grad.abs().max() > 0


def test_lora_a_init_matches_peft_distribution():
    layer = L.LoRALinear(nn.Linear(256, 32), r=8, alpha=16)
    bound = 1 / 256**0.5  # kaiming_uniform(a=√5) on fan_in = 256
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    assert torch.count_nonzero(layer.lora_B) == 0 and layer.scaling == 2.0
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad


# ---------------------------------------------------------------------------- vs peft


def test_lora_linear_matches_peft_outputs_and_gradients():
    base = tiny_llama()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    L.apply_lora(ours, ["q_proj"], r=4, alpha=8)
    theirs = L.peft_lora(theirs, ["q_proj"], r=4, alpha=8)
    assert sorted(_lora_named(ours)) == sorted(_lora_named(theirs))
    randomise_lora(ours, theirs)
    x = tokens()
    out_ours, out_theirs = ours(x, labels=x), theirs(x, labels=x)
    assert (out_ours.logits - out_theirs.logits).abs().max() <= 1e-6
    out_ours.loss.backward()
    out_theirs.loss.backward()
    g_ours, g_theirs = grads(ours), grads(theirs)
    for k in g_ours:
        assert g_theirs[k].abs().max() > 0
        assert (g_ours[k] - g_theirs[k]).abs().max() <= 1e-6 * max(1.0, float(g_theirs[k].abs().max())), k


def test_peft_state_to_reference_copies_one_layer():
    model = L.peft_lora(tiny_llama(), ["q_proj", "v_proj"], r=4, alpha=16)
    randomise_lora(model)
    name = "model.layers.1.self_attn.v_proj"
    ref = L.peft_state_to_reference(model, name)
    layer = model.get_submodule("base_model.model." + name)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ref(x) - layer(x)).abs().max() <= 1e-6
    assert ref.r == 4 and ref.scaling == 4.0
    with pytest.raises(ValueError, match="expected one peft LoRA layer"):
        L.peft_state_to_reference(model, "q_proj")  # ambiguous: two layers


# ---------------------------------------------------------------------------- merge


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_merge_unmerge_same_function_and_restores_w(dtype, tol):
    """LORA-0b: merged W₀ + (α/r)BA computes the same function; unmerging recovers W₀."""
    torch.manual_seed(0)
    layer = L.LoRALinear(nn.Linear(64, 48).to(dtype), r=8, alpha=16)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.1)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(10, 64, dtype=dtype)
    with torch.no_grad():
        y_unmerged = layer(x)
        layer.merge()
        assert layer.merged
        y_merged = layer(x)
        assert torch.equal(layer.base.weight, w0 + layer.delta_weight()) or dtype == torch.float32
        rel = (y_merged - y_unmerged).norm() / y_unmerged.norm()
        assert rel <= tol, f"merged vs unmerged relative error {rel:.3g}"
        with pytest.raises(RuntimeError, match="already merged"):
            layer.merge()
        layer.unmerge()
        assert (layer.base.weight - w0).abs().max() <= (1e-6 if dtype == torch.float32 else 1e-14)
        assert (layer(x) - y_unmerged).abs().max() <= 10 * tol
    # Same parameter count as base + factors; merged forward is one nn.Linear call.
    assert sum(p.numel() for p in layer.base.parameters()) == 64 * 48 + 48


def test_dropout_only_in_training_mode():
    layer = L.LoRALinear(nn.Linear(32, 32), r=4, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 32)
    layer.eval()
    expected = layer.base(x) + x @ layer.delta_weight().T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.train()
    assert not torch.allclose(layer(x), expected, atol=1e-3)


def test_lora_linear_rejects_non_linear():
    with pytest.raises(TypeError, match="wraps nn.Linear"):
        L.LoRALinear(nn.Conv1d(2, 2, 1), r=1, alpha=1)
    with pytest.raises(ValueError, match="positive integer"):
        L.LoRALinear(nn.Linear(2, 2), r=0, alpha=1)


# ---------------------------------------------------------------------------- QLoRA


def _qlora_pair(targets, guard):
    """A 4-bit NF4+DQ tiny Llama with peft LoRA, and an fp32 twin holding the dequantised weights."""
    from labcore.finetuning import quantized as QM

    base = tiny_llama()
    qmodel = copy.deepcopy(base)
    names = QM.quantize_model_4bit(qmodel, "nf4", double_quant=True, guard=guard)
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for name in names:  # dequantise before any forward (the repacking would change them)
            ref.get_submodule(name).weight.copy_(QM.dequantized_linear4bit_weight(qmodel.get_submodule(name)))
    qpeft = L.peft_lora(qmodel, targets, r=4, alpha=8)
    rpeft = L.peft_lora(ref, targets, r=4, alpha=8)
    randomise_lora(qpeft, rpeft)
    return qpeft, rpeft


def _lora_grad_rel_error(qpeft, rpeft, eval_first=True):
    x = tokens(seed=2)
    if eval_first:  # the pitfall: an evaluation pass before training
        qpeft.eval()
        with torch.no_grad():
            qpeft(x)
        qpeft.train()
    qpeft(x, labels=x).loss.backward()
    rpeft(x, labels=x).loss.backward()
    gq, gr = grads(qpeft), grads(rpeft)
    keys = sorted(gr)
    flat_q = torch.cat([gq[k].flatten() for k in keys])
    flat_r = torch.cat([gr[k].flatten() for k in keys])
    missing = [k for k, p in _lora_named(qpeft).items() if p.grad is None]
    return float((flat_q - flat_r).norm() / flat_r.norm()), missing


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all_linear"])
def test_qlora_gradients_match_fp32_reference_after_eval_forward(targets):
    """QLoRA = frozen NF4 storage, 32-bit compute, gradients only into LoRA. With the guard, the
    LoRA gradients equal those of an fp32 model holding the dequantised weights (measured
    relative error 0.0), even after a no-grad eval forward ran first."""
    pytest.importorskip("bitsandbytes")
    qpeft, rpeft = _qlora_pair(targets, guard=True)
    rel, missing = _lora_grad_rel_error(qpeft, rpeft)
    assert not missing
    assert rel <= 1e-4, f"LoRA gradient relative error {rel:.3g}"


@pytest.mark.filterwarnings("ignore:bitsandbytes..gemv_4bit. an autograd kernel was not registered")
@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "all_linear"])
def test_pitfall_unguarded_linear4bit_gives_wrong_lora_gradients(targets):
    """Documents the bitsandbytes-on-CPU pitfall (DEVELOPERS.md) and shows the check above catches it.

    Without ``guard_linear4bit_cpu``, the first eval/no-grad forward repacks each 4-bit weight for
    CPU inference (absmax → bf16, fused gemv with no autograd kernel; torch only warns). Measured
    on this tiny Llama: LoRA on q,v → *no* LoRA gradient at all (grad None everywhere: o_proj's
    repacked matmul blocks the backward path; relative error 1.0); LoRA on all linear layers →
    relative error 0.63 (DEVELOPERS.md quotes 0.33 for another model). If this test starts failing,
    bitsandbytes fixed the bug: update the note and this docstring.
    """
    bnb = pytest.importorskip("bitsandbytes")
    if not bnb.functional.has_avx512bf16():
        pytest.skip("no AVX-512 BF16 on this CPU: bitsandbytes never repacks, the pitfall cannot occur")
    qpeft, rpeft = _qlora_pair(targets, guard=False)
    rel, _ = _lora_grad_rel_error(qpeft, rpeft)
    assert rel > 0.1, f"expected the unguarded gradients to be wrong, relative error {rel:.3g}"
    # Without the eval forward first the unguarded model is fine: it is the repacking.
    qpeft2, rpeft2 = _qlora_pair(targets, guard=False)
    rel2, _ = _lora_grad_rel_error(qpeft2, rpeft2, eval_first=False)
    assert rel2 <= 1e-4


def test_gpt2_presets_work_with_peft_and_are_refused_by_apply_lora():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    targets = L.resolve_targets("gpt2", ["qkv", "o"])
    with pytest.raises(TypeError, match="not nn.Linear"):
        L.apply_lora(copy.deepcopy(model), targets, r=2, alpha=2)
    x = tokens()
    with torch.no_grad():
        before = model(x).logits
    peft_model = L.peft_lora(model, targets, r=2, alpha=2, fan_in_fan_out=True)  # Conv1D stores Wᵀ
    adapted = sorted({n.rsplit(".lora_", 1)[0] for n, _ in peft_model.named_parameters() if "lora_" in n})
    assert adapted == [f"base_model.model.transformer.h.{i}.attn.{m}" for i in range(2) for m in ("c_attn", "c_proj")]
    with torch.no_grad():
        assert torch.equal(peft_model(x).logits, before)  # B = 0
    assert sum(p.numel() for p in L.lora_parameters(peft_model)) == 2 * 2 * ((32 + 96) + (32 + 32))  # layers · r · Σ(in + out)
