"""A small two-domain text corpus for real-model experiments: load, tokenise, split, batch.

The corpus lives in ``fixtures/corpus/`` (written for this lab, CC0; see its README):

* ``prose`` — plain English prose about a harbour town (~5 KB, ~1.1k SmolLM2 tokens);
* ``code``  — small Python functions and classes (~6.5 KB, ~1.5k tokens).

Two domains make the "learn one, forget the other" experiments possible (Biderman et al. 2024,
"LoRA Learns Less and Forgets Less"): fine-tune on ``code`` and watch the loss on ``prose``.

Splits are deterministic and made on *units of text*, not on token positions, so that no
sentence or function is cut in two between train and eval: a prose unit is a paragraph (blank
line), a code unit is a top-level definition (two blank lines). Every ``eval_every``-th unit
(4th by default, starting at index ``eval_every - 1``) is held out. Each split is tokenised as
one stream (units joined by their separator) without special tokens.

Batches are fixed-length windows of a split's token stream:

* ``blocks(ids, seq_len)``         non-overlapping windows, remainder dropped (for evaluation);
* ``random_windows(...)``          windows at random offsets drawn from a ``torch.Generator``
                                   (for training; reproducible from the seed);
* ``CorpusSplit.batch_fn(...)``    the ``batch_fn(step, generator)`` that ``labcore.training.trainer.train``
                                   expects, returning ``(input_ids, labels)``;
* ``causal_lm_loss`` / ``eval_loss`` / ``token_losses``  next-token cross-entropy for
  transformers causal LMs (training loss; mean and per-token evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labcore.files import repo_root
from labcore.glassbox.modes import logits_of

__all__ = [
    "DOMAINS",
    "CorpusSplit",
    "corpus_dir",
    "load_text",
    "split_units",
    "load_domain",
    "blocks",
    "random_windows",
    "causal_lm_loss",
    "token_losses",
    "eval_loss",
]

#: domain name -> (file name, unit separator)
DOMAINS: dict[str, tuple[str, str]] = {
    "prose": ("prose.txt", "\n\n"),
    "code": ("code.txt", "\n\n\n"),
}


def corpus_dir() -> Path:
    """``<repo>/fixtures/corpus``."""
    return repo_root() / "fixtures" / "corpus"


def _domain(domain: str) -> tuple[str, str]:
    try:
        return DOMAINS[domain]
    except KeyError:
        raise ValueError(f"unknown corpus domain {domain!r}; choose one of {sorted(DOMAINS)}") from None


def load_text(domain: str) -> str:
    """The raw text of one domain (UTF-8)."""
    filename, _ = _domain(domain)
    path = corpus_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} is missing (it is part of the repository: fixtures/corpus/)")
    return path.read_text(encoding="utf-8")


def split_units(domain: str, eval_every: int = 4) -> tuple[list[str], list[str]]:
    """(train units, eval units): every ``eval_every``-th unit (indices k·eval_every − 1) is eval."""
    if eval_every < 2:
        raise ValueError(f"eval_every must be ≥ 2 (got {eval_every}): otherwise nothing is left to train on")
    _, separator = _domain(domain)
    units = [u.strip("\n") for u in load_text(domain).split(separator)]
    units = [u for u in units if u.strip()]
    train = [u for i, u in enumerate(units) if i % eval_every != eval_every - 1]
    held = [u for i, u in enumerate(units) if i % eval_every == eval_every - 1]
    if not held:
        raise ValueError(f"{domain}: only {len(units)} units, none held out at eval_every={eval_every}")
    return train, held


@dataclass(frozen=True)
class CorpusSplit:
    """The tokenised train and eval streams of one domain (1-D int64 tensors)."""

    domain: str
    train_ids: torch.Tensor
    eval_ids: torch.Tensor

    def eval_blocks(self, seq_len: int) -> torch.Tensor:
        """The eval stream cut into non-overlapping (n, seq_len) windows."""
        return blocks(self.eval_ids, seq_len)

    def train_blocks(self, seq_len: int) -> torch.Tensor:
        return blocks(self.train_ids, seq_len)

    def batch_fn(self, seq_len: int, batch_size: int):
        """``batch_fn(step, generator) -> (input_ids, labels)`` of random train windows.

        labels == input_ids (transformers shifts them inside the loss); ``causal_lm_loss``
        is the matching ``loss_fn`` for ``labcore.training.trainer.train``.
        """
        ids = self.train_ids

        def batch(step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = random_windows(ids, seq_len, batch_size, generator)
            return x, x

        return batch


def load_domain(domain: str, tokenizer, eval_every: int = 4) -> CorpusSplit:
    """Tokenise one domain's train and eval units (joined by the domain's separator), no special tokens."""
    _, separator = _domain(domain)
    train_units, eval_units = split_units(domain, eval_every)

    def encode(units: list[str]) -> torch.Tensor:
        ids = tokenizer(separator.join(units), add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    return CorpusSplit(domain, encode(train_units), encode(eval_units))


def blocks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows (n, seq_len) of a 1-D stream; the remainder is dropped."""
    if ids.dim() != 1:
        raise ValueError(f"blocks() needs a 1-D token stream, got shape {tuple(ids.shape)}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be ≥ 2 (a next-token loss needs two tokens), got {seq_len}")
    n = ids.numel() // seq_len
    if n == 0:
        raise ValueError(f"a stream of {ids.numel()} tokens holds no window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len).clone()


def random_windows(ids: torch.Tensor, seq_len: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(batch_size, seq_len) windows starting at uniformly random offsets (drawn from ``generator``)."""
    if ids.numel() < seq_len:
        raise ValueError(f"a stream of {ids.numel()} tokens holds no window of {seq_len}")
    starts = torch.randint(0, ids.numel() - seq_len + 1, (batch_size,), generator=generator)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    return logits_of(model(input_ids=input_ids))


def causal_lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM on (input_ids, labels) (labels unshifted).

    Computed here rather than by passing ``labels=`` so that it is the same for every backend
    (plain transformers, peft, unsloth's patched models) and always in fp32.
    """
    input_ids, labels = batch[0], batch[1]
    logits = _logits(model, input_ids)[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


@torch.no_grad()
def token_losses(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Next-token cross-entropy of every predicted token, flattened: (n · (seq_len − 1),) fp32.

    Useful for paired comparisons of two models on the same text (the standard error of the
    mean per-token difference says how much a different text of the same size could move it).
    """
    out = []
    for start in range(0, windows.shape[0], batch_size):
        x = windows[start : start + batch_size]
        logits = _logits(model, x)[:, :-1].float()
        out.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"))
    losses = torch.cat(out)
    if not torch.isfinite(losses).all():
        raise FloatingPointError("a token loss is not finite")
    return losses


def eval_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats/token) over all (n, seq_len) windows; deterministic.

    ``perplexity = exp(eval_loss)``. The model's train/eval mode is left as it was.
    """
    return float(token_losses(model, windows, batch_size).double().mean())
