"""Blockwise absmax 4-bit quantisation (NF4 / FP4 / Int4) and double quantisation, by hand.

Why a hand-written quantiser: QLoRA's storage format is simple enough to write in thirty lines of
PyTorch, and writing it is the best way to see what "NF4 + double quantisation" means. The tests
check that it reproduces bitsandbytes bit for bit (NF4, FP4) and within one 8-bit code step for
the double-quantised constants (see ``double_quantize``).

The recipe (Dettmers et al. 2023, QLoRA §2 and §3; arXiv 2305.14314):

1. Flatten the weight and cut it into blocks of ``block_size`` (64) consecutive values.
2. Per block, the **absmax** constant  c = max |w_b|  maps the block into [-1, 1]:  x = w / c.
3. Each x is replaced by the index of the nearest value of a 16-entry **codebook**
   (round to nearest, ties to the lower value, as bitsandbytes does).
4. Dequantise:  ŵ = codebook[index] · c.

Storage: 4 bits per weight plus 32/64 = 0.5 bits per weight for the fp32 constants.
**Double quantisation** stores the constants themselves in 8 bits (blocks of 256, mean-centred),
which brings the overhead to 8/64 + 32/(64·256) = 0.126953125 bits (``bits_per_parameter``).

Codebooks (all normalised so that max |value| = 1):

* ``nf4_codebook``  NormalFloat: quantiles of N(0, 1), asymmetric, 8 positive / 7 negative / 0.
* ``fp4_codebook``  bitsandbytes' FP4 (E2M1: 1 sign, 2 exponent, 1 mantissa bit, bias 2).
* ``int4_codebook`` symmetric integers -7..7 / 7 (15 levels, exact zero).
* ``nf_codebook(bits)`` the NormalFloat construction at 2 or 3 bits ("nf2", "nf3"): coarser grids
  used as a stand-in for a base model whose 4-bit quantisation hurts (claims/qlora).
* ``fp3_codebook``  the same float construction as FP4 one bit down (E2M0, "fp3"): FP's partner of
  "nf3" in the NF-vs-FP comparison where quantisation hurts (claims/qlora).

Applying these to whole models (fake quantisation, bitsandbytes ``Linear4bit`` layers, the CPU
repacking guard, footprints) is ``labcore.finetuning.quantized``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "NF4_OFFSET",
    "QuantizedTensor",
    "DoubleQuantState",
    "nf4_codebook",
    "fp4_codebook",
    "int4_codebook",
    "nf_codebook",
    "fp3_codebook",
    "dynamic_map_8bit",
    "get_codebook",
    "quantize_blockwise",
    "dequantize",
    "double_quantize",
    "dequantize_double",
    "bits_per_parameter",
    "quantization_error",
    "max_half_gap",
]

# ½[(1 − 1/(2·15)) + (1 − 1/(2·16))]: the outermost quantile. norm.ppf(1.0) = ∞, so QLoRA
# stops at the midpoint of the outer quantiles of a 15- and a 16-bin grid (bitsandbytes'
# create_normal_map default; QLoRA App. E).
NF4_OFFSET = 0.9677083

CodebookLike = str | torch.Tensor


# --------------------------------------------------------------------------------------------
# Codebooks
# --------------------------------------------------------------------------------------------


def nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NormalFloat-4 values, sorted, in [-1, 1] (float32).

    QLoRA §3: quantile quantisation of N(0, 1), q_i = ½(Q(i/(2^k+1)) + Q((i+1)/(2^k+1))), made
    asymmetric so that 0 is exactly representable and all 16 codes are used: 9 quantiles on the
    positive side and 8 on the negative side (each including 0), one of the two zeros dropped.
    The construction below is bitsandbytes' ``create_normal_map(offset, use_extra_value=True)``:

        positive = norm.ppf(linspace(offset, 0.5, 9)[:-1])     # 8 values
        negative = -norm.ppf(linspace(offset, 0.5, 8)[:-1])    # 7 values
        codebook = sort(positive ∪ {0} ∪ negative) / max

    The linspace is taken in float32 like bitsandbytes' ``torch.linspace``; the result equals
    ``bitsandbytes.functional.get_4bit_type('nf4')`` and QLoRA App. E exactly in float32.
    """
    try:
        from scipy.stats import norm
    except ImportError as exc:  # pragma: no cover - scipy is a core dependency
        raise ImportError("scipy is needed to build the NF4 codebook: pip install scipy") from exc

    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].double().numpy())
    negative = -norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].double().numpy())
    values = torch.tensor([*positive.tolist(), 0.0, *negative.tolist()], dtype=torch.float32)
    values = values.sort().values
    return values / values.max()


def nf_codebook(bits: int, offset: float = NF4_OFFSET) -> torch.Tensor:
    """NormalFloat with 2**bits values, built exactly as ``nf4_codebook`` (which is bits=4):
    2**(bits-1) positive quantiles, 2**(bits-1) − 1 negative ones and an exact zero, same offset.
    bits=3 → 8 values ("nf3"), bits=2 → 4 values ("nf2": −1, 0, and two positive levels)."""
    from scipy.stats import norm

    if bits not in (2, 3, 4):
        raise ValueError(f"nf_codebook supports 2, 3 or 4 bits, got {bits}")
    half = 2 ** (bits - 1)
    positive = norm.ppf(torch.linspace(offset, 0.5, half + 1)[:-1].double().numpy())
    negative = -norm.ppf(torch.linspace(offset, 0.5, half)[:-1].double().numpy())
    values = torch.tensor([*positive.tolist(), 0.0, *negative.tolist()], dtype=torch.float32).sort().values
    return values / values.max()


def fp4_codebook() -> torch.Tensor:
    """bitsandbytes' FP4 (E2M1) values, indexed by the 4-bit pattern (float32, *not* sorted).

    Bit 3 is the sign. The three magnitude bits (2 exponent bits, 1 mantissa bit) map, in
    bitsandbytes' layout (not IEEE order), to 0, 0.0625, 8, 12, 4, 6, 2, 3 for patterns
    000 … 111: the exponent field picks 2³, 2² or 2¹ (or the subnormal range for 0 and 0.0625)
    and the mantissa bit multiplies by 1 or 1.5 (``get_4bit_type('fp4')``, regenerated by
    ``create_fp8_map(signed=True, exponent_bits=2, precision_bits=1, total_bits=4)``). Divided by
    the max (12), the positive levels are {1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1}. There are two
    zeros (+0 and -0), so only 15 distinct values: FP4 wastes a code and spends one on the tiny
    1/192, which is part of why NF4 beats it on normally distributed weights.
    """
    magnitudes = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0]
    values = torch.tensor(magnitudes + [-m for m in magnitudes], dtype=torch.float32)
    return values / values.abs().max()


def fp3_codebook() -> torch.Tensor:
    """A 3-bit float (E2M0: 1 sign, 2 exponent bits, no mantissa), built by bitsandbytes' rule.

    ``create_fp8_map(signed=True, exponent_bits=2, precision_bits=0, total_bits=3)``: exponent
    field 0 is the subnormal range (here only 0), fields 1, 2, 3 give 2², 2¹, 2⁰; divided by the
    max the positive levels are {1/4, 1/2, 1}. Like FP4 it has two zeros (7 distinct values for 8
    codes) and geometric level spacing; NF3 (``nf_codebook(3)``) spends all 8 codes on N(0, 1)
    quantiles. Indexed by bit pattern (bit 2 = sign), not sorted.
    """
    magnitudes = [0.0, 4.0, 2.0, 1.0]
    values = torch.tensor(magnitudes + [-m for m in magnitudes], dtype=torch.float32)
    return values / values.abs().max()


def int4_codebook() -> torch.Tensor:
    """Symmetric linear 4-bit integers: (-7, …, 7) / 7 — 15 levels with an exact zero (float32).

    This is the "Int4" baseline of QLoRA Table 2: evenly spaced levels waste resolution in the
    tails, where few normally distributed weights live. (The 16th code is left unused so that
    the grid stays symmetric and contains 0.)
    """
    return torch.arange(-7, 8, dtype=torch.float32) / 7.0


def dynamic_map_8bit() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic tree" map (256 sorted values in [-1, 1]).

    This is the map bitsandbytes uses to double-quantise the absmax constants
    (``create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)``; Dettmers 2015,
    "8-Bit Approximations for Parallelism in Deep Learning"). Each decade 10^-6 … 10^0 gets
    2^i evenly spaced midpoints (i = 0 … 6), mirrored for negative values, plus 0 and 1.
    The QLoRA paper describes the second level as "8-bit Floats"; the released code uses this
    map. Values are built the way bitsandbytes builds them so that the two are equal bit for bit.
    """
    data: list[float] = []
    max_exponent_bits = 7
    for i in range(max_exponent_bits):
        n_fractions = 2**i + 1
        boundaries = torch.linspace(0.1, 1, n_fractions, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        decade = 10 ** (-(max_exponent_bits - 1) + i)
        data += (decade * means).tolist()  # float32 products, as in bitsandbytes
        data += (-decade * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)


_CODEBOOKS: dict[str, Callable[[], torch.Tensor]] = {
    "nf4": nf4_codebook,
    "fp4": fp4_codebook,
    "int4": int4_codebook,
    "nf3": lambda: nf_codebook(3),
    "nf2": lambda: nf_codebook(2),
    "fp3": fp3_codebook,
    "dynamic8": dynamic_map_8bit,
}


def get_codebook(kind: CodebookLike) -> torch.Tensor:
    """A codebook by name ("nf4", "fp4", "int4", "dynamic8") or a 1-D tensor passed through."""
    if isinstance(kind, torch.Tensor):
        codebook = kind.detach().to(torch.float32).flatten()
    else:
        try:
            codebook = _CODEBOOKS[kind.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown codebook {kind!r}: choose one of {sorted(_CODEBOOKS)} or pass a tensor"
            ) from None
    if codebook.numel() < 2 or codebook.numel() > 256:
        raise ValueError(f"a codebook needs 2..256 values (uint8 codes), got {codebook.numel()}")
    return codebook


def max_half_gap(codebook: CodebookLike) -> float:
    """Half the largest gap between neighbouring distinct codebook values.

    Round-to-nearest error bound: |w − ŵ| ≤ absmax · max_half_gap (for values inside the codebook's
    range, which absmax scaling guarantees when the codebook reaches ±1).
    """
    values = torch.unique(get_codebook(codebook).double())
    return float((values[1:] - values[:-1]).max() / 2)


def _nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook value for every element of x (uint8).

    Sorted distinct values, decision boundaries at the midpoints, ``bucketize`` with
    right=False: a value exactly on a boundary goes to the lower neighbour (bitsandbytes'
    default kernel does the same). Duplicate values (FP4's +0 and -0) map to their lowest code.
    """
    values, order = torch.sort(codebook, stable=True)
    keep = torch.ones_like(values, dtype=torch.bool)
    keep[1:] = values[1:] != values[:-1]  # first of each run of equal values = lowest index
    values, order = values[keep], order[keep]
    midpoints = (values[:-1] + values[1:]) / 2
    position = torch.bucketize(x, midpoints, right=False)
    return order[position].to(torch.uint8)


# --------------------------------------------------------------------------------------------
# Blockwise quantisation
# --------------------------------------------------------------------------------------------


@dataclass
class DoubleQuantState:
    """The absmax constants quantised a second time (QLoRA §3, "Double Quantization").

    c₂ (one fp32 absmax per 64 weights) → mean-centred → 8-bit codes in blocks of 256, with one
    fp32 second-level constant c₁ per block and the fp32 mean ``offset``.
    """

    codes: torch.Tensor  # uint8, (n_blocks,)
    absmax2: torch.Tensor  # float32, (ceil(n_blocks / block_size),)
    offset: torch.Tensor  # float32 scalar: mean of the first-level constants
    codebook: torch.Tensor  # float32, 256 values
    block_size: int
    n: int  # number of first-level constants

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.absmax2.numel() + 4


@dataclass
class QuantizedTensor:
    """A blockwise-quantised tensor: one uint8 code per value (unpacked, for readability).

    ``absmax`` holds the fp32 per-block constants, or is None when they were double-quantised
    (then ``double_quant`` holds them). ``scales()`` returns the constants that dequantisation
    multiplies by in either case.
    """

    codes: torch.Tensor  # uint8, flat (numel,)
    absmax: torch.Tensor | None  # float32, (n_blocks,), None with double quantisation
    shape: torch.Size
    codebook: torch.Tensor  # float32, (≤ 256,)
    block_size: int
    double_quant: DoubleQuantState | None = None

    @property
    def numel(self) -> int:
        return self.codes.numel()

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.block_size)

    @property
    def bits(self) -> int:
        """Bits per code: ceil(log2(codebook size)) — 4 for NF4, FP4 and Int4."""
        return max(1, math.ceil(math.log2(self.codebook.numel())))

    def scales(self) -> torch.Tensor:
        """The per-block constants used for dequantisation (fp32, (n_blocks,))."""
        if self.double_quant is not None:
            return dequantize_double(self.double_quant)
        assert self.absmax is not None
        return self.absmax

    @property
    def nbytes(self) -> int:
        """Storage if the codes were packed (two 4-bit codes per byte) plus the constants."""
        code_bytes = math.ceil(self.numel * self.bits / 8)
        if self.double_quant is not None:
            return code_bytes + self.double_quant.nbytes
        assert self.absmax is not None
        return code_bytes + 4 * self.absmax.numel()


def _blocks(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n,) -> (n_blocks, block_size), zero-padding a shorter last block (zeros never raise absmax)."""
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size)


def quantize_blockwise(
    w: torch.Tensor,
    codebook: CodebookLike = "nf4",
    block_size: int = 64,
    *,
    double_quant: bool = False,
    dq_block_size: int = 256,
    allow_partial_block: bool = False,
) -> QuantizedTensor:
    """Blockwise absmax quantisation of ``w`` onto ``codebook`` (QLoRA §2 "Block-wise k-bit").

    The tensor is flattened in row-major order (as bitsandbytes does) and cut into blocks of
    ``block_size`` values. Per block: c = max|w_b|,  x = w_b · (1/c),  code = nearest(x).
    A block of zeros gets c = 0 and dequantises to exact zeros.

    ``allow_partial_block``: bitsandbytes accepts a shorter last block; by default we refuse
    sizes that the block size does not divide, because a partial block is usually a mistake in
    a teaching experiment. ``double_quant`` compresses the constants (``double_quantize``).
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not w.is_floating_point():
        raise TypeError(f"quantize_blockwise needs a floating-point tensor, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError("cannot quantise an empty tensor")
    if w.numel() % block_size and not allow_partial_block:
        raise ValueError(
            f"block_size {block_size} does not divide the tensor's {w.numel()} values "
            f"(shape {tuple(w.shape)}); pass allow_partial_block=True for a shorter last block "
            "(bitsandbytes' behaviour)"
        )
    if not torch.isfinite(w).all():
        raise ValueError("cannot quantise a tensor holding inf or NaN")
    cb = get_codebook(codebook)
    flat = w.detach().reshape(-1).to(torch.float32)
    n = flat.numel()

    blocks = _blocks(flat, block_size)  # (n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # c₂: one fp32 constant per block
    # Multiply by the reciprocal, like bitsandbytes, so values on a decision boundary round
    # the same way; clamp guards all-zero blocks (their codes are 0 · anything = 0).
    x = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp(-1.0, 1.0)
    codes = _nearest_code(x, cb).reshape(-1)[:n]

    dq_state = double_quantize(absmax, block_size=dq_block_size) if double_quant else None
    return QuantizedTensor(
        codes=codes,
        absmax=None if double_quant else absmax,
        shape=torch.Size(w.shape),
        codebook=cb,
        block_size=block_size,
        double_quant=dq_state,
    )


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ŵ = codebook[code] · c, block by block, reshaped to the original shape."""
    values = q.codebook[q.codes.long()]  # in [-1, 1]
    blocks = _blocks(values, q.block_size)
    out = (blocks * q.scales().unsqueeze(1)).reshape(-1)[: q.numel]
    return out.reshape(q.shape).to(dtype)


def double_quantize(
    absmax: torch.Tensor, block_size: int = 256, codebook: CodebookLike = "dynamic8"
) -> DoubleQuantState:
    """Quantise the first-level constants to 8 bits (QLoRA §3 "Double Quantization").

    The constants are all positive, so they are mean-centred first (offset = mean(c₂)) to use
    the signed 8-bit code symmetrically, then blockwise-absmax quantised in blocks of 256 with
    bitsandbytes' 8-bit dynamic map (the paper says FP8; the code uses the dynamic map).
    bitsandbytes' ``quantize_4bit(compress_statistics=True)`` does the same; the one difference is
    rounding: its CPU kernel finds the code with an approximate table-driven binary search
    (BinSearch "Direct2") that for about 0.2% of the constants picks the second-nearest of two
    neighbouring codes, whereas we round to the nearest. A constant then differs by one step of
    the 8-bit map (≤ 1.4% of that block's centred range; see tests/test_quant.py).
    """
    absmax = absmax.detach().reshape(-1).to(torch.float32)
    offset = absmax.mean()
    q = quantize_blockwise(absmax - offset, codebook, block_size, allow_partial_block=True)
    assert q.absmax is not None
    return DoubleQuantState(
        codes=q.codes,
        absmax2=q.absmax,
        offset=offset,
        codebook=q.codebook,
        block_size=block_size,
        n=absmax.numel(),
    )


def dequantize_double(state: DoubleQuantState) -> torch.Tensor:
    """c₂ ≈ dynamic8[code] · c₁ + offset (fp32, (n,))."""
    blocks = _blocks(state.codebook[state.codes.long()], state.block_size)
    centred = (blocks * state.absmax2.unsqueeze(1)).reshape(-1)[: state.n]
    return centred + state.offset


def bits_per_parameter(
    block_size: int = 64,
    double_quant: bool = False,
    dq_block: int = 256,
    *,
    constant_bits: int = 32,
    dq_bits: int = 8,
    weight_bits: int = 0,
) -> float:
    """Memory overhead of the quantisation constants, in bits per weight (QLoRA §3).

    Without DQ: one fp32 constant per block,   32 / 64               = 0.5.
    With DQ:    8-bit constants + fp32 per 256, 8 / 64 + 32 / (64·256) = 0.126953125.
    (The single fp32 mean offset per tensor is negligible and not counted, as in the paper.)
    Pass ``weight_bits=4`` to get the total storage per weight (4.5 / 4.127).
    """
    if double_quant:
        overhead = dq_bits / block_size + constant_bits / (block_size * dq_block)
    else:
        overhead = constant_bits / block_size
    return weight_bits + overhead


def quantization_error(
    w: torch.Tensor, kind: CodebookLike = "nf4", block_size: int = 64, double_quant: bool = False
) -> float:
    """Root-mean-square error of the quantise → dequantise round trip, sqrt(mean((w − ŵ)²))."""
    q = quantize_blockwise(w, kind, block_size, double_quant=double_quant, allow_partial_block=True)
    err = w.detach().to(torch.float32) - dequantize(q)
    return float(err.double().pow(2).mean().sqrt())
