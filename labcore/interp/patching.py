"""Activation patching and attribution patching, on the glass-box hook names.

**Activation patching** (Meng et al. 2022's causal tracing; Wang et al. 2022; TransformerLens's
``patching`` module): run the model on the *corrupted* input, but replace one component's
activation by its value on the *clean* input, and read a metric. A component is one hook point of
one layer, optionally at one position and/or one head:

* residual-type hooks ``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``,
  ``pre``, ``post`` (B, T, ·): axes (layer[, pos]);
* per-head hooks ``q``, ``k``, ``v``, ``z``, ``result`` (B, T, H, ·): axes (layer[, pos][, head]);
* pattern-type hooks ``pattern``, ``attn_scores`` (B, H, T_q, T_k): axes (layer[, pos][, head]),
  pos being the query position.

``activation_patching`` returns metric(patched run) per component. Patching every component of a
layer restores the clean metric; patching with the corrupted value itself changes nothing.

**Attribution patching** (Nanda 2023, "Attribution patching"; Syed et al. 2023): the first-order
Taylor estimate of the same experiment from one forward and one backward pass,

    metric(patched) − metric(corrupted) ≈ Σ (a_clean − a_corrupt) · ∂metric/∂a |_corrupted,

summed over the entries of the component. ``attribution_patching`` returns that estimate per
component, on the same axes; it is exact when the metric is linear in the activation.

``corrupt_hooks`` are extra hooks active in every corrupted run (e.g. Gaussian noise on
``hook_embed``, the causal-tracing corruption; then clean and corrupted tokens may be the same).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from labcore.interp.readout import Labelled, hook_name, n_layers

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (B, T, V) -> scalar tensor

__all__ = [
    "activation_patching",
    "attribution_patching",
    "layout",
    "logit_diff_metric",
    "noise_hook",
    "run_metric",
]


def layout(short: str) -> tuple[int, int | None]:
    """(position axis, head axis or None) of a hook's activation, batch being axis 0."""
    short = short.split(".")[-1].removeprefix("hook_")
    if short in ("pattern", "attn_scores"):
        return 2, 1
    if short in ("q", "k", "v", "z", "result"):
        return 1, 2
    return 1, None


def logit_diff_metric(answer, wrong, pos: int = -1) -> Metric:
    """metric(logits) = mean over the batch of logits[b, pos, answer_b] − logits[b, pos, wrong_b]."""
    answer, wrong = torch.as_tensor(answer), torch.as_tensor(wrong)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, pos]  # (B, V)
        rows = torch.arange(last.shape[0])
        a = last[rows, answer.expand(last.shape[0])]
        w = last[rows, wrong.expand(last.shape[0])]
        return (a - w).mean()

    return metric


def noise_hook(std: float, generator: torch.Generator) -> Callable:
    """A hook adding fixed Gaussian noise N(0, std²) (drawn once, reused every run) to an activation."""
    drawn: dict[tuple, torch.Tensor] = {}

    def fn(x: torch.Tensor, hook) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in drawn:
            drawn[key] = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x) * std
        return x + drawn[key]

    return fn


@torch.no_grad()
def run_metric(model, tokens: torch.Tensor, metric: Metric, hooks: Sequence = ()) -> float:
    """metric(model(tokens)) with ``hooks`` active."""
    with model.hooks(list(hooks)):
        return float(metric(model(tokens)))


def _resolve(model, hook: str, layers, by_position: bool, by_head: bool | None):
    pos_axis, head_axis = layout(hook)
    if by_head is None:
        by_head = head_axis is not None
    if by_head and head_axis is None:
        raise ValueError(f"hook {hook!r} has no head axis; use by_head=False")
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    names = [hook_name(hook, layer) for layer in layers]
    axes = ("layer",) + (("pos",) if by_position else ()) + (("head",) if by_head else ())
    return names, layers, pos_axis, head_axis if by_head else None, axes


def _grid(shape: torch.Size, pos_axis: int, head_axis: int | None, by_position: bool):
    sizes = ([shape[pos_axis]] if by_position else []) + ([shape[head_axis]] if head_axis is not None else [])
    return sizes, list(itertools.product(*[range(n) for n in sizes]))


def _index(ndim: int, pos_axis: int, head_axis: int | None, by_position: bool, cell: tuple) -> tuple:
    idx: list = [slice(None)] * ndim
    cell = list(cell)
    if by_position:
        idx[pos_axis] = cell.pop(0)
    if head_axis is not None:
        idx[head_axis] = cell.pop(0)
    return tuple(idx)


def _patch_fn(clean: torch.Tensor, idx: tuple) -> Callable:
    def fn(x: torch.Tensor, hook) -> torch.Tensor:
        if x.shape != clean.shape:
            raise ValueError(f"{hook.name}: clean {tuple(clean.shape)} vs corrupted {tuple(x.shape)}")
        x = x.clone()
        x[idx] = clean[idx].to(x.dtype)
        return x

    return fn


@torch.no_grad()
def activation_patching(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, metric: Metric,
                        hook: str = "resid_pre", layers: Sequence[int] | None = None, by_position: bool = True,
                        by_head: bool | None = None, corrupt_hooks: Sequence = ()) -> Labelled:
    """metric of the corrupted run with one component patched to its clean value, per component.

    ``hook`` is a short name (``"resid_pre"``, ``"z"``, ``"pattern"``…); ``by_head`` defaults to
    True for hooks with a head axis. One forward pass per component.
    """
    names, layers, pos_axis, head_axis, axes = _resolve(model, hook, layers, by_position, by_head)
    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    sizes, cells = _grid(clean_cache[names[0]].shape, pos_axis, head_axis, by_position)
    values = torch.empty(len(names), *sizes, dtype=torch.float64)
    for li, name in enumerate(names):
        clean = clean_cache[name]
        for cell in cells:
            idx = _index(clean.dim(), pos_axis, head_axis, by_position, cell)
            values[(li, *cell)] = run_metric(model, corrupt_tokens, metric,
                                             list(corrupt_hooks) + [(name, _patch_fn(clean, idx))])
    return Labelled(values, axes, {"layer": layers, "hook": [hook]})


def _reduce(contrib: torch.Tensor, pos_axis: int, head_axis: int | None, by_position: bool) -> torch.Tensor:
    keep = ([pos_axis] if by_position else []) + ([head_axis] if head_axis is not None else [])
    rest = [a for a in range(contrib.dim()) if a not in keep]
    return contrib.permute(keep + rest).flatten(len(keep)).sum(-1)


def attribution_patching(model, clean_tokens: torch.Tensor, corrupt_tokens: torch.Tensor, metric: Metric,
                         hook: str = "resid_pre", layers: Sequence[int] | None = None, by_position: bool = True,
                         by_head: bool | None = None, corrupt_hooks: Sequence = ()) -> Labelled:
    """First-order estimate of metric(patched) − metric(corrupted) per component (one backward pass).

    The gradient is taken at the corrupted run by adding a zero leaf tensor at each hook, so it
    works when the model's own parameters are frozen, and the gradient reaching an early hook
    still flows through the later ones.
    """
    names, layers, pos_axis, head_axis, axes = _resolve(model, hook, layers, by_position, by_head)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    leaves: dict[str, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}

    def add_leaf(x: torch.Tensor, hook) -> torch.Tensor:
        leaves[hook.name] = leaf = torch.zeros_like(x, requires_grad=True)
        acts[hook.name] = x.detach()
        return x + leaf

    with torch.enable_grad(), model.hooks(list(corrupt_hooks) + [(n, add_leaf) for n in names]):
        value = metric(model(corrupt_tokens))
        grads = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
    out = []
    for name, grad in zip(names, grads):
        clean, corrupt = clean_cache[name].double(), acts[name].double()
        diff = torch.where(torch.isfinite(clean) & torch.isfinite(corrupt), clean - corrupt, 0.0)
        grad = torch.zeros_like(diff) if grad is None else grad.double()
        out.append(_reduce(diff * grad, pos_axis, head_axis, by_position))
    return Labelled(torch.stack(out), axes, {"layer": layers, "hook": [hook]})
