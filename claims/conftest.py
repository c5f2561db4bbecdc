"""Session fixtures shared across paper folders.

``finetune_lab`` is the pretrained glass-box base for this run's seed (``--lab-seed``) with its
language and memoised fine-tuning runs (``labcore.finetuning.base.FinetuneLab``), used by the LoRA, QLoRA
and forgetting claims. The base is trained once per seed and cached on disk
(``labcore.training.cache``); ``shared_lab`` is one object per process, so the three folders
reuse the same base *and* the same runs (the rank sweep's "LoRA q,v r=8" is also the forgetting
claim's LoRA run). Fixtures used by one paper only live in that paper's folder (claims/bayes).
"""

import pytest

from labcore.finetuning.base import FinetuneLab, shared_lab


@pytest.fixture(scope="session")
def finetune_lab(lab_seed: int) -> FinetuneLab:
    return shared_lab(lab_seed)
