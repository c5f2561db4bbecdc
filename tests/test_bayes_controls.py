"""The paired shared-vocab bijection task, the same-norm random-kick ablation control and the
early-stopping learning-rate arms (helpers of the bayes layer-ablation, key-orthogonality and
value-LR claims)."""

import itertools

import numpy as np
import pytest
import torch

from labcore.glassbox.model import GPT, GPTConfig
from labcore.measures.ablation_controls import random_direction_block
from labcore.measures.lr_speedup import steps_to_loss
from labcore.tasks.bijection import IGNORE_INDEX
from labcore.tasks.bijection_paired import PairedBijectionTask, paired_batch_fn, paired_scores
from labcore.training.em_vs_sgd import run_em_vs_sgd


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_paired_format_and_query():
    task = PairedBijectionTask(V=5, L=4)
    b = task.sample(64, gen(0))
    assert b.tokens.shape == (64, 9) and task.vocab_size == 5 and int(b.tokens.max()) < 5
    assert torch.equal(b.tokens[:, 0:8:2], b.keys) and torch.equal(b.tokens[:, 1:8:2], b.values)
    assert torch.equal(b.targets[:, 0:8:2], b.values)
    assert (b.targets[:, 1:8:2] == IGNORE_INDEX).all()
    q = b.tokens[:, -1]
    assert torch.equal(q, b.keys.gather(1, b.query_index[:, None]).squeeze(1))
    assert torch.equal(b.targets[:, -1], b.values.gather(1, b.query_index[:, None]).squeeze(1))
    assert all(len(set(k.tolist())) == 4 for k in b.keys)          # keys without replacement
    assert torch.equal(task.sample(64, gen(0)).tokens, b.tokens)   # a pure function of the seed


def test_paired_posterior_matches_brute_force():
    V, L = 4, 4
    task = PairedBijectionTask(V=V, L=L)
    b = task.sample(32, gen(1))
    perms = torch.tensor(list(itertools.permutations(range(V))))   # (24, V)
    for i in range(8):
        for t in range(L):
            seen_k, seen_v = b.keys[i, :t], b.values[i, :t]
            ok = (perms[:, seen_k] == seen_v).all(1)
            counts = torch.bincount(perms[ok, b.keys[i, t]], minlength=V).double()
            torch.testing.assert_close(b.posterior[i, t], counts / counts.sum())


def test_paired_scores_of_the_exact_answer():
    task = PairedBijectionTask(V=6, L=5)
    b = task.sample(16, gen(2))
    logits = torch.full((16, task.seq_len, 6), -30.0, dtype=torch.float64)
    logits[:, 0:10:2] = torch.log(b.posterior.clamp_min(1e-30))
    logits[torch.arange(16), -1, b.targets[:, -1]] = 0.0
    s = paired_scores(logits, b)
    assert s["query_accuracy"] == 1.0 and s["key_kl_bits"] < 1e-9


def test_paired_refuses_bad_input():
    with pytest.raises(ValueError, match="L=6 > V=5"):
        PairedBijectionTask(V=5, L=6)
    with pytest.raises(ValueError, match="PairedBijectionTask"):
        paired_batch_fn(object(), 8)


def test_random_direction_block_keeps_the_norm_of_the_write():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, n_ctx=8, d_model=16, n_layers=2, n_heads=2)).eval()
    tokens = torch.randint(0, 7, (3, 8))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    pre, post = cache["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_post"]
    got = {}
    with model.hooks(fwd_hooks=random_direction_block(1, gen(3)) +
                     [("blocks.1.hook_resid_post", lambda x, hook: got.setdefault("x", x))]):
        model(tokens)
    kick = post - got["x"]                                         # what the control subtracted
    torch.testing.assert_close(kick.norm(dim=-1), (post - pre).norm(dim=-1))
    cos = torch.nn.functional.cosine_similarity(kick, post - pre, dim=-1)
    assert cos.abs().mean() < 0.5                                  # not the write's own direction
    with pytest.raises(TypeError, match="torch.Generator"):
        random_direction_block(0, 3)


def test_steps_to_loss_matches_the_trainer():
    run = run_em_vs_sgd(7, T=60, steps=80)
    arm = steps_to_loss(7, run.sgd_final, {"W_V": 10.0}, T=60, max_steps=80)
    assert arm.steps_to_threshold == run.em_steps_to_sgd_final
    np.testing.assert_allclose(arm.losses, run.em_losses[:len(arm.losses)], rtol=1e-5)
    with pytest.raises(ValueError, match="no parameter matches"):
        steps_to_loss(7, 1.0, {"W_X": 10.0}, T=60)
