"""What is inside the optimizer, per layer, per step — recorded without stalling the device.

torch.optim.AdamW keeps, for every parameter θ, a first moment m (EMA of gradients, β1) and a
second moment v (EMA of squared gradients, β2). At step t it applies

    θ ← θ − η·λ·θ                                  (decoupled weight decay)
    θ ← θ − η · m̂ / (√v̂ + ε),  m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)

so the per-coordinate *effective step* is s = η·m̂/(√v̂ + ε), whose size is ~η whatever the
gradient's scale (Adam's scale invariance). :class:`OptimizerStateProbe` records, per tracked group
(one named parameter, or one module = the parameters under one name prefix):

    update_ratio      ‖Δθ‖/‖θ‖ (Δθ = what the last step actually changed, weight decay included)
    update_norm, weight_norm, grad_norm
    m_norm, m_hat_norm  ‖m‖ and ‖m̂‖ (SGD: the momentum buffer, m̂ = m)
    v_hat_sqrt_mean   mean over coordinates of √v̂  (Adam's denominator; NaN for SGD)
    step_abs_mean, step_rms, step_abs_max   statistics of s (SGD: of the actual step −Δθ)
    bias_correction1, bias_correction2      1 − β1^t and 1 − β2^t (NaN for SGD)

Cheap on purpose: every number is computed on the parameters' device into a small tensor of raw
sums per step; nothing calls ``.item()`` or ``float()`` until :meth:`OptimizerStateProbe.result`
stacks the buffer and returns numpy. Use it as a callback right after ``opt.step()``::

    probe = OptimizerStateProbe(model, opt, group_by="module")
    for ...: loss.backward(); opt.step(); probe()
    res = probe.result(); res.metrics["update_ratio"]   # (steps, groups)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

# raw per-parameter sums kept per step: the derived metrics are computed in result()
_SUMS = ("d2", "w2", "g2", "m2", "mhat2", "vhat_sqrt", "s_abs", "s2", "count", "bc1", "bc2", "n_params")
_MAX = "s_abs_max"
METRICS = ("update_ratio", "update_norm", "weight_norm", "grad_norm", "m_norm", "m_hat_norm",
           "v_hat_sqrt_mean", "step_abs_mean", "step_rms", "step_abs_max",
           "bias_correction1", "bias_correction2")


@dataclass
class OptimizerStateTrace:
    groups: list[str]  # the tracked group names (parameter names or module prefixes)
    metrics: dict[str, np.ndarray]  # name -> (steps, len(groups)); see METRICS
    steps: int

    def of(self, group: str) -> dict[str, np.ndarray]:
        """The per-step series of every metric for one group."""
        j = self.groups.index(group)
        return {k: v[:, j] for k, v in self.metrics.items()}


def module_of(name: str) -> str:
    """'blocks.0.attn.W_Q.weight' -> 'blocks.0.attn.W_Q' (a parameter's owning module)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def _adam_kind(opt: torch.optim.Optimizer) -> str:
    if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
        if any(g.get("amsgrad") for g in opt.param_groups):
            raise NotImplementedError("amsgrad: the probe follows plain Adam/AdamW")
        return "adam"
    if isinstance(opt, torch.optim.SGD):
        return "sgd"
    raise TypeError(f"{type(opt).__name__}: OptimizerStateProbe knows Adam, AdamW and SGD")


class OptimizerStateProbe:
    """Per-group optimizer-state statistics, accumulated on the device; call after each opt.step()."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer,
                 group_by: Literal["parameter", "module"] | Callable[[str], str] = "parameter",
                 dtype: torch.dtype = torch.float32):
        self.opt, self.kind, self.dtype = opt, _adam_kind(opt), dtype
        keyer = {"parameter": lambda n: n, "module": module_of}.get(group_by, group_by)
        if not callable(keyer):
            raise TypeError(f"group_by={group_by!r}: use 'parameter', 'module' or a callable name -> group")
        hyper = {id(p): g for g in opt.param_groups for p in g["params"]}
        self.params, self.hyper, keys = [], [], []
        for name, p in model.named_parameters():
            if id(p) in hyper:
                self.params.append(p)
                self.hyper.append(hyper[id(p)])
                keys.append(keyer(name))
        if not self.params:
            raise ValueError("none of the model's parameters is in the optimizer")
        self.groups = list(dict.fromkeys(keys))
        self.device = self.params[0].device
        self.index = torch.tensor([self.groups.index(k) for k in keys], device=self.device)
        self.prev = [p.detach().clone() for p in self.params]  # θ before the next step
        self.buffer: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self) -> None:
        """Record the step just taken (call once right after ``opt.step()``)."""
        rows = [self._param_row(p, prev, h) for p, prev, h in zip(self.params, self.prev, self.hyper)]
        per_param = torch.stack(rows)  # (P, len(_SUMS) + 1)
        n_groups = len(self.groups)
        sums = torch.zeros(n_groups, len(_SUMS), dtype=self.dtype, device=self.device)
        sums.index_add_(0, self.index, per_param[:, : len(_SUMS)])
        maxes = torch.zeros(n_groups, dtype=self.dtype, device=self.device)
        maxes.scatter_reduce_(0, self.index, per_param[:, -1], reduce="amax", include_self=False)
        self.buffer.append(torch.cat([sums, maxes[:, None]], dim=1))
        for p, prev in zip(self.params, self.prev):
            prev.copy_(p)

    record = __call__

    def _param_row(self, p: torch.Tensor, prev: torch.Tensor, h: dict) -> torch.Tensor:
        """Raw sums for one parameter, as one device tensor in the order of _SUMS + (_MAX,)."""
        dt, nan = self.dtype, torch.tensor(float("nan"), dtype=self.dtype, device=p.device)
        w, delta = p.detach().to(dt), (p.detach() - prev).to(dt)
        g = p.grad.detach().to(dt) if p.grad is not None else torch.zeros_like(w)
        state = self.opt.state.get(p, {})
        if self.kind == "adam" and "exp_avg" in state:
            beta1, beta2 = h["betas"]
            t = torch.as_tensor(state["step"], device=p.device).to(dt)
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            m = state["exp_avg"].to(dt)
            m_hat, v_hat = m / bc1, state["exp_avg_sq"].to(dt) / bc2
            s = h["lr"] * m_hat / (v_hat.sqrt() + h["eps"])
            vsq = v_hat.sqrt().sum()
        else:  # SGD (or an Adam parameter that has not stepped yet): the step is what moved
            m = state.get("momentum_buffer")
            m = m.to(dt) if m is not None else torch.full_like(w, float("nan"))
            m_hat, s, vsq, bc1, bc2 = m, -delta, nan, nan, nan
        one = torch.ones((), dtype=dt, device=p.device)
        return torch.stack([
            delta.pow(2).sum(), w.pow(2).sum(), g.pow(2).sum(), m.pow(2).sum(), m_hat.pow(2).sum(),
            vsq, s.abs().sum(), s.pow(2).sum(), one * w.numel(), bc1 * one, bc2 * one, one,
            s.abs().max(),
        ])

    def result(self) -> OptimizerStateTrace:
        """Stack the device buffer (one sync) and derive the metrics; numpy arrays (steps, groups)."""
        if not self.buffer:
            raw = np.zeros((0, len(self.groups), len(_SUMS) + 1))
        else:
            raw = torch.stack(self.buffer).to("cpu", torch.float64).numpy()
        c = {k: raw[..., i] for i, k in enumerate(_SUMS)}
        w_norm = np.sqrt(c["w2"])
        with np.errstate(divide="ignore", invalid="ignore"):
            metrics = {
                "update_ratio": np.sqrt(c["d2"]) / w_norm,
                "update_norm": np.sqrt(c["d2"]),
                "weight_norm": w_norm,
                "grad_norm": np.sqrt(c["g2"]),
                "m_norm": np.sqrt(c["m2"]),
                "m_hat_norm": np.sqrt(c["mhat2"]),
                "v_hat_sqrt_mean": c["vhat_sqrt"] / c["count"],
                "step_abs_mean": c["s_abs"] / c["count"],
                "step_rms": np.sqrt(c["s2"] / c["count"]),
                "step_abs_max": raw[..., len(_SUMS)],
                "bias_correction1": c["bc1"] / c["n_params"],
                "bias_correction2": c["bc2"] / c["n_params"],
            }
        return OptimizerStateTrace(groups=list(self.groups), metrics=metrics, steps=raw.shape[0])
