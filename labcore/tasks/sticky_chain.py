"""The sticky Markov chain of Paper II §5.2 (Agarwal, Dalal & Misra, arXiv 2512.22473), with its
exact answer: the lowest achievable next-symbol loss H_min = H(Y_t | Y_{t-1}).

A Markov chain on 8 symbols with self-transition 0.3 and off-diagonal mass proportional to
1 / circular distance (the authors' ``experiments/paper2_gradient/em_vs_sgd_multiseed.py``); a
model sees x_t = mu_{y_{t-1}} + N(0, I) (d_x = 20, fixed means) and predicts y_t. The best any
model can do is H_min (:func:`conditional_entropy_nats`, 1.883 nats).

A quirk of the authors' code, kept as an option: their ``make_transition_matrix`` normalises
the row *including* the self entry 0.3 before rescaling the off-diagonal part to 0.7, and then
adds 0.3 again, so its self-transition is 0.3498 and its H_min is 1.829 nats, not the 1.883
the description (self-transition 0.3) gives. ``sticky_transition_matrix(authors_code=True)``
reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch



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
