"""LoRA: a readable reference implementation, plus peft helpers to cross-check it.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv 2106.09685), §4.1:

    h = W₀x + ΔWx = W₀x + (α/r) · B A x,     B ∈ ℝ^{d_out×r},  A ∈ ℝ^{r×d_in},  r ≪ min(d_in, d_out)

W₀ is frozen; only A and B train. A starts random and B starts at zero, so ΔW = BA = 0 and
training starts exactly at the pretrained model. The α/r factor keeps the update's scale roughly
independent of r, so α need not be retuned when r changes ("we simply set α to the first r we
try"). Because ΔW has the same shape as W₀ it can be merged, W = W₀ + (α/r)BA, for inference with
no added latency, and unmerged to switch tasks.

``LoRALinear`` follows peft's ``lora.Linear`` closely (same init, same order of operations), so the
two agree to floating-point round-off; ``peft_lora`` and ``peft_state_to_reference`` make that
checkable (tests/test_lora.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LoRALinear",
    "TARGETS",
    "resolve_targets",
    "apply_lora",
    "lora_parameters",
    "count_lora_params",
    "peft_lora",
    "peft_state_to_reference",
    "LoRAFactors",
    "lora_factors",
]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (α/r)·B·A.

    forward(x) = base(x) + (α/r) · B(A(dropout(x)))       (unmerged)
               = base(x) with W₀ + (α/r)BA in its weight  (merged)

    ``lora_A`` (r × in_features) is initialised like peft / nn.Linear (Kaiming-uniform with
    a = √5, i.e. U(−1/√in, 1/√in)); ``lora_B`` (out_features × r) is zero. The paper says "random
    Gaussian" for A; the reference code (microsoft/LoRA) and peft use this uniform init.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"LoRALinear wraps nn.Linear, got {type(base).__name__} "
                "(GPT-2's Conv1D stores the weight transposed: use peft_lora for it)"
            )
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r = int(r)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.r  # α/r
        self.in_features = base.in_features
        self.out_features = base.out_features
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=√5) (peft's init_lora_weights=True), B = 0 → ΔW = 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B @ A, shape (out_features, in_features), like the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result  # ΔW already lives in base.weight: one matmul, no extra latency
        # Same order of operations as peft: base(x) + B(A(dropout(x))) · scaling.
        return result + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W₀ ← W₀ + (α/r)BA (LoRA §4.1 "No additional inference latency")."""
        if self.merged:
            raise RuntimeError("LoRALinear is already merged")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − (α/r)BA: recovers W₀ up to floating-point round-off (to switch tasks)."""
        if not self.merged:
            raise RuntimeError("LoRALinear is not merged")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W₀ + (α/r)BA (differentiable in A and B; dropout not applied).

        Code that reads ``module.weight`` instead of calling the module — the glass-box model
        splits W_O.weight per head — then sees the adapted weight, not the frozen W₀.
        """
        if self.merged:
            return self.base.weight
        return self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}"
        )


# Module-name suffixes per model family. "q"/"k"/"v"/"o" are the attention projections and
# "mlp" the feed-forward matrices; "all_linear" means every linear layer except the output layer.
TARGETS: dict[str, dict[str, str | list[str]]] = {
    "labcore": {"q": "W_Q", "k": "W_K", "v": "W_V", "o": "W_O", "mlp": ["W_in", "W_out", "W_gate"]},
    "llama": {
        "q": "q_proj",
        "k": "k_proj",
        "v": "v_proj",
        "o": "o_proj",
        "mlp": ["gate_proj", "up_proj", "down_proj"],
    },
    # GPT-2 fuses q, k, v in one Conv1D (c_attn); c_proj exists in both attention and MLP.
    "gpt2": {"qkv": "c_attn", "o": "attn.c_proj", "mlp": ["c_fc", "mlp.c_proj"]},
}
ALL_LINEAR = "all_linear"
OUTPUT_LAYER_NAMES = ("lm_head", "W_U")


def resolve_targets(family: str, keys: str | Iterable[str]) -> list[str] | str:
    """Module-name suffixes for ``keys`` of a family, e.g. ("llama", "qv") → [q_proj, v_proj].

    ``keys`` is an iterable of preset keys (``["q", "v"]``), a string of single-letter keys
    (``"qv"``, ``"qkvo"``), a key such as ``"mlp"`` / ``"qkv"``, or ``"all_linear"`` (returned
    as is; ``apply_lora`` and ``peft_lora`` understand it).
    """
    try:
        preset = TARGETS[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(TARGETS)}") from None
    if keys == ALL_LINEAR:
        return ALL_LINEAR
    if isinstance(keys, str):
        keys = [keys] if keys in preset else list(keys)
    names: list[str] = []
    for key in keys:
        if key not in preset:
            raise ValueError(f"{family!r} has no LoRA target {key!r}; known: {sorted(preset)}")
        value = preset[key]
        names += [value] if isinstance(value, str) else list(value)
    return names


def _matches(name: str, suffixes: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def apply_lora(
    model: nn.Module,
    target_names: str | Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    freeze_base: bool = True,
) -> list[str]:
    """Replace every ``nn.Linear`` whose name ends with one of ``target_names`` by a LoRALinear.

    ``target_names`` are module-name suffixes (``["W_Q", "W_V"]``, ``["q_proj", "v_proj"]``;
    see ``TARGETS`` / ``resolve_targets``) or ``"all_linear"`` (every linear layer except
    lm_head / W_U). With ``freeze_base`` every other parameter is frozen too, as peft does, so
    only A and B train. Returns the replaced module names, in model order.
    """
    if isinstance(target_names, str) and target_names != ALL_LINEAR:
        target_names = [target_names]
    if target_names == ALL_LINEAR:
        def wanted(n: str) -> bool:
            return n.rsplit(".", 1)[-1] not in OUTPUT_LAYER_NAMES
    else:
        suffixes = list(target_names)
        if not suffixes:
            raise ValueError("apply_lora needs at least one target module name")

        def wanted(n: str) -> bool:
            return _matches(n, suffixes)

    wrapped = {id(m.base) for m in model.modules() if isinstance(m, LoRALinear)}
    chosen = [
        n for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m) not in wrapped and n and wanted(n)
    ]
    if not chosen:
        already = [n for n, m in model.named_modules() if isinstance(m, LoRALinear) and wanted(n)]
        if already:
            raise ValueError(f"{already[:4]} already carry LoRA; apply_lora does not stack adapters")
        other = [(n, type(m).__name__) for n, m in model.named_modules() if n and wanted(n)]
        if other:
            raise TypeError(
                f"{other[:4]} match {target_names!r} but are not nn.Linear; LoRALinear wraps "
                "nn.Linear only (GPT-2's Conv1D stores Wᵀ: use peft_lora for it)"
            )
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"no nn.Linear module matches {target_names!r}; linear modules are: {linear[:12]}"
            + (" …" if len(linear) > 12 else "")
        )
    if freeze_base:  # everything except the factors of existing LoRALinear layers
        keep = {id(p) for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors (A and B) of a model adapted by ``apply_lora`` or peft."""
    return [p for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n]


def count_lora_params(d_model: int, n_layers: int, n_matrices: int, r: int) -> int:
    """|Θ| = 2 · L̂ · d_model · r, with L̂ = n_layers · n_matrices adapted square matrices (§4.2).

    GPT-3 175B (96 layers, d = 12288), q and v, r = 1: 2·192·12288·1 = 4,718,592 ("4.7M").
    """
    return 2 * n_layers * n_matrices * d_model * r


# --------------------------------------------------------------------------------------------
# peft
# --------------------------------------------------------------------------------------------


def peft_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    **config_kwargs,
):
    """``get_peft_model(model, LoraConfig(...))`` with peft's default init (A Kaiming, B = 0).

    ``target_modules="all_linear"`` maps to peft's ``"all-linear"`` (which also skips the output
    layer). Extra keyword arguments go to ``LoraConfig`` (e.g. ``use_rslora``).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - peft is a core dependency
        raise ImportError("peft is not installed: pip install peft==0.21.2") from exc
    if target_modules in (ALL_LINEAR, "all-linear"):
        targets: str | list[str] = "all-linear"
    elif isinstance(target_modules, str):
        targets = [target_modules]
    else:
        targets = list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        init_lora_weights=True,
        bias="none",
        **config_kwargs,
    )
    return get_peft_model(model, config)


def peft_state_to_reference(peft_model: nn.Module, name: str, adapter: str = "default") -> LoRALinear:
    """A LoRALinear holding copies of one peft LoRA layer's W₀, A, B, r and α (for cross-checks).

    ``name`` is the module name, either the full peft path or any unique suffix of it
    (``"model.layers.0.self_attn.q_proj"``).
    """
    matches = [
        m for n, m in peft_model.named_modules()
        if (n == name or n.endswith("." + name)) and hasattr(m, "lora_A") and hasattr(m, "base_layer")
    ]
    if len(matches) != 1:
        raise ValueError(f"expected one peft LoRA layer named {name!r}, found {len(matches)}")
    layer = matches[0]
    if getattr(layer, "merged", False):
        raise ValueError(f"{name!r}: unmerge the peft layer before copying it")
    if adapter not in layer.lora_A:
        raise ValueError(f"layer {name!r} has no adapter {adapter!r}; it has {list(layer.lora_A)}")
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear) or type(base) is not nn.Linear:
        raise TypeError(f"{name!r}: only plain nn.Linear base layers can be copied, got {type(base).__name__}")
    A = layer.lora_A[adapter].weight
    B = layer.lora_B[adapter].weight
    dropout = layer.lora_dropout[adapter]
    p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
    ref = LoRALinear(copy.deepcopy(base), r=A.shape[0], alpha=layer.lora_alpha[adapter], dropout=p)
    if not math.isclose(ref.scaling, layer.scaling[adapter]):
        raise ValueError(
            f"{name!r}: peft scaling {layer.scaling[adapter]} is not lora_alpha/r = {ref.scaling} "
            "(rsLoRA or a rank pattern?)"
        )
    with torch.no_grad():
        ref.lora_A.copy_(A)
        ref.lora_B.copy_(B)
    return ref


# --------------------------------------------------------------------------------------------
# reading the factors back


@dataclass(frozen=True)
class LoRAFactors:
    """One adapted matrix: frozen W₀ (d_out × d_in, dequantised for QLoRA), A (r × d_in),
    B (d_out × r) and the scaling α/r. ``delta_w`` = (α/r)·B·A."""

    W0: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    scaling: float

    @property
    def delta_w(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scaling


def _peft_key(name: str) -> str:
    return name.removeprefix("base_model.model.")


def lora_factors(model: nn.Module) -> dict[str, LoRAFactors]:
    """{module name: LoRAFactors} for a model adapted by ``labcore.finetuning.lora`` or peft (detached copies).

    Names are the base model's (``blocks.0.attn.W_Q``) in both cases.
    """
    out: dict[str, LoRAFactors] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[name] = LoRAFactors(
                W0=module.base.weight.detach().clone().float(), A=module.lora_A.detach().clone(),
                B=module.lora_B.detach().clone(), scaling=module.scaling,
            )
        elif hasattr(module, "lora_A") and hasattr(module, "base_layer") and "default" in getattr(module, "lora_A", {}):
            base = module.get_base_layer()
            weight = base.weight
            if getattr(weight, "quant_state", None) is not None:
                from labcore.finetuning.quantized import dequantized_linear4bit_weight

                W0 = dequantized_linear4bit_weight(base)
            else:
                W0 = weight.detach().clone().float()
            out[_peft_key(name)] = LoRAFactors(
                W0=W0, A=module.lora_A["default"].weight.detach().clone(),
                B=module.lora_B["default"].weight.detach().clone(), scaling=float(module.scaling["default"]),
            )
    return out

