"""Toy problems whose training dynamics are known in closed form.

* :class:`QuadraticBowl` — L(x) = ½ (x − x*)ᵀ A (x − x*) with A of chosen eigenvalues. Its Hessian is
  A everywhere, so its sharpness is max eig(A) and gradient descent diverges exactly above
  η = 2 / λ_max (the edge-of-stability threshold). A module: ``model()`` returns the loss.
* :class:`LinearRegressionTask` — y = xᵀw* + σ·ε with x ~ N(0, I_d), loss ½(xᵀw − y)². At any w the
  per-example gradient g = x(xᵀδ − σε), δ = w − w*, has mean G = δ and covariance
  Σ = (|δ|² + σ²) I + δδᵀ (Gaussian fourth moments), so the gradient noise scale is known exactly:
  B_simple = tr(Σ)/|G|² = d(1 + σ²/|δ|²) + 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def rotation(d: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A random d×d orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=dtype))
    return q * torch.sign(torch.diagonal(r))


class QuadraticBowl(nn.Module):
    """L(x) = ½ (x − x*)ᵀ A (x − x*), A = Q diag(eigenvalues) Qᵀ; ``forward()`` returns L."""

    def __init__(self, eigenvalues: Sequence[float], seed: int = 0, x0_scale: float = 1.0,
                 dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        lam = torch.as_tensor(eigenvalues, dtype=dtype)
        q = rotation(len(lam), g, dtype)
        self.register_buffer("A", (q * lam) @ q.T)
        self.register_buffer("eigenvalues", lam)
        self.register_buffer("x_star", torch.randn(len(lam), generator=g, dtype=dtype))
        self.x = nn.Parameter(self.x_star + x0_scale * torch.randn(len(lam), generator=g, dtype=dtype))

    def forward(self, *_ignored) -> torch.Tensor:
        d = self.x - self.x_star
        return 0.5 * d @ self.A @ d


def bowl_loss(model: QuadraticBowl, batch=None) -> torch.Tensor:
    """A ``loss_fn(model, batch)`` for the trainer: the clean loss L(x), plus gradient noise.

    A ``batch`` (a tensor ξ shaped like x, from :func:`bowl_noise`) adds ξ to the gradient but
    nothing to the value: L + ξ·x − ξ·x.detach(). So SGD sees noisy gradients and the trainer
    records the clean loss — a noisy quadratic, the simplest model of SGD's noise floor.
    """
    loss = model()
    if batch is None:
        return loss
    return loss + (batch * model.x).sum() - (batch * model.x.detach()).sum()


def bowl_noise(dim: int, std: float, dtype=torch.float64):
    """A trainer ``batch_fn(step, generator)`` drawing gradient noise ξ ~ N(0, std²·I_dim)."""

    def batch_fn(_step: int, generator: torch.Generator) -> torch.Tensor:
        return std * torch.randn(dim, generator=generator, dtype=dtype)

    return batch_fn


class LinearRegressionTask:
    """Gaussian linear regression with an exactly known gradient-noise covariance."""

    def __init__(self, d: int, noise_std: float = 1.0, seed: int = 0, dtype=torch.float64):
        self.d, self.noise_std, self.dtype = d, noise_std, dtype
        self.w_star = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=dtype)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch_size, self.d, generator=generator, dtype=self.dtype)
        eps = torch.randn(batch_size, generator=generator, dtype=self.dtype)
        return x, x @ self.w_star + self.noise_std * eps

    def model(self, w: torch.Tensor) -> nn.Linear:
        lin = nn.Linear(self.d, 1, bias=False, dtype=self.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.reshape(1, -1))
        return lin

    @staticmethod
    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean over the batch of ½ (xᵀw − y)²."""
        x, y = batch
        return 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()

    def true_gradient(self, w: torch.Tensor) -> torch.Tensor:
        return w - self.w_star

    def true_trace_sigma(self, w: torch.Tensor) -> float:
        """tr Σ = d(|δ|² + σ²) + |δ|²."""
        delta2 = float((w - self.w_star).pow(2).sum())
        return self.d * (delta2 + self.noise_std**2) + delta2

    def true_b_simple(self, w: torch.Tensor) -> float:
        return self.true_trace_sigma(w) / float((w - self.w_star).pow(2).sum())
