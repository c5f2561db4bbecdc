"""Shared models for the Bayesian wind-tunnel claims (arXiv 2512.22471).

One small transformer is trained per seed on bijection elimination (V=10, L=9, sep-vocab, keys
without replacement) and shared by every geometry/calibration claim of the session. The recipe
is the research report's (papers.md §1.10) with a 3rd layer, so that layer-wise claims have
depth, and a cosine decay (the authors' own schedule) so that 1,000 steps — about a minute on
one busy CPU core — land well below the 0.05-bit target:

    3 layers, d=64, 4 heads, LayerNorm pre-norm, GELU MLP ×4, learned positions, tied embeddings
    AdamW (0.9, 0.99), wd 0.01, lr 3e-3, 200 warmup steps + cosine to 0, clip 1.0, batch 128

While it trains, the run keeps snapshots of the weights (for the frame–precision claim) and an
``Every`` callback grades calibration on the fixed evaluation batch every ``EVAL_EVERY`` steps.
The final model goes through ``labcore.checkpoint.cached``; the snapshots and the calibration
curve are cached beside it under the same key, so a second session loads everything in a
second. ``LAB_MODEL_CACHE=0`` turns the cache off (CI trains afresh).

Batches: training draws from the trainer's generator seeded with ``lab_seed``; the evaluation
batch (1024 sequences) and the probe batch (512 sequences) come from their own generators, so
they never overlap the training stream by construction of the seeds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.bayes import CalibrationReport, evaluate_bijection
from labcore.checkpoint import cache_key, cached, load_model, save_model
from labcore.plots import atomic_write_text
from labcore.tasks.bijection import BijectionBatch, BijectionTask, batch_fn
from labcore.trainer import Every, Snapshots, TrainConfig, seeded_model, train

TASK = BijectionTask(V=10, L=9, replacement=False)
MODEL_CONFIG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=64, n_layers=3, n_heads=4)
STEPS = 1000
BATCH = 128
TRAIN_CONFIG = dict(steps=STEPS, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01, schedule="warmup_cosine",
                    warmup_steps=200, grad_clip=1.0)
SNAPSHOT_STEPS = (0, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800, STEPS)
EVAL_EVERY = 50
EVAL_SIZE, PROBE_SIZE = 1024, 512
EVAL_SEED_BASE, PROBE_SEED_BASE = 1_000_003, 2_000_003  # + lab_seed; training uses lab_seed itself
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
    was = model.training
    model.eval()
    try:
        return evaluate_bijection(model(batch.tokens), batch, TASK)
    finally:
        model.train(was)


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
    # what the claim files need, so that they import nothing from this conftest
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
        return seeded_model(lambda: GPT(MODEL_CONFIG), self.seed if seed is None else seed).eval()


def _cache_folder() -> Path | None:
    """Where `cached` puts models (the same rule: <results>/cache/models or LAB_CACHE_DIR/models),
    or None when LAB_MODEL_CACHE=0 turns caching off."""
    if os.environ.get("LAB_MODEL_CACHE") == "0":
        return None
    from labcore.paths import cache_dir

    return cache_dir() / "models"


def _extras_paths(folder: Path, seed: int) -> tuple[dict[int, Path], Path]:
    key = cache_key(MODEL_CONFIG, seed, recipe())
    snaps = {s: folder / f"{CACHE_NAME}-{key}-step{s}.safetensors" for s in SNAPSHOT_STEPS}
    return snaps, folder / f"{CACHE_NAME}-{key}-curve.json"


def train_bijection(seed: int) -> BijectionRun:
    """Train (or load) the shared model of ``seed``; see the module docstring for the recipe."""
    ev, pb = eval_batch(seed), probe_batch(seed)
    trained: dict = {}

    def grade(step: int, model: torch.nn.Module) -> dict:
        r = evaluate_bijection(model(ev.tokens), ev, TASK)
        return {"mae": r.entropy_mae_bits, "kl": r.kl_bits, "eliminated_mass": r.eliminated_mass,
                "mean_curve_mae": r.mean_curve_mae_bits}

    def train_fn() -> GPT:
        model = seeded_model(lambda: GPT(MODEL_CONFIG), seed)
        start = time.perf_counter()
        result = train(model, batch_fn(TASK, BATCH), train_config(seed),
                       callbacks=[Snapshots(SNAPSHOT_STEPS), Every(EVAL_EVERY, grade, "calibration")])
        trained["seconds"] = time.perf_counter() - start
        trained["steps_per_second"] = result.steps_per_second
        if result.diverged:
            raise RuntimeError(f"shared bijection model (seed {seed}) {result.message}")
        snaps = {}
        for step, state in result.snapshots.items():
            m = GPT(MODEL_CONFIG)
            m.load_state_dict(state)
            snaps[step] = m.eval()
        trained["snapshots"] = snaps
        trained["curve"] = [{"step": s, **v} for s, v in result.evals["calibration"]]
        return model.eval()

    folder = _cache_folder()
    model, from_cache = cached(CACHE_NAME, MODEL_CONFIG, seed, recipe(), train_fn, cache_dir=folder)
    snapshots: dict[int, GPT] = {}
    curve: list[dict] = []
    if from_cache and folder is not None:
        snap_paths, curve_path = _extras_paths(folder, seed)
        try:
            snapshots = {s: load_model(p, MODEL_CONFIG) for s, p in snap_paths.items()}
            curve = json.loads(curve_path.read_text())
        except (OSError, ValueError):
            model, from_cache = train_fn(), False  # a torn cache entry: retrain and rewrite all of it
            save_model(model, folder / f"{CACHE_NAME}-{cache_key(MODEL_CONFIG, seed, recipe())}.safetensors")
    if not from_cache:
        snapshots, curve = trained["snapshots"], trained["curve"]
        if folder is not None:
            snap_paths, curve_path = _extras_paths(folder, seed)
            for step, m in snapshots.items():
                save_model(m, snap_paths[step], extra={"step": str(step), "seed": str(seed)})
            atomic_write_text(curve_path, json.dumps(curve))
    return BijectionRun(seed=seed, model=model, snapshots=snapshots, curve=curve, eval_batch=ev,
                        probe_batch=pb, from_cache=from_cache, train_seconds=trained.get("seconds"),
                        steps_per_second=trained.get("steps_per_second"))


@pytest.fixture(scope="session")
def bijection_run(lab_seed: int) -> BijectionRun:
    """The shared V=10, L=9 transformer of this session's seed (trained once, or loaded)."""
    return train_bijection(lab_seed)


@pytest.fixture(scope="session")
def init_model(lab_seed: int) -> GPT:
    """The same architecture at its initialisation for this seed (= the run's step-0 snapshot)."""
    return seeded_model(lambda: GPT(MODEL_CONFIG), lab_seed).eval()
