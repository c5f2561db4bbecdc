"""The lab's trained models by name, for notebooks: ``load_trained("wind_tunnel", seed=0)``.

Each name hands off to the module that trains and caches the model (``labcore.training.cache``),
so a notebook gets exactly the weights the claims measured: trained once (about a minute on a
CPU), then loaded from ``<results>/cache``. No pretrained download is involved.

* ``wind_tunnel`` — the Bayesian wind-tunnel transformer (V=10, L=9 bijection task),
  ``labcore.training.wind_tunnel.train_bijection(seed).model``; ``run=True`` returns the whole
  ``BijectionRun`` (snapshots by step, calibration curve, task, evaluation batch).
* ``finetune_base`` — the small pretrained base of the LoRA / QLoRA / forgetting claims,
  ``labcore.finetuning.base.shared_lab(seed).base``; ``run=True`` returns the ``FinetuneLab``.
"""

from __future__ import annotations

from typing import Any


def _wind_tunnel(seed: int) -> tuple[Any, Any]:
    from labcore.training.wind_tunnel import train_bijection

    run = train_bijection(seed)
    return run.model, run


def _finetune_base(seed: int) -> tuple[Any, Any]:
    from labcore.finetuning.base import shared_lab

    lab = shared_lab(seed)
    return lab.base, lab


#: name -> (what it is, loader returning (model, the object around it))
ZOO = {
    "wind_tunnel": ("Bayesian wind-tunnel transformer, bijection V=10 L=9 (claims/bayes)", _wind_tunnel),
    "finetune_base": ("pretrained base of the LoRA/QLoRA/forgetting claims", _finetune_base),
}
ALIASES = {"bijection": "wind_tunnel", "bayes": "wind_tunnel", "base": "finetune_base", "lora_base": "finetune_base"}


def load_trained(name: str, seed: int = 0, *, run: bool = False) -> Any:
    """The cached trained model ``name`` of ``seed`` (trained on first use), in eval mode;
    ``run=True``: the object around it (snapshots, curves, task). Names: see :data:`ZOO`."""
    key = ALIASES.get(name, name)
    if key not in ZOO:
        known = ", ".join([*ZOO, *ALIASES])
        raise KeyError(f"no trained model named {name!r}; known: {known}")
    model, whole = ZOO[key][1](int(seed))
    return whole if run else model.eval()
