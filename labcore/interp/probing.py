"""Linear probes with control tasks (Hewitt & Liang 2019, arXiv 1909.03368).

A probe's accuracy alone does not say the representation *encodes* a property: an expressive probe
can memorise the answer per word type. Hewitt & Liang's control task gives every token *type* a
random but fixed label (drawn from the task's empirical label distribution), so it can only be
solved by memorising types. Then

    selectivity = accuracy(task) − accuracy(control task),

high when the representation encodes the property, about 0 when the probe only does as well as on
labels that mean nothing.

:func:`softmax_probe_accuracy` is a multinomial logistic regression (one linear layer, L-BFGS on
cross-entropy + α‖W‖², standardised features, float64), scored by held-out accuracy;
:func:`control_labels` draws the control task; :func:`probe_selectivity` runs both on one split.
For binary multi-column labels scored by balanced accuracy see
``labcore.measures.probes.linear_probe_balanced_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Selectivity", "control_labels", "probe_selectivity", "softmax_probe_accuracy"]


def _t(x, dtype=torch.float64) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(x)).to(dtype)


def _split(n: int, train_frac: float, generator: torch.Generator | None):
    perm = torch.randperm(n, generator=generator)
    n_train = round(train_frac * n)
    if not 0 < n_train < n:
        raise ValueError(f"train_frac={train_frac} leaves no train or test rows for n={n}")
    return perm[:n_train], perm[n_train:]


def softmax_probe_accuracy(features, labels, train_idx: torch.Tensor, test_idx: torch.Tensor,
                           alpha: float = 1e-3, max_iter: int = 200) -> tuple[float, float]:
    """(held-out accuracy, train accuracy) of a multinomial logistic probe features (N, D) -> labels (N,)."""
    X, y = _t(features), _t(labels, torch.long)
    n_classes = int(y.max()) + 1
    mu, sd = X[train_idx].mean(0), X[train_idx].std(0).clamp_min(1e-12)
    Xtr, Xte = (X[train_idx] - mu) / sd, (X[test_idx] - mu) / sd
    W = torch.zeros(X.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Xtr @ W + b, y[train_idx]) + alpha * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        acc_te = ((Xte @ W + b).argmax(-1) == y[test_idx]).double().mean()
        acc_tr = ((Xtr @ W + b).argmax(-1) == y[train_idx]).double().mean()
    return float(acc_te), float(acc_tr)


def control_labels(token_types, labels, generator: torch.Generator) -> torch.Tensor:
    """A control task: each token type gets one label drawn from the empirical distribution of
    ``labels``, and every occurrence of that type carries it. (N,) long."""
    types, y = _t(token_types, torch.long), _t(labels, torch.long)
    uniq, inverse = torch.unique(types, return_inverse=True)
    freq = torch.bincount(y).double()
    per_type = torch.multinomial(freq / freq.sum(), len(uniq), replacement=True, generator=generator)
    return per_type[inverse]


@dataclass(frozen=True)
class Selectivity:
    task_accuracy: float
    control_accuracy: float  # mean over the control tasks drawn
    selectivity: float  # task − control
    task_train_accuracy: float
    n_controls: int


def probe_selectivity(features, labels, token_types, generator: torch.Generator, n_controls: int = 3,
                      train_frac: float = 0.8, alpha: float = 1e-3, max_iter: int = 200) -> Selectivity:
    """Task accuracy, control-task accuracy (mean of ``n_controls`` draws) and their difference,
    for a linear probe on ``features`` (N, D), task ``labels`` (N,), ``token_types`` (N,).
    Task and control probes share one random train/test split of the rows."""
    X = _t(features)
    if X.dim() != 2 or X.shape[0] != len(labels) or X.shape[0] != len(token_types):
        raise ValueError("features (N, D), labels (N,) and token_types (N,) must share N")
    tr, te = _split(X.shape[0], train_frac, generator)
    task, task_train = softmax_probe_accuracy(X, labels, tr, te, alpha, max_iter)
    controls = [softmax_probe_accuracy(X, control_labels(token_types, labels, generator), tr, te, alpha, max_iter)[0]
                for _ in range(n_controls)]
    control = float(np.mean(controls))
    return Selectivity(task, control, task - control, task_train, n_controls)
