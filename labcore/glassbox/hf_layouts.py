"""Where each labcore hook point lives in a transformers model family's module tree.

A `Layout` names, for one family, the modules whose inputs or outputs *are* the glass-box
activations. Paths inside a decoder layer are relative to that layer. The meaning every family
shares (docs/hooks.md has the table per family):

    resid_mid  = resid_pre + attn_out                (absent for parallel blocks)
    resid_post = resid_mid + mlp_out                 (sequential blocks)
    resid_post = resid_pre + attn_out + mlp_out      (parallel blocks: GPT-NeoX / Pythia)

where `attn_out` and `mlp_out` are exactly what the layer adds to the residual stream (for Gemma
that is *after* its post-attention / post-feed-forward norm).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Layout:
    """Module paths of one family. `None` means "this family has no such module"."""

    layers: str  # the ModuleList of decoder layers
    embed: str  # token embedding (its output is hook_embed)
    pos_embed: str | None  # learned position embedding, if any
    final_norm: str
    ln1: str  # attention's input norm; its output is ln1.hook_normalized
    ln2: str  # the MLP's input norm; its input is resid_mid (sequential) and output ln2.hook_normalized
    attn: str  # the attention module (q, k, v, pattern, z come from the attention function)
    attn_out: str  # module whose output is what attention adds to the residual stream
    mlp: str
    mlp_out: str  # module whose output is what the MLP adds to the residual stream
    mlp_pre: str  # module whose output is the MLP pre-activation (the gate for gated MLPs)
    mlp_out_proj: str  # module whose input is the MLP hidden after the nonlinearity
    fused_gate_up: bool = False  # mlp_pre emits [gate | up] (Phi-3); hook_pre is the gate half
    parallel: bool = False  # attention and MLP both read resid_pre (GPT-NeoX); no resid_mid
    moe: bool = False  # the MLP may be a sparse mixture of experts (router, experts, shared expert)


LLAMA = Layout(
    layers="model.layers", embed="model.embed_tokens", pos_embed=None, final_norm="model.norm",
    ln1="input_layernorm", ln2="post_attention_layernorm", attn="self_attn", attn_out="self_attn",
    mlp="mlp", mlp_out="mlp", mlp_pre="mlp.gate_proj", mlp_out_proj="mlp.down_proj",
)
GPT2 = Layout(
    layers="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe", final_norm="transformer.ln_f",
    ln1="ln_1", ln2="ln_2", attn="attn", attn_out="attn", mlp="mlp", mlp_out="mlp",
    mlp_pre="mlp.c_fc", mlp_out_proj="mlp.c_proj",
)
# Gemma 2 / 3: attn_out is post_attention_layernorm(o_proj(z)); the MLP's input norm is
# pre_feedforward_layernorm; mlp_out is post_feedforward_layernorm(mlp(...)).
GEMMA = replace(
    LLAMA, ln2="pre_feedforward_layernorm", attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
)
PHI3 = replace(LLAMA, mlp_pre="mlp.gate_up_proj", fused_gate_up=True)
GPT_NEOX = Layout(
    layers="gpt_neox.layers", embed="gpt_neox.embed_in", pos_embed=None, final_norm="gpt_neox.final_layer_norm",
    ln1="input_layernorm", ln2="post_attention_layernorm", attn="attention", attn_out="attention",
    mlp="mlp", mlp_out="mlp", mlp_pre="mlp.dense_h_to_4h", mlp_out_proj="mlp.dense_4h_to_h", parallel=True,
)
QWEN2_MOE = replace(LLAMA, moe=True)

LAYOUTS: dict[str, Layout] = {
    "llama": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "mistral": LLAMA, "smollm3": LLAMA, "gpt2": GPT2,
    "gemma2": GEMMA, "gemma3_text": GEMMA, "phi3": PHI3, "gpt_neox": GPT_NEOX, "qwen2_moe": QWEN2_MOE,
}


def layout_for(config) -> Layout:
    """The layout of a model's config; GPT-NeoX with `use_parallel_residual=False` is sequential."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"HookedHF supports model types {sorted(LAYOUTS)}; got {model_type!r}. "
            "Add a Layout for it in labcore/glassbox/hf_layouts.py."
        )
    layout = LAYOUTS[model_type]
    if model_type == "gpt_neox" and not getattr(config, "use_parallel_residual", True):
        layout = replace(layout, parallel=False)
    return layout
