"""Bijection elimination: the "belief accumulation" wind tunnel of Agarwal, Dalal & Misra,
*The Bayesian Geometry of Transformer Attention* (arXiv 2512.22471), in the authors'
production "sep-vocab" format (``experiments/jlens`` of their code).

Each sequence draws a fresh latent permutation pi of [V] (uniform over V! bijections, so
nothing can be memorised) and shows L key/value pairs of it::

    tokens  = [k1, v1+V, k2, v2+V, ..., k_{L-1}, v_{L-1}+V, kL]        length 2L-1, vocab 2V
    targets = [v1+V, -100, v2+V, -100, ..., v_{L-1}+V, -100, vL+V]      (v_t = pi(k_t))

Keys are tokens 0..V-1 and values V..2V-1. There is no separate query token: every key position
is a query whose target is the value the key maps to, and the value positions are not
supervised (-100, the cross-entropy ``ignore_index``).

The exact posterior at query t (0-indexed) follows from counting the bijections consistent with
the pairs seen so far. With O_t the set of values already observed,

    p(pi(k_t) = y | context) = 1 / (V - |O_t|)   if y not in O_t,   0 otherwise,

unless k_t itself was already seen (possible only when keys are drawn with replacement), in
which case the posterior is a point mass on its known value. Without replacement |O_t| = t,
so the entropy curve is H_Bayes(t) = log2(V - t) for every sequence: the smooth decay of the
paper. With replacement the curve is a "sawtooth" that drops to 0 on every repeated key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

IGNORE_INDEX = -100


# -----------------------------------------------------------------------------
# argument checks shared by the task modules


def _require_int(name: str, value, minimum: int) -> int:
    """An int (bools refused) that is at least ``minimum``, else a ValueError that says so."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _require_generator(generator) -> torch.Generator:
    """Every random draw goes through an explicit generator, so a batch is a pure function of
    the generator's seed: refuse anything else (including None) rather than fall back to the
    global RNG."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
            f"got {type(generator).__name__}"
        )
    return generator


class _TensorBatch:
    """Mixin for the batch dataclasses: move every tensor field, or list them as a dict (the
    trainer moves dicts of tensors to its device, not dataclasses)."""

    def to(self, device):
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -----------------------------------------------------------------------------


@dataclass
class BijectionBatch(_TensorBatch):
    """One sampled batch with its exact answer. B = batch, L = keys per sequence."""

    tokens: torch.Tensor        # (B, 2L-1) long: [k1, v1+V, ..., kL]
    targets: torch.Tensor       # (B, 2L-1) long: pi(k_t)+V at key positions, -100 at values
    keys: torch.Tensor          # (B, L) long: k_t in 0..V-1
    values: torch.Tensor        # (B, L) long: pi(k_t) in 0..V-1 (the last one is never shown)
    perm: torch.Tensor          # (B, V) long: perm[b, k] = pi_b(k)
    posterior: torch.Tensor     # (B, L, V) float64: exact p(pi(k_t) = y | tokens < 2t+1)
    entropy_bits: torch.Tensor  # (B, L) float64: entropy of the posterior, in bits
    eliminated: torch.Tensor    # (B, L, V) bool: values the posterior rules out (prob. exactly 0)


@dataclass(frozen=True)
class BijectionTask:
    """Sep-vocab bijection elimination with V values and L keys per sequence.

    ``replacement=False`` (the paper's default) draws L distinct keys, so L <= V;
    ``replacement=True`` draws keys i.i.d. uniform, so L may exceed V and repeated keys occur.
    """

    V: int
    L: int
    replacement: bool = False

    def __post_init__(self):
        _require_int("V", self.V, 2)
        _require_int("L", self.L, 1)
        if not isinstance(self.replacement, bool):
            raise ValueError(f"replacement must be a bool, got {self.replacement!r}")
        if not self.replacement and self.L > self.V:
            raise ValueError(
                f"L={self.L} > V={self.V}: without replacement at most V keys "
                "(use replacement=True for longer sequences)"
            )

    @property
    def vocab_size(self) -> int:
        return 2 * self.V  # keys 0..V-1, values V..2V-1

    @property
    def seq_len(self) -> int:
        return 2 * self.L - 1

    @property
    def query_positions(self) -> torch.Tensor:
        """Key positions 0, 2, ..., 2L-2: each one predicts the value its key maps to."""
        return torch.arange(0, 2 * self.L - 1, 2)  # (L,)

    @property
    def value_slice(self) -> slice:
        """The value tokens V..2V-1 in the vocabulary (where the posterior lives)."""
        return slice(self.V, 2 * self.V)

    def sample(self, batch_size: int, generator: torch.Generator) -> BijectionBatch:
        """Draw ``batch_size`` sequences, on ``generator.device``, with their exact posteriors."""
        _require_int("batch_size", batch_size, 1)
        g = _require_generator(generator)
        B, V, L, dev = batch_size, self.V, self.L, g.device

        # the latent bijection: argsort of i.i.d. uniform noise is a uniform random permutation
        perm = torch.argsort(torch.rand(B, V, generator=g, device=dev), dim=1)  # (B, V)
        if self.replacement:
            keys = torch.randint(0, V, (B, L), generator=g, device=dev)  # (B, L)
        else:
            # a second, independent permutation gives L distinct keys in uniform random order
            keys = torch.argsort(torch.rand(B, V, generator=g, device=dev), dim=1)[:, :L]
        values = torch.gather(perm, 1, keys)  # (B, L) v_t = pi(k_t)

        # interleave: even positions keys, odd positions values (offset into V..2V-1)
        seq = torch.empty(B, 2 * L, dtype=torch.long, device=dev)
        seq[:, 0::2] = keys
        seq[:, 1::2] = values + V
        tokens = seq[:, : 2 * L - 1]  # (B, 2L-1): the last value is the final answer, not shown
        targets = torch.full_like(tokens, IGNORE_INDEX)
        targets[:, 0::2] = values + V

        posterior, eliminated = _exact_posterior(keys, values, V)
        entropy = _entropy_bits_exact(posterior)
        return BijectionBatch(tokens=tokens, targets=targets, keys=keys, values=values,
                              perm=perm, posterior=posterior, entropy_bits=entropy,
                              eliminated=eliminated)

    def sample_torch(self, batch_size: int, generator: torch.Generator,
                     device: torch.device | str | None = None) -> BijectionBatch:
        """``sample`` drawn on ``device`` (a GPU) with no host sync: batched permutations by
        argsort of uniform noise and the exact posterior, all as device tensors. ``generator``
        must live on ``device`` (``torch.Generator(device).manual_seed(s)``); with a CPU
        generator it is ``sample`` draw for draw."""
        return self.sample(batch_size, on_device(generator, device))


def _exact_posterior(keys: torch.Tensor, values: torch.Tensor, V: int):
    """Exact p(pi(k_t) | pairs 1..t-1) at every query t, by the counting argument in the module
    docstring. Works for keys with or without replacement. Returns (posterior float64, eliminated).
    """
    B, L = keys.shape
    # seen[b, t, v] = value v was shown before query t (pairs 0..t-1; the shown value at s is
    # values[:, s] for s < t). Exclusive cumulative sum of one-hots along the sequence.
    onehot = torch.nn.functional.one_hot(values, V).to(torch.int64)           # (B, L, V)
    seen = (onehot.cumsum(dim=1) - onehot) > 0                                # (B, L, V)
    # the key at t repeats an earlier key iff its value was seen (pi is a bijection)
    repeat = torch.gather(seen, 2, values.unsqueeze(-1)).squeeze(-1)          # (B, L)
    n_seen = seen.sum(-1)                                                     # (B, L) |O_t|

    # fresh key: uniform over the V - |O_t| values not yet seen
    uniform = (~seen).to(torch.float64) / (V - n_seen).unsqueeze(-1).to(torch.float64)
    # repeated key: point mass on its known value
    point = onehot.to(torch.float64)
    posterior = torch.where(repeat.unsqueeze(-1), point, uniform)            # (B, L, V)
    eliminated = posterior == 0
    return posterior, eliminated


def _entropy_bits_exact(posterior: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_y p(y) log2 p(y), with 0 log 0 = 0. (..., V) -> (...)."""
    plogp = torch.where(posterior > 0, posterior * torch.log2(posterior), 0.0)
    return 0.0 - plogp.sum(-1)  # 0.0 - x, not -x: a point mass gets +0.0 bits, not -0.0


def analytic_entropy_bits(V: int, L: int) -> torch.Tensor:
    """H_Bayes(t) = log2(V - t) for t = 0..L-1 (keys without replacement), float64 (L,).

    The paper writes it 1-indexed as log2(V - k + 1). For V=20, L=19: 4.322, 4.248, ..., 1.0.
    """
    _require_int("V", V, 1)
    _require_int("L", L, 1)
    if L > V:
        raise ValueError(f"L={L} > V={V}: without replacement at most V keys")
    t = torch.arange(L, dtype=torch.float64)
    return torch.log2(V - t)


def batch_fn(task: BijectionTask, batch_size: int) -> Callable[[int, torch.Generator], tuple]:
    """Adapter for ``labcore.training.trainer.train``: (step, generator) -> (tokens, targets).

    The step is ignored: every step draws fresh bijections from the trainer's generator.
    """
    return token_batches(task, BijectionTask, batch_size)


def on_device(generator: torch.Generator, device: torch.device | str | None) -> torch.Generator:
    """``generator`` itself, after checking that it draws on ``device`` (None: its own device)."""
    g = _require_generator(generator)
    if device is None:
        return g
    want = torch.device(device)
    if g.device.type != want.type or (want.index is not None and g.device.index not in (None, want.index)):
        raise ValueError(f"the generator draws on {g.device}, not on {want}: create it with "
                         f"torch.Generator(device='{want}').manual_seed(seed)")
    return g


def device_batches(sample: Callable[[torch.Generator], object], device: torch.device | str,
                   as_dict: bool = False) -> Callable[[int, torch.Generator], object]:
    """A trainer ``batch_fn`` whose batches are drawn on ``device`` by ``sample(device_generator)``
    (a task's ``sample_torch``). The device generator is seeded once from the trainer's CPU
    generator, so a run is still a function of ``TrainConfig.seed``; returns (tokens, targets),
    or the batch's fields as a dict with ``as_dict``."""
    state: dict[str, torch.Generator] = {}

    def fn(step: int, generator: torch.Generator):
        if "g" not in state:
            seed = int(torch.randint(0, 2**62, (1,), generator=_require_generator(generator)))
            state["g"] = torch.Generator(device=device).manual_seed(seed)
        b = sample(state["g"])
        return b.as_dict() if as_dict else (b.tokens, b.targets)

    return fn


def token_batches(task, task_type: type, batch_size: int) -> Callable[[int, torch.Generator], tuple]:
    """(step, generator) -> (tokens, targets) from any task whose batches carry those two fields."""
    if not isinstance(task, task_type):
        raise ValueError(f"task must be a {task_type.__name__}, got {type(task).__name__}")
    _require_int("batch_size", batch_size, 1)

    def fn(step: int, generator: torch.Generator):
        b = task.sample(batch_size, generator)
        return b.tokens, b.targets

    return fn
