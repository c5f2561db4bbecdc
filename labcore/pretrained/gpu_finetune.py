"""Measure a short (Q)LoRA fine-tuning run of a large model on a GPU: memory, speed, loss.

The GPU-tier claims (peft + bitsandbytes, and unsloth) load a local 7B-class checkpoint their own
way, then hand the model here: the same corpus windows, optimiser, timing and memory accounting
for both, so their figures can be compared line by line.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class FinetuneMeasurement:
    n_params: int  # parameters as stored unpacked (a 4-bit byte holds two)
    losses: list[float] = field(default_factory=list)  # per step, nats/token
    step_seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0  # torch.cuda.max_memory_allocated over loading and training
    tokens_per_s: float = float("nan")  # after 5 warm-up steps
    warmup_steps: int = 5

    @property
    def bf16_bytes(self) -> int:
        """What the same weights take in bf16: the control the 4-bit peak must stay well under."""
        return 2 * self.n_params

    @property
    def loss_first(self) -> float:
        return float(np.mean(self.losses[: self.warmup_steps]))

    @property
    def loss_last(self) -> float:
        return float(np.mean(self.losses[-self.warmup_steps :]))

    def as_record(self) -> dict:
        out = asdict(self)
        out.update(bf16_weight_GB=self.bf16_bytes / 1e9, peak_training_GB=self.peak_bytes / 1e9,
                   peak_over_bf16=self.peak_bytes / self.bf16_bytes, loss_first5=self.loss_first,
                   loss_last5=self.loss_last)
        return out


def unpacked_param_count(model) -> int:
    """bitsandbytes' Params4bit stores two 4-bit weights per uint8 element."""
    import torch

    return sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())


def measure_lora_finetune(model, tokenizer, *, steps: int, batch: int, seq: int, lr: float, seed: int) -> FinetuneMeasurement:
    """Train the model's trainable (LoRA) parameters for `steps` AdamW steps on corpus windows."""
    import torch

    from labcore.pretrained.corpus import causal_lm_loss, load_text, random_windows

    measurement = FinetuneMeasurement(n_params=unpacked_param_count(model))
    text = load_text("code") + "\n\n" + load_text("prose")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        windows = random_windows(ids, seq, batch, generator).to("cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = causal_lm_loss(model, (windows, windows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        measurement.step_seconds.append(time.perf_counter() - start)
        measurement.losses.append(float(loss))
    measurement.peak_bytes = torch.cuda.max_memory_allocated()
    timed = measurement.step_seconds[measurement.warmup_steps :]
    measurement.tokens_per_s = batch * seq * len(timed) / sum(timed)
    return measurement


def load_then_finetune(load, adapt, *, steps: int, batch: int, seq: int, lr: float,
                       seed: int) -> tuple[FinetuneMeasurement, dict]:
    """``load() -> (model, tokenizer)`` (timed, peak memory after it), ``adapt(model) -> model``
    with LoRA attached, then :func:`measure_lora_finetune`. Returns (measurement, loading facts:
    load_seconds, peak_after_load_GB, gpu)."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model, tokenizer = load()
    loading = {"load_seconds": time.perf_counter() - start,
               "peak_after_load_GB": torch.cuda.max_memory_allocated() / 1e9,
               "gpu": torch.cuda.get_device_name(0)}
    run = measure_lora_finetune(adapt(model), tokenizer, steps=steps, batch=batch, seq=seq, lr=lr, seed=seed)
    return run, loading


#: 16-bit LoRA needs its bf16 weights plus activations, LoRA/Adam state and allocator slack.
BF16_LORA_HEADROOM = 1.25


def qlora_and_bf16_lora(load, adapt, **train) -> tuple[tuple[FinetuneMeasurement, dict],
                                                       tuple[FinetuneMeasurement, dict] | str]:
    """Both arms of a QLoRA-vs-16-bit-LoRA comparison, one after the other, each starting from an
    emptied card: ``load(four_bit) -> (model, tokenizer)``, ``adapt(model, four_bit) -> model``,
    ``train`` as for :func:`load_then_finetune`. The 16-bit arm runs only when its bf16 weights ×
    ``BF16_LORA_HEADROOM`` fit the GPU; otherwise its place holds the one-line reason (a 7B
    model's 16-bit LoRA does not fit a 16 GB card — which is QLoRA's point)."""
    import gc

    import torch

    def emptied() -> None:
        gc.collect()
        torch.cuda.empty_cache()  # the next arm's peak starts from an empty card

    qlora = load_then_finetune(lambda: load(True), lambda model: adapt(model, True), **train)
    emptied()
    need, total = BF16_LORA_HEADROOM * qlora[0].bf16_bytes, torch.cuda.get_device_properties(0).total_memory
    if need > total:
        return qlora, (f"16-bit LoRA of this model needs ~{need / 1e9:.1f} GB and this GPU has {total / 1e9:.1f} GB: "
                       "the comparison needs a bigger card (QLoRA's point)")
    base = load_then_finetune(lambda: load(False), lambda model: adapt(model, False), **train)
    emptied()
    return qlora, base


#: The GPU QLoRA claims' bounds (claims/qlora/test_full_local_qlora.py, claims/lora/test_full_unsloth.py).
PEAK_OVER_BF16_WEIGHTS = 0.6   # 4-bit peak ≤ this × the model's bf16 weight bytes
PEAK_OVER_BF16_LORA = 0.5      # 4-bit peak ≤ this × the measured 16-bit LoRA peak
MIN_LOSS_DROP = 0.1            # nats, mean of the first 5 steps → mean of the last 5


def four_bit_failures(run: FinetuneMeasurement, label: str) -> list[str]:
    """The 4-bit arm's checks (memory under the bf16 weights, the loss falls); one message per failure."""
    failures = [] if math.isfinite(run.loss_last) else [f"{label}: final loss {run.loss_last}"]
    if run.peak_bytes > PEAK_OVER_BF16_WEIGHTS * run.bf16_bytes:
        failures.append(f"peak {run.peak_bytes / 1e9:.2f} GB is not ≤ {PEAK_OVER_BF16_WEIGHTS} × bf16 weights "
                        f"{run.bf16_bytes / 1e9:.2f} GB")
    if run.loss_last > run.loss_first - MIN_LOSS_DROP:
        failures.append(f"{label}: loss went {run.loss_first:.3f} → {run.loss_last:.3f} over {len(run.losses)} steps")
    return failures


def bf16_comparison(run: FinetuneMeasurement, base: FinetuneMeasurement, loss_tol: float,
                    label: str) -> tuple[dict, list[str]]:
    """4-bit ``run`` against 16-bit LoRA ``base`` on the same batches: (values to record, one message
    per failed check). The control that must come out large: the 16-bit run holds its bf16 weights."""
    values = {"peak_over_lora_bf16": run.peak_bytes / base.peak_bytes,
              "loss_last5_minus_lora_bf16": run.loss_last - base.loss_last}
    failures = [] if math.isfinite(base.loss_last) else [f"16-bit LoRA: final loss {base.loss_last}"]
    if base.peak_bytes < base.bf16_bytes:
        failures.append(f"control: 16-bit LoRA peaked at {base.peak_bytes / 1e9:.2f} GB, below its own bf16 weights "
                        f"{base.bf16_bytes / 1e9:.2f} GB: the baseline did not hold the model in 16 bits")
    if run.peak_bytes > PEAK_OVER_BF16_LORA * base.peak_bytes:
        failures.append(f"{label} peak {run.peak_bytes / 1e9:.2f} GB vs 16-bit LoRA {base.peak_bytes / 1e9:.2f} GB")
    if base.loss_last > base.loss_first - MIN_LOSS_DROP:
        failures.append(f"16-bit LoRA: loss went {base.loss_first:.3f} → {base.loss_last:.3f}")
    if run.loss_last - base.loss_last > loss_tol:
        failures.append(f"{label} ends {run.loss_last - base.loss_last:+.3f} nats from 16-bit LoRA on the same "
                        f"batches (> {loss_tol}): {run.loss_last:.3f} vs {base.loss_last:.3f}")
    return values, failures


def plot_loss(measurement: FinetuneMeasurement, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(np.arange(1, len(measurement.losses) + 1), measurement.losses)
    ax.set(xlabel="step", ylabel="loss (nats/token)",
           title=f"{title}: peak {measurement.peak_bytes / 1e9:.1f} GB, {measurement.tokens_per_s:.0f} tok/s")
    fig.tight_layout()
    return fig
