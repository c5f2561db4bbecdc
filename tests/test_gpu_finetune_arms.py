"""The QLoRA-vs-16-bit-LoRA arms of the GPU claims: the 16-bit arm runs only where it fits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from labcore.pretrained import gpu_finetune
from labcore.pretrained.gpu_finetune import BF16_LORA_HEADROOM, FinetuneMeasurement, qlora_and_bf16_lora


@pytest.mark.parametrize("card_gb, runs_baseline", [(16, False), (80, True)])
def test_the_16_bit_arm_runs_only_where_it_fits(monkeypatch: pytest.MonkeyPatch, card_gb: int,
                                                runs_baseline: bool) -> None:
    calls: list[bool] = []

    def fake_run(load, adapt, **train):  # a 7B model: 14 GB of bf16 weights
        calls.append(load()[0])
        return FinetuneMeasurement(n_params=7_000_000_000), {"gpu": "fake"}

    monkeypatch.setattr(gpu_finetune, "load_then_finetune", fake_run)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=card_gb * 10**9))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    qlora, baseline = qlora_and_bf16_lora(lambda four_bit: (four_bit, None), lambda model, four_bit: model, steps=1)
    assert qlora[0].n_params == 7_000_000_000 and calls == ([True, False] if runs_baseline else [True])
    if not runs_baseline:
        assert isinstance(baseline, str) and f"~{BF16_LORA_HEADROOM * 14:.1f} GB" in baseline and "16.0 GB" in baseline
