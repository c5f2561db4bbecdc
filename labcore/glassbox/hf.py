"""The glass-box probe API on transformers models: same hook names, same shapes, same meaning.

`HookedHF(hf_model)` gives a Llama / Qwen2 / GPT-2 family causal LM the `run_with_cache` and
`hooks(...)` interface of `labcore.GPT`. Two mechanisms, both reversible:

* torch forward (pre-)hooks on the HF submodules route the residual stream, the norms' outputs,
  the attention and MLP outputs and the MLP hidden layer through labcore `HookPoint`s;
* a registered attention function ("labcore_hooked", an eager softmax attention) routes the
  post-RoPE queries and keys, the values, the scores, the pattern and z through HookPoints.

So `cache["blocks.0.attn.hook_pattern"]` is the same object in both worlds, and a hook that
returns a replacement tensor intervenes in the HF model as it would in ours. The one read-only
point is `hook_resid_mid` (HF keeps that sum in a local variable; we observe it as the input of
the second norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labcore.glassbox.hooks import HookedModule, HookPoint

ATTN_IMPL = "labcore_hooked"


@dataclass(frozen=True)
class _Layout:
    """Where each piece lives in a family's module tree."""

    layers: str  # path to the ModuleList of decoder layers
    embed: str  # token embedding
    pos_embed: str | None  # learned position embedding, if any
    final_norm: str
    ln1: str  # names inside a decoder layer
    ln2: str
    attn: str
    mlp: str
    mlp_pre: str  # module whose output is the MLP pre-activation (gate for SwiGLU)
    mlp_out_proj: str  # module whose input is the MLP hidden after the nonlinearity


_LLAMA = _Layout(
    layers="model.layers", embed="model.embed_tokens", pos_embed=None, final_norm="model.norm",
    ln1="input_layernorm", ln2="post_attention_layernorm", attn="self_attn", mlp="mlp",
    mlp_pre="mlp.gate_proj", mlp_out_proj="mlp.down_proj",
)
_GPT2 = _Layout(
    layers="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe", final_norm="transformer.ln_f",
    ln1="ln_1", ln2="ln_2", attn="attn", mlp="mlp", mlp_pre="mlp.c_fc", mlp_out_proj="mlp.c_proj",
)
LAYOUTS = {"llama": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA, "mistral": _LLAMA, "smollm3": _LLAMA, "gpt2": _GPT2}


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPL, _hooked_attention)
    AttentionMaskInterface.register(ATTN_IMPL, eager_mask)


def _hooked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager softmax attention with HookPoints; HF passes q, k, v as (B, H, T, dh), post-RoPE."""
    points: _AttnHooks | None = getattr(module, "_labcore_hooks", None)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]  # grouped-query attention shares k, v across heads
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    hp = points or _AttnHooks.identity()
    q = hp.hook_q(query.transpose(1, 2))  # (B, T, H, dh), the glass-box layout
    k = hp.hook_k(key.transpose(1, 2))
    v = hp.hook_v(value.transpose(1, 2))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scaling  # (B, H, T_q, T_k)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    scores = hp.hook_attn_scores(scores)
    pattern = hp.hook_pattern(scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype))
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
    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # (B, T, d)
        self.ln1 = nn.Module()
        self.ln1.hook_normalized = HookPoint()  # (B, T, d)
        self.attn = _AttnHooks()
        self.hook_attn_out = HookPoint()  # (B, T, d)
        self.hook_resid_mid = HookPoint()  # (B, T, d), read-only here
        self.ln2 = nn.Module()
        self.ln2.hook_normalized = HookPoint()  # (B, T, d)
        self.mlp = nn.Module()
        self.mlp.hook_pre = HookPoint()  # (B, T, m)
        self.mlp.hook_post = HookPoint()  # (B, T, m)
        self.hook_mlp_out = HookPoint()  # (B, T, d)
        self.hook_resid_post = HookPoint()  # (B, T, d)


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


class HookedHF(HookedModule):
    """A transformers causal LM seen through labcore hook names. `forward(tokens) -> logits`."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        model_type = getattr(hf_model.config, "model_type", None)
        if model_type not in LAYOUTS:
            raise ValueError(
                f"HookedHF supports model types {sorted(LAYOUTS)}; got {model_type!r}. "
                "Add a _Layout for it in labcore/glassbox/hf.py."
            )
        _register_attention()
        hf_model.config._attn_implementation = ATTN_IMPL
        for sub in hf_model.modules():  # sub-configs some models keep on their own
            cfg = getattr(sub, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                cfg._attn_implementation = ATTN_IMPL
        self.hf = hf_model
        self.layout = layout = LAYOUTS[model_type]
        layers = _get(hf_model, layout.layers)
        self.n_layers = len(layers)
        self.hook_embed = HookPoint()  # (B, T, d)
        if layout.pos_embed:
            self.hook_pos_embed = HookPoint()  # (B, T, d)
        self.blocks = nn.ModuleList(_BlockHooks() for _ in layers)
        self.ln_final = nn.Module()
        self.ln_final.hook_normalized = HookPoint()  # (B, T, d)
        self.setup_hooks()
        self._handles = []
        self._attach(layers)

    def _attach(self, layers: nn.ModuleList) -> None:
        lay = self.layout

        def out_hook(point: HookPoint):
            def fn(module, inputs, output):
                if isinstance(output, tuple):
                    return (point(output[0]), *output[1:])
                return point(output)

            return fn

        def in_hook(point: HookPoint):
            def fn(module, args, kwargs):
                if args:
                    return (point(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": point(kwargs["hidden_states"])}

            return fn

        reg = self._handles.append
        reg(_get(self.hf, lay.embed).register_forward_hook(out_hook(self.hook_embed)))
        if lay.pos_embed:
            reg(_get(self.hf, lay.pos_embed).register_forward_hook(out_hook(self.hook_pos_embed)))
        reg(_get(self.hf, lay.final_norm).register_forward_hook(out_hook(self.ln_final.hook_normalized)))
        for layer, hooks in zip(layers, self.blocks):
            reg(layer.register_forward_pre_hook(in_hook(hooks.hook_resid_pre), with_kwargs=True))
            reg(layer.register_forward_hook(out_hook(hooks.hook_resid_post)))
            reg(_get(layer, lay.ln1).register_forward_hook(out_hook(hooks.ln1.hook_normalized)))
            ln2 = _get(layer, lay.ln2)
            reg(ln2.register_forward_pre_hook(in_hook(hooks.hook_resid_mid), with_kwargs=True))
            reg(ln2.register_forward_hook(out_hook(hooks.ln2.hook_normalized)))
            attn = _get(layer, lay.attn)
            object.__setattr__(attn, "_labcore_hooks", hooks.attn)  # not a registered submodule
            reg(attn.register_forward_hook(out_hook(hooks.hook_attn_out)))
            reg(_get(layer, lay.mlp).register_forward_hook(out_hook(hooks.hook_mlp_out)))
            reg(_get(layer, lay.mlp_pre).register_forward_hook(out_hook(hooks.mlp.hook_pre)))
            reg(_get(layer, lay.mlp_out_proj).register_forward_pre_hook(in_hook(hooks.mlp.hook_post), with_kwargs=True))

    def detach_hooks(self) -> None:
        """Remove every hook labcore attached to the HF model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits."""
        return self.hf(input_ids=tokens, use_cache=False).logits

    def expected_hook_names(self) -> list[str]:
        return self.hook_names()


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
