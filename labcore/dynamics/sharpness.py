"""Sharpness: the top eigenvalue of the loss Hessian, by power iteration on Hessian-vector products.

For a loss L(θ), the Hessian-vector product H v = ∇_θ (∇_θ L · v) costs one extra backward pass
(double backward), so the top eigenvalue λ_max of H can be found without ever forming H:
v ← Hv/‖Hv‖ converges to the eigenvector of largest |λ|, and the Rayleigh quotient vᵀHv to λ.
If that eigenvalue is negative, a second run on H − λ_neg·I (whose largest-magnitude eigenvalue is
λ_max − λ_neg > 0) recovers the most positive one.

Why it matters: gradient descent with step η on a quadratic is stable only while λ_max < 2/η;
Cohen et al. (2021, arXiv 2103.00065) found full-batch GD drives λ_max up to ≈ 2/η and hovers
there ("edge of stability").

* :func:`top_hessian_eigenvalue` — power iteration for any closure ``loss_fn() -> scalar``.
* :func:`full_batch_sharpness` / :func:`minibatch_sharpness` — for ``loss_fn(model, batch)``.
* :func:`explicit_hessian` — the dense Hessian, row by row, for tiny models (the test reference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SharpnessResult:
    eigenvalue: float  # the most positive eigenvalue of the Hessian (see `shifted`)
    vector: list[torch.Tensor]  # its unit eigenvector, shaped like the parameters
    iterations: int
    converged: bool
    shifted: bool = False  # True when the largest-|λ| eigenvalue was negative and a shifted run followed


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _normalise(v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    n = _dot(v, v).sqrt()
    return [x / n for x in v]


def hessian_vector_product(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v by double backward; ``loss_fn()`` recomputes the loss from ``params``."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    hv = torch.autograd.grad(_dot(grads, vector), params, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params)]


def _power_iteration(matvec, v, iters: int, tol: float) -> tuple[float, list[torch.Tensor], int, bool]:
    lam_prev = None
    for i in range(1, iters + 1):
        hv = matvec(v)
        lam = float(_dot(v, hv))  # Rayleigh quotient (v has unit norm)
        if float(_dot(hv, hv)) == 0.0:
            return 0.0, v, i, True
        v = _normalise(hv)
        if lam_prev is not None and abs(lam - lam_prev) <= tol * max(abs(lam), 1e-12):
            return lam, v, i, True
        lam_prev = lam
    return lam, v, iters, False


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Iterable[torch.Tensor],
                           iters: int = 200, tol: float = 1e-6, seed: int = 0) -> SharpnessResult:
    """λ_max of ∇²L at the current parameters, by power iteration on Hessian-vector products."""
    params = [p for p in params if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    v0 = _normalise([torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params])

    def hvp(v):
        return hessian_vector_product(loss_fn, params, v)

    lam, v, n, ok = _power_iteration(hvp, v0, iters, tol)
    if lam >= 0:
        return SharpnessResult(lam, v, n, ok)
    shift = lam  # H − shift·I is positive semi-definite; its top eigenvalue is λ_max − shift
    lam2, v2, n2, ok2 = _power_iteration(lambda x: [h - shift * xi for h, xi in zip(hvp(x), x)],
                                         v0, iters, tol)
    return SharpnessResult(lam2 + shift, v2, n + n2, ok and ok2, shifted=True)


def full_batch_sharpness(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], batch,
                         **kwargs) -> SharpnessResult:
    """λ_max of the loss on one fixed (full) batch; kwargs go to :func:`top_hessian_eigenvalue`."""
    return top_hessian_eigenvalue(lambda: loss_fn(model, batch), model.parameters(), **kwargs)


def minibatch_sharpness(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor],
                        batches: Iterable, **kwargs) -> tuple[float, np.ndarray]:
    """λ_max of each mini-batch loss; returns (mean over batches, per-batch values).

    The mini-batch Hessian's top eigenvalue is on average ≥ the full-batch one (λ_max is convex in
    H), so this is the sharpness an SGD step actually meets, not the full-batch sharpness.
    """
    values = np.array([full_batch_sharpness(model, loss_fn, b, **kwargs).eigenvalue for b in batches])
    return float(values.mean()), values


def explicit_hessian(loss_fn: Callable[[], torch.Tensor], params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The dense N×N Hessian over the flattened ``params`` (one backward per row: tiny models only)."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = []
    for i in range(flat.numel()):
        row = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if r is None else r).reshape(-1)
                               for r, p in zip(row, params)]))
    return torch.stack(rows)
