"""Blockwise 4-bit quantisation round trip: idempotent, zero-preserving, error bounded by the code's gaps.

Lab notebook. QLoRA §2 "Block-wise k-bit Quantization": each block of 64 weights is scaled by
its absmax into [−1, 1] and every value is replaced by the nearest codebook entry; dequantising
multiplies back. Three laws follow from that recipe, whatever the codebook:

* **idempotence**: quantising the dequantised tensor gives the same codes and constants
  (each block's absmax is represented exactly, because every code reaches ±1);
* **exact zeros stay zero** (NF4, FP4 and Int4 all contain 0 — the reason NF4 is asymmetric);
* **error bound**: |w − ŵ| ≤ absmax_block · (largest half-gap of the codebook).

Checked on the linear weights of the small pretrained base (labcore.finetuning.recipes; 12 matrices,
≈ 98k weights) and on N(0,1) blocks, for NF4, FP4 and Int4; then the same for the double-quantised
NF4 codes, and our round trip against bitsandbytes' quantize_4bit/dequantize_4bit (NF4 and FP4,
no DQ: bit for bit). Control for "the error is small": the bound is nearly attained (the worst
error is ≥ 50 % of it), so it is a tight bound and not a loose one.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.finetuning import quant as Q

from labcore.finetuning import quantized as QM
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="qlora_roundtrip",
    paper="qlora",
    statement=(
        "“We chunk the input tensor X ∈ ℝ^{b×h} into n contiguous blocks of size B by flattening the "
        "input tensor and slicing the linear segment into n = (b × h)/B blocks. We quantize these "
        "blocks independently with Equation 1 …”"
    ),
    source=Source(
        title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
        where="§2 “Block-wise k-bit Quantization”, Eq. 1–2",
    ),
    paper_value="definitional (quantise / dequantise laws)",
    prediction=(
        "Idempotent codes and constants, exact zeros preserved, max error ≤ absmax · max half-gap, "
        "for NF4, FP4 and Int4; equal to bitsandbytes bit for bit."
    ),
    metric=(
        "code equality after re-quantisation; ŵ at w = 0; max over blocks of |w − ŵ| / (absmax · half-gap); "
        "max |ours − bitsandbytes|"
    ),
    tolerance="exact (bitwise) for idempotence, zeros and bitsandbytes; error ratio ≤ 1 + 1e-6; control: worst ratio ≥ 0.5",
    tolerance_why=(
        "The laws are exact properties of round-to-nearest on a codebook that contains 0 and ±1; "
        "1e-6 covers the float32 rounding of w/absmax."
    ),
    tier="quick",
    calibration="fixtures/calibration/qlora_roundtrip.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)


def _weights(finetune_lab):
    base = finetune_lab.base
    return {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int4"])
def test_roundtrip_laws_on_pretrained_and_gaussian_weights(lab, finetune_lab, kind):
    g = torch.Generator().manual_seed(lab.seed)
    tensors = _weights(finetune_lab)
    gauss = torch.randn(256, 64, generator=g)
    gauss.view(-1)[torch.rand(gauss.numel(), generator=g) < 0.05] = 0.0  # sprinkle exact zeros
    tensors["gaussian"] = gauss
    half_gap = Q.max_half_gap(kind)
    worst_ratio, idempotent, zeros_ok, n_zeros, ratios = 0.0, True, True, 0, []
    for name, w in tensors.items():
        q = Q.quantize_blockwise(w, kind, 64)
        w_hat = Q.dequantize(q)
        q2 = Q.quantize_blockwise(w_hat, kind, 64)
        idempotent &= torch.equal(q2.codes, q.codes) and torch.equal(q2.absmax, q.absmax)
        zeros = w == 0
        n_zeros += int(zeros.sum())
        zeros_ok &= bool((w_hat[zeros] == 0).all())
        blocks = w.reshape(-1, 64)
        err = (blocks - w_hat.reshape(-1, 64)).abs().amax(1)
        bound = blocks.abs().amax(1) * half_gap
        ratio = (err / bound.clamp(min=1e-30)).numpy()
        ratios.append(ratio)
        worst_ratio = max(worst_ratio, float(ratio.max()))
    ratios = np.concatenate(ratios)
    dq_idempotent = None
    if kind == "nf4":
        w = tensors["gaussian"]
        qd = Q.quantize_blockwise(w, "nf4", 64, double_quant=True)
        dq_idempotent = torch.equal(Q.quantize_blockwise(Q.dequantize(qd), "nf4", 64, double_quant=True).codes, qd.codes)
    bnb_diff = None
    if kind in ("nf4", "fp4") and QM.bnb_available():
        bnb_diff = max(float((Q.dequantize(Q.quantize_blockwise(w, kind, 64)) - QM.bnb_roundtrip(w, kind)).abs().max())
                       for w in tensors.values())
    lab.record(
        kind=kind, idempotent=idempotent, zeros_preserved=zeros_ok, n_exact_zeros=n_zeros,
        worst_error_over_bound=worst_ratio, median_error_over_bound=float(np.median(ratios)),
        max_half_gap=half_gap, dq_codes_idempotent=dq_idempotent, max_abs_diff_vs_bitsandbytes=bnb_diff,
        n_tensors=len(tensors),
    )

    fig, ax = plt.subplots(figsize=(5, 3.3))
    ax.hist(ratios, bins=50, color="C0")
    ax.axvline(1.0, color="C3", label="bound: absmax · max half-gap")
    ax.set(xlabel="max block error / bound", ylabel="blocks", title=f"{kind.upper()} round trip, {ratios.size} blocks")
    ax.legend(fontsize=7)
    lab.savefig(fig, f"error_over_bound_{kind}")

    assert idempotent, "re-quantising the dequantised tensor changed codes or constants"
    assert zeros_ok and n_zeros > 0, "exact zeros must stay exactly zero"
    assert worst_ratio <= 1 + 1e-6, f"error exceeds absmax · half-gap: ratio {worst_ratio:.6f}"
    assert worst_ratio >= 0.5, f"control: the bound should be nearly attained, worst ratio {worst_ratio:.3f}"
    if dq_idempotent is not None:
        assert dq_idempotent, "double-quantised NF4 codes are not idempotent"
    if bnb_diff is not None:
        assert bnb_diff == 0.0, f"our {kind} round trip differs from bitsandbytes by {bnb_diff:.3g}"
