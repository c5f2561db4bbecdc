"""Pair-token associative recall: the smallest retrieval task a single attention layer can solve.

Each context token *is* a (key, value) pair, token id key·n_values + value, with distinct keys;
the last token is a query naming one key (id n_keys·n_values + key). The answer is that key's
value. One attention head solves it by matching the query to the pair token with the same key
(content-addressed lookup) and copying out its value, so the quality of the q·k match is the
whole task — which makes it the place to see what the 1/√d_k scale does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairRecallTask:
    n_keys: int = 16  # distinct keys; the query asks for one of them
    n_values: int = 16  # values a key can be bound to
    n_pairs: int = 8  # (key, value) pair tokens in the context, distinct keys

    def __post_init__(self) -> None:
        if not 1 <= self.n_pairs <= self.n_keys:
            raise ValueError(f"n_pairs={self.n_pairs} must lie in [1, n_keys={self.n_keys}] (keys are distinct)")

    @property
    def vocab_size(self) -> int:
        return self.n_keys * self.n_values + self.n_keys

    @property
    def seq_len(self) -> int:
        return self.n_pairs + 1

    @property
    def chance_loss(self) -> float:
        """Cross-entropy (nats) of guessing uniformly over the values: the loss to beat."""
        return float(torch.tensor(float(self.n_values)).log())

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, n_pairs+1), targets (B, n_pairs+1)) with targets −100 except at the query."""
        B = batch_size
        keys = torch.rand(B, self.n_keys, generator=generator).argsort(-1)[:, : self.n_pairs]  # (B, P) distinct
        values = torch.randint(0, self.n_values, (B, self.n_pairs), generator=generator)  # (B, P)
        asked = torch.randint(0, self.n_pairs, (B,), generator=generator)  # which pair the query names
        rows = torch.arange(B)
        query = self.n_keys * self.n_values + keys[rows, asked]
        tokens = torch.cat([keys * self.n_values + values, query[:, None]], dim=1)
        targets = torch.full_like(tokens, -100)
        targets[:, -1] = values[rows, asked]  # the exact answer, beside the generator
        return tokens, targets

    def batch_fn(self, batch_size: int):
        return lambda step, generator: self.sample(batch_size, generator)
