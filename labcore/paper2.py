"""Paper II of the Bayesian-attention trilogy: *Gradient Dynamics of Attention: How Cross-Entropy
Sculpts Bayesian Manifolds* (Agarwal, Dalal & Misra, arXiv 2512.22473).

Two pieces live here, each with its exact answer beside it.

**The routing law** (exact first-order identities of softmax attention). For one query i with
scores s_ij, weights alpha_ij = softmax_j(s_ij), values v_j and output o_i = sum_j alpha_ij v_j,
let u_i = dL/do_i be the upstream gradient at the attention output. Then

    dL/ds_ij = alpha_ij (b_ij - E_{alpha_i}[b]),   b_ij = u_i . v_j,   E_{alpha_i}[b] = sum_k alpha_ik b_ik
    dL/dv_j  = sum_i alpha_ij u_i

(the first is the chain rule through the softmax Jacobian diag(alpha) - alpha alpha^T; the
second is linearity of o in v). Read as an "advantage": a query moves its weight toward keys
whose values are better than average *for its own error signal* b, and each value moves
against the responsibility-weighted error of the queries that use it, an EM-like loop
(attention = E-step responsibilities, values = M-step). :func:`routing_gradients` computes
both; :func:`routing_gradients_heads` takes labcore's hook layouts.

**The sticky Markov experiment** (Paper II §5.2, ``experiments/paper2_gradient/
em_vs_sgd_multiseed.py`` of the authors' code). A Markov chain on 8 symbols with self-transition
0.3 and off-diagonal mass proportional to 1 / circular distance; the model sees
x_t = mu_{y_{t-1}} + N(0, I) (d_x = 20, fixed means) and predicts y_t with one causal attention
head (d_k = 10, d_v = 15) and a linear readout. The best any model can do is
H_min = H(Y_t | Y_{t-1}) (:func:`conditional_entropy_nats`, 1.883 nats). The paper compares
plain SGD (lr 0.01) with an "EM-like" schedule that is SGD with a 10x larger learning rate on
W_V only.

A quirk of the authors' code, kept as an option: their ``make_transition_matrix`` normalises
the row *including* the self entry 0.3 before rescaling the off-diagonal part to 0.7, and then
adds 0.3 again, so its self-transition is 0.3498 and its H_min is 1.829 nats, not the 1.883
the description (self-transition 0.3) gives. ``sticky_transition_matrix(authors_code=True)``
reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# -----------------------------------------------------------------------------
# the routing law


def routing_gradients(scores: torch.Tensor, values: torch.Tensor,
                      upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper II's analytic gradients of softmax attention.

    scores   (..., T_q, T_k)  pre-softmax scores; -inf marks masked keys (causal mask)
    values   (..., T_k, d_v)
    upstream (..., T_q, d_v)  u_i = dL/do_i, the gradient at the attention output
    -> dscores (..., T_q, T_k) = alpha * (b - E_alpha[b]),  b = u v^T
       dvalues (..., T_k, d_v) = alpha^T u

    Masked entries have alpha = 0 and get gradient 0 (as autograd gives through masked_fill).
    """
    if scores.shape[-1] != values.shape[-2]:
        raise ValueError(f"scores {tuple(scores.shape)} and values {tuple(values.shape)}: T_k differs")
    if scores.shape[-2] != upstream.shape[-2] or values.shape[-1] != upstream.shape[-1]:
        raise ValueError(
            f"upstream {tuple(upstream.shape)} must be (..., T_q={scores.shape[-2]}, d_v={values.shape[-1]})"
        )
    alpha = torch.softmax(scores, dim=-1)                                # (..., Tq, Tk)
    b = upstream @ values.transpose(-1, -2)                              # (..., Tq, Tk) b_ij = u_i . v_j
    baseline = (alpha * b).sum(-1, keepdim=True)                         # E_{alpha_i}[b]
    dscores = alpha * (b - baseline)
    dvalues = alpha.transpose(-1, -2) @ upstream                         # sum_i alpha_ij u_i
    return dscores, dvalues


def uncentred_score_gradient(scores: torch.Tensor, values: torch.Tensor,
                             upstream: torch.Tensor) -> torch.Tensor:
    """alpha * b *without* the E_alpha[b] baseline: a deliberately WRONG formula, the control
    that shows a check of :func:`routing_gradients` can fail (it ignores that the softmax
    weights must keep summing to one)."""
    alpha = torch.softmax(scores, dim=-1)
    return alpha * (upstream @ values.transpose(-1, -2))


def routing_gradients_heads(scores: torch.Tensor, v: torch.Tensor,
                            dz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`routing_gradients` in labcore's hook layouts: scores ``hook_attn_scores``
    (B, H, T_q, T_k), values ``hook_v`` (B, T, H, dh), upstream dL/d``hook_z`` (B, T, H, dh)
    -> (dscores (B, H, T_q, T_k), dv (B, T, H, dh))."""
    vh = v.permute(0, 2, 1, 3)                                           # (B, H, T, dh)
    uh = dz.permute(0, 2, 1, 3)
    ds, dvh = routing_gradients(scores, vh, uh)
    return ds, dvh.permute(0, 2, 1, 3)


# -----------------------------------------------------------------------------
# the sticky Markov chain


def circular_distance(n: int) -> np.ndarray:
    """(n, n) integer matrix min(|i - j|, n - |i - j|)."""
    i = np.arange(n)
    d = np.abs(i[:, None] - i[None, :])
    return np.minimum(d, n - d)


def sticky_transition_matrix(n_symbols: int = 8, self_prob: float = 0.3,
                             authors_code: bool = False) -> np.ndarray:
    """P[i, j] = p(y_t = j | y_{t-1} = i), float64.

    Default (the paper's description): P[i, i] = self_prob, and the remaining 1 - self_prob
    spread over j != i in proportion to 1 / circular_distance(i, j).

    ``authors_code=True``: the authors' ``make_transition_matrix``, which normalises the
    off-diagonal weights together with the self entry and then adds self_prob back, giving
    P[i, i] = self_prob + (1 - self_prob) self_prob / (self_prob + sum_j 1/d_ij) (0.3498 for
    the defaults).
    """
    if not (isinstance(n_symbols, int) and n_symbols >= 2):
        raise ValueError(f"n_symbols must be an int >= 2, got {n_symbols!r}")
    if not 0.0 <= self_prob < 1.0:
        raise ValueError(f"self_prob must lie in [0, 1), got {self_prob}")
    d = circular_distance(n_symbols)
    w = np.where(d > 0, 1.0 / np.maximum(d, 1), 0.0)
    eye = np.eye(n_symbols)
    if authors_code:
        raw = w + self_prob * eye
        P = raw / raw.sum(1, keepdims=True) * (1 - self_prob) + self_prob * eye
    else:
        P = self_prob * eye + (1 - self_prob) * w / w.sum(1, keepdims=True)
    return P / P.sum(1, keepdims=True)


def stationary_distribution(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum pi = 1 (the left eigenvector of eigenvalue 1)."""
    vals, vecs = np.linalg.eig(np.asarray(P, dtype=np.float64).T)
    k = int(np.argmin(np.abs(vals - 1.0)))
    pi = np.real(vecs[:, k])
    return pi / pi.sum()


def conditional_entropy_nats(P: np.ndarray) -> float:
    """H_min = H(Y_t | Y_{t-1}) = sum_i pi_i H(P[i, :]) in nats, pi the stationary distribution:
    the lowest expected next-symbol cross-entropy of any predictor that knows y_{t-1} (and, the
    chain being Markov, of any predictor at all). For the sticky chain every row is a
    rotation of row 0, so pi is uniform and H_min is the entropy of one row: 1.883 nats."""
    P = np.asarray(P, dtype=np.float64)
    row_h = -np.where(P > 0, P * np.log(np.where(P > 0, P, 1.0)), 0.0).sum(1)
    return float(stationary_distribution(P) @ row_h)


@dataclass
class StickyMarkovData:
    inputs: torch.Tensor    # (T - 1, d_x) float32: x_t = mu[y_{t-1}] + noise
    targets: torch.Tensor   # (T - 1,) long: y_t
    states: torch.Tensor    # (T,) long: the whole chain y_0..y_{T-1}
    means: torch.Tensor     # (n_symbols, d_x): the fixed symbol means mu
    P: np.ndarray           # (n, n) the transition matrix
    h_min: float            # H(Y_t | Y_{t-1}) in nats


def sample_sticky_markov(T: int, generator: torch.Generator, n_symbols: int = 8, d_x: int = 20,
                         self_prob: float = 0.3, means_seed: int = 0,
                         authors_code: bool = False) -> StickyMarkovData:
    """One chain of length T from a uniform start, its noisy inputs and next-symbol targets.

    The means mu ~ N(0, I) come from their own generator seeded ``means_seed`` (fixed across
    runs, as in the authors' code); the chain and the noise come from ``generator``. The chain
    is drawn by inverse CDF on float64 uniforms.
    """
    if T < 2:
        raise ValueError(f"T must be >= 2, got {T}")
    P = sticky_transition_matrix(n_symbols, self_prob, authors_code)
    means = torch.randn(n_symbols, d_x, generator=torch.Generator().manual_seed(means_seed))
    start = int(torch.randint(n_symbols, (1,), generator=generator))
    u = torch.rand(T, generator=generator, dtype=torch.float64).numpy()
    cdf = np.cumsum(P, axis=1)
    cdf[:, -1] = 1.0
    states = np.empty(T, dtype=np.int64)
    states[0] = start
    for t in range(1, T):
        states[t] = int(np.searchsorted(cdf[states[t - 1]], u[t], side="right"))
    y = torch.from_numpy(states)
    noise = torch.randn(T - 1, d_x, generator=generator)
    return StickyMarkovData(inputs=means[y[:-1]] + noise, targets=y[1:], states=y, means=means,
                            P=P, h_min=conditional_entropy_nats(P))


class SingleHeadAttention(nn.Module):
    """The Paper II toy model: logits = softmax(causal(x W_Q (x W_K)^T / sqrt(d_k))) x W_V W_O.

    Parameters are named W_Q, W_K, W_V, W_O (so ``TrainConfig(lr_multipliers=(("W_V", 10.0),))``
    gives the EM-like schedule), stored (in, out) as in the authors' code, init N(0, init_std^2).
    x (T, d_x) or (B, T, d_x) -> logits (..., T, n_classes).
    """

    def __init__(self, d_x: int = 20, d_k: int = 10, d_v: int = 15, n_classes: int = 8,
                 init_std: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        self.d_k = d_k

        def p(*shape):
            return nn.Parameter(torch.randn(*shape, generator=generator) * init_std)

        self.W_Q, self.W_K, self.W_V, self.W_O = p(d_x, d_k), p(d_x, d_k), p(d_x, d_v), p(d_v, n_classes)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The causal attention weights alpha (..., T, T)."""
        q, k = x @ self.W_Q, x @ self.W_K
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_k)
        T = x.shape[-2]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.attention(x) @ (x @ self.W_V)) @ self.W_O


def sticky_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``loss_fn`` for ``labcore.trainer.train``: mean next-symbol CE (nats) over the sequence."""
    x, y = batch
    return F.cross_entropy(model(x), y)


def steps_to_threshold(losses: np.ndarray, threshold: float) -> int:
    """The first 0-indexed step whose loss is < threshold (the authors' definition; the trainer's
    ``loss[i]`` is the loss *before* update i+1), or len(losses) if never reached."""
    below = np.flatnonzero(np.asarray(losses) < threshold)
    return int(below[0]) if below.size else len(losses)


@dataclass
class EMvsSGDRun:
    """One seed of the EM-vs-SGD comparison (losses in nats, one per step)."""

    seed: int
    sgd_losses: np.ndarray
    em_losses: np.ndarray
    sgd_final: float       # full-batch loss after the last SGD step
    em_final: float
    em_steps_to_sgd_final: int
    speedup: float         # steps / em_steps_to_sgd_final
    h_min: float
    seconds: float


def run_em_vs_sgd(seed: int, T: int = 2000, steps: int = 1000, lr: float = 0.01,
                  value_lr_factor: float = 10.0, authors_code: bool = False,
                  device: str | torch.device = "cpu") -> EMvsSGDRun:
    """Train the same init twice on the same chain: plain SGD (lr everywhere) and "EM-like"
    (lr x value_lr_factor on W_V), full batch, no clipping, no momentum; compare."""
    import time

    from labcore.trainer import TrainConfig, train

    start = time.perf_counter()
    data = sample_sticky_markov(T, torch.Generator().manual_seed(seed), authors_code=authors_code)
    batch = (data.inputs.to(device), data.targets.to(device))
    runs = {}
    for name, mult in (("sgd", ()), ("em", (("W_V", value_lr_factor),))):
        model = SingleHeadAttention(generator=torch.Generator().manual_seed(seed)).to(device)
        cfg = TrainConfig(steps=steps, lr=lr, optimizer="sgd", grad_clip=None, lr_multipliers=mult,
                          seed=seed, track_update_ratio=False, progress=False)
        res = train(model, lambda step, g: batch, cfg, loss_fn=sticky_loss)
        with torch.no_grad():
            final = float(sticky_loss(model, batch))
        runs[name] = (res.metrics["loss"], final)
    (sgd_l, sgd_f), (em_l, em_f) = runs["sgd"], runs["em"]
    n = steps_to_threshold(em_l, sgd_f)
    return EMvsSGDRun(seed=seed, sgd_losses=sgd_l, em_losses=em_l, sgd_final=sgd_f, em_final=em_f,
                      em_steps_to_sgd_final=n, speedup=steps / max(n, 1), h_min=data.h_min,
                      seconds=time.perf_counter() - start)
