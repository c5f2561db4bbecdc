"""Two tagged Markov-chain domains: a small stand-in for "pretraining text and a downstream task".

The LoRA, QLoRA and "LoRA learns less and forgets less" claims are about adapting a *pretrained*
model to a task that is *close to* what it saw in pretraining (LoRA footnote 6: a small rank
need not work when the downstream task is far from pretraining, e.g. another language). This
language builds that situation at a size a laptop CPU trains in seconds, with the exact answer
known everywhere (the recipes that pretrain and fine-tune on it: ``labcore.finetuning``).

**The language (``DomainMarkovLanguage``).** Token sequences from first-order Markov chains over
``n_tokens`` content tokens. Every sequence starts with a *domain tag* (``TAG_A`` or ``TAG_B``)
and the tag decides the transition table, so the model must carry the tag from position 0 to
every position (an attention job) and combine it with the current token (an MLP job). The
tables are next-token logits, built from one shared random table plus a smaller
domain-specific one, so the two domains are related but different:

    Z_A  = S + E_A            S ~ N(0, shared_scale²),  E_· ~ N(0, domain_scale²)   (V × V)
    Z_B0 = S + E_B
    Z_B  = Z_B0 + tilt · 1 uᵀ + bigram_tilt · a bᵀ       (u, a, b ~ N(0, 1), length V)

* **pretraining** ("pretrain") is the 50/50 mixture of domain A and domain B₀;
* **fine-tuning** ("B") shifts domain B: every next-token distribution of domain B is tilted by
  a fixed token preference u (a "style" change, rank 1 in logit space) and a rank-1 bigram
  change a bᵀ (which next tokens get more likely depends on the current token). This is the
  "near pretraining" downstream task: the same format, the same tag, a low-dimensional change.
* **forgetting** is measured on domain A ("A"), which fine-tuning never shows: a model can learn
  B without touching A, because the tag tells the domains apart.
* a **far** control ("far") replaces domain B's table by a fresh random one: a downstream
  task that has little to do with what pretraining taught.

All randomness of the language comes from ``seed``; tokens of a batch come from the caller's
``torch.Generator`` (the trainer's), so a batch is a pure function of its seed.

**Exact evaluation.** Every batch carries the true next-token distribution at every position
(``MarkovBatch.probs``), so evaluation uses the *expected* cross-entropy
−Σ_y p_true(y|ctx) log q(y|ctx) instead of the log-loss of the one sampled token: the same mean,
much less noise, and its floor is known (the entropy of the language, ``oracle``); the gap to it
is the model's KL divergence from the truth.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labcore.glassbox.modes import evaluating, logits_of

__all__ = ["DomainMarkovLanguage", "MarkovBatch", "TASKS", "expected_loss"]

#: Task names a ``DomainMarkovLanguage`` samples: (domain tag, table) per sequence.
TASKS = ("pretrain", "A", "B0", "B", "far")


@dataclass
class MarkovBatch:
    """One batch. B = batch, T = seq_len, Vv = vocab_size (content tokens + 2 tags)."""

    tokens: torch.Tensor  # (B, T) long: [tag, x_1, ..., x_{T-1}]
    targets: torch.Tensor  # (B, T) long: [x_1, ..., x_T] (the next token at every position)
    probs: torch.Tensor  # (B, T, Vv) float32: true next-token distribution (0 on the tags)
    domain: torch.Tensor  # (B,) long: 0 = tag A, 1 = tag B

    @property
    def oracle(self) -> float:
        """The entropy of the true next-token distribution, averaged over positions (nats):
        the lowest expected loss any model can reach on this batch."""
        p = self.probs.double()
        return float(-(torch.where(p > 0, p * p.log(), 0.0)).sum(-1).mean())


@dataclass(frozen=True)
class DomainMarkovLanguage:
    """Two tagged Markov-chain domains, a shifted version of the second, and a far control.

    See the module docstring for the construction. ``vocab_size`` = n_tokens + 2: content
    tokens 0..n_tokens-1, then ``TAG_A`` and ``TAG_B``.
    """

    n_tokens: int = 24
    seq_len: int = 24
    shared_scale: float = 2.0  # std of the logit table shared by both domains
    domain_scale: float = 1.0  # std of each domain's own logit table
    tilt: float = 1.0  # strength of the unigram tilt u (fine-tuning shift, rank 1)
    bigram_tilt: float = 0.7  # strength of the rank-1 bigram shift a bᵀ
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tokens < 2 or self.seq_len < 2:
            raise ValueError(f"need n_tokens ≥ 2 and seq_len ≥ 2, got {self.n_tokens}, {self.seq_len}")

    @property
    def vocab_size(self) -> int:
        return self.n_tokens + 2

    @property
    def tag_a(self) -> int:
        return self.n_tokens

    @property
    def tag_b(self) -> int:
        return self.n_tokens + 1

    @functools.cached_property
    def tables(self) -> dict[str, torch.Tensor]:
        """Next-token logit tables (V × V, row = current token) of "A", "B0", "B" and "far"."""
        g = torch.Generator().manual_seed(int(self.seed) + 7_919)  # language seed ≠ model seed
        V = self.n_tokens
        shared = torch.randn(V, V, generator=g) * self.shared_scale
        z_a = shared + torch.randn(V, V, generator=g) * self.domain_scale
        z_b0 = shared + torch.randn(V, V, generator=g) * self.domain_scale
        u, a, b = (torch.randn(V, generator=g) for _ in range(3))
        z_b = z_b0 + self.tilt * u[None, :] + self.bigram_tilt * a[:, None] * b[None, :]
        # The far control: a fresh table with the same overall spread as a pretraining domain.
        scale = math.sqrt(self.shared_scale**2 + self.domain_scale**2)
        z_far = torch.randn(V, V, generator=g) * scale
        return {"A": z_a, "B0": z_b0, "B": z_b, "far": z_far}

    def _domains(self, task: str) -> tuple[str, str]:
        """(table for tag A sequences, table for tag B sequences) of a task."""
        if task == "pretrain" or task == "A" or task == "B0":
            return "A", "B0"
        if task == "B":
            return "A", "B"
        if task == "far":
            return "A", "far"
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")

    def sample(self, task: str, batch_size: int, generator: torch.Generator) -> MarkovBatch:
        """``batch_size`` sequences of ``task``: "pretrain" mixes the two tags 50/50, "A" is tag A
        only, "B0"/"B"/"far" are tag B only with the original / shifted / far table."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator")
        B, T, V = batch_size, self.seq_len, self.n_tokens
        table_a, table_b = self._domains(task)
        if task == "pretrain":
            domain = torch.randint(0, 2, (B,), generator=generator)
        else:
            domain = torch.full((B,), 0 if task == "A" else 1, dtype=torch.long)
        P = torch.stack([self.tables[table_a].softmax(-1), self.tables[table_b].softmax(-1)])  # (2, V, V)
        x = torch.empty(B, T, dtype=torch.long)  # x_1 .. x_T
        x[:, 0] = torch.randint(0, V, (B,), generator=generator)  # x_1 uniform
        for t in range(1, T):
            x[:, t] = torch.multinomial(P[domain, x[:, t - 1]], 1, generator=generator).squeeze(1)
        tag = torch.where(domain == 0, self.tag_a, self.tag_b)
        tokens = torch.cat([tag[:, None], x[:, :-1]], dim=1)  # (B, T)
        probs = torch.zeros(B, T, self.vocab_size)
        probs[:, 0, :V] = 1.0 / V  # the first content token is uniform
        probs[:, 1:, :V] = P[domain[:, None], x[:, :-1]]  # (B, T-1, V): row of the current token
        return MarkovBatch(tokens=tokens, targets=x, probs=probs, domain=domain)

    def batch_fn(self, task: str, batch_size: int) -> Callable[[int, torch.Generator], tuple]:
        """Adapter for ``labcore.training.trainer.train``: (step, generator) -> (tokens, targets)."""

        def fn(step: int, generator: torch.Generator):
            b = self.sample(task, batch_size, generator)
            return b.tokens, b.targets

        return fn

    def eval_batch(self, task: str, n: int = 256, seed: int = 0) -> MarkovBatch:
        """A fixed held-out batch (its own generator, independent of any training stream)."""
        salt = zlib.crc32(f"eval/{task}/{n}/{seed}".encode())
        return self.sample(task, n, torch.Generator().manual_seed(salt))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def expected_loss(model: nn.Module, batch: MarkovBatch, chunk: int = 256) -> float:
    """Expected next-token cross-entropy −Σ_y p_true(y) log q(y), averaged over positions (nats)."""
    total, count = 0.0, 0
    with evaluating(model):
        for start in range(0, batch.tokens.shape[0], chunk):
            tokens = batch.tokens[start : start + chunk]
            probs = batch.probs[start : start + chunk]
            logq = F.log_softmax(logits_of(model(tokens)).float(), dim=-1)
            total += float(-(probs * logq).sum(-1).sum())
            count += probs.shape[0] * probs.shape[1]
    return total / count

