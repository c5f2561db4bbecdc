"""The pretrained base of the fine-tuning claims, one per seed, and the runs shared between claims.

``pretrain_base`` trains a small glass-box GPT on the "pretrain" mixture of the two-domain
Markov language (``labcore.tasks.markov_domains``) and caches it (``labcore.training.cache``).
``FinetuneLab`` holds that base for one seed with its language and memoises fine-tuning runs
(``labcore.finetuning.recipes``), so several claims in one pytest session share them;
``shared_lab(seed)`` is that object per process.

Costs measured on the shared 2-core dev machine (OMP_NUM_THREADS=1, d_model 64, 2 layers,
batch 32 × 24 tokens): about 25 optimiser steps per second; the base (800 steps) trains in
≈ 35 s and is cached on disk; a 100-step fine-tune takes ≈ 4 s.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import asdict, dataclass
from typing import Any

from labcore.finetuning.recipes import FinetuneRecipe, FinetuneResult, finetune
from labcore.glassbox.model import GPT, GPTConfig
from labcore.tasks.markov_domains import DomainMarkovLanguage, MarkovBatch, expected_loss
from labcore.training.cache import cached
from labcore.training.trainer import TrainConfig, seeded_model, train

__all__ = ["BaseSpec", "pretrain_base", "FinetuneLab", "shared_lab"]


@dataclass(frozen=True)
class BaseSpec:
    """Model size and pretraining recipe of the base (cached on disk by ``pretrain_base``)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    steps: int = 800
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1

    def config(self, language: DomainMarkovLanguage) -> GPTConfig:
        return GPTConfig(
            vocab_size=language.vocab_size, n_ctx=language.seq_len, d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads,
        )


def pretrain_base(
    language: DomainMarkovLanguage, seed: int, spec: BaseSpec = BaseSpec(), use_cache: bool = True
) -> tuple[GPT, dict[str, Any]]:
    """Train the base on the "pretrain" mixture (or load it from the model cache).

    Returns (model in eval mode, info) with info = {"from_cache", "seconds", "loss_curve"
    (None when loaded)}. The cache key covers the language, the recipe, the seed and labcore's
    source hash (``labcore.training.cache.cached``).
    """
    cfg = spec.config(language)
    info: dict[str, Any] = {"loss_curve": None}

    def fit() -> GPT:
        model = seeded_model(lambda: GPT(cfg), seed)
        run = train(
            model,
            language.batch_fn("pretrain", spec.batch_size),
            TrainConfig(
                steps=spec.steps, lr=spec.lr, schedule="warmup_cosine", warmup_steps=spec.warmup_steps,
                min_lr_ratio=spec.min_lr_ratio, seed=seed, track_update_ratio=False,
            ),
        )
        info["loss_curve"] = run.metrics["loss"]
        return model

    start = time.perf_counter()
    recipe = {"kind": "finetune-base", "language": language.to_dict(), "spec": asdict(spec)}
    if use_cache:
        model, from_cache = cached("finetune-base", cfg, seed, recipe, fit)
    else:
        model, from_cache = fit(), False
    info["from_cache"] = from_cache
    info["seconds"] = time.perf_counter() - start
    return model.eval(), info



class FinetuneLab:
    """A pretrained base for one seed, its language, and memoised fine-tuning runs.

    ``lab.run(recipe)`` trains once per recipe and returns the same ``FinetuneResult`` to every
    later caller (claims in one pytest session share runs: the rank sweep, the forgetting
    curves and the subspace analyses all reuse "LoRA q,v r=8"). Do not modify a returned
    result's model in place; copy it (``copy.deepcopy``) first.
    """

    def __init__(
        self,
        seed: int,
        language: DomainMarkovLanguage | None = None,
        spec: BaseSpec = BaseSpec(),
        use_cache: bool = True,
    ):
        self.seed = int(seed)
        # One fixed language for every seed: the seed varies the base's init, the pretraining
        # and fine-tuning data streams and the LoRA init, not the task (see the module docstring).
        self.language = language if language is not None else DomainMarkovLanguage()
        self.spec = spec
        self.base, self.base_info = pretrain_base(self.language, self.seed, spec, use_cache=use_cache)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self._runs: dict[FinetuneRecipe, FinetuneResult] = {}
        self._eval_sets: dict[tuple[str, int], MarkovBatch] = {}

    def eval_set(self, task: str, n: int = 512) -> MarkovBatch:
        key = (task, n)
        if key not in self._eval_sets:
            self._eval_sets[key] = self.language.eval_batch(task, n, seed=2)
        return self._eval_sets[key]

    def oracle(self, task: str, n: int = 512) -> float:
        """Entropy of the true next-token distribution on the held-out set (the loss floor)."""
        return self.eval_set(task, n).oracle

    def base_loss(self, task: str, n: int = 512) -> float:
        """Expected loss of the (unadapted) base on the held-out set of ``task``."""
        return expected_loss(self.base, self.eval_set(task, n))

    def base_copy(self) -> GPT:
        model = copy.deepcopy(self.base)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def run(self, recipe: FinetuneRecipe | None = None, **kwargs: Any) -> FinetuneResult:
        """The run of ``recipe`` (or ``FinetuneRecipe(**kwargs)``), trained on first request."""
        if recipe is None:
            recipe = FinetuneRecipe(**kwargs)
        elif kwargs:
            raise TypeError("pass a recipe or keyword arguments, not both")
        if recipe not in self._runs:
            self._runs[recipe] = finetune(self.base, self.language, recipe, self.seed)
        return self._runs[recipe]

    @property
    def runs(self) -> dict[FinetuneRecipe, FinetuneResult]:
        return dict(self._runs)


@functools.lru_cache(maxsize=8)
def shared_lab(seed: int) -> FinetuneLab:
    """The process-wide ``FinetuneLab`` for ``seed`` (pytest session fixtures use this, so the
    claims of claims/lora, claims/qlora and claims/forgetting share one base and its runs)."""
    return FinetuneLab(seed)
