"""labcore.pretrained.corpus (the two-domain text corpus) and labcore.pretrained.topk's top-k cached training,
checked on a tiny Llama built from a config (no wheel, no hub); one SmolLM2 check behind real_model."""

import pytest
import torch

from labcore.pretrained.corpus import (
    DOMAINS,
    blocks,
    causal_lm_loss,
    corpus_dir,
    eval_loss,
    load_domain,
    load_text,
    random_windows,
    split_units,
    token_losses,
)


class CharTokenizer:
    """Enough of a tokenizer for the corpus functions: one id per character."""

    def __init__(self, text: str):
        self.vocab = {c: i for i, c in enumerate(sorted(set(text)))}

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False, "the corpus must not add BOS/EOS tokens"
        return {"input_ids": [self.vocab[c] for c in text]}


ALL_TEXT = load_text("prose") + load_text("code")


def test_corpus_files_are_there_with_their_readme():
    assert (corpus_dir() / "README.md").is_file()
    for domain in DOMAINS:
        text = load_text(domain)
        assert 4_000 < len(text.encode()) < 20_000, f"{domain}: {len(text)} bytes"
    assert "def " in load_text("code") and "def " not in load_text("prose")


def test_unknown_domain_names_the_choices():
    with pytest.raises(ValueError, match="code.*prose"):
        load_text("poetry")


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_split_is_deterministic_disjoint_and_covers_every_unit(domain):
    train, held = split_units(domain)
    again = split_units(domain)
    assert (train, held) == again
    assert held and len(train) >= 2 * len(held)
    assert not set(train) & set(held)
    separator = DOMAINS[domain][1]
    units = [u.strip("\n") for u in load_text(domain).split(separator) if u.strip()]
    assert sorted(train + held) == sorted(units)
    assert held == units[3::4]  # every 4th unit, starting with the 4th


def test_code_units_are_whole_definitions():
    train, held = split_units("code")
    for unit in train[1:] + held:  # the first unit is the import block
        assert unit.startswith(("def ", "class ")), unit[:40]


def test_split_refuses_a_split_with_nothing_to_train_on():
    with pytest.raises(ValueError, match="eval_every"):
        split_units("prose", eval_every=1)


def test_load_domain_tokenises_without_special_tokens_and_keeps_splits_apart():
    tok = CharTokenizer(ALL_TEXT)
    split = load_domain("prose", tok)
    train_units, held_units = split_units("prose")
    assert split.train_ids.dtype == torch.long
    assert split.train_ids.numel() == len("\n\n".join(train_units))
    assert split.eval_ids.numel() == len("\n\n".join(held_units))


def test_blocks_drop_the_remainder_and_refuse_nonsense():
    ids = torch.arange(10)
    out = blocks(ids, 3)
    assert out.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    out[0, 0] = 99
    assert ids[0] == 0, "blocks must copy, not view, the stream"
    with pytest.raises(ValueError, match="no window"):
        blocks(ids, 11)
    with pytest.raises(ValueError, match="seq_len"):
        blocks(ids, 1)
    with pytest.raises(ValueError, match="1-D"):
        blocks(ids.view(2, 5), 2)


def test_random_windows_are_reproducible_slices_of_the_stream():
    ids = torch.arange(100)
    a = random_windows(ids, 8, 5, torch.Generator().manual_seed(3))
    b = random_windows(ids, 8, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5, 8)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(5, 7, dtype=torch.long))  # contiguous slices
    assert int(a.max()) <= 99
    split = load_domain("code", CharTokenizer(ALL_TEXT))
    x, y = split.batch_fn(16, 4)(0, torch.Generator().manual_seed(0))
    assert torch.equal(x, y) and x.shape == (4, 16)


# --------------------------------------------------------------------------------------------
# losses and the top-k prefix cache, on a tiny Llama
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labcore.pretrained.unsloth_backend import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny"), ALL_TEXT, hidden_size=64, layers=4,
                              heads=4, kv_heads=2, intermediate=128, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_tiny_llama_tokenizer_is_one_token_per_character(tiny_llama):
    _, tok = tiny_llama
    ids = tok("def f(x):", add_special_tokens=False)["input_ids"]
    assert len(ids) == len("def f(x):")
    assert tok.unk_token_id not in ids


def test_losses_agree_with_transformers_own_loss(tiny_llama):
    model, tok = tiny_llama
    windows = load_domain("code", tok).eval_blocks(32)[:3]
    with torch.no_grad():
        reference = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    per_token = token_losses(model, windows, batch_size=2)
    assert per_token.shape == (3 * 31,)
    assert eval_loss(model, windows) == pytest.approx(sum(reference) / 3, rel=1e-5)
    assert float(causal_lm_loss(model, (windows, windows))) == pytest.approx(sum(reference) / 3, rel=1e-5)


def test_top_k_model_on_cached_states_is_the_full_model(tiny_llama):
    import copy

    from labcore.pretrained.topk import CachedWindows, decoder_layers, embeds_lm_loss, eval_cached, keep_top_layers

    model, tok = tiny_llama
    windows = load_domain("prose", tok).eval_blocks(48)[:5]
    with torch.no_grad():
        full_logits = model(input_ids=windows).logits
    top = copy.deepcopy(model)
    cached = CachedWindows.build(top, windows, layer=3)
    keep_top_layers(top, 1)
    assert len(decoder_layers(top)) == 1 and len(decoder_layers(model)) == 4
    with torch.no_grad():
        top_logits = top(inputs_embeds=cached.hidden).logits
    torch.testing.assert_close(top_logits, full_logits, rtol=1e-5, atol=1e-5)  # same mask, same positions
    assert eval_cached(top, cached, batch_size=2) == pytest.approx(eval_loss(model, windows), rel=1e-5)
    hidden, ids = cached.batch_fn(3)(0, torch.Generator().manual_seed(0))
    assert hidden.shape == (3, 48, 64) and ids.shape == (3, 48)
    loss = embeds_lm_loss(top, (hidden, ids))
    loss.backward()
    assert top.model.layers[0].mlp.down_proj.weight.grad is not None


def test_prefix_cache_refuses_bad_layers(tiny_llama):
    from labcore.pretrained.topk import hidden_before_layer, keep_top_layers

    model, tok = tiny_llama
    with pytest.raises(ValueError, match="layer must be"):
        hidden_before_layer(model, torch.zeros(1, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="k must be"):
        keep_top_layers(model, 0)
    with pytest.raises(TypeError, match="model.layers"):
        keep_top_layers(torch.nn.Linear(2, 2), 1)


def test_unsloth_status_explains_itself():
    from labcore.pretrained.unsloth_backend import UnslothUnavailable, import_unsloth, unsloth_status

    ok, reason = unsloth_status()
    if ok:
        pytest.skip("unsloth is installed here (.venv-unsloth): the missing-unsloth message is not reachable")
    assert "setup-unsloth.sh" in reason
    with pytest.raises(UnslothUnavailable, match="setup-unsloth.sh"):
        import_unsloth()


def test_disk_cache_round_trip(tiny_llama, tmp_path):
    """What pristine_smollm2 writes through the model cache and reads back (on the tiny Llama)."""
    from labcore.pretrained import smollm2
    from labcore.training.cache import cached_folder

    model, tok = tiny_llama

    def build(folder):
        smollm2.rebuild_savable(model).save_pretrained(folder)
        tok.save_pretrained(folder)
        return model, tok

    _, hit = cached_folder("tiny-fp32", build, smollm2._load_saved, cache_dir=tmp_path)
    assert not hit and (tmp_path / "tiny-fp32" / "config.json").is_file()
    assert not list(tmp_path.glob("*.tmp-*"))
    (cached, cached_tok), hit = cached_folder("tiny-fp32", build, smollm2._load_saved, cache_dir=tmp_path)
    assert hit
    ids = tok("def f(x):", return_tensors="pt").input_ids
    assert cached_tok("def f(x):", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(cached(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.real_model
def test_smollm2_tokenises_the_corpus_into_the_sizes_the_claims_use():
    from labcore.pretrained import smollm2

    if smollm2._load_once.cache_info().currsize:  # the claims' copy is already in memory
        _, tok, _ = smollm2.pristine_smollm2()
    else:  # the tokenizer alone (~10 s) instead of the whole model
        from transformers import AutoTokenizer

        from labcore.pretrained.smollm2 import SMOLLM2_GGUF, smollm2_dir

        tok = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    sizes = {d: (load_domain(d, tok).train_ids.numel(), load_domain(d, tok).eval_ids.numel()) for d in DOMAINS}
    assert sizes["code"][0] >= 24 * 32 and sizes["code"][1] >= 10 * 32, sizes
    assert sizes["prose"][1] >= 3 * 128, sizes
