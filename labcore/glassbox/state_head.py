"""A GPT whose output is an S-way *state head* instead of next-token logits.

The HMM wind tunnel of *The Bayesian Geometry of Transformer Attention* (arXiv 2512.22471) is not
next-token prediction: at every observation position the model reads out a distribution over
the S hidden states, trained with soft-label cross-entropy against the forward-algorithm
posterior (``labcore.tasks.hmm.soft_label_ce``). The authors' ``GPTMini`` does this with a
Linear(d_model, S) on the final-norm residual; so does :class:`StateHeadGPT`.

It *is* a :class:`labcore.GPT` (a subclass), so every hook name, ``run_with_cache``,
``hooks(...)`` and ``unembed`` (the token logit lens) work unchanged; only ``forward`` differs:

    tokens (B, T) -> state logits (B, T, S) = state_head(ln_final(resid_final))

``state_lens(resid)`` applies the final norm and the state head to any layer's residual (the
state-head analogue of the logit lens).
"""

from __future__ import annotations

import torch
from torch import nn

from labcore.glassbox.model import GPT, GPTConfig


class StateHeadGPT(GPT):
    """``GPT(cfg)`` plus ``state_head = Linear(d_model, n_states)`` read from ``ln_final``."""

    def __init__(self, cfg: GPTConfig, n_states: int):
        if isinstance(n_states, bool) or not isinstance(n_states, int) or n_states < 2:
            raise ValueError(f"n_states must be an int >= 2, got {n_states!r}")
        super().__init__(cfg)
        self.n_states = n_states
        self.state_head = nn.Linear(cfg.d_model, n_states, bias=True)
        self._init_state_head()

    @torch.no_grad()
    def _init_state_head(self, generator: torch.Generator | None = None) -> None:
        self.state_head.weight.normal_(0.0, self.cfg.init_std, generator=generator)
        self.state_head.bias.zero_()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        if hasattr(self, "state_head"):  # GPT.__init__ calls this before the head exists
            self._init_state_head(generator)

    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last block (before the final norm). (B, T) -> (B, T, d)."""
        resid = self.embed(tokens)
        rope = (self.rope_cos, self.rope_sin) if self.cfg.positional == "rope" else None
        for block in self.blocks:
            resid = block(resid, rope)
        return resid

    def state_lens(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + state head on any residual: (..., d) -> (..., S) state logits."""
        return self.state_head(self.ln_final(resid))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, S) state logits (read them at the observation positions)."""
        return self.state_lens(self.residual(tokens))


def hmm_state_loss(model: StateHeadGPT, batch: dict) -> torch.Tensor:
    """``loss_fn`` for ``labcore.training.trainer.train`` with ``labcore.tasks.hmm.batch_fn``: soft-label
    CE (nats) of the state head at the observation positions against the exact posterior."""
    from labcore.tasks.hmm import soft_label_ce

    logits = model(batch["tokens"])[:, batch["obs_positions"]]          # (B, K, S)
    return soft_label_ce(logits, batch["posterior"].to(logits.dtype))
