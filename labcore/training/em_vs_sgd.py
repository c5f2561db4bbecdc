"""EM-like vs plain SGD on the sticky chain (Paper II §5.2, arXiv 2512.22473).

The paper compares plain SGD (lr 0.01) with an "EM-like" schedule that is SGD with a 10x larger
learning rate on W_V only — values are the M-step of the routing law's EM reading
(``labcore.measures.routing``). :func:`run_em_vs_sgd` trains the same init both ways on the
same chain (``labcore.tasks.sticky_chain``) and reports how many steps the EM-like run needs to
reach plain SGD's final loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labcore.glassbox.single_head import SingleHeadAttention
from labcore.tasks.sticky_chain import sample_sticky_markov
from labcore.training.trainer import TrainConfig, train


def sticky_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``loss_fn`` for ``labcore.training.trainer.train``: mean next-symbol CE (nats) over the sequence."""
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
