"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, arXiv 1812.06162).

G is the true (full-data) gradient and Σ the covariance of a single example's gradient. A batch of
B examples has gradient G_B with E|G_B|² = |G|² + tr(Σ)/B, so B_simple is the batch size at which
the noise in G_B is as large as the signal; their critical batch size ≈ B_noise ≈ B_simple.

Two estimators:

* :func:`noise_scale_two_batch` — the paper's Appendix A. From gradient norms measured at two batch
  sizes B_small < B_big, the unbiased estimates are

      |G|²  ≈ (B_big |G_Bbig|² − B_small |G_Bsmall|²) / (B_big − B_small)
      tr Σ  ≈ (|G_Bsmall|² − |G_Bbig|²) / (1/B_small − 1/B_big)

  each averaged over many draws *before* the ratio B_simple = tr Σ / |G|² is taken (the ratio of
  unbiased estimates is biased, their average ratio more so). :func:`measure_noise_scale` draws the
  big batch as k = B_big/B_small small batches, as a data-parallel run does for free.
* :func:`per_example_noise_scale` — brute force: every example's gradient (torch.func or a loop),
  tr Σ as the summed unbiased per-coordinate variance, |G|² = |ḡ|² − tr Σ / N (unbiased).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class NoiseScale:
    g2: float  # estimate of |G|²
    trace_sigma: float  # estimate of tr Σ (per-example gradient covariance)
    b_simple: float  # trace_sigma / g2
    b_simple_se: float = float("nan")  # delta-method standard error (when repeated draws exist)
    n: int = 0  # number of draws (two-batch) or examples (per-example)


def noise_scale_two_batch(g2_small, g2_big, b_small: int, b_big: int) -> NoiseScale:
    """Appendix A of McCandlish et al.: arrays (or scalars) of |G_B|² at the two batch sizes."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    small, big = np.atleast_1d(np.asarray(g2_small, float)), np.atleast_1d(np.asarray(g2_big, float))
    g2_i = (b_big * big - b_small * small) / (b_big - b_small)
    s_i = (small - big) / (1 / b_small - 1 / b_big)
    g2, s = g2_i.mean(), s_i.mean()
    se = float("nan")
    if len(g2_i) > 1:  # delta method for a ratio of two correlated means
        cov = np.cov(np.stack([s_i, g2_i])) / len(g2_i)
        ratio = s / g2
        se = float(abs(ratio) * np.sqrt(cov[0, 0] / s**2 + cov[1, 1] / g2**2 - 2 * cov[0, 1] / (s * g2)))
    return NoiseScale(float(g2), float(s), float(s / g2), se, len(g2_i))


def _flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def measure_noise_scale(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor],
                        sample: Callable[[int, torch.Generator], object], b_small: int, b_big: int,
                        n_draws: int, seed: int = 0) -> NoiseScale:
    """Two-batch estimate: ``n_draws`` big batches, each split into B_big/B_small small ones.

    ``sample(batch_size, generator)`` draws a batch whose leading dimension is the example axis
    (a tensor or a tuple of tensors); ``loss_fn`` must *average* over the batch.
    """
    if b_big % b_small:
        raise ValueError(f"b_big={b_big} must be a multiple of b_small={b_small}")
    k, g = b_big // b_small, torch.Generator().manual_seed(seed)
    small, big = [], []
    for _ in range(n_draws):
        batch = sample(b_big, g)
        grads = [_flat_grad(model, loss_fn(model, _take(batch, slice(j * b_small, (j + 1) * b_small))))
                 for j in range(k)]
        stacked = torch.stack(grads)
        small.append(float(stacked.pow(2).sum(1).mean()))  # mean of the k small-batch |G_Bs|²
        big.append(float(stacked.mean(0).pow(2).sum()))  # the big-batch gradient is their mean
    return noise_scale_two_batch(small, big, b_small, b_big)


def _take(batch, index):
    if isinstance(batch, torch.Tensor):
        return batch[index]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take(b, index) for b in batch)
    if isinstance(batch, dict):
        return {k: _take(v, index) for k, v in batch.items()}
    raise TypeError(f"cannot index a batch of type {type(batch).__name__}")


def _batch_len(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (tuple, list)):
        return _batch_len(batch[0])
    return _batch_len(next(iter(batch.values())))


def per_example_grads(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], batch,
                      method: str = "auto") -> torch.Tensor:
    """(N, P) matrix of per-example gradients of ``loss_fn`` (each example as a batch of one).

    ``method``: "vmap" (torch.func, one vectorised pass), "loop" (one backward per example) or
    "auto" (vmap, falling back to the loop for models vmap cannot trace — e.g. the glass-box GPT,
    whose forward has data-dependent checks).
    """
    n = _batch_len(batch)
    if method == "auto":
        try:
            return per_example_grads(model, loss_fn, batch, "vmap")
        except RuntimeError:
            return per_example_grads(model, loss_fn, batch, "loop")
    if method not in ("vmap", "loop"):
        raise ValueError(f"method={method!r}: use auto, vmap or loop")
    if method == "loop":
        return torch.stack([_flat_grad(model, loss_fn(model, _take(batch, slice(i, i + 1)))) for i in range(n)])
    from torch.func import grad, vmap

    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def one(ps, example):
        ex = _take(example, None)  # add back a batch axis of size 1
        return loss_fn(_Bound(model, ps), ex)

    grads = vmap(grad(one), in_dims=(None, 0))(params, batch)
    return torch.cat([grads[k].reshape(n, -1) for k in names], dim=1)


class _Bound(nn.Module):
    """A stand-in module whose forward runs ``model`` with the given parameter dict."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_params", params)

    def forward(self, *args, **kwargs):
        from torch.func import functional_call

        return functional_call(self._model, self._params, args, kwargs)


def per_example_noise_scale(model: nn.Module, loss_fn: Callable[[nn.Module, object], torch.Tensor], batch,
                            method: str = "auto") -> NoiseScale:
    """Brute force from per-example gradients g_i: tr Σ = Σ_i |g_i − ḡ|²/(N − 1), |G|² = |ḡ|² − tr Σ/N."""
    g = per_example_grads(model, loss_fn, batch, method).to(torch.float64)
    n = g.shape[0]
    mean = g.mean(0)
    trace = float((g - mean).pow(2).sum() / (n - 1))
    g2 = float(mean.pow(2).sum()) - trace / n
    return NoiseScale(g2, trace, trace / g2, n=n)
