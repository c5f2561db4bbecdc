"""Model diffing: where do two models with the same hook names differ on the same tokens?

* :func:`attention_divergence` — per (layer, head), the mean over batch and query positions of the
  Jensen–Shannon divergence (or KL(a ‖ b)) between the two models' attention rows, in nats.
* :func:`linear_cka` — linear centred kernel alignment (Kornblith et al. 2019, arXiv 1905.00414)
  of two representations X (n, p₁), Y (n, p₂) of the same n examples:
  ``CKA = ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F)`` with column-centred Xᶜ, Yᶜ. It is 1 for
  X = Y, invariant to orthogonal transforms and isotropic scaling of either, not to general
  invertible linear maps.
* :func:`residual_cka` — CKA of the two models' residual streams (tokens as examples) per layer.
* :func:`output_kl` — KL(a ‖ b) of the next-token distributions per position, mean over the batch.
* :func:`diff_models` — all three.

The models may be different sizes (CKA compares any widths); the attention comparison needs the
same number of layers and heads.
"""

from __future__ import annotations

import torch

from labcore.interp.readout import Labelled, kl_from_logits, n_layers

__all__ = ["attention_divergence", "diff_models", "js_divergence", "linear_cka", "output_kl", "residual_cka"]


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ p log(p / q) over the last axis, with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2, nats, over the last axis (≤ ln 2)."""
    p, q = p.double(), q.double()
    m = (p + q) / 2
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


@torch.no_grad()
def _patterns(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers(model))]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[n] for n in names]


@torch.no_grad()
def attention_divergence(model_a, model_b, tokens: torch.Tensor, kind: str = "js") -> Labelled:
    """Mean divergence between the two models' attention rows per (layer, head), nats."""
    if kind not in ("js", "kl"):
        raise ValueError(f"kind={kind!r}: use 'js' or 'kl'")
    pa, pb = _patterns(model_a, tokens), _patterns(model_b, tokens)
    if len(pa) != len(pb) or pa[0].shape != pb[0].shape:
        raise ValueError(f"models differ in layers/heads: {len(pa)}×{tuple(pa[0].shape)} vs {len(pb)}×{tuple(pb[0].shape)}")
    rows = []
    for a, b in zip(pa, pb):
        div = js_divergence(a, b) if kind == "js" else _kl(a.double(), b.double())  # (B, H, T_q)
        rows.append(div.mean((0, 2)))
    return Labelled(torch.stack(rows), ("layer", "head"), {"layer": list(range(len(pa))), "kind": [kind]})


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA of X (n, p₁) and Y (n, p₂), rows the same n examples; float64."""
    X, Y = X.detach().double().reshape(X.shape[0], -1), Y.detach().double().reshape(Y.shape[0], -1)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"CKA needs the same examples: {X.shape[0]} vs {Y.shape[0]} rows")
    X, Y = X - X.mean(0), Y - Y.mean(0)
    cross = (Y.T @ X).pow(2).sum()
    norm = (X.T @ X).norm() * (Y.T @ Y).norm()
    return float(cross / norm) if norm > 0 else float("nan")


@torch.no_grad()
def _residuals(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    L = n_layers(model)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[n].reshape(-1, cache[n].shape[-1]) for n in names]


def residual_cka(model_a, model_b, tokens: torch.Tensor, cross: bool = False) -> Labelled:
    """CKA of the residual streams (embedding, then after each block), every token an example.

    ``cross=False``: (layer,) — layer l of a against layer l of b (needs equal depth).
    ``cross=True``: (layer_a, layer_b) — every pair.
    """
    ra, rb = _residuals(model_a, tokens), _residuals(model_b, tokens)
    labels_a = ["embed"] + [f"resid_post {l}" for l in range(len(ra) - 1)]
    if cross:
        values = torch.tensor([[linear_cka(x, y) for y in rb] for x in ra], dtype=torch.float64)
        labels_b = ["embed"] + [f"resid_post {l}" for l in range(len(rb) - 1)]
        return Labelled(values, ("layer_a", "layer_b"), {"layer_a": labels_a, "layer_b": labels_b})
    if len(ra) != len(rb):
        raise ValueError(f"models differ in depth ({len(ra) - 1} vs {len(rb) - 1}); use cross=True")
    values = torch.tensor([linear_cka(x, y) for x, y in zip(ra, rb)], dtype=torch.float64)
    return Labelled(values, ("layer",), {"layer": labels_a})


@torch.no_grad()
def output_kl(model_a, model_b, tokens: torch.Tensor) -> Labelled:
    """KL(a ‖ b) of the next-token distributions, nats, per position (mean over the batch): (pos,)."""
    return Labelled(kl_from_logits(model_a(tokens), model_b(tokens)).mean(0), ("pos",))


def diff_models(model_a, model_b, tokens: torch.Tensor) -> dict[str, Labelled]:
    """{"attention_js": (layer, head), "residual_cka": (layer,), "output_kl": (pos,)}."""
    return {"attention_js": attention_divergence(model_a, model_b, tokens),
            "residual_cka": residual_cka(model_a, model_b, tokens),
            "output_kl": output_kl(model_a, model_b, tokens)}
