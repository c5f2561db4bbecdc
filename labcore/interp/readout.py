"""What every instrument needs from a model, asked through the hook API only.

A model here is anything with ``run_with_cache`` and ``hooks`` and the glass-box hook names
(``labcore.glassbox.model.GPT`` or ``labcore.glassbox.hf.HookedHF``). The few things the hook API
cannot tell — the final norm and the unembedding, for the logit lens and direct logit attribution —
are found by :func:`final_norm` and :func:`unembedding_weight` for both kinds.

:class:`Labelled` is the result type of the instruments: a tensor whose axes have names (and,
where useful, per-axis labels), so ``result.values[layer, pos, head]`` reads as what it is.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: hook short names that live under ``blocks.{l}.attn`` / ``blocks.{l}.mlp``
ATTN_SHORT = ("q", "k", "v", "attn_scores", "pattern", "z", "result")
MLP_SHORT = ("pre", "post")


@dataclass
class Labelled:
    """A tensor with named axes: ``values`` (shape matches ``axes``), optional ``labels[axis]``."""

    values: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.dim() != len(self.axes):
            raise ValueError(f"values have {self.values.dim()} axes, names given for {len(self.axes)}: {self.axes}")

    def axis(self, name: str) -> int:
        return self.axes.index(name)

    def __repr__(self) -> str:
        shape = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape))
        return f"Labelled({shape})"


def n_layers(model) -> int:
    """Number of blocks, counted from the hook names (``blocks.{l}.hook_resid_pre``)."""
    layers = [int(m.group(1)) for n in model.hook_names() if (m := re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", n))]
    if not layers:
        raise ValueError("model has no blocks.{l}.hook_resid_pre hook points")
    return max(layers) + 1


def hook_name(short: str, layer: int | None = None) -> str:
    """``("z", 1)`` -> ``blocks.1.attn.hook_z``; ``("resid_pre", 0)`` -> ``blocks.0.hook_resid_pre``.

    A name that already contains a dot or starts with ``hook_`` is returned unchanged.
    """
    if "." in short or (layer is None and short.startswith("hook_")):
        return short
    short = short.removeprefix("hook_")
    if layer is None:
        return f"hook_{short}"
    if short in ATTN_SHORT:
        return f"blocks.{layer}.attn.hook_{short}"
    if short in MLP_SHORT:
        return f"blocks.{layer}.mlp.hook_{short}"
    return f"blocks.{layer}.hook_{short}"


def final_resid_name(model) -> str:
    return f"blocks.{n_layers(model) - 1}.hook_resid_post"


def final_norm(model) -> nn.Module:
    """The final norm module (LayerNorm, an RMSNorm or Identity) of a glass-box GPT or a HookedHF."""
    if hasattr(model, "hf"):
        module = model.hf
        for part in model.layout.final_norm.split("."):
            module = getattr(module, part)
        return module
    return model.ln_final.norm


def unembedding_weight(model) -> torch.Tensor:
    """The (V, d) unembedding matrix."""
    if hasattr(model, "hf"):
        return model.hf.get_output_embeddings().weight
    if getattr(model.cfg, "tied_embeddings", True):
        return model.W_E.weight
    return model.W_U.weight


def unembed(model, resid: torch.Tensor) -> torch.Tensor:
    """Final norm then unembedding: (…, d) -> (…, V) — the logit lens readout."""
    if hasattr(model, "unembed"):
        return model.unembed(resid)
    head = model.hf.get_output_embeddings()
    return head(final_norm(model)(resid))


def norm_kind(norm: nn.Module) -> tuple[bool, float | None, torch.Tensor | None, torch.Tensor | None]:
    """(centres?, eps or None for no scaling, gain or None, bias or None) of a norm module."""
    if isinstance(norm, nn.Identity):
        return False, None, None, None
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        raise TypeError(f"cannot read the epsilon of {type(norm).__name__}")
    centres = isinstance(norm, nn.LayerNorm)
    if not centres and "rms" not in type(norm).__name__.lower():
        raise TypeError(f"final norm {type(norm).__name__} is neither a LayerNorm nor an RMSNorm")
    return centres, float(eps), getattr(norm, "weight", None), getattr(norm, "bias", None)


def frozen_norm_parts(model, resid_full: torch.Tensor):
    """The final norm as an affine map with its scale frozen at the full residual ``resid_full``.

    Returns ``(linear, const)``: ``norm(resid_full) == linear(resid_full) + const`` exactly (up to
    round-off), and ``linear`` is linear, so ``norm(Σ c_i) == Σ linear(c_i) + const`` for any
    decomposition ``resid_full = Σ c_i`` (TransformerLens's ``apply_ln_to_stack``).
    ``linear(c) = γ ⊙ centre(c) / s`` with ``s = √(var(x) + ε)`` (LayerNorm) or ``√(mean(x²) + ε)``
    (RMSNorm), taken over the last axis of the full residual; ``const = β`` (or 0).
    """
    centres, eps, gain, bias = norm_kind(final_norm(model))
    x = resid_full.float()
    if eps is None:
        scale = torch.ones_like(x[..., :1])
    elif centres:
        scale = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    else:
        scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    g = gain.detach().float() if gain is not None else None

    def linear(c: torch.Tensor) -> torch.Tensor:
        c = c.float()
        if centres:
            c = c - c.mean(-1, keepdim=True)
        c = c / scale
        return c * g if g is not None else c

    const = bias.detach().float() if bias is not None else torch.zeros(x.shape[-1])
    return linear, const


def log_softmax_f64(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.double(), dim=-1)


def kl_from_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) in nats over the last axis, float64: Σ p (log p − log q)."""
    lp, lq = log_softmax_f64(p_logits), log_softmax_f64(q_logits)
    return (lp.exp() * (lp - lq)).sum(-1)


@contextlib.contextmanager
def frozen(model):
    """Parameters of ``model`` do not require grad inside the block (restored on exit)."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, r in zip(params, before):
            p.requires_grad_(r)
