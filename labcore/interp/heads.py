"""Attention-head detectors: scores in [0, 1] from attention patterns, per head.

Each detector takes patterns (B, H, T_q, T_k) (rows sum to 1 over keys ≤ query) and, where the
score depends on the text, the tokens (B, T). A score is the attention mass a head puts on its
target keys, averaged over the batch and over the queries that *have* a target:

=====================  =========================================================  ====================
score                  target keys of query q                                     queries counted
=====================  =========================================================  ====================
previous_token_score   k = q − 1                                                  q ≥ 1
duplicate_token_score  k < q with tokens[k] = tokens[q]                           those with a target
induction_score        k = j + 1 for every j < q with tokens[j] = tokens[q]       those with a target
attention_sink_score   k = 0                                                      q ≥ 1
=====================  =========================================================  ====================

Induction (Olsson et al. 2022) is attention to the token *after* an earlier occurrence of the
current token. On repeated random tokens ``[x, x]`` of half length n (no repeats within x), the
only induction target of query n + i is i + 1 and the only duplicate target is i.
:func:`repeated_random_tokens` builds that input; :func:`head_scores` runs a model and returns
all four scores as (layer, head) tables.

A score needs a yardstick. :func:`positional_ceiling` is the highest score that *any* attention
pattern depending only on the query and key positions (not on the tokens) reaches on a given
batch — what a head can get without reading which token preceded a key. On ``[x, x]`` with one
fixed half length it is 1 (a head attending to q − n + 1 by position scores perfectly: the
fixed-lag pitfall); when the repeat offset varies across rows it falls towards 1 / #offsets.
"""

from __future__ import annotations

import torch

from labcore.interp.readout import Labelled, n_layers

__all__ = [
    "attention_sink_score",
    "duplicate_token_score",
    "head_scores",
    "induction_score",
    "positional_ceiling",
    "previous_token_score",
    "repeated_random_tokens",
    "target_masks",
]


def _check(pattern: torch.Tensor) -> torch.Tensor:
    if pattern.dim() == 3:
        pattern = pattern[None]
    if pattern.dim() != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"patterns must be (B, H, T, T), got {tuple(pattern.shape)}")
    return pattern.double()


def _masked_score(pattern: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over (batch, query with ≥ 1 target) of the mass on the targets: (H,). NaN if none."""
    pattern = _check(pattern)
    if targets.dim() == 2:
        targets = targets.expand(pattern.shape[0], -1, -1)
    mass = (pattern * targets[:, None].to(pattern.dtype)).sum(-1)  # (B, H, T_q)
    counted = targets.any(-1)  # (B, T_q)
    n = counted.sum()
    if n == 0:
        return torch.full(pattern.shape[1:2], float("nan"), dtype=torch.float64)
    return (mass * counted[:, None]).sum((0, 2)) / n


def target_masks(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean target masks (B, T_q, T_k) of the duplicate-token and induction detectors."""
    tokens = tokens if tokens.dim() == 2 else tokens[None]
    T = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, q, j)
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # j < q
    duplicate = same & earlier
    induction = torch.zeros_like(duplicate)
    induction[:, :, 1:] = duplicate[:, :, :-1]  # k = j + 1
    return {"duplicate": duplicate, "induction": induction}


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from q to q − 1, over q ≥ 1: (H,)."""
    T = _check(pattern).shape[-1]
    return _masked_score(pattern, torch.ones(T, T, dtype=torch.bool).tril(-1).triu(-1))


def attention_sink_score(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention on position 0, over queries q ≥ 1 (row 0 is trivially all on 0): (H,)."""
    T = _check(pattern).shape[-1]
    targets = torch.zeros(T, T, dtype=torch.bool)
    targets[1:, 0] = True
    return _masked_score(pattern, targets)


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention on earlier copies of the current token, over queries that have one: (H,)."""
    return _masked_score(pattern, target_masks(tokens)["duplicate"])


def induction_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention on the tokens that followed earlier copies of the current token: (H,)."""
    return _masked_score(pattern, target_masks(tokens)["induction"])


def positional_ceiling(targets: torch.Tensor) -> float:
    """Max over position-only patterns a(q, k) of the score with these target masks (B, T_q, T_k).

    The score is linear in the pattern: Σ_q Σ_k a(q, k) · c(q, k) / N with c(q, k) the number of
    rows whose query q has target k and N the number of (row, query) pairs counted. Each row of a
    is a distribution over keys, so the maximum puts all of query q's mass on argmax_k c(q, k):
    ceiling = Σ_q max_k c(q, k) / N (e.g. ``target_masks(tokens)["induction"]``).
    """
    targets = targets if targets.dim() == 3 else targets[None]
    n = targets.any(-1).sum()
    if n == 0:
        raise ValueError("positional_ceiling: no query has a target in this batch; use tokens with repeats")
    c = targets.to(torch.float64).sum(0)  # (T_q, T_k): rows whose query q has target k
    return float(c.max(-1).values.sum() / n)


def repeated_random_tokens(batch: int, half: int, vocab: int, generator: torch.Generator,
                           prefix: int | None = None) -> torch.Tensor:
    """[prefix?, x, x] with x uniform over the vocabulary: (batch, half·2 (+1)).

    Tokens within one half are drawn without repetition when ``half ≤ vocab`` (so the duplicate and
    induction targets in the second half are exactly one key each).
    """
    if half <= vocab:
        x = torch.stack([torch.randperm(vocab, generator=generator)[:half] for _ in range(batch)])
    else:
        x = torch.randint(0, vocab, (batch, half), generator=generator)
    out = torch.cat([x, x], dim=1)
    if prefix is not None:
        out = torch.cat([torch.full((batch, 1), prefix), out], dim=1)
    return out


@torch.no_grad()
def head_scores(model, tokens: torch.Tensor) -> dict[str, Labelled]:
    """All four detectors for every head of every layer on ``tokens``: name -> (layer, head)."""
    L = n_layers(model)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    masks = target_masks(tokens)
    scorers = {
        "previous_token": lambda p: previous_token_score(p),
        "duplicate_token": lambda p: _masked_score(p, masks["duplicate"]),
        "induction": lambda p: _masked_score(p, masks["induction"]),
        "attention_sink": lambda p: attention_sink_score(p),
    }
    return {key: Labelled(torch.stack([fn(cache[n]) for n in names]), ("layer", "head"), {"layer": list(range(L))})
            for key, fn in scorers.items()}
