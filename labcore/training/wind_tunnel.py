"""The shared wind-tunnel transformer of the Bayesian claims (arXiv 2512.22471), one per seed.

One small transformer is trained per seed on bijection elimination (V=10, L=9, sep-vocab, keys
without replacement) and shared by every geometry/calibration claim of the session. The recipe
is the research report's (papers.md §1.10) with a 3rd layer, so that layer-wise claims have
depth, and a cosine decay (the authors' own schedule) so that 1,000 steps — about a minute on
one busy CPU core — land well below the 0.05-bit target:

    3 layers, d=64, 4 heads, LayerNorm pre-norm, GELU MLP ×4, learned positions, tied embeddings
    AdamW (0.9, 0.99), wd 0.01, lr 3e-3, 200 warmup steps + cosine to 0, clip 1.0, batch 128

While it trains, the run keeps snapshots of the weights (for the frame–precision claim) and an
``Every`` callback grades calibration on the fixed evaluation batch every ``EVAL_EVERY`` steps.
The final model, the snapshots and the calibration curve are cached together under one key
(``labcore.training.cache.cached_run``), so a second session loads everything in a second.

Batches: training draws from the trainer's generator seeded with ``seed``; the evaluation
batch (1024 sequences) and the probe batch (512 sequences) come from their own generators, so
they never overlap the training stream by construction of the seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from labcore.glassbox.model import GPT, GPTConfig
from labcore.glassbox.modes import evaluating
from labcore.measures.posterior import CalibrationReport, evaluate_bijection
from labcore.tasks.bijection import BijectionBatch, BijectionTask, batch_fn
from labcore.training.cache import CachedRun, cached_run
from labcore.training.trainer import Every, Snapshots, TrainConfig, seeded_model, train

TASK = BijectionTask(V=10, L=9, replacement=False)
MODEL_CONFIG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=64, n_layers=3, n_heads=4)
STEPS = 1000
BATCH = 128
TRAIN_CONFIG = dict(steps=STEPS, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01, schedule="warmup_cosine",
                    warmup_steps=200, grad_clip=1.0)
SNAPSHOT_STEPS = (0, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800, STEPS)
EVAL_EVERY = 50
EVAL_SIZE, PROBE_SIZE = 1024, 512
EVAL_SEED_BASE, PROBE_SEED_BASE = 1_000_003, 2_000_003  # + seed; training uses the seed itself
CACHE_NAME = "bayes_bijection_v10"


def train_config(seed: int) -> TrainConfig:
    return TrainConfig(seed=seed, track_update_ratio=False, **TRAIN_CONFIG)


def recipe() -> dict:
    """Everything besides the model config and seed that decides the trained weights (cache key)."""
    return {"task": [TASK.V, TASK.L, TASK.replacement], "batch": BATCH, **TRAIN_CONFIG,
            "snapshots": list(SNAPSHOT_STEPS), "eval_every": EVAL_EVERY, "eval": [EVAL_SIZE, EVAL_SEED_BASE]}


def eval_batch(seed: int) -> BijectionBatch:
    return TASK.sample(EVAL_SIZE, torch.Generator().manual_seed(EVAL_SEED_BASE + seed))


def probe_batch(seed: int) -> BijectionBatch:
    return TASK.sample(PROBE_SIZE, torch.Generator().manual_seed(PROBE_SEED_BASE + seed))


@torch.no_grad()
def calibration(model: torch.nn.Module, batch: BijectionBatch) -> CalibrationReport:
    with evaluating(model):
        return evaluate_bijection(model(batch.tokens), batch, TASK)


def init_model(seed: int) -> GPT:
    """The architecture at its initialisation for ``seed`` (= the run's step-0 snapshot)."""
    return seeded_model(lambda: GPT(MODEL_CONFIG), seed).eval()


@dataclass
class BijectionRun:
    """The shared transformer of one seed, with what was kept while it trained."""

    seed: int
    model: GPT                                  # final weights, eval mode, CPU
    snapshots: dict[int, GPT]                   # step -> model at that step (0 = init)
    curve: list[dict]                           # [{step, mae, kl, eliminated_mass, mean_curve_mae}]
    eval_batch: BijectionBatch
    probe_batch: BijectionBatch
    from_cache: bool
    train_seconds: float | None                 # None when loaded from the cache
    steps_per_second: float | None
    report: CalibrationReport = field(init=False)   # the final model on the evaluation batch
    # what the claim files need, so that they import nothing from a conftest
    task: BijectionTask = TASK
    config: GPTConfig = MODEL_CONFIG
    steps: int = STEPS
    batch_size: int = BATCH
    train_config: dict = field(default_factory=lambda: dict(TRAIN_CONFIG))

    def __post_init__(self) -> None:
        self.report = calibration(self.model, self.eval_batch)

    def calibrate(self, model: torch.nn.Module, batch: BijectionBatch | None = None) -> CalibrationReport:
        """Calibration of any model with this run's task on ``batch`` (default: the eval batch)."""
        return calibration(model, self.eval_batch if batch is None else batch)

    def fresh_model(self, seed: int | None = None) -> GPT:
        """The same architecture, freshly initialised from ``seed`` (default: the run's seed)."""
        return init_model(self.seed if seed is None else seed)


def train_bijection(seed: int) -> BijectionRun:
    """Train (or load) the shared model of ``seed``; see the module docstring for the recipe."""
    ev, pb = eval_batch(seed), probe_batch(seed)

    def grade(step: int, model: torch.nn.Module) -> dict:
        r = evaluate_bijection(model(ev.tokens), ev, TASK)
        return {"mae": r.entropy_mae_bits, "kl": r.kl_bits, "eliminated_mass": r.eliminated_mass,
                "mean_curve_mae": r.mean_curve_mae_bits}

    def train_fn() -> CachedRun:
        model = seeded_model(lambda: GPT(MODEL_CONFIG), seed)
        start = time.perf_counter()
        result = train(model, batch_fn(TASK, BATCH), train_config(seed),
                       callbacks=[Snapshots(SNAPSHOT_STEPS), Every(EVAL_EVERY, grade, "calibration")])
        seconds = time.perf_counter() - start
        if result.diverged:
            raise RuntimeError(f"shared bijection model (seed {seed}) {result.message}")
        snapshots = {}
        for step, state in result.snapshots.items():
            m = GPT(MODEL_CONFIG)
            m.load_state_dict(state)
            snapshots[step] = m.eval()
        curve = [{"step": s, **v} for s, v in result.evals["calibration"]]
        return CachedRun(model.eval(), snapshots, {"curve": curve, "seconds": seconds,
                                                    "steps_per_second": result.steps_per_second})

    run = cached_run(CACHE_NAME, MODEL_CONFIG, seed, recipe(), train_fn)
    fresh = not run.from_cache
    return BijectionRun(seed=seed, model=run.model, snapshots=run.snapshots, curve=run.extras["curve"],
                        eval_batch=ev, probe_batch=pb, from_cache=run.from_cache,
                        train_seconds=run.extras["seconds"] if fresh else None,
                        steps_per_second=run.extras["steps_per_second"] if fresh else None)
