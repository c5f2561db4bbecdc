"""Bijection elimination in the paper's *paired, shared-vocabulary* format with an explicit query
(Agarwal, Dalal & Misra, arXiv 2512.22471; the authors' ``experiments/jlens/train_paired_variant.py``).

The production checkpoints of the authors use the "sep-vocab" format of
:mod:`labcore.tasks.bijection` (keys 0..V-1, values V..2V-1, no query token). Paper I's own
variant, where its geometric claims (orthogonal key frame, single frame head) are made, shares one
vocabulary of V tokens between keys and values and ends with a query drawn from the context::

    tokens  = [k1, v1, k2, v2, ..., kL, vL, q]              length 2L+1, vocab V (shared)
    targets = [v1, -100, v2, -100, ..., vL, -100, pi(q)]     (v_t = pi(k_t), q = k_j for a random j)

Every key position predicts its upcoming value (the calibrated-posterior positions, exactly as in
the sep-vocab task: uniform over the V - t values not yet shown), value positions are not
supervised, and the query position predicts the value its key was paired with — a point mass, so
the query is a content-addressed lookup: find the earlier occurrence of q *as a key* and copy the
token after it. The same token can be a key in one pair and a value in another, which is why the
key tokens' W_K projections must tell the V hypotheses apart in this format (and need not in the
sep-vocab one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labcore.tasks.bijection import (IGNORE_INDEX, _TensorBatch, _entropy_bits_exact, _exact_posterior,
                                     _require_generator, _require_int, token_batches)


@dataclass
class PairedBatch(_TensorBatch):
    """One sampled batch of the paired format with its exact answer. B = batch, L = pairs."""

    tokens: torch.Tensor        # (B, 2L+1) long: [k1, v1, ..., kL, vL, q], all in 0..V-1
    targets: torch.Tensor       # (B, 2L+1) long: v_t at key positions, pi(q) at the query, -100 elsewhere
    keys: torch.Tensor          # (B, L) long
    values: torch.Tensor        # (B, L) long, v_t = pi(k_t)
    query_index: torch.Tensor   # (B,) long: the pair j whose key is the query
    posterior: torch.Tensor     # (B, L, V) float64: exact p(v_t | pairs before t) at key position 2t
    entropy_bits: torch.Tensor  # (B, L) float64: H of that posterior (log2(V - t))
    eliminated: torch.Tensor    # (B, L, V) bool: values ruled out at key position 2t


@dataclass(frozen=True)
class PairedBijectionTask:
    """Shared-vocab bijection with an explicit query: V tokens, L distinct keys per sequence."""

    V: int
    L: int

    def __post_init__(self):
        _require_int("V", self.V, 2)
        _require_int("L", self.L, 1)
        if self.L > self.V:
            raise ValueError(f"L={self.L} > V={self.V}: keys are drawn without replacement, at most V of them")

    @property
    def vocab_size(self) -> int:
        return self.V  # one vocabulary for keys and values

    @property
    def seq_len(self) -> int:
        return 2 * self.L + 1

    @property
    def key_positions(self) -> torch.Tensor:
        """Positions 0, 2, ..., 2L-2 of the keys (each predicts its value)."""
        return torch.arange(0, 2 * self.L, 2)  # (L,)

    @property
    def query_position(self) -> int:
        return 2 * self.L

    def sample(self, batch_size: int, generator: torch.Generator) -> PairedBatch:
        """Draw ``batch_size`` sequences on ``generator.device`` (the authors' vectorised sampler)."""
        _require_int("batch_size", batch_size, 1)
        g = _require_generator(generator)
        B, V, L, dev = batch_size, self.V, self.L, g.device
        perm = torch.argsort(torch.rand(B, V, generator=g, device=dev), dim=1)               # (B, V) pi
        keys = torch.argsort(torch.rand(B, V, generator=g, device=dev), dim=1)[:, :L]        # (B, L) distinct
        values = torch.gather(perm, 1, keys)                                                  # (B, L)
        qidx = torch.randint(0, L, (B,), generator=g, device=dev)                            # (B,)
        query = torch.gather(keys, 1, qidx[:, None]).squeeze(1)
        answer = torch.gather(values, 1, qidx[:, None]).squeeze(1)

        tokens = torch.empty(B, 2 * L + 1, dtype=torch.long, device=dev)
        tokens[:, 0:2 * L:2] = keys
        tokens[:, 1:2 * L:2] = values
        tokens[:, -1] = query
        targets = torch.full_like(tokens, IGNORE_INDEX)
        targets[:, 0:2 * L:2] = values
        targets[:, -1] = answer

        posterior, eliminated = _exact_posterior(keys, values, V)
        return PairedBatch(tokens=tokens, targets=targets, keys=keys, values=values, query_index=qidx,
                           posterior=posterior, entropy_bits=_entropy_bits_exact(posterior),
                           eliminated=eliminated)


def paired_batch_fn(task: PairedBijectionTask, batch_size: int):
    """Adapter for ``labcore.training.trainer.train``: (step, generator) -> (tokens, targets)."""
    return token_batches(task, PairedBijectionTask, batch_size)


@torch.no_grad()
def paired_scores(logits: torch.Tensor, batch: PairedBatch) -> dict[str, float]:
    """Two grades of a model's logits (B, 2L+1, V) on ``batch``:

    * ``query_accuracy``: argmax at the query == the recalled value (chance 1/L over the shown values);
    * ``key_kl_bits``: mean KL(Bayes ‖ model) in bits at the key positions (the elimination posterior).
    """
    B, L = batch.keys.shape
    logp = torch.log_softmax(logits.double(), -1)                                  # (B, T, V)
    acc = (logits[:, -1].argmax(-1) == batch.targets[:, -1]).double().mean()
    lp_keys = logp[:, 0:2 * L:2]                                                   # (B, L, V)
    p = batch.posterior
    kl = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - lp_keys), 0.0).sum(-1) / torch.log(
        torch.tensor(2.0, dtype=torch.float64))
    return {"query_accuracy": float(acc), "key_kl_bits": float(kl.mean())}
