"""HMM filtering: the "belief transport" wind tunnel of Agarwal, Dalal & Misra,
*The Bayesian Geometry of Transformer Attention* (arXiv 2512.22471), after ``src/data/hmm.py``
of the authors' code, generalised from S=O=5 to any S states and O symbols.

Every sequence carries its own HMM. The rows of the transition matrix T (S x S) and of the
emission matrix E (S x O) are drawn Dirichlet(1, ..., 1), clipped below at ``min_prob``,
renormalised, and discretised to the 0.01 grid (each row an integer number of hundredths that
sums to exactly 100, every entry >= min_prob). The model is shown the *discretised* matrices and
the ground truth is computed from those same matrices, so there is no precision ceiling.
The initial distribution pi0 is uniform.

Token format (vocabulary 100 + O; 105 for O=5, as in the paper)::

    0..95        probability tokens: p in {0.05, 0.06, ..., 1.00}, token = round(100 p) - 5
    96 [TRANS]   97 [EMIT]   98 [SEP]   99 [OBS]
    100..100+O-1 observation symbols

    [TRANS] T[0,0] .. T[S-1,S-1] [EMIT] E[0,0] .. E[S-1,O-1] [SEP] ([OBS] o_t) x K

T and E are written row-major. The header is 1 + S^2 + 1 + S*O + 1 = S^2 + S*O + 3 tokens
(53 for S=O=5), the sequence header_len + 2K tokens, and observation o_t (t = 0..K-1) sits at
position header_len + 2t + 1.

Target: the filtering posterior alpha_t(s) = p(s_t = s | o_1..o_t) at each observation position,
from the forward algorithm in log space. Training is *not* next-token prediction: the model has
an S-way state head trained with the soft-label cross-entropy -sum_s alpha_t(s) log q_t(s)
(:func:`soft_label_ce`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from labcore.tasks.bijection import _require_generator, _require_int, _TensorBatch, on_device

# token ids of the paper's tokenizer (fixed; only the number of symbols varies)
N_PROB_TOKENS = 96          # 0.05, 0.06, ..., 1.00
PROB_TOKEN_OFFSET_CENTS = 5  # probability token = cents - 5
TRANS, EMIT, SEP, OBS = 96, 97, 98, 99
SYMBOL_OFFSET = 100


@dataclass
class HMMBatch(_TensorBatch):
    """One sampled batch. B = batch, K = observations, S = states, O = symbols."""

    tokens: torch.Tensor         # (B, header_len + 2K) long
    obs_positions: torch.Tensor  # (K,) long: where o_t sits; read the state head there
    posterior: torch.Tensor      # (B, K, S) float64: alpha_t = p(s_t | o_1..o_t)
    entropy_bits: torch.Tensor   # (B, K) float64: entropy of alpha_t in bits
    T: torch.Tensor              # (B, S, S) float64: transition matrix on the 0.01 grid
    E: torch.Tensor              # (B, S, O) float64: emission matrix on the 0.01 grid
    observations: torch.Tensor   # (B, K) long: o_t in 0..O-1
    states: torch.Tensor         # (B, K) long: the hidden path s_t in 0..S-1


def discretise_rows(p: torch.Tensor, min_prob: float) -> torch.Tensor:
    """Put probability rows on the 0.01 grid: integer hundredths ("cents"), each row summing to
    exactly 100 and every entry >= round(100 min_prob).

    Method (vectorised over rows):
      1. x = 100 p (each row sums to 100). Raise entries below the floor m to m, then shrink the
         part above the floor so the row sums to 100 again:
         z_i = m + (y_i - m) * (100 - n m) / sum_j (y_j - m), with y = max(x, m).
         If no entry was below the floor this leaves x unchanged.
      2. Largest-remainder (Hamilton) rounding of z: take floor(z) (>= m since m is an integer)
         and give the 100 - sum(floor z) leftover cents, one each, to the entries with the
         largest fractional parts (ties broken by position).
    p: (..., n) rows summing to 1 -> (..., n) int64 cents.
    """
    n = p.shape[-1]
    m = round(100 * min_prob)
    if n * m > 100:
        raise ValueError(f"{n} entries of at least {min_prob} cannot sum to 1")
    x = 100.0 * p.to(torch.float64)
    y = torch.clamp(x, min=m)                                            # (..., n)
    above = y - m
    spare = 100 - n * m                                                  # cents above the floor
    denom = above.sum(-1, keepdim=True)
    z = m + torch.where(denom > 0, above * spare / denom.clamp_min(1e-300), spare / n)
    base = torch.floor(z)
    frac = z - base
    base = base.to(torch.int64)
    leftover = 100 - base.sum(-1, keepdim=True)                          # (..., 1) in [0, n)
    # rank entries by fractional part, descending; the top `leftover` get one more cent
    order = torch.argsort(frac, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(n, device=p.device).expand_as(order).contiguous())
    cents = base + (rank < leftover).to(torch.int64)
    return cents


def _sample_rows(n_rows: int, n_cols: int, batch_size: int, min_prob: float,
                 g: torch.Generator) -> torch.Tensor:
    """(B, n_rows, n_cols) int64 cents: Dirichlet(1) rows (normalised i.i.d. Exp(1) draws),
    clipped at min_prob, renormalised, put on the 0.01 grid."""
    expo = torch.empty(batch_size, n_rows, n_cols, dtype=torch.float64, device=g.device)
    expo.exponential_(generator=g)
    raw = expo / expo.sum(-1, keepdim=True)                     # Dirichlet(1, ..., 1)
    clipped = raw.clamp_min(min_prob)
    clipped = clipped / clipped.sum(-1, keepdim=True)
    return discretise_rows(clipped, min_prob)


def _draw_categorical(cents: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw on integer hundredths: cents (B, n) rows summing to 100, u (B,) integers
    in 0..99 -> index i with cumsum_{<i} <= u < cumsum_{<=i}. Exact, no float rounding."""
    cdf = cents.cumsum(-1)                                       # (B, n), last column 100
    return (cdf <= u.unsqueeze(-1)).sum(-1)                     # (B,)


def forward_filter(T: torch.Tensor, E: torch.Tensor, observations: torch.Tensor,
                   pi0: torch.Tensor | None = None) -> torch.Tensor:
    """Filtering posteriors alpha_t(s) = p(s_t = s | o_1..o_t) by the forward algorithm in log
    space (float64):

        log alpha_1(s) = log pi0(s) + log E[s, o_1]                        - log Z_1
        log alpha_t(s) = logsumexp_s' (log alpha_{t-1}(s') + log T[s', s])
                         + log E[s, o_t]                                   - log Z_t

    where each Z_t normalises alpha_t. T (B, S, S), E (B, S, O), observations (B, K) long,
    pi0 (S,) or (B, S), default uniform -> (B, K, S).
    """
    B, S, _ = T.shape
    K = observations.shape[1]
    log_T = torch.log(T.to(torch.float64))                                  # (B, S, S)
    log_E = torch.log(E.to(torch.float64))                                  # (B, S, O)
    # log E[s, o_t] for every t: gather along the symbol axis
    idx = observations.unsqueeze(1).expand(B, S, K)                         # (B, S, K)
    log_emit = torch.gather(log_E, 2, idx).transpose(1, 2)                  # (B, K, S)
    if pi0 is None:
        log_pi0 = torch.full((B, S), -math.log(S), dtype=torch.float64, device=T.device)
    else:
        log_pi0 = torch.log(pi0.to(torch.float64)).expand(B, S)

    log_alpha = torch.empty(B, K, S, dtype=torch.float64, device=T.device)
    a = log_pi0 + log_emit[:, 0]                                            # (B, S)
    log_alpha[:, 0] = a - torch.logsumexp(a, dim=-1, keepdim=True)
    for t in range(1, K):
        # predict: sum over the previous state s' (dim 1), then condition on o_t
        a = torch.logsumexp(log_alpha[:, t - 1].unsqueeze(-1) + log_T, dim=1)  # (B, S)
        a = a + log_emit[:, t]
        log_alpha[:, t] = a - torch.logsumexp(a, dim=-1, keepdim=True)
    return log_alpha.exp()


@dataclass(frozen=True)
class HMMTask:
    """HMM filtering with S states, O symbols, K observations (the default length), and
    transition/emission entries >= min_prob on the 0.01 grid."""

    S: int = 5
    O: int = 5
    K: int = 20
    min_prob: float = 0.05

    def __post_init__(self):
        _require_int("S", self.S, 2)
        _require_int("O", self.O, 2)
        _require_int("K", self.K, 1)
        mp = self.min_prob
        if isinstance(mp, bool) or not isinstance(mp, (int, float)):
            raise ValueError(f"min_prob must be a number, got {mp!r}")
        if abs(100 * mp - round(100 * mp)) > 1e-9:
            raise ValueError(f"min_prob={mp} is not on the 0.01 grid")
        if round(100 * mp) < PROB_TOKEN_OFFSET_CENTS:
            raise ValueError(
                f"min_prob={mp} < 0.05: the probability tokens cover 0.05..1.00 only "
                "(token = round(100 p) - 5)"
            )
        n = max(self.S, self.O)
        if n * round(100 * mp) > 100:
            raise ValueError(f"min_prob={mp} is impossible: {n} entries of a row would sum > 1")

    # --- the token layout -------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return SYMBOL_OFFSET + self.O

    @property
    def header_len(self) -> int:
        """[TRANS] + S^2 + [EMIT] + S*O + [SEP]."""
        return self.S * self.S + self.S * self.O + 3

    def _k(self, K: int | None) -> int:
        return self.K if K is None else _require_int("K", K, 1)

    def seq_len(self, K: int | None = None) -> int:
        return self.header_len + 2 * self._k(K)

    def obs_positions(self, K: int | None = None) -> torch.Tensor:
        """Positions header_len + 2t + 1 of the symbols o_t, t = 0..K-1."""
        return self.header_len + 2 * torch.arange(self._k(K)) + 1  # (K,)

    def encode(self, T: torch.Tensor, E: torch.Tensor, observations: torch.Tensor) -> torch.Tensor:
        """Tokens for grid matrices T (B, S, S), E (B, S, O) and observations (B, K) -> (B, N)."""
        B, K = observations.shape
        dev = observations.device
        t_tok = torch.round(100 * T.to(torch.float64)).to(torch.int64) - PROB_TOKEN_OFFSET_CENTS
        e_tok = torch.round(100 * E.to(torch.float64)).to(torch.int64) - PROB_TOKEN_OFFSET_CENTS
        if any(bool((x < 0).any() or (x >= N_PROB_TOKENS).any()) for x in (t_tok, e_tok)):
            raise ValueError("probabilities must lie in 0.05..1.00 to be tokenised")
        col = lambda tok: torch.full((B, 1), tok, dtype=torch.long, device=dev)  # noqa: E731
        obs = torch.stack([torch.full_like(observations, OBS), observations + SYMBOL_OFFSET],
                          dim=-1).reshape(B, 2 * K)                     # (B, 2K): [OBS] o_t ...
        return torch.cat([col(TRANS), t_tok.reshape(B, -1), col(EMIT), e_tok.reshape(B, -1),
                          col(SEP), obs], dim=1)

    def decode_header(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read T (B, S, S) and E (B, S, O) back out of the tokens (float64); checks the markers."""
        S, O = self.S, self.O
        B = tokens.shape[0]
        i_emit, i_sep = 1 + S * S, 2 + S * S + S * O
        for pos, tok, name in ((0, TRANS, "[TRANS]"), (i_emit, EMIT, "[EMIT]"),
                               (i_sep, SEP, "[SEP]")):
            if not bool((tokens[:, pos] == tok).all()):
                raise ValueError(f"expected {name}={tok} at position {pos}")
        cents = lambda x: (x + PROB_TOKEN_OFFSET_CENTS).to(torch.float64) / 100  # noqa: E731
        T = cents(tokens[:, 1:i_emit]).reshape(B, S, S)
        E = cents(tokens[:, i_emit + 1:i_sep]).reshape(B, S, O)
        return T, E

    # --- sampling ---------------------------------------------------------------------

    def sample(self, batch_size: int, generator: torch.Generator,
               K: int | None = None) -> HMMBatch:
        """Draw ``batch_size`` fresh HMMs, a hidden path and K observations from each, and the
        exact filtering posteriors; on ``generator.device``."""
        _require_int("batch_size", batch_size, 1)
        g = _require_generator(generator)
        K = self._k(K)
        B, S, O, dev = batch_size, self.S, self.O, g.device

        T_c = _sample_rows(S, S, B, self.min_prob, g)                   # (B, S, S) cents
        E_c = _sample_rows(S, O, B, self.min_prob, g)                   # (B, S, O) cents

        # the hidden chain and its emissions, by exact inverse-CDF draws on the cents
        u_state = torch.randint(0, 100, (B, K), generator=g, device=dev)
        u_emit = torch.randint(0, 100, (B, K), generator=g, device=dev)
        s0 = torch.randint(0, S, (B,), generator=g, device=dev)         # uniform pi0
        batch_idx = torch.arange(B, device=dev)
        states = torch.empty(B, K, dtype=torch.long, device=dev)
        observations = torch.empty(B, K, dtype=torch.long, device=dev)
        s = s0
        for t in range(K):
            if t > 0:
                s = _draw_categorical(T_c[batch_idx, s], u_state[:, t])  # s_t ~ T[s_{t-1}, :]
            states[:, t] = s
            observations[:, t] = _draw_categorical(E_c[batch_idx, s], u_emit[:, t])  # ~ E[s_t]

        T = T_c.to(torch.float64) / 100
        E = E_c.to(torch.float64) / 100
        posterior = forward_filter(T, E, observations)                   # (B, K, S)
        entropy = -(posterior * torch.log2(posterior)).sum(-1)           # alpha > 0 everywhere
        return HMMBatch(tokens=self.encode(T, E, observations),
                        obs_positions=self.obs_positions(K).to(dev), posterior=posterior,
                        entropy_bits=entropy, T=T, E=E, observations=observations,
                        states=states)

    def sample_torch(self, batch_size: int, generator: torch.Generator,
                     device: torch.device | str | None = None, K: int | None = None) -> HMMBatch:
        """``sample`` for a GPU: drawn on ``device`` (``generator`` must live there) with no host
        sync; the forward filter runs on the device in float64. With the same generator it
        draws exactly what ``sample`` draws; posteriors agree to ~1e-15."""
        _require_int("batch_size", batch_size, 1)
        return _sample_torch(self, batch_size, on_device(generator, device), self._k(K))


def _sample_torch(task: "HMMTask", batch_size: int, g: torch.Generator, K: int) -> HMMBatch:
    """HMMTask.sample_torch: the same draws in the same order as ``sample`` (so a CPU generator
    gives the same HMMs, paths and tokens), without host syncs or per-row indexing: the chain
    by gathers on cumulative cents, the forward filter in probability space with a batched
    matrix product per step (renormalised every step; every entry >= min_prob, no underflow)."""
    B, S, O, dev = batch_size, task.S, task.O, g.device
    T_c = _sample_rows(S, S, B, task.min_prob, g)                   # (B, S, S) cents
    E_c = _sample_rows(S, O, B, task.min_prob, g)                   # (B, S, O) cents
    u_state = torch.randint(0, 100, (B, K), generator=g, device=dev)
    u_emit = torch.randint(0, 100, (B, K), generator=g, device=dev)
    s = torch.randint(0, S, (B,), generator=g, device=dev)          # uniform pi0
    cdf_T, cdf_E = T_c.cumsum(-1), E_c.cumsum(-1)                   # (B, S, S), (B, S, O)
    row = lambda cdf, s: cdf.gather(1, s.view(B, 1, 1).expand(B, 1, cdf.shape[-1])).squeeze(1)  # noqa: E731
    states, observations = [], []
    for t in range(K):
        if t > 0:
            s = (row(cdf_T, s) <= u_state[:, t, None]).sum(-1)        # s_t ~ T[s_{t-1}, :]
        states.append(s)
        observations.append((row(cdf_E, s) <= u_emit[:, t, None]).sum(-1))  # o_t ~ E[s_t, :]
    states, observations = torch.stack(states, 1), torch.stack(observations, 1)  # (B, K)

    T, E = T_c.to(torch.float64) / 100, E_c.to(torch.float64) / 100
    emit = torch.gather(E, 2, observations.unsqueeze(1).expand(B, S, K)).transpose(1, 2)  # (B, K, S)
    alpha = emit[:, 0] / S                                          # uniform pi0
    alphas = [alpha / alpha.sum(-1, keepdim=True)]
    for t in range(1, K):
        alpha = torch.bmm(alphas[-1].unsqueeze(1), T).squeeze(1) * emit[:, t]
        alphas.append(alpha / alpha.sum(-1, keepdim=True))
    posterior = torch.stack(alphas, 1)                              # (B, K, S)

    cents = lambda c: (c - PROB_TOKEN_OFFSET_CENTS).reshape(B, -1)  # noqa: E731
    col = lambda tok: torch.full((B, 1), tok, dtype=torch.long, device=dev)  # noqa: E731
    obs = torch.stack([torch.full_like(observations, OBS), observations + SYMBOL_OFFSET], -1).reshape(B, 2 * K)
    tokens = torch.cat([col(TRANS), cents(T_c), col(EMIT), cents(E_c), col(SEP), obs], dim=1)
    return HMMBatch(tokens=tokens, obs_positions=task.obs_positions(K).to(dev), posterior=posterior,
                    entropy_bits=-(posterior * torch.log2(posterior)).sum(-1), T=T, E=E,
                    observations=observations, states=states)


def soft_label_ce(state_logits: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """Soft-label cross-entropy, in nats, averaged over batch and positions:

        L = mean_{b,t} [ -sum_s alpha_t(s) log softmax(state_logits)_t(s) ]

    Its minimum over the model is the mean posterior entropy (reached at q = alpha), so
    L - H(alpha) = KL(alpha || q) is the part the model can still remove.
    state_logits (B, K, S) read at the observation positions; posterior (B, K, S).
    """
    if state_logits.shape != posterior.shape:
        raise ValueError(
            f"state_logits {tuple(state_logits.shape)} and posterior "
            f"{tuple(posterior.shape)} must have the same shape (B, K, S)"
        )
    log_q = torch.log_softmax(state_logits, dim=-1)                           # (B, K, S)
    return -(posterior.to(log_q.dtype) * log_q).sum(-1).mean()


def batch_fn(task: HMMTask, batch_size: int,
             K: int | None = None) -> Callable[[int, torch.Generator], dict]:
    """Adapter for ``labcore.training.trainer.train``: (step, generator) -> dict of the HMMBatch fields
    (fresh HMMs every step; a dict so that the trainer moves it to the model's device). Pair it
    with a loss_fn that reads the state head at ``batch["obs_positions"]`` and calls
    :func:`soft_label_ce` against ``batch["posterior"]``."""
    if not isinstance(task, HMMTask):
        raise ValueError(f"task must be an HMMTask, got {type(task).__name__}")
    _require_int("batch_size", batch_size, 1)
    K = task._k(K)

    def fn(step: int, generator: torch.Generator) -> dict:
        return task.sample(batch_size, generator, K=K).as_dict()

    return fn
