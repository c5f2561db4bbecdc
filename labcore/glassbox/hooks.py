"""Hook points: named identity modules on every activation worth looking at.

The idea is TransformerLens's: each activation passes through an `HookPoint`, an identity module
named by its path in the model (`blocks.0.attn.hook_pattern`). Caching an activation or
intervening on it is then "register a forward hook on that HookPoint", and every hook is removed
when the `with` block that added it ends, also when the block raises.

A hook function has the signature `fn(activation, hook) -> activation | None`; returning a tensor
replaces the activation for the rest of the forward pass, returning None leaves it unchanged.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
NamesFilter = Callable[[str], bool] | str | Iterable[str] | None

# Every hook name a glass-box model exposes, with the shape of the activation that passes through
# it. Letters: B batch, T positions (T_q queries, T_k keys), d d_model, H n_heads, dh d_head,
# m d_mlp. `{l}` is the layer index. This table is the documentation *and* the test oracle.
HOOK_SHAPES: dict[str, str] = {
    "hook_embed": "(B, T, d)",  # token embedding (scaled by embed_scale)
    "hook_pos_embed": "(B, T, d)",  # learned or sinusoidal position embedding (absent for rope/none)
    "blocks.{l}.hook_resid_pre": "(B, T, d)",  # residual stream entering block l
    "blocks.{l}.ln1.hook_normalized": "(B, T, d)",  # the attention's input after its norm
    "blocks.{l}.attn.hook_q": "(B, T, H, dh)",  # queries (after rope, when rope is used)
    "blocks.{l}.attn.hook_k": "(B, T, H, dh)",  # keys (after rope, when rope is used)
    "blocks.{l}.attn.hook_v": "(B, T, H, dh)",  # values
    "blocks.{l}.attn.hook_attn_scores": "(B, H, T_q, T_k)",  # scaled q·k, -inf above the diagonal
    "blocks.{l}.attn.hook_pattern": "(B, H, T_q, T_k)",  # softmax of the scores; rows sum to 1
    "blocks.{l}.attn.hook_z": "(B, T, H, dh)",  # pattern-weighted sum of values, per head
    "blocks.{l}.attn.hook_result": "(B, T, H, d)",  # each head's output, z_h @ W_O[h]
    "blocks.{l}.hook_attn_out": "(B, T, d)",  # sum of the heads' results (+ bias)
    "blocks.{l}.hook_resid_mid": "(B, T, d)",  # resid_pre + attn_out
    "blocks.{l}.ln2.hook_normalized": "(B, T, d)",  # the MLP's input after its norm
    "blocks.{l}.mlp.hook_pre": "(B, T, m)",  # MLP pre-activation (the gate's input for swiglu)
    "blocks.{l}.mlp.hook_post": "(B, T, m)",  # MLP hidden after the nonlinearity (gate·up)
    "blocks.{l}.hook_mlp_out": "(B, T, d)",  # MLP output written to the residual stream
    "blocks.{l}.hook_resid_post": "(B, T, d)",  # residual stream leaving block l
    "ln_final.hook_normalized": "(B, T, d)",  # final norm's output, the unembedding's input
}


class HookPoint(nn.Module):
    """An identity module that gives one activation a name, so hooks can read or replace it."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""  # set by HookedModule.setup_hooks() to the module's path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def _as_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


class ActivationCache(dict):
    """Activations by hook name, with TransformerLens-style shorthand keys.

    `cache["pattern", 0]` is `cache["blocks.0.attn.hook_pattern"]`; `cache["resid_post", 1]` is
    `cache["blocks.1.hook_resid_post"]`.
    """

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = self.full_name(*key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        if isinstance(key, tuple):
            try:
                key = self.full_name(*key)
            except KeyError:
                return False
        return super().__contains__(key)

    def full_name(self, short: str, layer: int | None = None) -> str:
        """Expand a short name (`"pattern"`, `"q"`, `"resid_pre"`, `"mlp_out"`, `"post"`) for a layer."""
        short = short.removeprefix("hook_")
        if layer is None:
            for name in (f"hook_{short}", f"ln_final.hook_{short}"):
                if super().__contains__(name):
                    return name
            raise KeyError(f"no cached activation named {short!r} outside the blocks; give a layer")
        suffix = f"hook_{short}"
        candidates = [
            f"blocks.{layer}.{suffix}",
            f"blocks.{layer}.attn.{suffix}",
            f"blocks.{layer}.mlp.{suffix}",
        ]
        for name in candidates:
            if super().__contains__(name):
                return name
        raise KeyError(
            f"no cached activation for ({short!r}, {layer}): tried {candidates}; "
            f"cached: {sorted(self.keys())[:8]}..."
        )

    def stack(self, short: str, n_layers: int) -> torch.Tensor:
        """The activation `short` of every layer stacked on a new leading axis: (n_layers, ...)."""
        return torch.stack([self[short, layer] for layer in range(n_layers)])


class HookedModule(nn.Module):
    """Mixin giving a model named hook points, `run_with_cache` and a `hooks(...)` context."""

    def setup_hooks(self) -> None:
        """Name every HookPoint by its module path. Call at the end of `__init__`."""
        self._hook_points: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self._hook_points[name] = module

    def hook_points(self) -> dict[str, HookPoint]:
        return dict(self._hook_points)

    def hook_names(self) -> list[str]:
        return list(self._hook_points)

    def _hook_point(self, name: str) -> HookPoint:
        try:
            return self._hook_points[name]
        except KeyError:
            close = [n for n in self._hook_points if name.split(".")[-1] in n][:5]
            raise KeyError(
                f"no hook point named {name!r}; similar: {close or 'none'} "
                f"(model.hook_names() lists all {len(self._hook_points)})"
            ) from None

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = ()) -> Iterator[None]:
        """Add forward hooks for the duration of a `with` block; they are removed on exit.

        `fwd_hooks` is a list of (name or name-predicate, fn). `fn(activation, hook)` may return a
        replacement tensor.
        """
        handles = []
        try:
            for name_or_filter, fn in fwd_hooks:
                if callable(name_or_filter):
                    points = [p for n, p in self._hook_points.items() if name_or_filter(n)]
                else:
                    points = [self._hook_point(name_or_filter)]
                for point in points:
                    handles.append(point.register_forward_hook(_adapt(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run_with_cache(
        self, *args, names_filter: NamesFilter = None, detach: bool = True, **kwargs
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Run the model and return (output, cache of the activations that pass `names_filter`)."""
        keep = _as_filter(names_filter)
        cache = ActivationCache()

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = x.detach() if detach else x

        names = [n for n in self._hook_points if keep(n)]
        with self.hooks([(name, save) for name in names]):
            out = self(*args, **kwargs)
        return out, cache


def _adapt(fn: HookFn):
    """Turn `fn(activation, hook)` into a torch forward hook `(module, inputs, output)`."""

    def forward_hook(module: HookPoint, inputs, output):
        return fn(output, module)

    return forward_hook


def expand_hook_names(n_layers: int, present: Callable[[str], bool] = lambda n: True) -> list[str]:
    """Every documented hook name with `{l}` filled in for each layer."""
    names = []
    for pattern in HOOK_SHAPES:
        if "{l}" in pattern:
            names.extend(pattern.format(l=layer) for layer in range(n_layers))
        else:
            names.append(pattern)
    return [n for n in names if present(n)]


def shape_pattern(name: str) -> str:
    """The documented shape of a concrete hook name (`blocks.3.attn.hook_q` -> `(B, T, H, dh)`)."""
    return HOOK_SHAPES[re.sub(r"blocks\.\d+\.", "blocks.{l}.", name)]
