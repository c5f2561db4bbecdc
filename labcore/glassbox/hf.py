"""The glass-box probe API on transformers models: same hook names, same shapes, same meaning.

`HookedHF(hf_model)` gives a transformers causal LM (Llama, Qwen2/3, Mistral, SmolLM3, GPT-2,
Gemma 2/3, Phi-3, GPT-NeoX/Pythia, Qwen2-MoE; `hf_layouts.LAYOUTS`) the `run_with_cache` and
`hooks(...)` interface of `labcore.GPT`. Two mechanisms, both undone by `detach_hooks()`:

* torch forward (pre-)hooks on the HF submodules route the residual stream, the norms' outputs,
  the attention and MLP outputs, the MLP hidden layer and the MoE router through `HookPoint`s;
* a registered attention function ("labcore_hooked", eager softmax attention with Gemma's logit
  soft-capping) routes the post-RoPE queries and keys, the values, the scores, the pattern and z
  through HookPoints. `detach_hooks()` puts the model's own attention implementation back.

Every point is writable: a hook's return value is what flows downstream. HF keeps resid_mid in a
local variable, so a write there is completed at the layer's output: when `hook_resid_mid`
returned a new tensor r', the layer's output is recomputed as r' + mlp_out(r') (what a by-hand
block computes), instead of HF's r + mlp_out(r').
"""

from __future__ import annotations

import torch
from torch import nn

from labcore.glassbox.hf_layouts import LAYOUTS, Layout, layout_for
from labcore.glassbox.hooks import HookedModule, HookPoint

__all__ = ["ATTN_IMPL", "LAYOUTS", "HookedHF", "Layout", "llama_from_glassbox"]

ATTN_IMPL = "labcore_hooked"


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPL, _hooked_attention)
    AttentionMaskInterface.register(ATTN_IMPL, eager_mask)


def _hooked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """Eager softmax attention with HookPoints; HF passes q, k, v as (B, H, T, dh), post-RoPE.

    scores = s·tanh(q·k·scale / s) + mask when a soft-cap s is given (Gemma 2), else q·k·scale + mask;
    pattern = softmax(scores) (in fp32, cast back); z = pattern @ v.
    """
    hp = getattr(module, "_labcore_hooks", None) or _AttnHooks.identity()
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]  # grouped-query attention shares k, v across heads
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    q = hp.hook_q(query.transpose(1, 2))  # (B, T, H, dh), the glass-box layout
    k = hp.hook_k(key.transpose(1, 2))  # (B, T, H, dh)
    v = hp.hook_v(value.transpose(1, 2))  # (B, T, H, dh)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scaling  # (B, H, T_q, T_k)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    scores = hp.hook_attn_scores(scores)
    pattern = hp.hook_pattern(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))  # (B, H, T_q, T_k)
    pattern_d = nn.functional.dropout(pattern, p=dropout, training=module.training)
    z = hp.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern_d, v))  # (B, T, H, dh)
    return z.contiguous(), pattern


class _AttnHooks(nn.Module):
    def __init__(self):
        super().__init__()
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    _IDENTITY: _AttnHooks | None = None

    @classmethod
    def identity(cls) -> _AttnHooks:
        if cls._IDENTITY is None:
            cls._IDENTITY = cls()
        return cls._IDENTITY


class _BlockHooks(nn.Module):
    """The hook points of one decoder layer; which exist depends on the layout and the layer."""

    def __init__(self, layout: Layout, layer: nn.Module):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # (B, T, d)
        self.ln1 = nn.Module()
        self.ln1.hook_normalized = HookPoint()  # (B, T, d)
        self.attn = _AttnHooks()
        self.hook_attn_out = HookPoint()  # (B, T, d)
        if not layout.parallel:
            self.hook_resid_mid = HookPoint()  # (B, T, d)
        self.ln2 = nn.Module()
        self.ln2.hook_normalized = HookPoint()  # (B, T, d)
        self.mlp = nn.Module()
        if _has(layer, layout.mlp_pre):
            self.mlp.hook_pre = HookPoint()  # (B, T, m)
            self.mlp.hook_post = HookPoint()  # (B, T, m)
        if layout.moe and _has(layer, f"{layout.mlp}.experts"):
            self.mlp.hook_router_logits = HookPoint()  # (B, T, E), before softmax and top-k
            self.mlp.hook_experts_out = HookPoint()  # (B, T, d), sum_k w_k · expert_k(x) over the top-k
            self.mlp.hook_shared_out = HookPoint()  # (B, T, d), the shared expert, before its sigmoid gate
        self.hook_mlp_out = HookPoint()  # (B, T, d)
        self.hook_resid_post = HookPoint()  # (B, T, d)
        self.new_mid: torch.Tensor | None = None  # a written resid_mid, completed at the layer's output
        self.mlp_value: torch.Tensor | None = None  # the mlp_out that flowed downstream


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
    except AttributeError:
        return False
    return True


def _out_hook(point: HookPoint):
    def fn(module, inputs, output):
        if isinstance(output, tuple):
            return (point(output[0]), *output[1:])
        return point(output)

    return fn


def _in_hook(point: HookPoint):
    def fn(module, args, kwargs):
        if args:
            return (point(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": point(kwargs["hidden_states"])}

    return fn


def _fused_gate_hook(point: HookPoint):
    """mlp_pre emits [gate | up] along the last axis: hook_pre sees the gate half (B, T, m)."""

    def fn(module, inputs, output):
        gate, up = output.chunk(2, dim=-1)
        new = point(gate)
        return output if new is gate else torch.cat([new, up], dim=-1)

    return fn


def _configs(hf_model: nn.Module) -> list:
    """The model's config, those its modules keep, and their sub-configs (text_config, ...), once each."""
    todo = [hf_model.config] + [getattr(m, "config", None) for m in hf_model.modules()]
    found: dict[int, object] = {}
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation"):
            continue
        found[id(cfg)] = cfg
        todo.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {})
    return list(found.values())


def _swap_attention(hf_model: nn.Module) -> list[tuple[object, object]]:
    """Point every config at the hooked attention; return (config, its old value) to restore."""
    saved = [(cfg, cfg.__dict__.get("_attn_implementation_internal")) for cfg in _configs(hf_model)]
    for cfg, _ in saved:
        cfg._attn_implementation = ATTN_IMPL
    return saved


class HookedHF(HookedModule):
    """A transformers causal LM seen through labcore hook names. `forward(tokens, **kw) -> logits`."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.layout = layout = layout_for(hf_model.config)
        _register_attention()
        self._saved_impl = _swap_attention(hf_model)
        self.hf = hf_model
        layers = _get(hf_model, layout.layers)
        self.n_layers = len(layers)
        self.hook_embed = HookPoint()  # (B, T, d)
        if layout.pos_embed:
            self.hook_pos_embed = HookPoint()  # (B, T, d), broadcast over the batch
        self.blocks = nn.ModuleList(_BlockHooks(layout, layer) for layer in layers)
        self.ln_final = nn.Module()
        self.ln_final.hook_normalized = HookPoint()  # (B, T, d)
        self.setup_hooks()
        self._handles: list = []
        self._attn_modules: list[nn.Module] = []
        self._batch = 1
        self._attach(layers)

    def _attach(self, layers: nn.ModuleList) -> None:
        lay, reg = self.layout, self._handles.append
        reg(_get(self.hf, lay.embed).register_forward_hook(_out_hook(self.hook_embed)))
        if lay.pos_embed:
            reg(_get(self.hf, lay.pos_embed).register_forward_hook(self._pos_hook))
        reg(_get(self.hf, lay.final_norm).register_forward_hook(_out_hook(self.ln_final.hook_normalized)))
        for layer, hooks in zip(layers, self.blocks):
            self._attach_block(layer, hooks)

    def _pos_hook(self, module, inputs, output):
        """GPT-2 computes position embeddings once, (1, T, d); the hook sees them as (B, T, d)."""
        if output.shape[0] == 1 and self._batch > 1:
            output = output.expand(self._batch, *output.shape[1:])
        return self.hook_pos_embed(output)

    def _attach_block(self, layer: nn.Module, hooks: _BlockHooks) -> None:
        lay, reg = self.layout, self._handles.append
        reg(layer.register_forward_pre_hook(_block_start(hooks), with_kwargs=True))
        reg(layer.register_forward_hook(_block_end(hooks)))
        reg(_get(layer, lay.ln1).register_forward_hook(_out_hook(hooks.ln1.hook_normalized)))
        ln2 = _get(layer, lay.ln2)
        if not lay.parallel:
            reg(ln2.register_forward_pre_hook(_mid_hook(hooks), with_kwargs=True))
        reg(ln2.register_forward_hook(_out_hook(hooks.ln2.hook_normalized)))
        attn = _get(layer, lay.attn)
        object.__setattr__(attn, "_labcore_hooks", hooks.attn)  # not a registered submodule
        self._attn_modules.append(attn)
        reg(_get(layer, lay.attn_out).register_forward_hook(_out_hook(hooks.hook_attn_out)))
        reg(_get(layer, lay.mlp_out).register_forward_hook(_mlp_out_hook(hooks)))
        if hasattr(hooks.mlp, "hook_pre"):
            pre = _fused_gate_hook if lay.fused_gate_up else _out_hook
            reg(_get(layer, lay.mlp_pre).register_forward_hook(pre(hooks.mlp.hook_pre)))
            reg(_get(layer, lay.mlp_out_proj).register_forward_pre_hook(_in_hook(hooks.mlp.hook_post), with_kwargs=True))
        if hasattr(hooks.mlp, "hook_router_logits"):
            _attach_moe(_get(layer, lay.mlp), hooks.mlp, reg)

    def detach_hooks(self) -> None:
        """Undo the wrap: remove every hook and put back the model's own attention implementation."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for attn in self._attn_modules:
            attn.__dict__.pop("_labcore_hooks", None)
        self._attn_modules.clear()
        for cfg, impl in self._saved_impl:
            cfg.__dict__["_attn_implementation_internal"] = impl
        self._saved_impl = []

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits. Other keyword arguments go to the HF model.

        With an `attention_mask` and no `position_ids`, positions count the unmasked tokens
        (cumsum(mask) - 1, as `generate` does), so a left-padded row sees the positions it
        would see unpadded.
        """
        if attention_mask is not None and position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self._batch = tokens.shape[0]
        out = self.hf(input_ids=tokens, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False, **kwargs)
        return out.logits

    def expected_hook_names(self) -> list[str]:
        return self.hook_names()


def _block_start(hooks: _BlockHooks):
    point = hooks.hook_resid_pre

    def fn(module, args, kwargs):
        hooks.new_mid = hooks.mlp_value = None
        if args:
            return (point(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": point(kwargs["hidden_states"])}

    return fn


def _mid_hook(hooks: _BlockHooks):
    """resid_mid is the MLP norm's input; a replacement is remembered for the layer's output."""

    def fn(module, args, kwargs):
        old = args[0] if args else kwargs["hidden_states"]
        new = hooks.hook_resid_mid(old)
        if new is old:
            return None
        hooks.new_mid = new
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    return fn


def _mlp_out_hook(hooks: _BlockHooks):
    def fn(module, inputs, output):
        hooks.mlp_value = hooks.hook_mlp_out(output)
        return hooks.mlp_value

    return fn


def _block_end(hooks: _BlockHooks):
    """resid_post; after a write to resid_mid the output is new_mid + mlp_out, as a by-hand block."""

    def fn(module, inputs, output):
        rest = output[1:] if isinstance(output, tuple) else None
        resid = output[0] if rest is not None else output
        if hooks.new_mid is not None:
            resid = hooks.new_mid + hooks.mlp_value
        hooks.new_mid = hooks.mlp_value = None
        resid = hooks.hook_resid_post(resid)
        return (resid, *rest) if rest is not None else resid

    return fn


def _attach_moe(moe: nn.Module, mh: nn.Module, reg) -> None:
    """Qwen2-MoE sparse block: router logits (writable: routing is recomputed), experts, shared expert."""
    shape: list[int] = []

    def remember(module, args):
        shape[:] = args[0].shape[:-1]  # (B, T)

    def as_bt(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
        return point(x.view(*shape, x.shape[-1])).reshape(x.shape)

    def router(module, inputs, output):
        logits = output[0]  # (B*T, E); then scores (B*T, k) and expert indices (B*T, k)
        new = as_bt(mh.hook_router_logits, logits)
        if new is logits or torch.equal(new, logits):
            return output
        probs = torch.softmax(new, dtype=torch.float, dim=-1)
        top, idx = torch.topk(probs, module.top_k, dim=-1)
        if module.norm_topk_prob:
            top /= top.sum(dim=-1, keepdim=True)
        return new, top.to(new.dtype), idx

    reg(moe.register_forward_pre_hook(remember))
    reg(moe.gate.register_forward_hook(router))
    reg(moe.experts.register_forward_hook(lambda m, i, out: as_bt(mh.hook_experts_out, out)))
    reg(moe.shared_expert.register_forward_hook(lambda m, i, out: as_bt(mh.hook_shared_out, out)))


def llama_from_glassbox(model) -> nn.Module:
    """A transformers LlamaForCausalLM holding a Llama-style labcore GPT's weights (rmsnorm, rope, swiglu).

    The proof that hook names mean the same thing: both models give the same logits and the same
    cached activations.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    if (cfg.norm, cfg.positional, cfg.mlp, cfg.bias) != ("rmsnorm", "rope", "swiglu", False):
        raise ValueError(
            "llama_from_glassbox needs GPTConfig(norm='rmsnorm', positional='rope', mlp='swiglu', bias=False); "
            f"got norm={cfg.norm}, positional={cfg.positional}, mlp={cfg.mlp}, bias={cfg.bias}"
        )
    if abs(cfg.scale - cfg.head_dim**-0.5) > 1e-12 or cfg.embed_scale != 1.0:
        raise ValueError("Llama uses attention scale 1/√d_head and unscaled embeddings")
    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.n_ctx, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tied_embeddings, attention_bias=False,
        mlp_bias=False, attn_implementation="eager",
    )
    hf = LlamaForCausalLM(hf_cfg).eval()
    sd = {"model.embed_tokens.weight": model.W_E.weight, "model.norm.weight": model.ln_final.norm.weight}
    for i, b in enumerate(model.blocks):
        p = f"model.layers.{i}."
        sd |= {
            p + "input_layernorm.weight": b.ln1.norm.weight,
            p + "post_attention_layernorm.weight": b.ln2.norm.weight,
            p + "self_attn.q_proj.weight": b.attn.W_Q.weight,
            p + "self_attn.k_proj.weight": b.attn.W_K.weight,
            p + "self_attn.v_proj.weight": b.attn.W_V.weight,
            p + "self_attn.o_proj.weight": b.attn.W_O.weight,
            p + "mlp.gate_proj.weight": b.mlp.W_gate.weight,
            p + "mlp.up_proj.weight": b.mlp.W_in.weight,
            p + "mlp.down_proj.weight": b.mlp.W_out.weight,
        }
    if not cfg.tied_embeddings:
        sd["lm_head.weight"] = model.W_U.weight
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    missing = [m for m in missing if not (cfg.tied_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight copy incomplete: missing {missing}, unexpected {unexpected}")
    return hf
