"""Safetensors checkpoints (exact round trip, clear refusals) and the HF probe wrapper
(same names, same activations as the glass-box model in Llama style)."""

import pytest
import torch

from labcore import GPT, GPTConfig
from labcore.training.cache import cached
from labcore.training.checkpoint import CheckpointError, load_model, save_model
from labcore.glassbox.hf import HookedHF, llama_from_glassbox

LLAMA_STYLE = GPTConfig(
    vocab_size=50, n_ctx=32, d_model=64, n_layers=2, n_heads=4, positional="rope",
    norm="rmsnorm", mlp="swiglu", norm_eps=1e-6, init_std=0.1, tied_embeddings=False,
)


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_round_trip_is_exact(tmp_path, tied):
    cfg = GPTConfig(vocab_size=11, n_ctx=9, tied_embeddings=tied, positional="sinusoidal")
    model = GPT(cfg)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path, cfg)
    assert loaded.cfg == cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    tokens = torch.arange(9)[None] % 11
    assert torch.equal(model.eval()(tokens), loaded(tokens))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves no temp file


def test_checkpoint_from_another_config_is_refused(tmp_path):
    path = save_model(GPT(GPTConfig(vocab_size=11, n_ctx=9)), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="saved for another config.*n_layers"):
        load_model(path, GPTConfig(vocab_size=11, n_ctx=9, n_layers=3))


def test_corrupt_checkpoint_is_refused_with_its_path(tmp_path):
    path = save_model(GPT(GPTConfig(vocab_size=11, n_ctx=9)), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*(not a readable|corrupt)"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.safetensors")


def test_cache_key_covers_config_and_seed(tmp_path):
    calls = []

    def make(cfg):
        def train_fn():
            calls.append(cfg)
            return GPT(cfg)

        return train_fn

    a = GPTConfig(vocab_size=11, n_ctx=9)
    b = GPTConfig(vocab_size=11, n_ctx=9, d_model=32)
    m1, hit1 = cached("t", a, 0, {"steps": 1}, make(a), cache_dir=tmp_path)
    m2, hit2 = cached("t", a, 0, {"steps": 1}, make(a), cache_dir=tmp_path)
    _, hit3 = cached("t", a, 1, {"steps": 1}, make(a), cache_dir=tmp_path)
    _, hit4 = cached("t", b, 0, {"steps": 1}, make(b), cache_dir=tmp_path)
    _, hit5 = cached("t", a, 0, {"steps": 2}, make(a), cache_dir=tmp_path)
    assert (hit1, hit2, hit3, hit4, hit5) == (False, True, False, False, False)
    assert torch.equal(m1.W_E.weight, m2.W_E.weight)


def test_llama_equivalence_same_logits_and_same_activations():
    """A Llama-style glass-box GPT copied into LlamaForCausalLM: identical through every hook name."""
    torch.manual_seed(0)
    model = GPT(LLAMA_STYLE).eval()
    hooked = HookedHF(llama_from_glassbox(model))
    tokens = torch.randint(0, LLAMA_STYLE.vocab_size, (3, 17))
    ours, our_cache = model.run_with_cache(tokens)
    theirs, their_cache = hooked.run_with_cache(tokens)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    shared = set(our_cache) & set(their_cache)
    # Everything but the per-head result (which HF never materialises) is shared.
    assert set(our_cache) - shared == {f"blocks.{l}.attn.hook_result" for l in range(LLAMA_STYLE.n_layers)}
    causal = torch.ones(17, 17, dtype=torch.bool).tril()
    for name in sorted(shared):
        a, b = our_cache[name], their_cache[name]
        if name.endswith("hook_attn_scores"):  # HF masks with finfo.min, we with -inf
            a, b = a[..., causal], b[..., causal]
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)


def test_hf_interventions_work_and_are_removed():
    torch.manual_seed(0)
    model = GPT(LLAMA_STYLE).eval()
    hooked = HookedHF(llama_from_glassbox(model))
    tokens = torch.randint(0, 50, (1, 8))
    zero = [("blocks.1.hook_mlp_out", lambda x, hook: torch.zeros_like(x))]
    with model.hooks(zero):
        ours = model(tokens)
    with hooked.hooks(zero):
        theirs = hooked(tokens)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(hooked(tokens), model(tokens), rtol=0, atol=1e-5)


def test_gpt2_family_gets_the_same_names():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=0, eos_token_id=0)
    hooked = HookedHF(GPT2LMHeadModel(cfg).eval())
    tokens = torch.randint(0, 40, (2, 8))
    logits, cache = hooked.run_with_cache(tokens)
    plain = hooked.hf(input_ids=tokens).logits
    torch.testing.assert_close(logits, plain)
    assert cache["pattern", 1].shape == (2, 4, 8, 8)
    torch.testing.assert_close(cache["pattern", 1].sum(-1), torch.ones(2, 4, 8))
    # resid_post of the last block, through the final norm and the tied unembedding, is the logits.
    resid = cache["resid_post", 1]
    torch.testing.assert_close(hooked.hf.lm_head(hooked.hf.transformer.ln_f(resid)), logits)


def test_unsupported_family_is_named():
    class Fake(torch.nn.Module):
        class config:  # noqa: N801
            model_type = "bert"

    with pytest.raises(ValueError, match="got 'bert'"):
        HookedHF(Fake())
