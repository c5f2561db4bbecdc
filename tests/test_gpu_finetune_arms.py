"""The QLoRA-vs-16-bit-LoRA arms of the GPU claims: the 16-bit arm runs only where it fits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from labcore.pretrained import gpu_finetune
from labcore.pretrained.gpu_finetune import (
    BF16_LORA_HEADROOM,
    FinetuneMeasurement,
    qlora_and_bf16_lora,
)


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


def _measured(loss_first: float, loss_last: float, peak_gb: float, n_params: int = 1_000_000_000) -> FinetuneMeasurement:
    return FinetuneMeasurement(n_params=n_params, losses=[loss_first] * 5 + [loss_last] * 5, peak_bytes=int(peak_gb * 1e9))


def test_the_gpu_claims_checks_pass_a_good_run_and_name_each_failure() -> None:
    from labcore.pretrained.gpu_finetune import bf16_comparison, four_bit_failures

    qlora, lora = _measured(2.0, 1.5, 0.8), _measured(2.0, 1.48, 2.5)      # 1B params: 2 GB of bf16 weights
    assert four_bit_failures(qlora, "QLoRA") == []
    values, failures = bf16_comparison(qlora, lora, 0.05, "QLoRA")
    assert failures == [] and values["peak_over_lora_bf16"] == 0.8 / 2.5
    assert values["loss_last5_minus_lora_bf16"] == pytest.approx(0.02)
    heavy_flat = four_bit_failures(_measured(2.0, 1.95, 1.3), "QLoRA")    # peak > 0.6 × 2 GB; drop < 0.1
    assert len(heavy_flat) == 2 and "not ≤ 0.6 × bf16 weights" in heavy_flat[0] and "loss went" in heavy_flat[1]
    _, failures = bf16_comparison(_measured(2.0, 1.7, 0.8), _measured(2.0, 1.5, 1.5), 0.05, "QLoRA")
    assert any(f.startswith("control: 16-bit LoRA peaked") for f in failures)     # 1.5 GB < its 2 GB of weights
    assert any("QLoRA peak" in f for f in failures)                              # 0.8 > 0.5 × 1.5 GB
    assert any("ends +0.200 nats from 16-bit LoRA" in f for f in failures)
