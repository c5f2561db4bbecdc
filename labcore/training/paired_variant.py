"""The authors' paired shared-vocabulary bijection model, trained once per seed (GPU tier).

Paper I's geometric claims (orthogonal key frame, single hypothesis-frame head) are made on its
paired variant (:mod:`labcore.tasks.bijection_paired`: ``[k1, v1, ..., kL, vL, q]``, one
vocabulary, an explicit query). The recipe is the authors' ``experiments/jlens/train_paired_variant.py``:

    V=20, L=19, 6 layers, 6 heads, d_model 192, RMSNorm, AdamW lr 3e-4 β=(0.9, 0.999) wd 0.1,
    warmup 1,000 steps then cosine, grad clip 1.0, batch 256 — 20k steps (the authors: 50k)

through the trainer's fast path (bf16 autocast, ``torch.compile`` unless ``LAB_COMPILE=0``, one host
sync per 500 steps). Every 2,000 steps a callback grades query accuracy, KL(Bayes ‖ model) at the
key positions, and the most orthogonal layer-0 head's mean |cos| (``measures.probes.key_orthogonality``).

Two GPU claims use the same model — ``bayes_key_orthogonality_shared`` and
``bayes_frame_head_shared`` — so :func:`train_paired_variant` trains once per (seed, device) and
process (memo) and keeps the weights and the curve in the model cache for the next process.
A run that diverged is returned (``diverged``, ``message``) and never cached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from labcore.glassbox.model import GPT, GPTConfig
from labcore.measures.probes import key_orthogonality
from labcore.tasks.bijection import device_batches
from labcore.tasks.bijection_paired import (
    PairedBatch,
    PairedBijectionTask,
    paired_scores,
)
from labcore.training.cache import CachedRun, cached_run
from labcore.training.trainer import Every, TrainConfig, gpu_fast_options, seeded_model, train

V, L = 20, 19
STEPS, WARMUP, BATCH = 20_000, 1_000, 256
EVAL_SIZE, CURVE_EVERY = 2048, 2000
TASK = PairedBijectionTask(V=V, L=L)
MODEL_CONFIG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=192, n_layers=6, n_heads=6,
                         norm="rmsnorm")
CACHE_NAME = "paired-variant"


def train_config(seed: int, device: str, steps: int = STEPS, fast: dict | None = None) -> TrainConfig:
    return TrainConfig(steps=steps, lr=3e-4, betas=(0.9, 0.999), weight_decay=0.1, schedule="warmup_cosine",
                       warmup_steps=min(WARMUP, steps), grad_clip=1.0, seed=seed, track_update_ratio=False,
                       device=device, **(gpu_fast_options("bf16") if fast is None else fast))


def eval_batch(seed: int, device, size: int = EVAL_SIZE) -> PairedBatch:
    """The fixed evaluation batch of ``seed`` (drawn on CPU, moved to ``device``)."""
    return TASK.sample(size, torch.Generator().manual_seed(3_000_019 + seed)).to(device)


@dataclass
class PairedRun:
    """A trained paired-variant model with its evaluation batch and training record."""

    seed: int
    model: GPT
    eval_batch: PairedBatch
    curve: list                     # [[step, query_accuracy, key_kl_bits, orth_min], ...]
    seconds: float | None           # training time; None when loaded from the cache
    steps_per_second: float | None
    diverged: bool = False
    message: str = ""
    from_cache: bool = False
    config: GPTConfig = MODEL_CONFIG
    task: PairedBijectionTask = field(default=TASK)


class _Diverged(Exception):
    def __init__(self, run: PairedRun):
        super().__init__(run.message)
        self.run = run


_MEMO: dict[tuple, PairedRun] = {}


def train_paired_variant(seed: int, device, steps: int = STEPS, config: GPTConfig = MODEL_CONFIG,
                         eval_size: int = EVAL_SIZE, fast: dict | None = None) -> PairedRun:
    """Train (or load) the paired-variant model of ``seed`` on ``device``; see the module docstring.
    ``steps``, ``config``, ``eval_size`` and ``fast`` exist for CPU tests of this code path."""
    device = str(torch.device(device))
    recipe = {"steps": steps, "eval_size": eval_size, "fast": gpu_fast_options("bf16") if fast is None else fast}
    key = (seed, device, config, repr(sorted(recipe.items())))
    if key not in _MEMO:
        _MEMO[key] = _train_or_load(seed, device, steps, config, eval_size, fast, recipe)
    return _MEMO[key]


def _train_or_load(seed, device, steps, config, eval_size, fast, recipe) -> PairedRun:
    ev = eval_batch(seed, device, eval_size)
    tokens = list(range(V))

    def grade(step: int, m: torch.nn.Module) -> list:
        s = paired_scores(m(ev.tokens), ev)
        return [step, s["query_accuracy"], s["key_kl_bits"], float(key_orthogonality(m, tokens).min())]

    def train_fn() -> CachedRun:
        model = seeded_model(lambda: GPT(config), seed).to(device)
        start = time.perf_counter()
        result = train(model, device_batches(lambda g: TASK.sample(BATCH, g), device),
                       train_config(seed, device, steps, fast),
                       callbacks=[Every(CURVE_EVERY, grade, "curve")])
        seconds = time.perf_counter() - start
        curve = [v for _, v in result.evals.get("curve", [])]
        if result.diverged:
            raise _Diverged(PairedRun(seed, model.eval(), ev, curve, seconds, result.steps_per_second,
                                      diverged=True, message=result.message, config=config))
        return CachedRun(model.eval(), {}, {"curve": curve, "seconds": seconds,
                                            "steps_per_second": result.steps_per_second})

    try:
        run = cached_run(CACHE_NAME, config, seed, recipe, train_fn)
    except _Diverged as d:
        return d.run
    fresh = not run.from_cache
    return PairedRun(seed, run.model.to(device).eval(), ev, run.extras["curve"],
                     run.extras["seconds"] if fresh else None, run.extras["steps_per_second"] if fresh else None,
                     from_cache=run.from_cache, config=config)
