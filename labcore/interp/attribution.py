"""Residual-stream decomposition and direct logit attribution (DLA).

The residual stream entering the final norm is a sum of what each part wrote into it,

    resid_final = embed (+ pos_embed) + Σ_l attn_out_l + Σ_l mlp_out_l,       attn_out_l = Σ_h result_{l,h} (+ b_O),

and the logits are ``W_U · norm(resid_final)``. The norm is not linear, but with its scale frozen
at the full residual (TransformerLens's ``apply_ln_to_stack``; Elhage et al. 2021) it is affine,
``norm(x) = γ ⊙ centre(x) / s + β``, so each part's *direct* contribution to a logit difference
``logit[a] − logit[b]`` is ``(γ ⊙ centre(c) / s) · (W_U[a] − W_U[b])`` and the contributions plus
the norm bias's term sum to the logit difference exactly (to round-off).

* :func:`residual_components` — the parts, stacked, labelled ``embed``, ``pos_embed``, ``attn 0``, ``mlp 0``…
* :func:`direct_logit_attribution` — per part, per batch row; the last row is the norm bias.
* :func:`head_logit_attribution` — per (layer, head); sums to the layer's ``attn`` row (minus b_O).
* :func:`accumulated_resid` — the residual stream entering each block, and the final one;
  :func:`accumulated_logit_diff` reads each through the frozen final norm.
"""

from __future__ import annotations

import torch

from labcore.interp.readout import (
    Labelled,
    final_resid_name,
    frozen_norm_parts,
    n_layers,
    unembedding_weight,
)

__all__ = [
    "accumulated_logit_diff",
    "accumulated_resid",
    "direct_logit_attribution",
    "head_logit_attribution",
    "head_results",
    "residual_components",
]


def _component_names(model) -> list[tuple[str, str]]:
    names = set(model.hook_names())
    parts = [("embed", "hook_embed")]
    if "hook_pos_embed" in names:
        parts.append(("pos_embed", "hook_pos_embed"))
    for layer in range(n_layers(model)):
        parts.append((f"attn {layer}", f"blocks.{layer}.hook_attn_out"))
        if f"blocks.{layer}.hook_mlp_out" in names:
            parts.append((f"mlp {layer}", f"blocks.{layer}.hook_mlp_out"))
    return parts


@torch.no_grad()
def residual_components(model, tokens: torch.Tensor) -> tuple[Labelled, torch.Tensor]:
    """(parts (component, B, T, d), the final residual (B, T, d)); the parts sum to the latter."""
    parts = _component_names(model)
    final = final_resid_name(model)
    _, cache = model.run_with_cache(tokens, names_filter=[h for _, h in parts] + [final])
    stack = torch.stack([cache[h] for _, h in parts])
    return Labelled(stack, ("component", "batch", "pos", "d"), {"component": [n for n, _ in parts]}), cache[final]


def _direction(model, answer, wrong, batch: int) -> torch.Tensor:
    W_U = unembedding_weight(model).detach().float()  # (V, d)
    answer = torch.as_tensor(answer).expand(batch)
    wrong = torch.as_tensor(wrong).expand(batch)
    return W_U[answer] - W_U[wrong]  # (B, d)


def _output_bias_term(model, answer, wrong, batch: int) -> torch.Tensor:
    head = model.hf.get_output_embeddings() if hasattr(model, "hf") else None
    bias = getattr(head, "bias", None)
    if bias is None:
        return torch.zeros(batch)
    b = bias.detach().float()
    return b[torch.as_tensor(answer).expand(batch)] - b[torch.as_tensor(wrong).expand(batch)]


@torch.no_grad()
def direct_logit_attribution(model, tokens: torch.Tensor, answer, wrong, pos: int = -1) -> Labelled:
    """Each part's direct contribution to logit[answer] − logit[wrong] at position ``pos``.

    ``answer`` / ``wrong`` are token ids (one, or one per batch row). Returns (component, batch);
    the last component, ``norm bias``, is the final norm's β (and any unembedding bias) term, so
    ``values.sum(0)`` equals the model's logit difference.
    """
    parts, final = residual_components(model, tokens)
    comps, resid = parts.values[:, :, pos], final[:, pos]  # (C, B, d), (B, d)
    linear, const = frozen_norm_parts(model, resid)
    u = _direction(model, answer, wrong, resid.shape[0])
    contrib = (linear(comps) * u).sum(-1)  # (C, B)
    bias = (const * u).sum(-1) + _output_bias_term(model, answer, wrong, resid.shape[0])
    values = torch.cat([contrib, bias[None]])
    return Labelled(values, ("component", "batch"), {"component": parts.labels["component"] + ["norm bias"]})


def head_results(model, cache, layer: int) -> torch.Tensor:
    """Each head's write into the residual stream, (B, T, H, d): ``hook_result`` if the model has it,
    else z_h @ W_O[h] from ``hook_z`` and the output projection (HookedHF, Llama or GPT-2 layout)."""
    name = f"blocks.{layer}.attn.hook_result"
    if name in cache:
        return cache[name]
    z = cache[f"blocks.{layer}.attn.hook_z"]  # (B, T, H, dh)
    _B, _T, H, dh = z.shape
    block = model.hf
    for part in model.layout.layers.split("."):
        block = getattr(block, part)
    attn = getattr(block[layer], model.layout.attn)
    if hasattr(attn, "o_proj"):
        W = attn.o_proj.weight.detach().view(-1, H, dh)  # (d, H, dh)
        return torch.einsum("bthe,dhe->bthd", z, W.to(z.dtype))
    W = attn.c_proj.weight.detach().view(H, dh, -1)  # GPT-2 Conv1D: (H·dh, d)
    return torch.einsum("bthe,hed->bthd", z, W.to(z.dtype))


@torch.no_grad()
def head_logit_attribution(model, tokens: torch.Tensor, answer, wrong, pos: int = -1) -> Labelled:
    """Each head's direct contribution to logit[answer] − logit[wrong]: (layer, head, batch).

    Summed over heads it equals the layer's ``attn`` row of :func:`direct_logit_attribution`
    minus the contribution of the attention output bias (zero when the model has none).
    """
    L = n_layers(model)
    final = final_resid_name(model)
    names = [final] + [f"blocks.{l}.attn.hook_{s}" for l in range(L) for s in ("result", "z")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    resid = cache[final][:, pos]
    linear, _ = frozen_norm_parts(model, resid)
    u = _direction(model, answer, wrong, resid.shape[0])
    rows = []
    for layer in range(L):
        res = head_results(model, cache, layer)[:, pos]  # (B, H, d)
        rows.append((linear(res.transpose(0, 1)) * u).sum(-1))  # (H, B)
    return Labelled(torch.stack(rows), ("layer", "head", "batch"), {"layer": list(range(L))})


@torch.no_grad()
def accumulated_resid(model, tokens: torch.Tensor) -> Labelled:
    """The residual stream entering each block and leaving the last: (layer, B, T, d), L + 1 rows."""
    L = n_layers(model)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [final_resid_name(model)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    labels = [f"resid_pre {l}" for l in range(L)] + ["final"]
    return Labelled(torch.stack([cache[n] for n in names]), ("layer", "batch", "pos", "d"), {"layer": labels})


@torch.no_grad()
def accumulated_logit_diff(model, tokens: torch.Tensor, answer, wrong, pos: int = -1) -> Labelled:
    """logit[answer] − logit[wrong] read from each accumulated residual through the final norm with
    its scale frozen at the final residual: (layer, batch); the last row is the model's own."""
    acc = accumulated_resid(model, tokens)
    resid = acc.values[:, :, pos]  # (L+1, B, d)
    linear, const = frozen_norm_parts(model, resid[-1])
    u = _direction(model, answer, wrong, resid.shape[1])
    values = (linear(resid) * u).sum(-1) + (const * u).sum(-1) + _output_bias_term(model, answer, wrong, resid.shape[1])
    return Labelled(values, ("layer", "batch"), acc.labels)
