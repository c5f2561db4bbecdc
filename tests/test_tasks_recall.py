"""Associative recall: format, the bound answer, seed purity, errors."""

import pytest
import torch

from labcore.tasks.bijection import IGNORE_INDEX
from labcore.tasks.recall import RecallTask, batch_fn, recall_accuracy


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("distinct_values", [True, False])
def test_format_and_answer(distinct_values):
    task = RecallTask(n_keys=16, n_values=12, n_pairs=6, distinct_values=distinct_values)
    assert task.vocab_size == 29 and task.sep_token == 28
    assert task.seq_len == 14 and task.query_position == 13
    b = task.sample(200, gen(0))
    assert b.tokens.shape == (200, 14) and b.targets.shape == (200, 14)
    assert torch.equal(b.tokens[:, 0:12:2], b.keys)
    assert torch.equal(b.tokens[:, 1:12:2], b.values + 16)
    assert torch.all(b.tokens[:, 12] == 28)
    assert torch.all(b.keys < 16) and torch.all(b.values < 12)
    # keys distinct within a sequence (and values, when asked)
    for x in (b.keys, b.values) if distinct_values else (b.keys,):
        s = torch.sort(x, 1).values
        assert torch.all(s[:, 1:] != s[:, :-1])
    # the query is one of the stored keys, and the answer is the value bound to it
    q = b.tokens[:, -1]
    j = b.query_pair
    assert torch.equal(q, b.keys[torch.arange(200), j])
    assert torch.equal(b.answer, b.values[torch.arange(200), j] + 16)
    for i in range(200):
        k = q[i].item()
        pairs = dict(zip(b.keys[i].tolist(), b.values[i].tolist()))
        assert b.answer[i].item() == pairs[k] + 16
    assert torch.all(b.targets[:, :-1] == IGNORE_INDEX)
    assert torch.equal(b.targets[:, -1], b.answer)
    assert torch.equal(b.posterior.argmax(-1) + 16, b.answer)
    assert torch.all(b.posterior.sum(-1) == 1) and b.posterior.dtype == torch.float64


def test_query_pair_uniform():
    b = RecallTask(n_keys=8, n_values=8, n_pairs=4).sample(8000, gen(1))
    counts = torch.bincount(b.query_pair, minlength=4).double()
    assert torch.all((counts - 2000).abs() < 5 * (8000 * 0.25 * 0.75) ** 0.5)


def test_seed_purity():
    task = RecallTask(n_keys=10, n_values=10, n_pairs=5)
    a, b, c = task.sample(8, gen(3)), task.sample(8, gen(3)), task.sample(8, gen(4))
    for name in ("tokens", "targets", "answer", "posterior", "keys", "values", "query_pair"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.tokens, c.tokens)


def test_accuracy_and_batch_fn():
    task = RecallTask(n_keys=10, n_values=10, n_pairs=5)
    b = task.sample(32, gen(5))
    logits = torch.zeros(32, task.seq_len, task.vocab_size)
    logits[torch.arange(32), -1, b.answer] = 1.0
    assert recall_accuracy(logits, b) == 1.0
    logits[:, -1] = 0
    logits[:, -1, task.sep_token] = 1.0
    assert recall_accuracy(logits, b) == 0.0
    tokens, targets = batch_fn(task, 32)(0, gen(5))
    assert torch.equal(tokens, b.tokens) and torch.equal(targets, b.targets)
    with pytest.raises(ValueError):
        batch_fn(None, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_keys=4, n_values=10, n_pairs=5), "n_pairs=5 > n_keys=4"),
    (dict(n_keys=10, n_values=4, n_pairs=5), "n_pairs=5 > n_values=4"),
    (dict(n_keys=10, n_values=1, n_pairs=1), "n_values"),
    (dict(n_keys=10, n_values=10, n_pairs=0), "n_pairs"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecallTask(**kwargs)


def test_repeated_values_allowed_without_distinct():
    RecallTask(n_keys=10, n_values=4, n_pairs=5, distinct_values=False).sample(2, gen(0))
    with pytest.raises(TypeError):
        RecallTask(n_keys=10, n_values=10, n_pairs=5).sample(2, None)
