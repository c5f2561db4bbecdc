"""Looking at the loss landscape along lines and planes in parameter space.

* :func:`linear_path` — the loss along θ(α) = (1 − α)·θ_init + α·θ_final (Goodfellow, Vinyals &
  Saxe 2015, arXiv 1412.6544: for many nets the path from init to solution descends monotonically,
  with no barrier). α outside [0, 1] extrapolates.
* :func:`random_direction` / :func:`filter_normalize` — a Gaussian direction d rescaled filter by
  filter, d_ij ← d_ij/‖d_ij‖ · ‖θ_ij‖ (Li et al. 2018, arXiv 1712.09913, §4), so that a step of 1
  along d moves every filter by its own size and landscapes of differently scaled nets compare. A
  "filter" is a slice along ``filter_dim`` (0 = an output row of a Linear weight / a conv output
  channel). 1-D parameters (biases, norm gains) get d = 0 by default, as in the paper.
* :func:`slice_1d` / :func:`slice_2d` — L(θ* + α d1) and L(θ* + α d1 + β d2) on a grid.

Parameters are handled as dicts name -> tensor over ``model.named_parameters()``; the model is
restored to its own parameters after every evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import nn

Params = Mapping[str, torch.Tensor]
LossFn = Callable[[nn.Module, object], torch.Tensor]


def named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's parameters, name -> tensor."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


@contextmanager
def parameters_set_to(model: nn.Module, values: Params) -> Iterator[nn.Module]:
    """Temporarily load ``values`` (a subset of parameter names is fine) into the model."""
    own = dict(model.named_parameters())
    saved = {k: own[k].detach().clone() for k in values}
    try:
        with torch.no_grad():
            for k, v in values.items():
                own[k].copy_(v)
        yield model
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                own[k].copy_(v)


def loss_at(model: nn.Module, values: Params, loss_fn: LossFn, batch) -> float:
    """The loss with the model's parameters replaced by ``values`` (no grad; model restored)."""
    with parameters_set_to(model, values), torch.no_grad():
        return float(loss_fn(model, batch))


def _combine(center: Params, terms: Sequence[tuple[float, Params]]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in center.items()}
    for coef, d in terms:
        for k, value in out.items():
            if k in d:
                out[k] = value + coef * d[k]
    return out


def linear_path(model: nn.Module, start: Params, end: Params, loss_fn: LossFn, batch,
                alphas: Sequence[float] = tuple(np.linspace(0, 1, 21))) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, losses) along θ(α) = (1 − α) start + α end, over the parameter names of ``start``."""
    names = [k for k, _ in model.named_parameters() if k in start]
    start = {k: start[k] for k in names}
    delta = {k: end[k] - start[k] for k in names}
    losses = [loss_at(model, _combine(start, [(float(a), delta)]), loss_fn, batch) for a in alphas]
    return np.asarray(alphas, float), np.array(losses)


def filter_normalize(direction: Params, weights: Params, filter_dim: int = 0,
                     one_d: Literal["zero", "whole", "keep"] = "zero", eps: float = 1e-10) -> dict[str, torch.Tensor]:
    """Rescale each filter of ``direction`` to the norm of the matching filter of ``weights``.

    For a tensor of ≥ 2 dims, filter i is the slice ``i`` along ``filter_dim``. 1-D tensors:
    ``"zero"`` (Li et al.: biases and norm parameters are not perturbed), ``"whole"`` (the vector is
    one filter) or ``"keep"`` (left as drawn).
    """
    out = {}
    for k, d in direction.items():
        w = weights[k]
        if d.dim() <= 1:
            if one_d == "zero":
                out[k] = torch.zeros_like(d)
            elif one_d == "whole":
                out[k] = d * (w.norm() / (d.norm() + eps))
            else:
                out[k] = d.clone()
            continue
        dims = [i for i in range(d.dim()) if i != filter_dim % d.dim()]
        d_norm = d.pow(2).sum(dim=dims, keepdim=True).sqrt()
        w_norm = w.pow(2).sum(dim=dims, keepdim=True).sqrt()
        out[k] = d * (w_norm / (d_norm + eps))
    return out


def random_direction(model: nn.Module, generator: torch.Generator, filter_normalized: bool = True,
                     filter_dim: int = 0, one_d: Literal["zero", "whole", "keep"] = "zero") -> dict[str, torch.Tensor]:
    """A Gaussian direction in parameter space, filter-normalised against the model's weights."""
    weights = named_params(model)
    d = {k: torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) for k, w in weights.items()}
    return filter_normalize(d, weights, filter_dim, one_d) if filter_normalized else d


def slice_1d(model: nn.Module, direction: Params, loss_fn: LossFn, batch,
             alphas: Sequence[float] = tuple(np.linspace(-1, 1, 21)),
             center: Params | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, L(center + α·direction)); center defaults to the model's current parameters."""
    center = named_params(model) if center is None else dict(center)
    losses = [loss_at(model, _combine(center, [(float(a), direction)]), loss_fn, batch) for a in alphas]
    return np.asarray(alphas, float), np.array(losses)


def slice_2d(model: nn.Module, d1: Params, d2: Params, loss_fn: LossFn, batch,
             alphas: Sequence[float] = tuple(np.linspace(-1, 1, 11)),
             betas: Sequence[float] | None = None, center: Params | None = None) -> np.ndarray:
    """Grid of L(center + α·d1 + β·d2), shape (len(alphas), len(betas))."""
    center = named_params(model) if center is None else dict(center)
    betas = alphas if betas is None else betas
    grid = np.empty((len(alphas), len(betas)))
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            grid[i, j] = loss_at(model, _combine(center, [(float(a), d1), (float(b), d2)]), loss_fn, batch)
    return grid
