"""Fine-tune only the top k blocks of a pretrained causal LM, on cached inputs.

Why this exists: SmolLM2-135M has 30 decoder layers and a tied 49152×576 output layer. On one
shared CPU core a LoRA step through the whole model on 128 tokens took ~2.6 s and a full
fine-tuning step ~5 s (measured, the other core busy), so the 30–60-step experiments the claims
need would take minutes. Two facts make them fit in about a minute:

1. **One load per process, and a disk cache** (``labcore.pretrained.smollm2.pristine_smollm2``):
   every claim takes a ``copy.deepcopy`` (0.3 s) so that quantising or training one copy never
   touches another.
2. **Train only the top k blocks, on cached inputs.** If the bottom ``n − k`` decoder blocks are
   frozen in every arm of an experiment (all arms: LoRA, QLoRA, full fine-tuning), their output
   for a fixed set of token windows never changes. We compute it once
   (``hidden_before_layer``), drop the bottom blocks (``keep_top_layers``) and feed the cached
   states to the truncated model as ``inputs_embeds``: transformers then applies the same
   causal mask and rotary positions (0..T−1), so the truncated model's logits equal the full
   model's to float round-off (tests/test_corpus.py checks this on a tiny Llama). A step then
   costs k blocks plus the output layer instead of 30 blocks.

   The price, said in every claim that uses it: "LoRA" and "full fine-tuning" adapt the top k
   blocks only, not all 30 (QLoRA §4 adapts every block's linear layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labcore.glassbox.modes import evaluating

__all__ = [
    "decoder_layers",
    "hidden_before_layer",
    "keep_top_layers",
    "CachedWindows",
    "embeds_lm_loss",
    "eval_cached",
]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks of a Llama-family causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no model.layers ModuleList (Llama-family causal LM expected)")
    return layers


class _Stop(Exception):
    pass


@torch.no_grad()
def hidden_before_layer(model: nn.Module, input_ids: torch.Tensor, layer: int, batch_size: int = 64) -> torch.Tensor:
    """The residual stream entering decoder block ``layer`` for each window: (n, T, d_model), fp32.

    The forward stops at that block (a pre-hook raises), so blocks ``layer`` and above and the
    output layer are never computed.
    """
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be in 0..{len(layers) - 1}, got {layer}")
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden.detach().float().clone())
        raise _Stop

    handle = layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with evaluating(model):
            for start in range(0, input_ids.shape[0], batch_size):
                try:
                    model(input_ids=input_ids[start : start + batch_size], use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(captured)


def keep_top_layers(model: nn.Module, k: int) -> nn.Module:
    """Drop all but the top ``k`` decoder blocks *in place*; feed it ``inputs_embeds`` = the
    states from ``hidden_before_layer(model, ids, n - k)``. Returns the model."""
    layers = decoder_layers(model)
    if not 1 <= k <= len(layers):
        raise ValueError(f"k must be in 1..{len(layers)}, got {k}")
    model.model.layers = nn.ModuleList(list(layers)[len(layers) - k :])
    return model


class CachedWindows:
    """Token windows (n, T) with the hidden states (n, T, d) entering the first kept block."""

    def __init__(self, ids: torch.Tensor, hidden: torch.Tensor):
        if ids.shape != hidden.shape[:2]:
            raise ValueError(f"ids {tuple(ids.shape)} and hidden {tuple(hidden.shape)} disagree")
        self.ids = ids
        self.hidden = hidden

    @classmethod
    def build(cls, model: nn.Module, ids: torch.Tensor, layer: int) -> "CachedWindows":
        return cls(ids, hidden_before_layer(model, ids, layer))

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch_fn(self, batch_size: int):
        """``batch_fn(step, generator) -> (hidden, ids)``: random windows, with replacement."""

        def batch(step: int, generator: torch.Generator):
            index = torch.randint(0, len(self), (batch_size,), generator=generator)
            return self.hidden[index], self.ids[index]

        return batch


def _logits_from_embeds(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model(inputs_embeds=hidden, use_cache=False).logits


def embeds_lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of a truncated model on (cached hidden states, token ids)."""
    hidden, ids = batch[0], batch[1]
    logits = _logits_from_embeds(model, hidden)[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@torch.no_grad()
def eval_cached(model: nn.Module, windows: CachedWindows, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over all cached windows; deterministic."""
    total, count = 0.0, 0
    with evaluating(model):
        for start in range(0, len(windows), batch_size):
            hidden = windows.hidden[start : start + batch_size]
            ids = windows.ids[start : start + batch_size]
            logits = _logits_from_embeds(model, hidden)[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    return total / count
