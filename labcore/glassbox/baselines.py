"""Attention-free baselines that must fail on the wind tunnels.

*The Bayesian Geometry of Transformer Attention* (arXiv 2512.22471) contrasts a small
transformer with "capacity-matched MLPs" that miss the Bayesian posterior by orders of
magnitude. Two different baselines hide behind that phrase, and they fail for different reasons:

* :class:`PerPositionMLP` (the authors' ``MLPControl``): each position is processed on its own,
  so the model never sees the context. Its failure is structural: cross-entropy drives it to
  the context-free marginal (uniform over the V values), whose entropy MAE is known in closed
  form (:func:`labcore.measures.posterior.mlp_plateau_mae_bits`, 1.107 bits for V=20, L=19).
* :class:`FlattenedContextMLP`: position t sees the whole prefix tokens[0..t], flattened into
  one vector (a causal MLP over the sequence). It *can* represent the posterior in principle;
  it fails because it has to learn the bijection bookkeeping separately for every slot, with no
  weight sharing across positions and no content-based lookup (a community replication reports
  0.46 bits on the bijection task).
* :class:`LSTMBaseline`: a causal recurrent network (token embedding -> stacked LSTM -> head).
  Paper I's v3 "inference primitives" table credits LSTMs with *belief accumulation* (the
  bijection task: LSTM 0.009 bits vs transformer 0.007) but not with transport or binding, so on
  the bijection wind tunnel it is the baseline that is expected to *succeed*.

All three are ``nn.Module`` with ``forward(tokens (B, T)) -> logits (B, T, vocab)``, so they drop into
the same trainer and metrics as :class:`labcore.glassbox.model.GPT`. :func:`param_count` and
:func:`match_param_count` size them to a transformer's parameter budget.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def param_count(module: nn.Module) -> int:
    """Number of trainable parameters (works on meta-device modules too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def match_param_count(build: Callable[[int], nn.Module], target: int,
                      lo: int = 1, hi: int = 1 << 14) -> int:
    """The width w in [lo, hi] whose ``build(w)`` has the parameter count closest to ``target``.

    ``param_count(build(w))`` must be non-decreasing in w (true for the widths of both
    baselines). Bisection; the modules are built on the meta device, so no memory is used.
    Example: ``hidden = match_param_count(lambda h: FlattenedContextMLP(40, 37, 32, h, 2),
    param_count(gpt))``.
    """
    if target < 1:
        raise ValueError(f"target={target} must be >= 1")
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= lo <= hi, got lo={lo}, hi={hi}")

    def count(w: int) -> int:
        with torch.device("meta"):
            return param_count(build(w))

    a, b = lo, hi
    while a < b:  # smallest w with count(w) >= target
        mid = (a + b) // 2
        if count(mid) < target:
            a = mid + 1
        else:
            b = mid
    best = a
    if a > lo and abs(count(a - 1) - target) <= abs(count(a) - target):
        best = a - 1
    return best


class ResidualMLPBlock(nn.Module):
    """x + W2 GELU(W1 LayerNorm(x)): a pre-norm transformer block with the attention removed."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_model)
        return x + self.fc_out(F.gelu(self.fc_in(self.ln(x))))


def _check_dims(**dims) -> None:
    for name, x in dims.items():
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be a positive int, got {x!r}")


def _check_tokens(tokens: torch.Tensor, max_len: int | None) -> None:
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, T), got shape {tuple(tokens.shape)}")
    if max_len is not None and tokens.shape[1] > max_len:
        raise ValueError(f"sequence length {tokens.shape[1]} > the model's {max_len}")


class PerPositionMLP(nn.Module):
    """Token embedding -> n_blocks residual MLP blocks -> LayerNorm -> unembedding, applied to
    every position independently: logits at t depend on tokens[t] (and t, if ``n_positions``
    adds learned position embeddings, as the authors' MLPControl does) but on no other token.
    """

    def __init__(self, vocab_size: int, d_model: int, n_blocks: int, d_mlp: int,
                 n_positions: int | None = None):
        super().__init__()
        _check_dims(vocab_size=vocab_size, d_model=d_model, d_mlp=d_mlp)
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
            raise ValueError(f"n_blocks must be an int >= 0, got {n_blocks!r}")
        if n_positions is not None:
            _check_dims(n_positions=n_positions)
        self.vocab_size, self.n_positions = vocab_size, n_positions
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(n_positions, d_model) if n_positions else None
        self.blocks = nn.ModuleList(ResidualMLPBlock(d_model, d_mlp) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.n_positions)
        x = self.tok_emb(tokens)                                            # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)                                                    # (B, T, d)
        return self.head(self.ln_f(x))                                      # (B, T, vocab)


class FlattenedContextMLP(nn.Module):
    """A causal MLP over the flattened prefix. For the prediction at position t:

        e_s = tok_emb(tokens[s]) + pos_emb(s)                  s = 0..T-1     (d_model each)
        x_t = concat_s ( e_s * [s <= t] )                      (T * d_model)  zero after t
        h_t = W_in x_t + b_in + q_emb(t)                       (hidden)
        h_t <- h_t + W2 GELU(W1 LayerNorm(h_t))                n_layers residual blocks
        logits_t = W_out LayerNorm(h_t)                        (vocab)

    All T prefixes are built at once by a (T, T) lower-triangular mask, so one batched forward
    gives (B, T, vocab). The masking makes it exactly causal: changing tokens[t+1] cannot change
    logits at <= t. ``q_emb(t)`` tells the network which slot it is predicting.

    Parameters (V = vocab, T = seq_len, d = d_model, h = hidden, n = n_layers):
    V d + T d + (T d h + h) + T h + n (2 h + 2 (h^2 + h)) + 2 h + h V; the first layer dominates,
    so tune ``hidden``/``n_layers`` to a transformer's budget with :func:`match_param_count`.
    Memory per forward: B * T * T * d activations for the masked prefixes.
    """

    def __init__(self, vocab_size: int, seq_len: int, d_model: int, hidden: int,
                 n_layers: int):
        super().__init__()
        _check_dims(vocab_size=vocab_size, seq_len=seq_len, d_model=d_model, hidden=hidden)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"n_layers must be an int >= 0, got {n_layers!r}")
        self.vocab_size, self.seq_len, self.d_model = vocab_size, seq_len, d_model
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.fc_in = nn.Linear(seq_len * d_model, hidden)
        self.q_emb = nn.Embedding(seq_len, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab_size, bias=False)
        # causal[t, s] = 1 if s <= t: row t keeps the prefix 0..t
        self.register_buffer("causal", torch.tril(torch.ones(seq_len, seq_len)),
                             persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.seq_len)
        B, T = tokens.shape
        pos = torch.arange(T, device=tokens.device)
        e = self.tok_emb(tokens) + self.pos_emb(pos)                       # (B, T, d)
        if T < self.seq_len:  # shorter input: the missing slots are simply zero
            e = F.pad(e, (0, 0, 0, self.seq_len - T))                      # (B, seq_len, d)
        mask = self.causal[:T].to(e.dtype)                                  # (T, seq_len)
        x = e.unsqueeze(1) * mask[None, :, :, None]                         # (B, T, seq_len, d)
        x = x.reshape(B, T, self.seq_len * self.d_model)                    # (B, T, seq_len*d)
        h = self.fc_in(x) + self.q_emb(pos)                                 # (B, T, hidden)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))                                      # (B, T, vocab)


class LSTMBaseline(nn.Module):
    """Token embedding -> ``n_layers`` stacked LSTM (hidden ``hidden``) -> LayerNorm -> head.

        h_t, c_t = LSTM(e(tokens[t]), (h_{t-1}, c_{t-1}))     per layer, zero initial state
        logits_t = W_out LayerNorm(h_t)                       (vocab)

    Causal by construction (a left-to-right recurrence), no positions needed. Parameters:
    V d + 4 (d h + h^2 + 2 h) + (n - 1) 4 (2 h^2 + 2 h) + 2 h + h V; size ``hidden`` to a
    budget with :func:`match_param_count`.
    """

    def __init__(self, vocab_size: int, d_model: int, hidden: int, n_layers: int = 1):
        super().__init__()
        _check_dims(vocab_size=vocab_size, d_model=d_model, hidden=hidden, n_layers=n_layers)
        self.vocab_size = vocab_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.lstm = nn.LSTM(d_model, hidden, num_layers=n_layers, batch_first=True)
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, None)
        h, _ = self.lstm(self.tok_emb(tokens))                              # (B, T, hidden)
        return self.head(self.ln_f(h))                                      # (B, T, vocab)
