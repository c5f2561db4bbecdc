"""Single-head ablations (labcore.measures.head_ablation) on a tiny random GPT, checked against
re-runs by hand; and the frame-head GPU claims' code path on CPU (tiny model, 3 steps), plus their
collection and skip without CUDA."""

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.files import repo_root
from labcore.measures.head_ablation import (
    head_mask,
    head_mean_z,
    mean_ablate_head,
    random_direction_head,
    scan_heads,
)
from labcore.measures.probes import zero_attention, zero_head

CFG = GPTConfig(vocab_size=11, n_ctx=12, d_model=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (5, CFG.n_ctx), generator=torch.Generator().manual_seed(1))


def _run(model, tokens, hooks):
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens)


def test_a_no_op_mask_reproduces_the_model_bit_for_bit(model, tokens):
    with torch.no_grad():
        plain = model(tokens)
    assert torch.equal(_run(model, tokens, head_mask(0, torch.ones(4))), plain)
    assert torch.equal(_run(model, tokens, head_mask(1, [1.0, 1.0, 1.0, 1.0])), plain)


@pytest.mark.parametrize("layer,head", [(0, 0), (0, 3), (1, 2)])
def test_zeroing_a_head_equals_zeroing_its_output_columns(model, tokens, layer, head):
    """zero_head (head_mask with m_h = 0) is z_h W_O^h removed: the same as zeroing head h's columns of W_O,
    and the same as the multiplicative mask."""
    ablated = _run(model, tokens, zero_head(layer, head))
    mask = torch.ones(4)
    mask[head] = 0.0
    assert torch.equal(ablated, _run(model, tokens, head_mask(layer, mask)))
    with torch.no_grad():
        assert not torch.allclose(ablated, model(tokens), atol=1e-4)  # a head changes the output
        by_hand = copy.deepcopy(model)
        dh = CFG.d_model // CFG.n_heads
        by_hand.blocks[layer].attn.W_O.weight[:, head * dh:(head + 1) * dh] = 0.0
        assert torch.allclose(ablated, by_hand(tokens), atol=1e-6)


def test_zeroing_all_layer0_heads_equals_removing_the_attention_output(model, tokens):
    assert torch.equal(_run(model, tokens, head_mask(0, torch.zeros(4))), _run(model, tokens, zero_attention(0)))


def test_with_biases_zeroing_all_heads_leaves_the_output_bias():
    torch.manual_seed(2)
    biased = GPT(GPTConfig(vocab_size=11, n_ctx=12, d_model=32, n_layers=1, n_heads=4, bias=True)).eval()
    x = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(3))
    bias_only = [("blocks.0.hook_attn_out", lambda out, hook: biased.blocks[0].attn.W_O.bias.expand_as(out))]
    assert torch.allclose(_run(biased, x, head_mask(0, torch.zeros(4))), _run(biased, x, bias_only), atol=1e-6)


def test_mean_ablation_over_identical_rows_changes_nothing(model, tokens):
    same = tokens[:1].expand(4, -1)
    mean_z = head_mean_z(model, same, 0)                                   # (T, H, dh)
    assert mean_z.shape == (CFG.n_ctx, 4, CFG.d_model // 4)
    with torch.no_grad():
        assert torch.allclose(_run(model, same, mean_ablate_head(0, 1, mean_z)), model(same), atol=1e-6)
    # on varied rows it is a real ablation, and not the same as zeroing
    mz = head_mean_z(model, tokens, 0)
    mean_out, zero_out = _run(model, tokens, mean_ablate_head(0, 1, mz)), _run(model, tokens, zero_head(0, 1))
    with torch.no_grad():
        assert not torch.allclose(mean_out, model(tokens), atol=1e-4)
    assert not torch.allclose(mean_out, zero_out, atol=1e-4)


def test_the_random_kick_has_the_heads_own_write_norm(model, tokens):
    name = "blocks.0.attn.hook_result"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name, "blocks.0.hook_attn_out"])
    write_norm = cache[name][:, :, 2].norm(dim=-1)                              # (B, T) ‖r_h‖
    seen = {}
    capture = [("blocks.0.hook_attn_out", lambda x, hook: seen.__setitem__("out", x.clone()))]
    _run(model, tokens, random_direction_head(0, 2, torch.Generator().manual_seed(4)) + capture)
    kick = (seen["out"] - cache["blocks.0.hook_attn_out"]).norm(dim=-1)         # (B, T)
    assert torch.allclose(kick, write_norm, rtol=1e-4, atol=1e-6)
    again = _run(model, tokens, random_direction_head(0, 2, torch.Generator().manual_seed(4)))
    assert torch.equal(again, _run(model, tokens, random_direction_head(0, 2, torch.Generator().manual_seed(4))))


def test_scan_heads_matches_one_ablation_at_a_time(model, tokens):
    score = lambda logits: {"s": float(logits.double().square().mean())}
    out = scan_heads(model, tokens, 1, score)
    with torch.no_grad():
        assert out["intact"]["s"] == score(model(tokens))["s"]
    assert [h["s"] for h in out["heads"]] == [score(_run(model, tokens, zero_head(1, h)))["s"]
                                             for h in range(4)]
    mean = scan_heads(model, tokens, 0, score, "mean")
    kicks = scan_heads(model, tokens, 0, score, "random", generator=torch.Generator().manual_seed(5))
    assert len(mean["heads"]) == len(kicks["heads"]) == 4


def test_bad_input_gives_one_line_errors(model, tokens):
    with pytest.raises(ValueError, match="3 entries.*4 heads"):
        _run(model, tokens, head_mask(0, [1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="head=4 out of range"):
        _run(model, tokens, zero_head(0, 4))
    with pytest.raises(ValueError, match="mode='max'"):
        scan_heads(model, tokens, 0, lambda l: {}, "max")
    with pytest.raises(ValueError, match="generator"):
        scan_heads(model, tokens, 0, lambda l: {}, "random")
    with pytest.raises(TypeError, match="torch.Generator"):
        random_direction_head(0, 0, 5)
    with pytest.raises(ValueError, match="head_mean_z"):
        _run(model, tokens, mean_ablate_head(0, 0, torch.zeros(3, 4)))


def _claim_module(name: str):
    path = repo_root() / "claims" / "bayes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_frame_head_claim_code_path_runs_on_cpu():
    """The GPU claims skip here: run their shared training and the ablation measurement with a tiny
    model and 3 steps, so a GPU session does not find a crash."""
    from labcore.training.paired_variant import TASK, train_paired_variant

    tiny = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=24, n_layers=2, n_heads=3, norm="rmsnorm")
    run = train_paired_variant(0, "cpu", steps=3, config=tiny, eval_size=16, fast={})
    assert not run.diverged and run.curve and run.curve[-1][0] == 3
    assert train_paired_variant(0, "cpu", steps=3, config=tiny, eval_size=16, fast={}) is run  # trained once
    a = _claim_module("test_full_frame_head_shared").measure_ablations(run, control_draws=2)
    assert a["cost"].shape == (2, 3) and a["kick_cost"].shape == a["mean_cost"].shape == (3,)
    assert 0 <= a["frame"] < 3 and 0 <= a["orth_head"] < 3 and a["intact"]["mae_bits"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_the_full_claims_collect_and_skip_without_cuda(tmp_path):
    files = ["claims/bayes/test_full_key_orthogonality_shared.py", "claims/bayes/test_full_frame_head_shared.py"]
    env = {**os.environ, "LAB_RESULTS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "full", "-p", "no:cacheprovider", *files],
                          check=False, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "3 skipped" in done.stdout, done.stdout[-2000:]
