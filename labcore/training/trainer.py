"""A small, explicit training loop that keeps what claims need to assert on.

Every step records loss, gradient norm, learning rate, the update-to-parameter norm ratio and
Adam's moment statistics into arrays (`TrainResult.metrics`), so a training-dynamics claim can
assert on them and plot them. Runs are reproducible: the data comes from a per-run
`torch.Generator` seeded from `TrainConfig.seed`, never from the global RNG. A NaN/inf loss ends
the run with `diverged_at_step` set instead of a crash.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labcore.glassbox.modes import evaluating
from labcore.training import distributed

Schedule = Literal["constant", "warmup_constant", "warmup_cosine", "inverse_sqrt"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # number of optimiser steps (the budget is in steps, not seconds)
    lr: float = 1e-3  # peak learning rate
    optimizer: Literal["adamw", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    eps: float = 1e-8  # Adam's denominator epsilon
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # decoupled (AdamW) / L2 (SGD); not applied to 1-D params (norms, biases)
    schedule: Schedule = "constant"
    warmup_steps: int = 0  # linear warmup length (the peak of inverse_sqrt)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float | None = 1.0  # max global grad norm; None = no clipping
    seed: int = 0  # seeds the data generator (and the model init if init_seed is used)
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (name substring, factor): per-parameter lr
    track_update_ratio: bool = True  # ‖Δθ‖/‖θ‖ per step (costs one parameter copy)
    device: str | None = None  # default: the model's device
    progress: bool | None = None  # progress bar; default: only on an interactive terminal
    # --- the fast path (labcore.training.fast); any non-default value below switches to it ---
    sync_every: int | None = None  # read the metrics back from the device every N steps (None: every step, today's loop)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"  # tf32 matmuls / bf16 autocast of the loss (evals stay fp32)
    compile: bool | str = False  # torch.compile the training forward/backward; a str is its mode: "reduce-overhead" adds CUDA graphs
    stats_every: int = 1  # Adam moment statistics every N steps (NaN in between)
    fused: bool | None = None  # fused AdamW; default: on CUDA in the fast path

    @property
    def fast_path(self) -> bool:
        """True when a fast-path option is set: train() then runs labcore.training.fast."""
        return (self.sync_every is not None or self.precision != "fp32" or self.compile
                or self.fused is not None)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"TrainConfig.steps={self.steps}: must be ≥ 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr}: must be > 0")
        if self.schedule not in ("constant", "warmup_constant", "warmup_cosine", "inverse_sqrt"):
            raise ValueError(
                f"TrainConfig.schedule={self.schedule!r}: use constant, warmup_constant, warmup_cosine or inverse_sqrt"
            )
        if self.schedule == "inverse_sqrt" and self.warmup_steps < 1:
            raise ValueError("TrainConfig.schedule='inverse_sqrt' needs warmup_steps ≥ 1 (its peak)")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}: use adamw or sgd")
        if self.precision not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"TrainConfig.precision={self.precision!r}: use fp32, tf32 or bf16")
        if isinstance(self.compile, str) and self.compile not in COMPILE_MODES:
            raise ValueError(f"TrainConfig.compile={self.compile!r}: use True/False or a torch.compile mode, "
                             f"one of {', '.join(COMPILE_MODES)}")
        for name in ("sync_every", "stats_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainConfig.{name}={value!r}: must be a positive integer")


#: torch.compile modes TrainConfig.compile accepts; "reduce-overhead" records CUDA graphs of the
#: compiled forward/backward (static shapes: every batch the same size), replayed each step.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for 1-indexed optimiser step `step` (step 1 is the first update)."""
    w = cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "inverse_sqrt":
        # Vaswani et al. (2017) eq. 3 normalised so the peak, at step = warmup, equals cfg.lr:
        # lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5); with lr = (d_model·warmup)^-0.5
        # this is exactly the paper's schedule.
        return cfg.lr * math.sqrt(w) * min(step**-0.5, step * w**-1.5)
    if w and step <= w:
        return cfg.lr * step / w
    if cfg.schedule == "warmup_constant":
        return cfg.lr
    progress = (step - w) / max(1, cfg.steps - w)  # warmup_cosine: 0 → 1 after warmup
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def vaswani_lr(step: int, d_model: int, warmup: int) -> float:
    """The paper's formula verbatim: d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)."""
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def next_token_loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of logits at each position against `targets` (−100 = not supervised)."""
    tokens, targets = batch[0], batch[1]
    logits = model(tokens)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


@dataclass
class TrainResult:
    metrics: dict[str, np.ndarray]  # per-step arrays: loss, grad_norm, lr, update_ratio, adam_*
    steps_done: int
    diverged_at_step: int | None = None  # 1-indexed step whose loss was NaN/inf
    evals: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)  # from callbacks
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> state dict
    seconds: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.diverged_at_step is not None

    @property
    def message(self) -> str:
        if self.diverged:
            return f"diverged at step {self.diverged_at_step} (loss was not finite)"
        return f"finished {self.steps_done} steps in {self.seconds:.1f}s, final loss {self.metrics['loss'][-1]:.4f}"

    @property
    def steps_per_second(self) -> float:
        return self.steps_done / self.seconds if self.seconds else float("nan")


@dataclass
class Every:
    """A callback run every `every` steps (and after the last): fn(step, model) -> value or dict of values.

    Values are stored in `TrainResult.evals[name]` as (step, value) pairs.
    """

    every: int
    fn: Callable[[int, nn.Module], Any]
    name: str = "eval"


@dataclass
class Snapshots:
    """Keep a copy of the model's state dict at the given 1-indexed steps (0 = before training)."""

    at_steps: Sequence[int]


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        factor = 1.0
        for pattern, mult in cfg.lr_multipliers:
            if pattern in name:
                factor = mult
        decay = p.dim() >= 2
        groups.setdefault((factor, decay), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    return [
        {"params": ps, "lr_factor": f, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (f, decay), ps in groups.items()
    ]


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _adam_moment_stats(opt: torch.optim.Optimizer) -> tuple[float, float]:
    """(‖m‖ over all params, mean of √v): how big Adam's first moment and its denominator are."""
    m_sq, v_sqrt_sum, n = 0.0, 0.0, 0
    for state in opt.state.values():
        if "exp_avg" in state:
            m_sq += float(state["exp_avg"].pow(2).sum())
            v_sqrt_sum += float(state["exp_avg_sq"].sqrt().sum())
            n += state["exp_avg_sq"].numel()
    return math.sqrt(m_sq), (v_sqrt_sum / n if n else float("nan"))


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.last = total, enabled, 0.0

    def update(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.25 or step == self.total):
            self.last = now
            sys.stderr.write(f"\r  training {step}/{self.total}  loss {loss:.4f}")
            if step == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


#: On a CUDA device the default loop's host syncs every step (``float(loss)``, ``float(grad norm)``)
#: cost more than a small model's whole step, so there a config that chose no fast-path option runs
#: the fast path in fp32, reading the metrics back every CUDA_SYNC_EVERY steps (the same updates;
#: fused AdamW). Set LAB_CUDA_DEFAULT_LOOP=1 to keep the per-step loop on CUDA as well.
CUDA_SYNC_EVERY = 100


def gpu_fast_options(precision: str) -> dict:
    """The GPU tier's fast-path options, ``TrainConfig(**gpu_fast_options("bf16"), ...)``: metrics read
    back every 500 steps, ``precision``, Adam statistics every 1,000 steps, ``torch.compile`` unless
    ``LAB_COMPILE=0`` (read when called)."""
    return {"sync_every": 500, "precision": precision, "stats_every": 1000,
            "compile": os.environ.get("LAB_COMPILE", "1") != "0"}


def on_device(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """The config ``train`` runs on ``device``: ``cfg`` itself, except on CUDA (see CUDA_SYNC_EVERY)."""
    if device.type != "cuda" or cfg.fast_path or os.environ.get("LAB_CUDA_DEFAULT_LOOP", "0") not in ("", "0"):
        return cfg
    return dataclasses.replace(cfg, sync_every=CUDA_SYNC_EVERY)


def train(
    model: nn.Module,
    batch_fn: Callable[[int, torch.Generator], Any],
    cfg: TrainConfig,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = next_token_loss,
    callbacks: Sequence[Every | Snapshots] = (),
) -> TrainResult:
    """Train `model` in place for `cfg.steps` steps on batches from `batch_fn(step, generator)`.

    A fast-path option (`cfg.fast_path`), a CUDA device (`on_device`) or a torch.distributed job
    runs labcore.training.fast."""
    device = torch.device(cfg.device) if cfg.device else next(model.parameters()).device
    cfg = on_device(cfg, device)
    if cfg.fast_path or distributed.setup_from_env():
        from labcore.training.fast import train_fast  # imports this module

        return train_fast(model, batch_fn, cfg, loss_fn, callbacks)
    model.to(device).train()
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    opt = _make_optimizer(model, cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    is_adam = cfg.optimizer == "adamw"

    log, result, snapshot_steps, progress = _start_result(model, cfg, callbacks)

    start = time.perf_counter()
    for i in range(cfg.steps):
        step = i + 1
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_factor"]

        batch = _to_device(batch_fn(i, generator), device)
        loss = loss_fn(model, batch)
        loss_value = float(loss.detach())
        log["loss"][i], log["lr"][i] = loss_value, lr
        if not math.isfinite(loss_value):
            result.diverged_at_step = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        log["grad_norm"][i] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        before = [p.detach().clone() for p in params] if cfg.track_update_ratio else None
        opt.step()
        if before is not None:
            log["update_ratio"][i] = _update_ratio(params, before)
        if is_adam and step % cfg.stats_every == 0:
            log["adam_m_norm"][i], log["adam_v_sqrt_mean"][i] = _adam_moment_stats(opt)
        result.steps_done = step
        progress.update(step, loss_value)
        _run_callbacks(model, step, cfg.steps, callbacks, snapshot_steps, result)

    result.seconds = time.perf_counter() - start
    if result.diverged:
        result.metrics = {k: v[: result.diverged_at_step] for k, v in log.items()}
    model.eval()
    return result


def _start_result(model: nn.Module, cfg: TrainConfig, callbacks: Sequence[Every | Snapshots]):
    """The empty per-step log, the result holding it (with the step-0 snapshot), the snapshot
    steps and the progress bar: (log, result, snapshot_steps, progress)."""
    names = ["loss", "grad_norm", "lr", "update_ratio", "adam_m_norm", "adam_v_sqrt_mean"]
    log = {k: np.full(cfg.steps, np.nan) for k in names}
    result = TrainResult(metrics=log, steps_done=0)
    snapshot_steps = {s for cb in callbacks if isinstance(cb, Snapshots) for s in cb.at_steps}
    if 0 in snapshot_steps:
        result.snapshots[0] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    progress = _Progress(cfg.steps, cfg.progress if cfg.progress is not None else interactive)
    return log, result, snapshot_steps, progress


def _update_ratio(params: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    """‖θ_after − θ_before‖ / ‖θ_after‖ over all trained parameters."""
    delta = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(params, before)))
    norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in params))
    return delta / norm if norm else float("nan")


def _run_callbacks(model: nn.Module, step: int, total: int, callbacks: Sequence[Every | Snapshots],
                   snapshot_steps: set[int], result: TrainResult) -> None:
    """After step ``step``: evaluations that are due (in eval mode, no grad) and snapshots."""
    for cb in callbacks:
        if isinstance(cb, Every) and (step % cb.every == 0 or step == total):
            with evaluating(model), torch.no_grad():
                result.evals.setdefault(cb.name, []).append((step, cb.fn(step, model)))
    if step in snapshot_steps:
        result.snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def seeded_model(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with its init drawn from `seed` only (the global RNG is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
