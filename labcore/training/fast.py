"""The trainer's fast path: the same training, without a host sync inside the step.

``labcore.training.trainer.train`` runs this loop when a fast-path option of ``TrainConfig`` is
set (``sync_every``, ``precision``, ``compile``, ``fused``) or inside a torch.distributed job.
What changes against the default loop, and what does not:

  * the per-step metrics (loss, grad norm, update ratio, Adam moment statistics) are written
    into a small tensor on the training device and read back every ``sync_every`` steps, before
    any callback or snapshot, and at the end — one host sync per block instead of several per
    step. The metric arrays of ``TrainResult`` are the same arrays, filled block by block.
  * divergence stays exact: each block's losses are scanned and ``diverged_at_step`` is the first
    non-finite one, the metrics are cut there as today. The model itself has taken the steps
    up to the end of that block (up to ``sync_every - 1`` steps past the divergence, all of them
    NaN already); callbacks and snapshots never see a step after the divergence.
  * the optimiser is fused AdamW on CUDA (``fused``); ``precision="bf16"`` computes the loss
    under bf16 autocast (fp32 master weights, backward outside autocast), ``"tf32"`` allows TF32
    matmuls on CUDA; evaluation callbacks always run in fp32 on the uncompiled model.
  * ``compile=True`` trains through ``torch.compile(model)``; ``compile="reduce-overhead"`` also
    captures CUDA graphs (static shapes), which removes most kernel-launch cost of a small model.
  * Adam's moment statistics are computed on the device, every ``stats_every`` steps.

With fp32, no compile and no fused optimiser (the CPU case) the updates are the default loop's
bit for bit, so the loss curve is identical (tests/test_fast_path.py); the update ratio and the
Adam statistics are summed in another order (≈1e-7 relative).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from labcore.training import distributed
from labcore.training.trainer import (Every, Snapshots, TrainConfig, TrainResult, _param_groups, _Progress,
                                      _run_callbacks, _start_result, _to_device, lr_at)

DEVICE_METRICS = ["loss", "grad_norm", "update_ratio", "adam_m_norm", "adam_v_sqrt_mean"]


def train_fast(model: nn.Module, batch_fn: Callable[[int, torch.Generator], Any], cfg: TrainConfig,
               loss_fn: Callable[[nn.Module, Any], torch.Tensor], callbacks: Sequence[Every | Snapshots] = ()
               ) -> TrainResult:
    """``train`` without per-step host syncs (see the module docstring)."""
    device = torch.device(cfg.device) if cfg.device else next(model.parameters()).device
    model.to(device).train()
    generator = torch.Generator(device="cpu").manual_seed(distributed.data_seed(cfg.seed))
    opt = _make_optimizer(model, cfg, device)
    params = [p for g in opt.param_groups for p in g["params"]]
    forward_model = distributed.wrap(model, device)
    if cfg.compile:
        forward_model = torch.compile(forward_model, mode=cfg.compile if isinstance(cfg.compile, str) else None)

    log, result, snapshot_steps, progress = _start_result(model, cfg, callbacks)
    block = _MetricBlock(cfg.sync_every or 1, device, log, progress)

    start = time.perf_counter()
    with _matmul_precision(cfg.precision, device):
        for i in range(cfg.steps):
            step = i + 1
            lr = lr_at(step, cfg)
            log["lr"][i] = lr
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_factor"]
            batch = _to_device(batch_fn(i, generator), device)
            _step(forward_model, batch, loss_fn, opt, params, cfg, step, block.row(i), device)
            due = _callback_due(step, cfg.steps, callbacks, snapshot_steps)
            if (block.full() or due or step == cfg.steps) and block.flush(result):
                break
            if due:
                _run_callbacks(model, step, cfg.steps, callbacks, snapshot_steps, result)

    result.seconds = time.perf_counter() - start
    if result.diverged:
        result.metrics = {k: v[: result.diverged_at_step] for k, v in log.items()}
    model.eval()
    return result


def _step(forward_model: nn.Module, batch, loss_fn, opt: torch.optim.Optimizer, params: list[torch.Tensor],
          cfg: TrainConfig, step: int, row: torch.Tensor, device: torch.device) -> None:
    """One optimiser step; its metrics go into ``row`` (a device tensor), nothing is read back."""
    if cfg.precision == "bf16":
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    with autocast:
        loss = loss_fn(forward_model, batch)
    row[0].copy_(distributed.mean_over_ranks(loss.detach()))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
    row[1].copy_(torch.nn.utils.clip_grad_norm_(params, max_norm))
    before = [p.detach().clone() for p in params] if cfg.track_update_ratio else None
    opt.step()
    if before is not None:
        row[2].copy_(_update_ratio(params, before))
    if cfg.optimizer == "adamw" and step % cfg.stats_every == 0:
        m_norm, v_sqrt_mean = _adam_moment_stats(opt)
        row[3].copy_(m_norm)
        row[4].copy_(v_sqrt_mean)


class _MetricBlock:
    """``sync_every`` rows of device metrics; ``flush`` copies them into the log in one sync."""

    def __init__(self, rows: int, device: torch.device, log: dict[str, np.ndarray], progress: _Progress):
        self.buf = torch.full((rows, len(DEVICE_METRICS)), math.nan, dtype=torch.float64, device=device)
        self.log, self.progress, self.first, self.count = log, progress, 0, 0

    def row(self, i: int) -> torch.Tensor:
        self.count = i - self.first + 1
        return self.buf[i - self.first]

    def full(self) -> bool:
        return self.count == self.buf.shape[0]

    def flush(self, result: TrainResult) -> bool:
        """Read the block back into the log; True when a loss in it was not finite (the run ends)."""
        host = self.buf[: self.count].to("cpu", copy=True).numpy()  # a copy also on the CPU
        self.buf.fill_(math.nan)
        lo, hi = self.first, self.first + self.count
        for c, name in enumerate(DEVICE_METRICS):
            self.log[name][lo:hi] = host[:, c]
        bad = ~np.isfinite(host[:, 0])
        if bad.any():
            i = lo + int(np.argmax(bad))
            for name in DEVICE_METRICS[1:]:  # the default loop stops before the backward pass
                self.log[name][i] = math.nan
            result.diverged_at_step, result.steps_done = i + 1, i
            return True
        result.steps_done = hi
        self.progress.update(hi, float(host[-1, 0]))
        self.first, self.count = hi, 0
        return False


def _callback_due(step: int, total: int, callbacks: Sequence[Every | Snapshots], snapshot_steps: set[int]) -> bool:
    if step in snapshot_steps:
        return True
    return any(isinstance(cb, Every) and (step % cb.every == 0 or step == total) for cb in callbacks)


def _make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **extra)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _sum_sq(norms: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(norms)).to(torch.float64).pow(2).sum()


@torch.no_grad()
def _update_ratio(params: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """‖θ_after − θ_before‖ / ‖θ_after‖ over all trained parameters, on the device."""
    after = [p.detach() for p in params]
    torch._foreach_sub_(before, after)  # before := before − after (its norm is the step's)
    delta, norm = _sum_sq(torch._foreach_norm(before)).sqrt(), _sum_sq(torch._foreach_norm(after)).sqrt()
    return torch.where(norm > 0, delta / norm, torch.full_like(norm, math.nan))


@torch.no_grad()
def _adam_moment_stats(opt: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖m‖ over all params, mean of √v) on the device, as trainer._adam_moment_stats computes them."""
    states = [s for s in opt.state.values() if "exp_avg" in s]
    if not states:
        nan = torch.tensor(math.nan, dtype=torch.float64)
        return nan, nan
    m_norm = _sum_sq(torch._foreach_norm([s["exp_avg"] for s in states])).sqrt()
    v_sqrt = torch._foreach_sqrt([s["exp_avg_sq"] for s in states])
    n = sum(s["exp_avg_sq"].numel() for s in states)
    v_sum = torch.stack(torch._foreach_norm(v_sqrt, 1)).to(torch.float64).sum()  # L1 norm = sum (√v ≥ 0)
    return m_norm, v_sum / n


@contextlib.contextmanager
def _matmul_precision(precision: str, device: torch.device):
    """TF32 matmuls for the duration of the run when asked for, on CUDA; restored afterwards."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
