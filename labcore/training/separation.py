"""Architectural separation on the bijection wind tunnel: one recipe, five trained architectures.

Paper I (arXiv 2512.22471) says small transformers reproduce the Bayesian posterior while
"capacity-matched MLPs fail by orders of magnitude"; its v3 "inference primitives" table adds
that LSTMs realise belief *accumulation* (the bijection task) but not transport or binding.
This module trains every architecture of that comparison on the same stream of fresh bijection
sequences, with the same optimiser, schedule, batch and number of steps, each sized to the
transformer's parameter count (``labcore.glassbox.baselines.match_param_count``):

    transformer     GPT (pre-LN, learned positions, tied embeddings)            the reference
    per_position    PerPositionMLP, 4 residual blocks: context-blind by construction
    flattened       FlattenedContextMLP, 2 residual blocks over the whole prefix (informative)
    deep_flattened  FlattenedContextMLP, 8 residual blocks (depth instead of width)
    lstm            LSTMBaseline, 2 layers

and grades each on one fixed evaluation batch with ``labcore.measures.posterior.evaluate_bijection``
(per-sample entropy MAE, KL(Bayes‖model), mass on eliminated values; bits).

On CUDA the batches are drawn on the device and the loop is the trainer's fast path
(``labcore.training.fast``: metrics read back every ``sync_every`` steps); on a CPU the same code
runs the default loop, which is how ``tests/test_separation.py`` smoke-tests it with a tiny
config. ``run_separation`` is what ``claims/bayes/test_full_separation.py`` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from labcore.glassbox.baselines import (FlattenedContextMLP, LSTMBaseline, PerPositionMLP, match_param_count,
                                        param_count)
from labcore.glassbox.model import GPT, GPTConfig
from labcore.measures.posterior import CalibrationReport, evaluate_bijection
from labcore.tasks.bijection import BijectionBatch, BijectionTask, batch_fn, device_batches
from labcore.training.trainer import TrainConfig, seeded_model, train

ARMS = ("transformer", "per_position", "flattened", "deep_flattened", "lstm")


@dataclass(frozen=True)
class SeparationConfig:
    """What decides the experiment (besides the seed and the device)."""

    V: int = 20
    L: int = 19
    d_model: int = 128              # transformer width (heads of 32)
    n_layers: int = 4
    n_heads: int = 4
    steps: int = 8000
    batch: int = 256
    lr: float = 1e-3
    warmup: int = 500
    eval_size: int = 2048
    flat_d: int = 16                # token+position embedding width of the flattened MLPs
    deep_layers: int = 8            # residual blocks of the deep flattened MLP
    lstm_d: int = 64                # LSTM input embedding
    lstm_layers: int = 2
    fast: dict = field(default_factory=dict)   # fast-path options of TrainConfig (CUDA)

    @property
    def task(self) -> BijectionTask:
        return BijectionTask(V=self.V, L=self.L, replacement=False)

    def gpt_config(self) -> GPTConfig:
        t = self.task
        return GPTConfig(vocab_size=t.vocab_size, n_ctx=t.seq_len, d_model=self.d_model,
                         n_layers=self.n_layers, n_heads=self.n_heads)


def arm_builders(cfg: SeparationConfig) -> dict[str, Callable[[], nn.Module]]:
    """One zero-argument constructor per arm, each baseline sized to the transformer's parameters."""
    t, gpt_cfg = cfg.task, cfg.gpt_config()
    V, T = t.vocab_size, t.seq_len
    with torch.device("meta"):
        target = param_count(GPT(gpt_cfg))
    d = cfg.d_model
    m_pp = match_param_count(lambda m: PerPositionMLP(V, d, 4, m, n_positions=T), target)
    h_flat = match_param_count(lambda h: FlattenedContextMLP(V, T, cfg.flat_d, h, 2), target)
    h_deep = match_param_count(lambda h: FlattenedContextMLP(V, T, cfg.flat_d, h, cfg.deep_layers), target)
    h_lstm = match_param_count(lambda h: LSTMBaseline(V, cfg.lstm_d, h, cfg.lstm_layers), target)
    return {
        "transformer": lambda: GPT(gpt_cfg),
        "per_position": lambda: PerPositionMLP(V, d, 4, m_pp, n_positions=T),
        "flattened": lambda: FlattenedContextMLP(V, T, cfg.flat_d, h_flat, 2),
        "deep_flattened": lambda: FlattenedContextMLP(V, T, cfg.flat_d, h_deep, cfg.deep_layers),
        "lstm": lambda: LSTMBaseline(V, cfg.lstm_d, h_lstm, cfg.lstm_layers),
    }


@dataclass
class ArmResult:
    name: str
    params: int
    report: CalibrationReport
    steps_per_second: float
    train_seconds: float
    final_loss: float
    loss_curve: np.ndarray          # every 50th training loss (nats)


@torch.no_grad()
def grade(model: nn.Module, batch: BijectionBatch, task: BijectionTask, device) -> CalibrationReport:
    """evaluate_bijection on ``batch`` (CPU tensors), the forward in chunks of 512 on ``device``."""
    model.eval()
    logits = torch.cat([model(chunk.to(device)).float().cpu() for chunk in batch.tokens.split(512)])
    return evaluate_bijection(logits, batch, task)


def train_arm(name: str, build: Callable[[], nn.Module], cfg: SeparationConfig, seed: int, device,
              ev: BijectionBatch) -> ArmResult:
    """Train one arm with the shared recipe and grade it on the evaluation batch ``ev``."""
    task = cfg.task
    model = seeded_model(build, seed).to(device)
    on_gpu = torch.device(device).type == "cuda"
    batches = (device_batches(lambda g: task.sample_torch(cfg.batch, g, device), device) if on_gpu
               else batch_fn(task, cfg.batch))
    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01, schedule="warmup_cosine",
                     warmup_steps=min(cfg.warmup, cfg.steps // 5), grad_clip=1.0, seed=seed,
                     track_update_ratio=False, device=str(device), **(cfg.fast if on_gpu else {}))
    run = train(model, batches, tc)
    if run.diverged:
        raise RuntimeError(f"separation arm {name!r} (seed {seed}) {run.message}")
    loss = run.metrics["loss"]
    return ArmResult(name=name, params=param_count(model), report=grade(model, ev, task, device),
                     steps_per_second=run.steps_per_second, train_seconds=run.seconds,
                     final_loss=float(np.mean(loss[-50:])), loss_curve=np.asarray(loss[::50]))


def run_separation(cfg: SeparationConfig, seed: int, device="cpu", arms: tuple[str, ...] = ARMS,
                   eval_seed_base: int = 7_000_003) -> dict[str, ArmResult]:
    """Train and grade every arm in ``arms`` (names from ``ARMS``) on one evaluation batch."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; use names from {ARMS}")
    builders = arm_builders(cfg)
    ev = cfg.task.sample(cfg.eval_size, torch.Generator().manual_seed(eval_seed_base + seed))
    return {name: train_arm(name, builders[name], cfg, seed, device, ev) for name in arms}
