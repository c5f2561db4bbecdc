"""Fine-tuning recipes: full fine-tuning, LoRA and QLoRA of a pretrained glass-box base.

**Recipes.** ``FinetuneRecipe`` names a fine-tuning method: full fine-tuning, LoRA (the
reference ``LoRALinear`` or peft) on any target matrices, or QLoRA — the frozen base quantised
to NF4/FP4/Int4 with double quantisation, either as fake quantisation (quantise → dequantise in
fp32; numerically what QLoRA's forward pass computes, since it dequantises before the matmul)
or with real bitsandbytes ``Linear4bit`` layers plus peft (``backend="bnb"``). ``finetune``
trains one recipe and returns loss curves on the fine-tuning task *and* on the pretraining
domain A (the forgetting curve), the final expected losses on larger held-out sets, and the
adapted model. ``FinetuneLab`` holds one pretrained base per seed and memoises runs, so several

The base and the language: ``labcore.finetuning.base`` and ``labcore.tasks.markov_domains``.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labcore.finetuning.lora import LoRAFactors, lora_factors
from labcore.glassbox.modes import logits_of
from labcore.tasks.markov_domains import DomainMarkovLanguage, expected_loss
from labcore.training.trainer import Every, TrainConfig, TrainResult, train

__all__ = ["FinetuneRecipe", "FinetuneResult", "prepare", "finetune", "LORA_LR", "FULL_LR"]

#: Learning rates, chosen once on the fine-tuning task "B" for the *default* recipe of each
#: method (LoRA: q,v r=8 α=8; full fine-tuning) and then kept fixed for every rank, target set
#: and data type, as the LoRA paper does for α ("we simply set α to the first r we try and do
#: not tune it"). Rule: the smallest learning rate whose mean final B-loss over seeds 0 and 1
#: is within 1 % of the best on the grid (100 steps, warmup 10, cosine). Measured (mean of
#: seeds 0, 1; oracle 1.635): LoRA lr 3e-3 → 1.777, 1e-2 → 1.719, 3e-2 → 1.701, 6e-2 → 1.697,
#: 1e-1 → 1.701; full fine-tuning lr 3e-4 → 1.669, 1e-3 → 1.654, 3e-3 → 1.652, 1e-2 → 1.655.
#: B-loss is flat above these values while forgetting of domain A keeps growing (LoRA at 1e-1:
#: A-loss 2.19 vs 2.02 at 3e-2; full at 1e-2: 2.75 vs 2.04 at 1e-3).
LORA_LR = 3e-2
FULL_LR = 1e-3


Method = Literal["full", "lora", "qlora"]


@dataclass(frozen=True)
class FinetuneRecipe:
    """How to fine-tune. Hashable: ``FinetuneLab`` memoises runs by recipe.

    method    "full" (every parameter trains), "lora" (frozen fp32 base + LoRA) or "qlora"
              (frozen base quantised to ``quant`` + LoRA in fp32)
    targets   LoRA target keys for ``labcore.finetuning.lora.resolve_targets("labcore", ...)``: a tuple such
              as ("q", "v"), ("q",), ("q", "k", "v", "o", "mlp"), or "all_linear"
    r, alpha  rank and α; the update is (α/r)·B·A (LoRA §4.1)
    lr        peak learning rate; None → LORA_LR for LoRA/QLoRA, FULL_LR for full fine-tuning
    impl      "reference" (labcore.finetuning.lora.LoRALinear) or "peft"; backend "bnb" always uses peft
    quant     QLoRA storage type of the frozen base: "nf4", "fp4", "int4" (or, fake backend only,
              the coarser "nf3"/"nf2" of ``labcore.finetuning.quant.nf_codebook``)
    block_size  QLoRA quantisation block (64 as in the paper; larger blocks quantise coarser; fake only)
    backend   QLoRA: "fake" (quantise → dequantise in fp32) or "bnb" (bitsandbytes Linear4bit,
              nf4/fp4 only, guarded against the CPU repacking pitfall)
    task      the fine-tuning task ("B", or "far" for the far control)
    init_tag  extra text mixed into the LoRA init seed (to draw a second, independent init)
    """

    method: Method = "lora"
    targets: tuple[str, ...] | str = ("q", "v")
    r: int = 8
    alpha: float = 8.0
    lr: float | None = None
    steps: int = 100
    batch_size: int = 32
    warmup_steps: int = 10
    impl: Literal["reference", "peft"] = "reference"
    quant: str = "nf4"
    block_size: int = 64
    double_quant: bool = True
    backend: Literal["fake", "bnb"] = "fake"
    task: str = "B"
    init_tag: str = ""

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora", "qlora"):
            raise ValueError(f"method must be full, lora or qlora, got {self.method!r}")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.r < 1:
            raise ValueError(f"LoRA rank must be ≥ 1, got {self.r}")
        if self.task not in ("B", "far", "B0", "A", "pretrain"):
            raise ValueError(f"unknown fine-tuning task {self.task!r}")
        if self.backend not in ("fake", "bnb"):
            raise ValueError(f"backend must be fake or bnb, got {self.backend!r}")
        if self.backend == "bnb" and self.quant not in ("nf4", "fp4"):
            raise ValueError("bitsandbytes stores nf4 or fp4 only; use backend='fake' for int4")
        if self.backend == "bnb" and self.block_size != 64:
            raise ValueError("the bitsandbytes backend is used with blocks of 64 only; use backend='fake'")

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return FULL_LR if self.method == "full" else LORA_LR

    @property
    def label(self) -> str:
        """A short human-readable name, e.g. "LoRA q,v r=8" or "QLoRA nf4 all-linear r=8"."""
        if self.method == "full":
            name = "full FT"
        else:
            where = "all-linear" if self.targets == "all_linear" else ",".join(self.targets)
            name = ("LoRA" if self.method == "lora" else f"QLoRA {self.quant}") + f" {where} r={self.r}"
            if self.alpha != 8.0:
                name += f" α={self.alpha:g}"
            if self.method == "qlora" and self.block_size != 64:
                name += f" block={self.block_size}"
        if self.lr is not None:
            name += f" lr={self.lr:g}"
        return name

    def init_seed(self, seed: int) -> int:
        """Seed of the LoRA A init: differs between recipes (ranks, targets), so A_{r=8} and
        A_{r=64} start from independent random matrices, as separate runs in the paper do."""
        text = f"{seed}/{self.targets}/{self.r}/{self.impl}/{self.init_tag}"
        return zlib.crc32(text.encode()) % (2**31)


@dataclass
class FinetuneResult:
    """One fine-tuning run.

    ``curve_steps`` are the optimiser steps at which ``curves[task]`` (expected loss on a
    small fixed eval set of that task) were measured; step 0 is the base model. ``final[task]``
    is the expected loss after training on the larger held-out set. ``train`` is the trainer's
    per-step record (``train.metrics["loss"]`` is the training loss curve).
    """

    recipe: FinetuneRecipe
    seed: int
    model: nn.Module
    train: TrainResult
    curve_steps: np.ndarray
    curves: dict[str, np.ndarray]
    final: dict[str, float]
    trainable_params: int
    adapted: list[str]
    seconds: float

    @property
    def loss_curve(self) -> np.ndarray:
        return self.train.metrics["loss"]

    def factors(self) -> dict[str, LoRAFactors]:
        return lora_factors(self.model)

    def summary(self) -> dict[str, float]:
        return {f"final_{k}": v for k, v in self.final.items()} | {
            "trainable_params": self.trainable_params, "seconds": self.seconds,
        }


def prepare(base: nn.Module, recipe: FinetuneRecipe, seed: int) -> tuple[nn.Module, list[str]]:
    """A fresh copy of ``base`` set up for ``recipe`` (quantised and/or adapted); returns
    (model, names of the adapted or quantised linear layers)."""
    from labcore.finetuning import lora as L
    from labcore.finetuning import quantized as QM

    model = copy.deepcopy(base)
    if recipe.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, []
    # "all_linear" → every linear layer of the blocks, spelled out (the output layer is tied to
    # the embedding in the glass-box model, so there is nothing else to exclude).
    keys = ("q", "k", "v", "o", "mlp") if recipe.targets == "all_linear" else recipe.targets
    names = L.resolve_targets("labcore", keys)
    if recipe.method == "qlora":
        if recipe.backend == "fake":
            QM.fake_quantize_model(model, recipe.quant, block_size=recipe.block_size, double_quant=recipe.double_quant)
        else:
            QM.quantize_model_4bit(model, recipe.quant, double_quant=recipe.double_quant, guard=True)
    use_peft = recipe.impl == "peft" or (recipe.method == "qlora" and recipe.backend == "bnb")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.init_seed(seed))
        if use_peft:
            model = L.peft_lora(model, names, r=recipe.r, alpha=recipe.alpha)
            adapted = sorted(lora_factors(model))
        else:
            adapted = L.apply_lora(model, names, r=recipe.r, alpha=recipe.alpha)
    return model, adapted


def finetune(
    base: nn.Module,
    language: DomainMarkovLanguage,
    recipe: FinetuneRecipe,
    seed: int,
    eval_every: int = 10,
    curve_tasks: Sequence[str] = ("A", "B"),
    curve_eval_size: int = 96,
    final_tasks: Sequence[str] = ("A", "B0", "B"),
    final_eval_size: int = 512,
    callbacks: Iterable[Any] = (),
) -> FinetuneResult:
    """Fine-tune a copy of ``base`` with ``recipe`` (the base itself is not modified).

    The training data stream is seeded by ``seed`` (the same batches for every recipe with the
    same seed, so differences between recipes are paired); the LoRA init by
    ``recipe.init_seed(seed)``. Every ``eval_every`` steps the expected loss on small fixed eval
    sets of ``curve_tasks`` is recorded (the learning and forgetting curves).
    """
    model, adapted = prepare(base, recipe, seed)
    curve_tasks = list(dict.fromkeys([*curve_tasks, recipe.task]))
    final_tasks = list(dict.fromkeys([*final_tasks, recipe.task]))
    curve_sets = {t: language.eval_batch(t, curve_eval_size, seed=1) for t in curve_tasks}
    final_sets = {t: language.eval_batch(t, final_eval_size, seed=2) for t in final_tasks}
    step0 = {t: expected_loss(model, b) for t, b in curve_sets.items()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cfg = TrainConfig(
        steps=recipe.steps, lr=recipe.peak_lr, schedule="warmup_cosine", warmup_steps=recipe.warmup_steps,
        seed=seed + 10_007, track_update_ratio=False,
    )

    def evaluate(step: int, m: nn.Module) -> dict[str, float]:
        return {t: expected_loss(m, b) for t, b in curve_sets.items()}

    start = time.perf_counter()
    run = train(
        model, language.batch_fn(recipe.task, recipe.batch_size), cfg,
        loss_fn=_next_token_loss, callbacks=[Every(eval_every, evaluate, name="curves"), *callbacks],
    )
    if run.diverged:
        final = {t: float("nan") for t in final_tasks}
    else:
        final = {t: expected_loss(model, b) for t, b in final_sets.items()}
    seconds = time.perf_counter() - start
    points = [(0, step0), *run.evals.get("curves", [])]
    return FinetuneResult(
        recipe=recipe, seed=seed, model=model.eval(), train=run,
        curve_steps=np.array([s for s, _ in points]),
        curves={t: np.array([v[t] for _, v in points]) for t in curve_tasks},
        final=final, trainable_params=trainable, adapted=list(adapted), seconds=seconds,
    )


def _next_token_loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy that also accepts peft wrappers (which return the logits too)."""
    tokens, targets = batch[0], batch[1]
    logits = logits_of(model(tokens))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

