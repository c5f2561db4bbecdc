"""Shared by the interp unit tests: a small GPT trained briefly on induction-style data."""

from __future__ import annotations

import torch

from labcore import GPT
from labcore.interp import heads


def trained_on_repeats(model: GPT, vocab: int, steps: int = 150, seed: int = 7) -> GPT:
    """Train ``model`` in place with Adam (lr 3e-3) on repeated random sequences (32 × two copies
    of 8 tokens), ``steps`` steps from a generator seeded ``seed``; returned in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = heads.repeated_random_tokens(32, 8, vocab, g)                     # (32, 16)
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()
