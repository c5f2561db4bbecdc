"""Associative recall: the "random-access binding" wind tunnel added in v3 of Agarwal, Dalal &
Misra, *The Bayesian Geometry of Transformer Attention* (arXiv 2512.22471v3; the authors' code
is ``src/data/associative_recall.py``).

A sequence stores N key->value bindings and then asks for one of them::

    tokens  = [k1, v1, k2, v2, ..., kN, vN, SEP, q]          length 2N + 2
    targets = [-100, ..., -100, v_j]                          only the last position is scored

Keys are tokens 0..n_keys-1 (N distinct keys per sequence), values n_keys..n_keys+n_values-1,
and SEP = n_keys + n_values. The query q = k_j for a pair j drawn uniformly, so the exact
posterior over values is a point mass on v_j: recall is a lookup, not an inference, and the
score is accuracy (or the log-probability of the bound value). Absent query keys, whose
posterior would be uniform over values, are never generated.

Why it separates architectures: the model cannot know which pair will be asked until the end,
so a fixed-size recurrent state must compress all N bindings, while attention can look the key
up by content (v3 reports Transformer 100%, Mamba 97.8%, LSTM 0.5%).
Simplified against the authors' version: no STORE/QUERY markers, no filler, one query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from labcore.tasks.bijection import (IGNORE_INDEX, _require_generator, _require_int, _TensorBatch, on_device,
                                     token_batches)


@dataclass
class RecallBatch(_TensorBatch):
    """One sampled batch. B = batch, N = pairs."""

    tokens: torch.Tensor      # (B, 2N+2) long: [k1, v1, ..., kN, vN, SEP, q]
    targets: torch.Tensor     # (B, 2N+2) long: -100 except the last position, the answer token
    answer: torch.Tensor      # (B,) long: the bound value's token id (n_keys + value index)
    posterior: torch.Tensor   # (B, n_values) float64: exact p(value | context), one-hot
    keys: torch.Tensor        # (B, N) long: key indices 0..n_keys-1, distinct per row
    values: torch.Tensor      # (B, N) long: value indices 0..n_values-1
    query_pair: torch.Tensor  # (B,) long: j, the pair being asked for


@dataclass(frozen=True)
class RecallTask:
    """N = ``n_pairs`` distinct keys out of ``n_keys``, values out of ``n_values``
    (distinct within a sequence when ``distinct_values``, as in the authors' code)."""

    n_keys: int
    n_values: int
    n_pairs: int
    distinct_values: bool = True

    def __post_init__(self):
        _require_int("n_keys", self.n_keys, 1)
        _require_int("n_values", self.n_values, 2)
        _require_int("n_pairs", self.n_pairs, 1)
        if self.n_pairs > self.n_keys:
            raise ValueError(
                f"n_pairs={self.n_pairs} > n_keys={self.n_keys}: "
                "the keys of a sequence are distinct"
            )
        if self.distinct_values and self.n_pairs > self.n_values:
            raise ValueError(
                f"n_pairs={self.n_pairs} > n_values={self.n_values} with distinct_values=True"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values + 1

    @property
    def sep_token(self) -> int:
        return self.n_keys + self.n_values

    @property
    def seq_len(self) -> int:
        return 2 * self.n_pairs + 2

    @property
    def query_position(self) -> int:
        """The last position (the query key): the only one scored."""
        return 2 * self.n_pairs + 1

    @property
    def value_slice(self) -> slice:
        return slice(self.n_keys, self.n_keys + self.n_values)

    def sample(self, batch_size: int, generator: torch.Generator) -> RecallBatch:
        """Draw ``batch_size`` sequences on ``generator.device``."""
        _require_int("batch_size", batch_size, 1)
        g = _require_generator(generator)
        B, N, dev = batch_size, self.n_pairs, g.device

        # distinct keys: the first N of a uniform random permutation (argsort of noise)
        keys = torch.argsort(torch.rand(B, self.n_keys, generator=g, device=dev), dim=1)[:, :N]
        if self.distinct_values:
            values = torch.argsort(torch.rand(B, self.n_values, generator=g, device=dev),
                                   dim=1)[:, :N]
        else:
            values = torch.randint(0, self.n_values, (B, N), generator=g, device=dev)
        j = torch.randint(0, N, (B,), generator=g, device=dev)                 # (B,)
        q = torch.gather(keys, 1, j[:, None]).squeeze(1)                        # (B,)
        v = torch.gather(values, 1, j[:, None]).squeeze(1)                      # (B,)

        tokens = torch.empty(B, 2 * N + 2, dtype=torch.long, device=dev)
        tokens[:, 0:2 * N:2] = keys
        tokens[:, 1:2 * N:2] = values + self.n_keys
        tokens[:, 2 * N] = self.sep_token
        tokens[:, 2 * N + 1] = q
        answer = v + self.n_keys
        targets = torch.full_like(tokens, IGNORE_INDEX)
        targets[:, -1] = answer
        posterior = torch.nn.functional.one_hot(v, self.n_values).to(torch.float64)
        return RecallBatch(tokens=tokens, targets=targets, answer=answer, posterior=posterior,
                           keys=keys, values=values, query_pair=j)

    def sample_torch(self, batch_size: int, generator: torch.Generator,
                     device: torch.device | str | None = None) -> RecallBatch:
        """``sample`` on ``device`` (``generator`` must live there): distinct keys and values by
        argsort of uniform noise, all device tensors, no host sync."""
        return self.sample(batch_size, on_device(generator, device))


def recall_accuracy(logits: torch.Tensor, batch: RecallBatch) -> float:
    """Fraction of sequences whose arg-max prediction at the last position is the bound value
    (over the full vocabulary). logits (B, T, vocab)."""
    pred = logits[:, -1].argmax(-1)  # (B,)
    return float((pred == batch.answer).to(torch.float64).mean())


def batch_fn(task: RecallTask, batch_size: int) -> Callable[[int, torch.Generator], tuple]:
    """Adapter for ``labcore.training.trainer.train``: (step, generator) -> (tokens, targets)."""
    return token_batches(task, RecallTask, batch_size)
