"""A learning-rate sweep over :func:`labcore.training.trainer.train`: final loss per lr, and the edge.

The same model init (``seeded_model``) and the same data stream (``TrainConfig.seed``) are used at
every learning rate, so the only thing that changes along the sweep is η. Typical shape: too small
an η has not got far in the step budget, too large a one bounces or diverges, and the final loss
against log η is a U with a cliff on its right — the *divergence edge*. On a quadratic with SGD
the edge sits exactly at η = 2/λ_max (see :class:`labcore.dynamics.toy.QuadraticBowl`).

A run counts as diverged when the trainer stopped on a non-finite loss, or when its final loss
(mean of the last ``tail`` steps) exceeds ``blowup`` × its initial loss (Adam and clipped runs
often blow up without ever reaching inf).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from labcore.training.trainer import TrainConfig, next_token_loss, seeded_model, train


@dataclass
class LRSweep:
    lrs: np.ndarray  # ascending
    final_loss: np.ndarray  # mean of the last `tail` losses (inf where the loss went non-finite)
    initial_loss: np.ndarray
    diverged: np.ndarray  # bool
    diverged_at_step: list[int | None]  # from the trainer (non-finite loss); None otherwise
    curves: list[np.ndarray]  # per-step loss of each run

    @property
    def best_lr(self) -> float:
        """The lr of the lowest final loss among the runs that did not diverge."""
        return float(self.lrs[int(np.argmin(np.where(self.diverged, np.inf, self.final_loss)))])

    @property
    def edge(self) -> tuple[float, float] | None:
        """(largest stable lr, smallest diverged lr) bracketing the first divergence, or None."""
        bad = np.flatnonzero(self.diverged)
        if len(bad) == 0 or bad[0] == 0:
            return None
        return float(self.lrs[bad[0] - 1]), float(self.lrs[bad[0]])

    @property
    def u_shaped(self) -> bool:
        """Among the runs that did not diverge, the best lr is strictly inside: the final loss rises
        on both sides *before* the cliff (a sweep whose best lr is the last stable one is not a U)."""
        stable = np.flatnonzero(~self.diverged)
        if len(stable) < 3:
            return False
        i = int(np.argmin(self.final_loss[stable]))
        return 0 < i < len(stable) - 1


def lr_sweep(make_model: Callable[[], nn.Module], batch_fn: Callable, cfg: TrainConfig, lrs: Sequence[float],
             loss_fn: Callable = next_token_loss, model_seed: int = 0, tail: int = 10,
             blowup: float = 10.0) -> LRSweep:
    """Train a fresh copy of ``make_model()`` (init from ``model_seed``) at every lr in ``lrs``."""
    lrs = np.sort(np.asarray(lrs, float))
    finals, initials, diverged, at, curves = [], [], [], [], []
    for lr in lrs:
        model = seeded_model(make_model, model_seed)
        res = train(model, batch_fn, replace(cfg, lr=float(lr), progress=False), loss_fn=loss_fn)
        loss = res.metrics["loss"]
        final = float(np.mean(loss[-tail:])) if not res.diverged else float("inf")
        blew_up = not np.isfinite(final) or final > blowup * loss[0]
        finals.append(final if np.isfinite(final) else float("inf"))
        initials.append(float(loss[0]))
        diverged.append(bool(res.diverged or blew_up))
        at.append(res.diverged_at_step)
        curves.append(loss)
    return LRSweep(lrs, np.array(finals), np.array(initials), np.array(diverged), at, curves)


def geometric_lrs(lo: float, hi: float, per_decade: int = 4) -> np.ndarray:
    """Learning rates from lo to hi, evenly spaced in log η (``per_decade`` points per ×10)."""
    n = round(float(np.log10(hi / lo)) * per_decade) + 1
    return np.geomspace(lo, hi, max(n, 2))
