"""A state-head GPT whose positions can extrapolate: learned positions for the prompt only.

In the HMM wind tunnel (labcore.tasks.hmm) a position means two different things. Inside the
fixed-length header it is *content*: the 9th probability token is T[2, 2] only because of where it
sits. After the header it is *time*: [OBS] o_t pairs that the filter reads in order. A learned
absolute table (GPTConfig.positional="learned") mixes the two, and every time step past the
training length gets a row that was never trained. This model separates them:

    resid_0[p] = W_E[token_p] + W_prompt[p]     for p < n_prompt   (learned: which matrix entry)
    resid_0[p] = W_E[token_p]                   for p >= n_prompt  (no absolute position at all)

So no row of a table is indexed by the time step: a longer sequence brings no untrained
parameters, only more of the same computation. Two ways to carry time after the prompt:

    cfg.positional="none"   no position signal at all after the prompt: order only through the
                            causal mask (NoPE; Kazemnejad et al. 2023, arXiv 2305.19466)
    cfg.positional="rope"   q, k rotated by RoPE at their absolute index (relative order), which
                            still meets header-to-query *distances* never seen in training

It *is* a :class:`labcore.glassbox.state_head.StateHeadGPT`, so hooks, ``state_lens`` and
``hmm_state_loss`` work unchanged. Shapes: B batch, T positions, d d_model.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from labcore.glassbox.model import GPTConfig
from labcore.glassbox.state_head import StateHeadGPT


class PromptPositionsStateGPT(StateHeadGPT):
    """``StateHeadGPT`` with a learned position table over the first ``n_prompt`` positions only."""

    def __init__(self, cfg: GPTConfig, n_states: int, n_prompt: int):
        if cfg.positional not in ("rope", "none"):
            raise ValueError(f"PromptPositionsStateGPT needs cfg.positional 'rope' or 'none' (positions after the "
                             f"prompt must not come from a table), got {cfg.positional!r}")
        if isinstance(n_prompt, bool) or not isinstance(n_prompt, int) or not 1 <= n_prompt <= cfg.n_ctx:
            raise ValueError(f"n_prompt must be an int in [1, n_ctx={cfg.n_ctx}], got {n_prompt!r}")
        super().__init__(cfg, n_states)
        self.n_prompt = n_prompt
        self.W_prompt = nn.Embedding(n_prompt, cfg.d_model)
        self._init_prompt()

    @torch.no_grad()
    def _init_prompt(self, generator: torch.Generator | None = None) -> None:
        self.W_prompt.weight.normal_(0.0, self.cfg.init_std, generator=generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        if hasattr(self, "W_prompt"):  # GPT.__init__ calls this before the table exists
            self._init_prompt(generator)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embedding, plus the prompt table on the first n_prompt positions. (B, T) -> (B, T, d)."""
        resid = super().embed(tokens)                                       # (B, T, d), no positions
        n = min(self.n_prompt, tokens.shape[1])
        pad = resid.new_zeros(resid.shape[1] - n, resid.shape[2])           # (T - n, d): time steps
        return resid + torch.cat([self.W_prompt.weight[:n], pad])           # broadcast over B

    @classmethod
    def from_learned(cls, model: StateHeadGPT, n_prompt: int, positional: str = "none") -> PromptPositionsStateGPT:
        """The same network with its learned absolute table cut down to the prompt: every weight of
        ``model`` is copied, ``W_pos[:n_prompt]`` becomes ``W_prompt`` and the rows after it are dropped
        (a warm start: retrain it briefly to let it do without the time rows)."""
        if not isinstance(model, StateHeadGPT) or model.cfg.positional != "learned":
            raise ValueError("from_learned needs a StateHeadGPT with cfg.positional='learned'")
        cfg = replace(model.cfg, positional=positional)
        new = cls(cfg, model.n_states, n_prompt)
        state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "W_pos.weight"}
        state["W_prompt.weight"] = model.W_pos.weight[:n_prompt].detach().clone()
        new.load_state_dict(state, strict=True)
        return new.train(model.training)
