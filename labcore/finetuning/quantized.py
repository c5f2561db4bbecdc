"""Quantised models: QLoRA's storage format applied to whole networks, by hand or by bitsandbytes.

* ``fake_quantize_model`` — quantise → dequantise every linear weight in fp32 (numerically what
  QLoRA's forward computes, since it dequantises before the matmul), with ``labcore.finetuning.quant``.
* ``quantize_model_4bit`` — real bitsandbytes ``Linear4bit`` layers (NF4/FP4, optional double
  quantisation), guarded against the CPU repacking pitfall (``guard_linear4bit_cpu``, see
  DEVELOPERS.md: without it LoRA gradients are silently wrong).
* ``model_footprint_bytes`` — what a model occupies, quantisation states included.

bitsandbytes is optional (``pip install bitsandbytes==0.50.2``); only the ``bnb_*`` helpers,
``guard_linear4bit_cpu`` and ``quantize_model_4bit`` need it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from labcore.finetuning.quant import CodebookLike, dequantize, quantize_blockwise

__all__ = [
    "fake_quantize_model",
    "default_quant_filter",
    "model_footprint_bytes",
    "bnb_available",
    "bnb_nf4_codebook",
    "bnb_roundtrip",
    "guard_linear4bit_cpu",
    "quantize_model_4bit",
    "dequantized_linear4bit_weight",
]

BNB_INSTALL_HINT = "bitsandbytes is not installed: pip install bitsandbytes==0.50.2"


# --------------------------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------------------------

OUTPUT_LAYER_NAMES = ("lm_head", "W_U")


def default_quant_filter(name: str) -> bool:
    """Quantise every linear layer except the output projection (lm_head / W_U).

    QLoRA (and transformers' bitsandbytes integration) keep the output layer in 16 bits; it is
    also often tied to the input embedding, which an in-place fake quantisation would change.
    """
    return name.rsplit(".", 1)[-1] not in OUTPUT_LAYER_NAMES


def _linear_names(model: nn.Module, name_filter: Callable[[str], bool] | None) -> list[str]:
    keep = name_filter or default_quant_filter
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and keep(n)]


@torch.no_grad()
def fake_quantize_model(
    model: nn.Module,
    kind: CodebookLike = "nf4",
    block_size: int = 64,
    double_quant: bool = False,
    name_filter: Callable[[str], bool] | None = None,
) -> list[str]:
    """Replace each selected ``nn.Linear`` weight *in place* by quantise→dequantise(weight).

    This is post-training quantisation as QLoRA's forward pass sees it (it dequantises to
    16 bits before the matmul), so perplexity before/after compares data types (Table 2) on a
    CPU without 4-bit kernels. Biases stay in full precision. Returns the names changed.
    A shorter last block is allowed, as in bitsandbytes.
    """
    names = _linear_names(model, name_filter)
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight
        q = quantize_blockwise(
            weight, kind, block_size, double_quant=double_quant, allow_partial_block=True
        )
        weight.copy_(dequantize(q, weight.dtype))
    return names


def _quant_state_tensors(state) -> list[torch.Tensor]:
    """Tensors held by a bitsandbytes QuantState (absmax, code, offset, nested state)."""
    out = []
    for attr in ("absmax", "code", "offset"):
        t = getattr(state, attr, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    nested = getattr(state, "state2", None)
    if nested is not None:
        out += _quant_state_tensors(nested)
    return out


def model_footprint_bytes(model: nn.Module) -> int:
    """Bytes held by the model: parameters + buffers + bitsandbytes quantisation state.

    A ``Params4bit`` weight's data is the packed 4-bit storage (two codes per byte); its
    ``quant_state`` adds the absmax constants (fp32, or uint8 + fp32 with double quantisation),
    the code tables and the nested state. Shared tensors (tied weights) are counted once.
    """
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:
            return
        seen.add(key)
        total += t.numel() * t.element_size()

    for p in model.parameters():
        add(p)
        state = getattr(p, "quant_state", None)
        if state is not None:
            for t in _quant_state_tensors(state):
                add(t)
    for b in model.buffers():
        add(b)
    return total


# --------------------------------------------------------------------------------------------
# bitsandbytes helpers
# --------------------------------------------------------------------------------------------


def bnb_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def _bnb():
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ImportError(BNB_INSTALL_HINT) from exc
    return bitsandbytes


def bnb_nf4_codebook() -> torch.Tensor:
    """bitsandbytes' NF4 table. On CPU the device must be given (the default is cuda)."""
    return _bnb().functional.get_4bit_type("nf4", device="cpu")


def bnb_roundtrip(
    w: torch.Tensor,
    quant_type: str = "nf4",
    compress_statistics: bool = False,
    block_size: int = 64,
) -> torch.Tensor:
    """bitsandbytes' quantize_4bit → dequantize_4bit on CPU (same dtype and shape as ``w``)."""
    F = _bnb().functional
    packed, state = F.quantize_4bit(
        w.detach().contiguous(),
        blocksize=block_size,
        compress_statistics=compress_statistics,
        quant_type=quant_type,
    )
    return F.dequantize_4bit(packed, state).reshape(w.shape)


def guard_linear4bit_cpu(model: nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference; returns how many it guarded.

    The pitfall: on a CPU with AVX-512 BF16, the first forward of a ``Linear4bit`` in eval mode
    with an input that does not require grad (any ``torch.no_grad()`` evaluation) converts the
    weight to a packed inference layout (``quant_state.packing_format_for_cpu``). Later training
    forwards still go through the layout-unaware path, so LoRA gradients come out silently wrong
    (relative error ~0.3 measured on a tiny Llama) or crash (GPT-2). Setting
    ``support_avx512bf16_for_cpu = False`` on every ``Linear4bit`` *before the first forward*
    disables the repacking. A layer that was already repacked cannot be repaired exactly (the
    repacking rounds the absmax constants to bfloat16 and bitsandbytes' inverse is best-effort),
    so that case raises: quantise again and guard before the first forward.
    """
    bnb = _bnb()
    guarded = 0
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            if getattr(state, "packing_format_for_cpu", False):
                raise RuntimeError(
                    f"{name or 'model'}: this Linear4bit was already repacked for CPU inference by "
                    "an eval/no-grad forward (absmax rounded to bfloat16; LoRA gradients through it "
                    "are wrong). Quantise the model again and call guard_linear4bit_cpu(model) "
                    "before the first forward."
                )
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def quantize_model_4bit(
    model: nn.Module,
    quant_type: str = "nf4",
    double_quant: bool = True,
    name_filter: Callable[[str], bool] | None = None,
    compute_dtype: torch.dtype = torch.float32,
    block_size: int = 64,
    guard: bool = True,
) -> list[str]:
    """Swap selected ``nn.Linear`` modules for bitsandbytes ``Linear4bit`` holding the same weights.

    The CPU equivalent of ``from_pretrained(..., quantization_config=BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant))``
    for models built locally (the glass-box GPT, tiny HF models). The output layer is skipped by
    default (``default_quant_filter``). Sets ``model.is_loaded_in_4bit = True`` so that peft
    wraps the layers with its 4-bit LoRA class, and guards the layers against the CPU repacking
    pitfall unless ``guard=False`` (only the pitfall test should pass that). Returns the names.
    """
    bnb = _bnb()
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bitsandbytes 4-bit quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    names = _linear_names(model, name_filter)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old: nn.Linear = getattr(parent, child)
        if old.weight.device.type != "cpu":
            raise ValueError(f"quantize_model_4bit works on CPU models; {name} is on {old.weight.device}")
        new = bnb.nn.Linear4bit(
            old.in_features,
            old.out_features,
            bias=old.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            device="cpu",
        )
        new.weight = bnb.nn.Params4bit(
            old.weight.detach().to(torch.float32).contiguous().clone(),
            requires_grad=False,
            blocksize=block_size,
            compress_statistics=double_quant,
            quant_type=quant_type,
            module=new,
        )._quantize("cpu")
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().clone(), requires_grad=old.bias.requires_grad)
        new.train(old.training)
        setattr(parent, child, new)
    model.is_loaded_in_4bit = True
    if guard:
        guard_linear4bit_cpu(model)
    return names


def dequantized_linear4bit_weight(module: nn.Module) -> torch.Tensor:
    """The fp32 weight a ``Linear4bit`` computes with (for building an fp32 reference model)."""
    bnb = _bnb()
    weight = module.weight
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        raise RuntimeError(
            "this Linear4bit was repacked for CPU inference (an eval/no-grad forward ran before "
            "guard_linear4bit_cpu); call guard_linear4bit_cpu(model) first"
        )
    return bnb.functional.dequantize_4bit(weight.data, state).to(torch.float32)
