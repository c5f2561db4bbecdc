"""labcore.interp.heads.positional_ceiling: the best score of any position-only attention pattern."""

from __future__ import annotations

import pytest
import torch

from labcore.interp import heads


def _rows(offsets: list[int], T: int = 24, V: int = 50, seed: int = 0) -> torch.Tensor:
    """Distinct random tokens whose last 2n positions are [x, x], one n per row."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in offsets:
        r = torch.randperm(V, generator=g)[:T]
        r[T - n:] = r[T - 2 * n:T - n]
        rows.append(r)
    return torch.stack(rows)


def test_ceiling_is_one_for_a_fixed_lag_and_reached_by_the_argmax_pattern():
    tokens = heads.repeated_random_tokens(6, 8, 30, torch.Generator().manual_seed(1))
    masks = heads.target_masks(tokens)["induction"]
    assert heads.positional_ceiling(masks) == pytest.approx(1.0)
    pattern = torch.zeros(16, 16)
    pattern[0, 0] = 1.0
    for q in range(1, 16):
        pattern[q, q - 7 if q >= 8 else 0] = 1.0  # attend by position to q − n + 1
    assert float(heads.induction_score(pattern[None, None], tokens)[0]) == pytest.approx(1.0)


def test_no_position_only_pattern_beats_the_ceiling_and_the_argmax_reaches_it():
    tokens = _rows([3, 4, 5, 6, 7, 3, 5, 7])
    masks = heads.target_masks(tokens)["induction"]
    ceiling = heads.positional_ceiling(masks)
    assert 0 < ceiling < 1
    T = tokens.shape[1]
    g = torch.Generator().manual_seed(2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for _ in range(200):  # random causal patterns, sharp and flat
        logits = torch.randn(T, T, generator=g) * float(torch.rand(1, generator=g) * 20)
        pattern = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        assert float(heads.induction_score(pattern[None, None], tokens)[0]) <= ceiling + 1e-12
    best = torch.zeros(T, T)
    counts = masks.double().sum(0)
    best[torch.arange(T), counts.argmax(-1)] = 1.0
    assert float(heads.induction_score(best[None, None], tokens)[0]) == pytest.approx(ceiling)


def test_ceiling_without_targets_names_the_problem():
    with pytest.raises(ValueError, match="no query has a target"):
        heads.positional_ceiling(torch.zeros(2, 5, 5, dtype=torch.bool))
