"""Logit lens and tuned lens: read the residual stream at every layer as a next-token distribution.

* **Logit lens** (nostalgebraist 2020): ``unembed(resid_pre_l)`` — the final norm and unembedding
  applied to the residual stream entering block l. :func:`logit_lens_kl` reports, per layer,
  KL(final ‖ lens_l) in nats, averaged over batch and positions (0 at the final layer).
* **Tuned lens** (Belrose et al. 2023, arXiv 2303.08112): one affine *translator* per layer,
  ``h ↦ h + A_l h + b_l``, initialised at the identity (A = 0, b = 0, so the untrained tuned lens
  *is* the logit lens, bit for bit), trained on cached activations to minimise
  KL(final ‖ unembed(translator_l(h_l))). Train on one set of tokens and report on held-out ones.

Layers are indexed 0..L: index l < L is ``blocks.{l}.hook_resid_pre``, index L the final residual.
"""

from __future__ import annotations

import torch
from torch import nn

from labcore.interp.readout import (
    Labelled,
    final_resid_name,
    frozen,
    kl_from_logits,
    n_layers,
    unembed,
)

__all__ = ["TunedLens", "fit_translators_ridge", "lens_residuals", "logit_lens_kl", "train_translators_kl",
           "train_tuned_lens", "tuned_lens_kl"]


@torch.no_grad()
def lens_residuals(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    """[resid_pre 0, …, resid_pre L−1, final residual], each (B, T, d)."""
    L = n_layers(model)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [final_resid_name(model)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[n] for n in names]


def _labels(L: int) -> list[str]:
    return [f"resid_pre {l}" for l in range(L)] + ["final"]


@torch.no_grad()
def logit_lens_kl(model, tokens: torch.Tensor) -> Labelled:
    """KL(final ‖ logit lens at layer l), nats, mean over batch and positions: (layer,), L + 1 rows."""
    resids = lens_residuals(model, tokens)
    final = unembed(model, resids[-1])
    values = torch.stack([kl_from_logits(final, unembed(model, r)).mean() for r in resids])
    return Labelled(values, ("layer",), {"layer": _labels(len(resids) - 1)})


class TunedLens(nn.Module):
    """Per-layer affine translators h ↦ h + A_l h + b_l, initialised at the identity (A = b = 0)."""

    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    def forward(self, resid: torch.Tensor, layer: int) -> torch.Tensor:
        if layer == len(self.translators):  # the final residual needs no translation
            return resid
        t = self.translators[layer]
        return resid + t(resid.to(t.weight.dtype)).to(resid.dtype)

    def logits(self, model, resid: torch.Tensor, layer: int) -> torch.Tensor:
        return unembed(model, self(resid, layer))


def train_tuned_lens(model, tokens: torch.Tensor, steps: int = 200, lr: float = 1e-2,
                     lens: TunedLens | None = None, batch_rows: int | None = None,
                     generator: torch.Generator | None = None) -> tuple[TunedLens, list[float]]:
    """Fit a tuned lens on ``tokens`` (B, T) by Adam on Σ_l KL(final ‖ lens_l); the model is frozen.

    Activations are cached once; each step uses ``batch_rows`` random rows (all rows if None).
    Returns (lens, the summed training loss per step). :func:`train_translators_kl` is the same on
    cached residuals, for a subset of layers and a token-level minibatch.
    """
    resids = lens_residuals(model, tokens)
    L = len(resids) - 1
    if lens is None:
        lens = TunedLens(resids[0].shape[-1], L).to(resids[0].device)
    rows = None
    if batch_rows:
        def rows():
            return torch.randperm(tokens.shape[0], generator=generator)[:batch_rows]
    losses = _adam_kl(model, lens, resids, list(range(L)), steps, lr, rows)
    return lens, losses


def train_translators_kl(model, lens: TunedLens, resids: list[torch.Tensor], layers, steps: int = 20,
                         lr: float = 1e-3, batch_tokens: int | None = None,
                         generator: torch.Generator | None = None) -> list[float]:
    """Belrose et al.'s objective on cached residuals ``resids`` (:func:`lens_residuals`): Adam on
    Σ_{l ∈ layers} KL(final ‖ unembed(translator_l(h_l))), ``batch_tokens`` random tokens per step
    (over batch × positions; all if None). Trains ``lens`` in place (from whatever it holds: the
    identity, or a ridge fit, :func:`fit_translators_ridge`); returns the loss per step."""
    flat = [r.reshape(-1, r.shape[-1]) for r in resids]  # (N, d) each
    n = flat[0].shape[0]
    rows = None
    if batch_tokens and batch_tokens < n:
        def rows():
            return torch.randperm(n, generator=generator)[:batch_tokens]
    return _adam_kl(model, lens, flat, list(layers), steps, lr, rows)


def _adam_kl(model, lens: TunedLens, resids: list[torch.Tensor], layers: list[int], steps: int, lr: float,
             rows) -> list[float]:
    """The training loop: ``rows()`` picks the step's minibatch along axis 0 (None: everything).
    KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), p the final distribution (a constant), in float32."""
    with torch.no_grad():
        target = torch.log_softmax(unembed(model, resids[-1]).float(), -1)  # (…, V)
    params = [p for layer in layers for p in lens.translators[layer].parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            idx = rows() if rows is not None else slice(None)
            logp = target[idx]
            loss = 0.0
            for layer in layers:
                logq = torch.log_softmax(lens.logits(model, resids[layer][idx], layer).float(), -1)
                loss = loss + (logp.exp() * (logp - logq)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def fit_translators_ridge(lens: TunedLens, resids: list[torch.Tensor], layers, ridge: float = 1e-3,
                          perm: torch.Tensor | None = None) -> TunedLens:
    """Closed-form stand-in (or initialisation) for the KL fit: ridge regression of the final residual
    h_L on [h_l, 1] over all cached tokens, λ = ``ridge`` × mean diagonal of XᵀX; written into ``lens``
    as A_l = M − I, b_l. ``perm`` shuffles the targets (a control: it can only learn the marginal)."""
    y = resids[-1].reshape(-1, resids[-1].shape[-1]).double()  # (N, d)
    if perm is not None:
        y = y[perm]
    eye = torch.eye(y.shape[-1], dtype=y.dtype)
    for layer in layers:
        x = resids[layer].reshape(-1, y.shape[-1]).double()
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, d + 1)
        gram = x1.T @ x1
        gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        m = torch.linalg.solve(gram, x1.T @ y)  # (d + 1, d): h_L ≈ [h_l, 1] M
        lens.translators[layer].weight.copy_((m[:-1].T - eye).float())
        lens.translators[layer].bias.copy_(m[-1].float())
    return lens


@torch.no_grad()
def tuned_lens_kl(model, lens: TunedLens, tokens: torch.Tensor) -> Labelled:
    """KL(final ‖ tuned lens at layer l), nats, mean over batch and positions: (layer,), L + 1 rows."""
    resids = lens_residuals(model, tokens)
    final = unembed(model, resids[-1])
    values = torch.stack([kl_from_logits(final, lens.logits(model, r, l)).mean() for l, r in enumerate(resids)])
    return Labelled(values, ("layer",), {"layer": _labels(len(resids) - 1)})
