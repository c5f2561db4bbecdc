"""The 3-bit float codebook ("fp3", E2M0) used beside "nf3" in the QLoRA exploration."""

import pytest
import torch

from labcore.finetuning import quant as Q


def test_fp3_is_bitsandbytes_e2m0_rule():
    values = torch.unique(Q.get_codebook("fp3"))
    assert values.tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]  # 7 distinct values for 8 codes
    F = pytest.importorskip("bitsandbytes.functional")
    ref = torch.unique(F.create_fp8_map(signed=True, exponent_bits=2, precision_bits=0, total_bits=3))
    assert torch.equal(values, ref.to(values.dtype))


def test_fp3_codes_fit_in_three_bits_and_roundtrip():
    w = torch.randn(64 * 8, generator=torch.Generator().manual_seed(0))
    q = Q.quantize_blockwise(w, "fp3", 64)
    assert q.bits == 3 and int(q.codes.max()) < 8
    assert Q.quantization_error(w, "fp3") > Q.quantization_error(w, "nf3")  # NF3 fits normal data better
