"""PromptPositionsStateGPT: a learned position table over the prompt only, nothing indexed by time."""

import pytest
import torch

from labcore import GPTConfig
from labcore.glassbox.prompt_positions import PromptPositionsStateGPT
from labcore.glassbox.state_head import StateHeadGPT, hmm_state_loss
from labcore.tasks.hmm import HMMTask
from labcore.training.trainer import seeded_model


def _model(positional="none", n_ctx=61, n_prompt=21):
    cfg = GPTConfig(vocab_size=103, n_ctx=n_ctx, d_model=16, n_layers=2, n_heads=2, positional=positional)
    return seeded_model(lambda: PromptPositionsStateGPT(cfg, 3, n_prompt), 0).eval()


def test_prompt_table_only_on_the_prompt():
    m = _model()
    tokens = torch.randint(0, 103, (2, 30))
    plain = StateHeadGPT.embed(m, tokens)  # token embedding only (positional="none")
    diff = m.embed(tokens) - plain
    assert torch.allclose(diff[:, :21], m.W_prompt.weight.expand(2, -1, -1))
    assert torch.equal(diff[:, 21:], torch.zeros_like(diff[:, 21:]))


@pytest.mark.parametrize("positional", ["none", "rope"])
def test_runs_beyond_the_training_length_and_trains(positional):
    task = HMMTask(S=3, O=3, K=4)
    m = _model(positional, n_ctx=task.seq_len(20), n_prompt=task.header_len)
    long = task.sample(3, torch.Generator().manual_seed(0), K=20)
    with torch.no_grad():
        assert m(long.tokens).shape == (3, task.seq_len(20), 3)
    m.train()
    short = task.sample(4, torch.Generator().manual_seed(1)).as_dict()
    hmm_state_loss(m, short).backward()
    assert m.W_prompt.weight.grad is not None and m.W_prompt.weight.grad.abs().sum() > 0


def test_nope_output_is_causal_and_hooks_work():
    m = _model()
    x = torch.randint(0, 103, (2, 40))
    y = x.clone()
    y[:, 30] = (y[:, 30] + 1) % 103
    with torch.no_grad():
        a, b = m(x), m(y)
        _, cache = m.run_with_cache(x, names_filter=lambda n: "pattern" in n)
    assert torch.equal(a[:, :30], b[:, :30]) and not torch.equal(a[:, 30], b[:, 30])
    assert cache["pattern", 1].shape == (2, 2, 40, 40)


def test_bad_config_is_named():
    cfg = GPTConfig(vocab_size=103, n_ctx=40, d_model=16, n_layers=1, n_heads=2, positional="learned")
    with pytest.raises(ValueError, match="positional"):
        PromptPositionsStateGPT(cfg, 3, 21)
    with pytest.raises(ValueError, match="n_prompt"):
        PromptPositionsStateGPT(GPTConfig(vocab_size=103, n_ctx=40, d_model=16, n_layers=1, n_heads=2,
                                          positional="none"), 3, 41)


def test_from_learned_copies_the_network_and_cuts_the_table_to_the_prompt():
    cfg = GPTConfig(vocab_size=103, n_ctx=61, d_model=16, n_layers=2, n_heads=2, positional="learned")
    learned = seeded_model(lambda: StateHeadGPT(cfg, 3), 0).eval()
    swapped = PromptPositionsStateGPT.from_learned(learned, 21)
    assert swapped.cfg.positional == "none" and not swapped.training
    assert torch.equal(swapped.W_prompt.weight, learned.W_pos.weight[:21])
    x = torch.randint(0, 103, (2, 40))
    with torch.no_grad():
        a, b = learned(x), swapped(x)
    assert torch.allclose(a[:, :21], b[:, :21], atol=1e-6)   # same network on the prompt
    assert not torch.allclose(a[:, 21:], b[:, 21:])           # the time rows are gone
    swapped.W_prompt.weight.data.zero_()
    assert learned.W_pos.weight.abs().sum() > 0                # a copy, not a view
    with pytest.raises(ValueError, match="learned"):
        PromptPositionsStateGPT.from_learned(swapped, 21)
