"""Controls for block ablations: perturb a block's output by as much as bypassing it does, but in a
direction that carries no information (hook lists for ``with model.hooks(fwd_hooks=...)``).

Bypassing block ℓ (``labcore.measures.probes.bypass_block``) removes its write
Δ = resid_post − resid_pre. A large error after that can mean "the block computes something
needed" or merely "the residual stream does not tolerate a kick of size ‖Δ‖". The control keeps the
size and drops the content:

    resid_post' = resid_post − ‖Δ_{b,t}‖ · u_{b,t}       u_{b,t} a random unit vector (per position)

so the perturbation has exactly the bypass's norm at every position, pointing somewhere random.
If the block's write is specific, the bypass must hurt far more than this control.
"""

from __future__ import annotations

import torch

__all__ = ["random_direction_block"]


def random_direction_block(layer: int, generator: torch.Generator) -> list:
    """Hooks that subtract, after block ``layer``, a random vector of the block's own write norm.

    ``generator`` draws the directions (one unit vector per batch row and position), so the control
    is reproducible; each forward pass draws fresh directions from it.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    saved: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook) -> None:                  # (B, T, d) resid_pre
        saved["pre"] = x
        return None

    def kick(x: torch.Tensor, hook) -> torch.Tensor:          # (B, T, d) resid_post
        delta_norm = (x - saved.pop("pre")).norm(dim=-1, keepdim=True)          # (B, T, 1) ‖Δ‖
        u = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        u = u / u.norm(dim=-1, keepdim=True)                                     # (B, T, d) unit
        return x - delta_norm * u

    return [(f"blocks.{layer}.hook_resid_pre", keep), (f"blocks.{layer}.hook_resid_post", kick)]
