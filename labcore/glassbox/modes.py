"""Two small things every model-facing module needs, written once.

``evaluating(model)`` switches a model to eval mode for a block and restores the mode it had,
also when the block raises. ``logits_of(output)`` takes what any causal LM's forward returns —
a tensor (the glass-box GPT) or an output object with ``.logits`` (transformers, peft) — and
gives the logits tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``with evaluating(model): ...`` runs in eval mode and restores train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward's output: ``output.logits`` if it has one, else ``output``."""
    return output.logits if hasattr(output, "logits") else output
