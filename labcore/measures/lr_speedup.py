"""How many full-batch SGD steps a learning-rate schedule needs to reach a loss (Paper II's
EM-vs-SGD comparison, arXiv 2512.22473 §5.2, and its equal-learning-rate controls).

``labcore.training.em_vs_sgd.run_em_vs_sgd`` trains plain SGD and the "EM-like" schedule (10× lr on
W_V) for the full 1,000 steps. Its controls only need to know *when* another schedule first gets
below plain SGD's final loss, so :func:`steps_to_loss` trains the same init on the same chain with
per-parameter learning-rate factors and stops at the first step whose loss is under the threshold:

    θ_p ← θ_p − lr · factor(p) · ∂L/∂θ_p          (plain SGD: full batch, no momentum, no clipping)

with the trainer's conventions (``labcore.training.trainer``: a factor applies to every parameter
whose name contains its pattern; ``loss[i]`` is the loss before update i+1, and the reported step
is the first 0-indexed i with loss[i] < threshold, as ``em_vs_sgd.steps_to_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labcore.glassbox.single_head import SingleHeadAttention
from labcore.tasks.sticky_chain import sample_sticky_markov

__all__ = ["LRArm", "steps_to_loss"]


@dataclass
class LRArm:
    """One schedule on one chain: the losses it went through and when it crossed the threshold."""

    factors: dict[str, float]
    losses: np.ndarray          # (n,) full-batch CE in nats before each update, up to the crossing
    steps_to_threshold: int     # first step below the threshold, or max_steps if never

    def speedup(self, steps: int) -> float:
        return steps / max(self.steps_to_threshold, 1)


def steps_to_loss(seed: int, threshold: float, factors: dict[str, float], T: int = 500, lr: float = 0.01,
                  max_steps: int = 1000) -> LRArm:
    """Train the sticky-chain single head of ``seed`` (same chain and init as ``run_em_vs_sgd``)
    with lr × factors[pattern] on matching parameters until the loss is below ``threshold``."""
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    data = sample_sticky_markov(T, torch.Generator().manual_seed(seed))
    x, y = data.inputs, data.targets                                   # (T-1, d_x), (T-1,)
    model = SingleHeadAttention(generator=torch.Generator().manual_seed(seed))
    unknown = [p for p in factors if not any(p in n for n, _ in model.named_parameters())]
    if unknown:
        raise ValueError(f"no parameter matches {unknown}; the model has {[n for n, _ in model.named_parameters()]}")
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        f = 1.0
        for pattern, mult in factors.items():
            if pattern in name:
                f = mult
        groups.setdefault(f, []).append(p)
    opt = torch.optim.SGD([{"params": ps, "lr": lr * f} for f, ps in groups.items()], lr=lr, momentum=0.0)
    losses = []
    for step in range(max_steps):
        loss = F.cross_entropy(model(x), y)
        losses.append(float(loss.detach()))
        if losses[-1] < threshold:
            return LRArm(dict(factors), np.array(losses), step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return LRArm(dict(factors), np.array(losses), max_steps)
