"""labcore.finetuning.quant: codebooks, blockwise absmax round trips, double quantisation, bitsandbytes parity."""

import copy
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labcore.finetuning import quant as Q

from labcore.finetuning import quantized as QM

try:
    import bitsandbytes as bnb

    BF = bnb.functional
except ImportError:  # the hand-written quantiser is tested anyway
    bnb = BF = None
needs_bnb = pytest.mark.skipif(bnb is None, reason="bitsandbytes==0.50.2 (the [quant] extra) is not installed")

# QLoRA App. E (also bitsandbytes' get_4bit_type('nf4')).
NF4_PAPER = [
    -1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
    0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0,
]


# ------------------------------------------------------------------------------- codebooks


@needs_bnb
def test_nf4_codebook_equals_bitsandbytes():
    assert torch.equal(Q.nf4_codebook(), QM.bnb_nf4_codebook()), "hand NF4 differs from bitsandbytes' table"


def test_nf4_codebook_matches_paper():
    cb = Q.nf4_codebook()
    assert cb.dtype == torch.float32 and cb.shape == (16,)
    assert (cb.double() - torch.tensor(NF4_PAPER, dtype=torch.float64)).abs().max() <= 1e-6
    # Structure: asymmetric, exact zero, 8 positive / 7 negative, endpoints ±1, sorted.
    assert (cb > 0).sum() == 8 and (cb < 0).sum() == 7 and (cb == 0).sum() == 1
    assert cb[0] == -1.0 and cb[-1] == 1.0
    assert torch.all(cb[1:] > cb[:-1])
    # offset = ½[(1 − 1/(2·15)) + (1 − 1/(2·16))]
    assert abs(0.5 * ((1 - 1 / 30) + (1 - 1 / 32)) - Q.NF4_OFFSET) < 1e-7


@needs_bnb
def test_fp4_codebook_equals_bitsandbytes():
    assert torch.equal(Q.fp4_codebook(), BF.get_4bit_type("fp4", device="cpu"))


def test_fp4_and_int4_codebooks():
    fp4 = Q.fp4_codebook()
    assert torch.unique(fp4).numel() == 15  # +0 and -0: one code is wasted
    positive = sorted(v for v in fp4.tolist() if v > 0)
    assert positive == pytest.approx([1 / 192, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0], abs=1e-7)
    int4 = Q.int4_codebook()
    assert int4.numel() == 15 and (int4 == 0).sum() == 1
    assert torch.equal(int4, -int4.flip(0))
    assert torch.allclose(int4 * 7, torch.arange(-7, 8, dtype=torch.float32))


@needs_bnb
def test_dynamic_map_equals_bitsandbytes():
    dyn = Q.dynamic_map_8bit()
    assert torch.equal(dyn, BF.create_dynamic_map())
    assert dyn.numel() == 256 and dyn.max() == 1.0 and (dyn == 0).any()


def test_unknown_codebook_and_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown codebook 'nf5'"):
        Q.get_codebook("nf5")
    with pytest.raises(ValueError, match="block_size 64 does not divide the tensor's 100 values"):
        Q.quantize_blockwise(torch.randn(10, 10), "nf4", 64)
    q = Q.quantize_blockwise(torch.randn(10, 10), "nf4", 64, allow_partial_block=True)
    assert q.n_blocks == 2 and Q.dequantize(q).shape == (10, 10)
    with pytest.raises(ValueError, match="inf or NaN"):
        Q.quantize_blockwise(torch.tensor([1.0, float("nan")]), "nf4", 2)


def test_missing_bitsandbytes_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ImportError, match=r"bitsandbytes is not installed: pip install bitsandbytes==0\.50\.2"):
        QM.bnb_nf4_codebook()
    assert not QM.bnb_available()


# ----------------------------------------------------------------- parity with bitsandbytes


def _unpack_bnb_codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]


@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_hand_dequantised_matches_bitsandbytes_without_dq(quant_type):
    w = torch.randn(256, 384, generator=torch.Generator().manual_seed(0))
    q = Q.quantize_blockwise(w, quant_type, 64)
    ours = Q.dequantize(q)
    theirs = QM.bnb_roundtrip(w, quant_type, compress_statistics=False)
    assert torch.equal(ours, theirs), f"max diff {(ours - theirs).abs().max():.3g}"  # bit for bit
    packed, state = BF.quantize_4bit(w, blocksize=64, quant_type=quant_type)
    assert torch.equal(q.absmax, state.absmax)
    if quant_type == "nf4":  # FP4 has ±0; we always pick +0, bitsandbytes sometimes -0
        assert torch.equal(q.codes, _unpack_bnb_codes(packed, w.numel()))


@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_close_to_bitsandbytes(quant_type):
    """Hand DQ vs bitsandbytes' compress_statistics=True.

    Same offset (mean), same second-level constants, same 8-bit map; the 8-bit codes of the
    constants differ for a few (measured: 8 of 8192, 0.1%, on a 512×1024 N(0,1) weight) because
    bitsandbytes' CPU kernel uses an approximate table-driven search. Each difference is one step
    between adjacent codes, and ours is the nearer one. Measured max |ŵ_hand − ŵ_bnb| = 0.028
    (1.3% of that block's absmax), bound: one step of the 8-bit map at the largest c₁ = 0.029.
    """
    w = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0))
    q = Q.quantize_blockwise(w, quant_type, 64, double_quant=True)
    packed, state = BF.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=True)
    dq = q.double_quant
    assert torch.equal(dq.offset, state.offset)
    assert torch.equal(dq.absmax2, state.state2.absmax)
    assert torch.equal(dq.codebook, state.state2.code)

    differ = dq.codes != state.absmax
    assert differ.float().mean() <= 0.005, f"{int(differ.sum())} of {differ.numel()} 8-bit codes differ"
    assert ((dq.codes[differ].long() - state.absmax[differ].long()).abs() == 1).all()  # adjacent codes
    exact = w.reshape(-1, 64).abs().amax(1) - dq.offset  # the centred constants being quantised
    blocks2 = torch.arange(exact.numel()) // 256
    ours_err = (dq.codebook[dq.codes.long()] * dq.absmax2[blocks2] - exact).abs()
    bnb_err = (dq.codebook[state.absmax.long()] * dq.absmax2[blocks2] - exact).abs()
    assert (ours_err <= bnb_err + 1e-7).all(), "hand rounding should be the nearest code"

    ours, theirs = Q.dequantize(q), QM.bnb_roundtrip(w, quant_type, compress_statistics=True)
    one_step = float(dq.absmax2.max()) * 2 * Q.max_half_gap(dq.codebook)
    max_diff = float((ours - theirs).abs().max())
    assert max_diff <= one_step, f"max diff {max_diff:.4g} > one 8-bit step {one_step:.4g}"
    # The codes of the weights themselves are computed from the exact absmax in both.
    assert torch.equal(q.codes, _unpack_bnb_codes(packed, w.numel())) or quant_type == "fp4"


# ---------------------------------------------------------------------- round-trip laws


@st.composite
def weights(draw):
    kind = draw(st.sampled_from(["nf4", "fp4", "int4"]))
    block = draw(st.sampled_from([8, 16, 64]))
    n_blocks = draw(st.integers(1, 6))
    cols = draw(st.sampled_from([c for c in (1, 2, 4, 8, 16, 64) if (block * n_blocks) % c == 0]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 37.0]))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(block * n_blocks // cols, cols, generator=g) * scale
    flat = w.view(-1)
    flat[torch.rand(flat.shape, generator=g) < 0.1] = 0.0  # scattered exact zeros
    if draw(st.booleans()):
        flat[:block] = 0.0  # an all-zero block
    return w, kind, block


@settings(max_examples=60, deadline=None)
@given(weights())
def test_roundtrip_laws(case):
    w, kind, block = case
    q = Q.quantize_blockwise(w, kind, block)
    w_hat = Q.dequantize(q)
    assert w_hat.shape == w.shape and q.codes.dtype == torch.uint8
    # Idempotence: quantising the dequantised tensor gives the same codes and constants.
    q2 = Q.quantize_blockwise(w_hat, kind, block)
    assert torch.equal(q2.codes, q.codes)
    assert torch.equal(q2.absmax, q.absmax)
    assert torch.equal(Q.dequantize(q2), w_hat)
    # Exact zeros stay exactly zero (every codebook here contains 0).
    assert (w_hat[w == 0] == 0).all()
    # Round-to-nearest error bound: |w − ŵ| ≤ absmax_block · max half-gap of the codebook.
    absmax = w.reshape(-1, block).abs().amax(1, keepdim=True)
    err = (w - w_hat).reshape(-1, block).abs()
    assert (err <= absmax * Q.max_half_gap(kind) * (1 + 1e-6) + 1e-30).all()
    # The block's largest magnitude is represented exactly (codebooks reach ±1).
    idx = w.reshape(-1, block).abs().argmax(1, keepdim=True)
    assert torch.equal(w_hat.reshape(-1, block).gather(1, idx), w.reshape(-1, block).gather(1, idx))


def test_double_quant_codes_idempotent():
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(3))
    q = Q.quantize_blockwise(w, "nf4", 64, double_quant=True)
    q2 = Q.quantize_blockwise(Q.dequantize(q), "nf4", 64, double_quant=True)
    assert torch.equal(q.codes, q2.codes)
    assert q.absmax is None and q.double_quant is not None


# --------------------------------------------------------------------- memory accounting


def test_double_quant_bits_per_parameter():
    assert Q.bits_per_parameter(64) == 0.5
    assert Q.bits_per_parameter(64, double_quant=True, dq_block=256) == 0.126953125
    saving = Q.bits_per_parameter(64) - Q.bits_per_parameter(64, double_quant=True)
    assert saving == 0.373046875
    assert 65e9 * saving / 8 / 1e9 == pytest.approx(3.03, abs=0.01)  # "approximately 3 GB"
    assert Q.bits_per_parameter(64, weight_bits=4) == 4.5


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantized_tensor_nbytes_match_formula(double_quant):
    n = 64 * 256 * 2
    q = Q.quantize_blockwise(torch.randn(n), "nf4", 64, double_quant=double_quant)
    bits = n * Q.bits_per_parameter(64, double_quant, weight_bits=4)
    assert q.nbytes * 8 == bits + (32 if double_quant else 0)  # + the one fp32 mean offset


# ------------------------------------------------------------------------------ RMSE


@needs_bnb
def test_rmse_nf4_beats_fp4_and_int4_on_gaussian_weights():
    """QLoRA §3 / Table 2 proxy. Measured (1.28M N(0,1), block 64): NF4 0.0919, Int4 0.1077,
    FP4 (bitsandbytes' E2M1 map) 0.1219; Student-t(5): 0.135 / 0.189 / 0.199."""
    w = torch.randn(1_280_000, generator=torch.Generator().manual_seed(0))
    rmse = {k: Q.quantization_error(w, k) for k in ("nf4", "fp4", "int4")}
    assert rmse["nf4"] <= 0.95 * min(rmse["fp4"], rmse["int4"]), rmse
    assert rmse["nf4"] == pytest.approx(0.0920, abs=0.002)
    bnb_nf4 = float((QM.bnb_roundtrip(w, "nf4") - w).pow(2).mean().sqrt())
    assert bnb_nf4 == pytest.approx(rmse["nf4"], rel=1e-6)
    torch.manual_seed(0)
    wt = torch.distributions.StudentT(5.0).sample((256_000,))
    rmse_t = {k: Q.quantization_error(wt, k) for k in ("nf4", "fp4", "int4")}
    assert rmse_t["nf4"] < min(rmse_t["fp4"], rmse_t["int4"]), rmse_t


# ------------------------------------------------------------------------------ models


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


@needs_bnb
def test_fake_quantize_model_matches_bitsandbytes_weights():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    fake, real = copy.deepcopy(model), copy.deepcopy(model)
    names = QM.fake_quantize_model(fake, "nf4", double_quant=False)
    assert names == ["0", "2"]
    QM.quantize_model_4bit(real, "nf4", double_quant=False)
    for name in names:
        assert isinstance(real.get_submodule(name), bnb.nn.Linear4bit)
        ref = QM.dequantized_linear4bit_weight(real.get_submodule(name))
        assert torch.equal(fake.get_submodule(name).weight, ref)
        assert torch.equal(fake.get_submodule(name).bias, model.get_submodule(name).bias)


def test_fake_quantize_skips_output_layer_and_changes_weights():
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = QM.fake_quantize_model(model, "int4")
    assert "lm_head" not in names and len(names) == 2 * 7
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])
    w = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(w, before["model.layers.0.self_attn.q_proj.weight"])
    levels = 7 * w.reshape(-1, 64) / w.reshape(-1, 64).abs().amax(1, keepdim=True)
    assert (levels - levels.round()).abs().max() <= 1e-5  # every weight is c·k/7 for its block


@needs_bnb
def test_quantize_model_4bit_forward_matches_dequantised_fp32_model():
    model = tiny_llama()
    qmodel = copy.deepcopy(model)
    names = QM.quantize_model_4bit(qmodel, "nf4", double_quant=True)
    assert len(names) == 14 and getattr(qmodel, "is_loaded_in_4bit", False)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            ref.get_submodule(name).weight.copy_(QM.dequantized_linear4bit_weight(qmodel.get_submodule(name)))
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_q, out_ref = qmodel(tokens).logits, ref(tokens).logits
    assert (out_q - out_ref).abs().max() <= 1e-5
    # The guard held: no layer was repacked by this eval/no-grad forward.
    assert not any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False)
        for m in qmodel.modules() if isinstance(m, bnb.nn.Linear4bit)
    )


@needs_bnb
def test_guard_refuses_already_repacked_layer():
    if not BF.has_avx512bf16():
        pytest.skip("this CPU has no AVX-512 BF16: bitsandbytes never repacks, nothing to refuse")
    model = nn.Sequential(nn.Linear(64, 64))
    QM.quantize_model_4bit(model, "nf4", guard=False)
    with torch.no_grad():
        model.eval()(torch.randn(3, 64))  # the first eval/no-grad forward repacks the weight
    with pytest.raises(RuntimeError, match="already repacked"):
        QM.guard_linear4bit_cpu(model)


@needs_bnb
def test_model_footprint_counts_packed_weights_and_quant_state():
    model = nn.Sequential(nn.Linear(128, 256))
    assert QM.model_footprint_bytes(model) == (128 * 256 + 256) * 4
    QM.quantize_model_4bit(model, "nf4", double_quant=True)
    n, n_blocks = 128 * 256, 128 * 256 // 64
    expected = (
        n // 2  # packed 4-bit codes
        + 256 * 4  # fp32 bias
        + n_blocks  # uint8 absmax codes
        + 4 * -(-n_blocks // 256)  # fp32 second-level absmax
        + 4  # fp32 offset
        + 16 * 4  # NF4 code table
        + 256 * 4  # 8-bit dynamic code table
    )
    assert QM.model_footprint_bytes(model) == expected
    # Tied weights count once.
    tied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    tied[1].weight = tied[0].weight
    assert QM.model_footprint_bytes(tied) == 8 * 8 * 4


def test_nf_codebook_generalises_nf4_to_coarser_grids():
    assert torch.equal(Q.nf_codebook(4), Q.nf4_codebook())
    for bits, name in ((3, "nf3"), (2, "nf2")):
        cb = Q.get_codebook(name)
        assert torch.equal(cb, Q.nf_codebook(bits)) and cb.numel() == 2**bits
        assert cb.min() == -1.0 and cb.max() == 1.0 and (cb == 0).sum() == 1
        assert (cb.diff() > 0).all() and (cb > 0).sum() == 2 ** (bits - 1)
        assert Q.quantize_blockwise(torch.randn(4, 64), name, 64).bits == bits
    with pytest.raises(ValueError, match="2, 3 or 4 bits"):
        Q.nf_codebook(5)
    # coarser grids and larger blocks quantise worse on N(0, 1) weights
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    err = lambda kind, bs: (Q.dequantize(Q.quantize_blockwise(w, kind, bs)) - w).pow(2).mean().item()  # noqa: E731
    assert err("nf4", 64) < err("nf3", 64) < err("nf2", 64) < err("nf2", 1024)
