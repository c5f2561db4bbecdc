"""labcore.finetuning.outliers: the reparametrisation keeps the function and plants outliers."""

import copy

import pytest
import torch

from labcore.finetuning import quant as Q
from labcore.finetuning.outliers import default_outlier_channels, inject_outlier_features
from labcore.glassbox.model import GPT, GPTConfig


def _gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=20, n_ctx=16, d_model=128, n_layers=2, n_heads=4, **kw)
    return GPT(cfg).eval()


def test_default_channels_put_one_outlier_in_every_block():
    assert default_outlier_channels(128) == [7, 71]
    assert default_outlier_channels(64) == [7]


@pytest.mark.parametrize("kw", [{}, {"norm": "rmsnorm", "mlp": "swiglu", "positional": "rope"}])
def test_labcore_gpt_function_is_unchanged_and_blocks_get_outliers(kw):
    try:
        model = _gpt(**kw)
    except (TypeError, ValueError):
        pytest.skip(f"GPTConfig does not take {kw}")
    tokens = torch.randint(0, 20, (4, 16))
    ref = model(tokens)
    scaled = copy.deepcopy(model)
    assert inject_outlier_features(scaled, 30.0) == 2
    with torch.no_grad():
        assert torch.allclose(scaled(tokens), ref, atol=1e-4, rtol=1e-4)
    w, w0 = scaled.blocks[0].attn.W_Q.weight, model.blocks[0].attn.W_Q.weight
    assert torch.allclose(w[:, 7], 30 * w0[:, 7]) and torch.equal(w[:, 8], w0[:, 8])
    # the quantiser now sees an outlier in every block: 4-bit error grows a lot
    def rmse_off_outliers(weight):
        q = Q.dequantize(Q.quantize_blockwise(weight.detach(), "nf4", 64))
        keep = torch.ones(weight.shape[1], dtype=torch.bool)
        keep[[7, 71]] = False
        return float((q - weight.detach())[:, keep].pow(2).mean().sqrt())

    assert rmse_off_outliers(w) > 2 * rmse_off_outliers(w0)


def test_hf_llama_function_is_unchanged():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random RMSNorm gains, so a wrong channel would show
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    tokens = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        ref = model(tokens).logits
        scaled = copy.deepcopy(model)
        inject_outlier_features(scaled, 30.0, channels=[7, 40, 71])
        assert torch.allclose(scaled(tokens).logits, ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(scaled.model.layers[0].self_attn.q_proj.weight[:, 40],
                          30 * model.model.layers[0].self_attn.q_proj.weight[:, 40])


def test_bad_input_is_refused():
    model = _gpt()
    with pytest.raises(ValueError, match="scale"):
        inject_outlier_features(model, 0)
    with pytest.raises(ValueError, match="channels"):
        inject_outlier_features(model, 10, channels=[500])
    with pytest.raises(TypeError, match="labcore GPT"):
        inject_outlier_features(torch.nn.Linear(4, 4), 10)
