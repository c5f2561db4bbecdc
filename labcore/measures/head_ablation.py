"""Single-head ablations: the authors' ``head_mask``, mean ablation, and a same-norm random control.

The Bayesian wind tunnel's "hypothesis-frame head" (arXiv 2512.22471) is a causal claim: remove one
layer-0 head and calibration collapses. The authors remove heads with a ``head_mask`` that scales
each head's output before the output projection:

    z'_h = m_h · z_h                       z_h = Σ_k pattern_h[q, k] v_h[k]   (``hook_z``, per head)
    attn_out = Σ_h z'_h W_O^h              m = 1: the intact model; m_h = 0: head h removed

Zeroing is not the only way to remove a head. **Mean ablation** replaces z_h by its mean over a
reference batch at each position, z'_h[b, t] = mean_b' z_h[b', t]: the head's typical output stays,
what it says about *this* sequence goes. Both are here; the claims say which they use.

**Control.** Zeroing head h moves the residual stream by −r_h, where r_h = z_h W_O^h is the head's
write (``hook_result``). A large cost can mean "the head computes something needed" or only "the
stream does not tolerate a kick of that size". The control keeps the head and adds a kick of the
same size in a random direction (as ``ablation_controls.random_direction_block`` does for blocks):

    r'_h[b, t] = r_h[b, t] + ‖r_h[b, t]‖ · u[b, t]      u a random unit vector per row and position

:func:`scan_heads` runs one of the three over every head of a layer and grades each forward with
a scoring function of the logits; the intact reference runs under the no-op mask m = 1, so that it
takes the same attention kernel as the ablated forwards (a hook on ``hook_z`` turns off the fused
kernel on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from labcore.measures.probes import zero_head

__all__ = ["head_mask", "head_mean_z", "mean_ablate_head", "random_direction_head", "scan_heads"]

Hook = tuple[str, Callable]
MODES = ("zero", "mean", "random")


def _check_head(head: int, n_heads: int) -> None:
    if not 0 <= head < n_heads:
        raise ValueError(f"head={head} out of range for {n_heads} heads: use 0..{n_heads - 1}")


def head_mask(layer: int, mask: Sequence[float] | torch.Tensor) -> list[Hook]:
    """Hooks scaling each head's output of block ``layer`` by ``mask`` (H,) (the authors' head_mask):
    ``hook_z[:, :, h] *= mask[h]``. All ones reproduces the model bit for bit; a 0 removes a head."""
    m = torch.as_tensor(mask, dtype=torch.float32).flatten()

    def fn(z: torch.Tensor, hook) -> torch.Tensor:  # (B, T, H, dh)
        if m.numel() != z.shape[2]:
            raise ValueError(f"head mask has {m.numel()} entries, block {layer} has {z.shape[2]} heads: "
                             f"pass one weight per head")
        return z * m.to(z.device, z.dtype)[None, None, :, None]

    return [(f"blocks.{layer}.attn.hook_z", fn)]


@torch.no_grad()
def head_mean_z(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """Each head's output at block ``layer`` averaged over the batch: (T, H, dh), per position."""
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    return cache[name].mean(dim=0)  # (B, T, H, dh) -> (T, H, dh)


def mean_ablate_head(layer: int, head: int, mean_z: torch.Tensor) -> list[Hook]:
    """Hooks replacing head ``head``'s output at block ``layer`` by ``mean_z[:T, head]`` (from
    :func:`head_mean_z`), the same for every row of the batch."""

    def fn(z: torch.Tensor, hook) -> torch.Tensor:  # (B, T, H, dh)
        _check_head(head, z.shape[2])
        if mean_z.dim() != 3 or mean_z.shape[1:] != z.shape[2:] or mean_z.shape[0] < z.shape[1]:
            raise ValueError(f"mean_z has shape {tuple(mean_z.shape)}, need (T ≥ {z.shape[1]}, {z.shape[2]}, "
                             f"{z.shape[3]}): compute it with head_mean_z on the same model and layer")
        z = z.clone()
        z[:, :, head] = mean_z[: z.shape[1], head].to(z.dtype)
        return z

    return [(f"blocks.{layer}.attn.hook_z", fn)]


def random_direction_head(layer: int, head: int, generator: torch.Generator) -> list[Hook]:
    """Hooks adding to head ``head``'s write at block ``layer`` a random vector of the write's own norm
    at every position (the same-size, no-content control of zeroing the head). ``generator`` (CPU)
    draws fresh directions on every forward, reproducibly."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    def fn(result: torch.Tensor, hook) -> torch.Tensor:  # (B, T, H, d)
        _check_head(head, result.shape[2])
        r = result[:, :, head]                                                   # (B, T, d) r_h
        u = torch.randn(r.shape, generator=generator, dtype=torch.float32).to(r.device, r.dtype)
        u = u / u.norm(dim=-1, keepdim=True)                                     # (B, T, d) unit
        result = result.clone()
        result[:, :, head] = r + r.norm(dim=-1, keepdim=True) * u
        return result

    return [(f"blocks.{layer}.attn.hook_result", fn)]


@torch.no_grad()
def scan_heads(model, tokens: torch.Tensor, layer: int, score: Callable[[torch.Tensor], dict],
               mode: str = "zero", generator: torch.Generator | None = None) -> dict:
    """Ablate each head of block ``layer`` alone and grade the logits with ``score(logits) -> dict``.

    ``mode``: "zero" (``probes.zero_head``: the authors' head_mask with m_h = 0), "mean" (mean over ``tokens``' batch) or "random" (the same-norm
    kick, needs ``generator``). Returns {"intact": score under the no-op mask, "heads": [score, ...]}.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")
    if mode == "random" and generator is None:
        raise ValueError("mode='random' draws directions: pass generator=torch.Generator().manual_seed(...)")
    n_heads = model.cfg.n_heads
    no_op = head_mask(layer, torch.ones(n_heads))  # keeps every forward on the same (unfused) kernel
    intact = _scored(model, tokens, no_op, score)
    mean_z = head_mean_z(model, tokens, layer) if mode == "mean" else None
    heads = []
    for h in range(n_heads):
        if mode == "zero":
            hooks = zero_head(layer, h)  # = head_mask with m_h = 0
        elif mode == "mean":
            hooks = mean_ablate_head(layer, h, mean_z)
        else:
            hooks = no_op + random_direction_head(layer, h, generator)
        heads.append(_scored(model, tokens, hooks, score))
    return {"intact": intact, "heads": heads}


def _scored(model, tokens: torch.Tensor, hooks: list[Hook], score: Callable[[torch.Tensor], dict]) -> dict:
    with model.hooks(fwd_hooks=hooks):
        return score(model(tokens))
