"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", arXiv 2202.05262).

Three runs of one factual prompt ("The Eiffel Tower is located in the city of" → " Paris"):

* **clean**: the prompt as it is; p_clean = p(answer | prompt) at the last position.
* **corrupted**: Gaussian noise ε ~ N(0, ν²) added to the token embeddings of the *subject*
  ("The Eiffel Tower") at ``hook_embed``; ROME uses ν = 3σ, σ the std of the embeddings. The
  subject is now unreadable, p_corrupt ≪ p_clean.
* **corrupted with restoration**: the same noise, but one hidden state h_i^(l) (``resid_post`` of
  layer l at token i) — or the MLP outputs (``mlp_out``) of a *window* of layers around l at token i,
  as ROME restores 10 MLP layers of GPT-2 XL at once — set back to its clean value. The
  **indirect effect** of that state is p_restored − p_corrupt: how much of the answer it carries.

:func:`causal_trace` returns p(answer) for every (hook, layer, position) restoration at once,
batched: each batch row is the corrupted prompt with its own restoration, hooks patch only their
rows. Every restoration of one noise sample sees the same noise (as in ROME). Works on the glass-box
GPT and on a HookedHF model (which only computes the last position's logits here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from labcore.interp.readout import Labelled, hook_name, n_layers

__all__ = ["Trace", "causal_trace", "embedding_std"]


@dataclass
class Trace:
    """p(answer) under each restoration, ``restored.values[kind, layer, pos]`` (mean over noise samples),
    with the clean and corrupted probabilities of the same prompt."""

    restored: Labelled
    p_clean: float
    p_corrupt: float

    def indirect_effect(self, normalise: bool = False) -> torch.Tensor:
        """p_restored − p_corrupt, or that divided by the total effect p_clean − p_corrupt."""
        ie = self.restored.values - self.p_corrupt
        return ie / (self.p_clean - self.p_corrupt) if normalise else ie


@torch.no_grad()
def embedding_std(model, tokens: torch.Tensor) -> float:
    """σ of ``hook_embed`` over the given tokens (every coordinate of every token), ROME's noise unit."""
    _, cache = model.run_with_cache(tokens, names_filter=["hook_embed"])
    return float(cache["hook_embed"].float().std())


def _window(layer: int, width: int, L: int) -> list[int]:
    """Layers restored together around ``layer``: [l − ⌊(w−1)/2⌋, l + ⌈(w−1)/2⌉], clipped to [0, L)."""
    lo = layer - (width - 1) // 2
    return [l for l in range(lo, lo + width) if 0 <= l < L]


def _prob(model, tokens: torch.Tensor, answer: int) -> torch.Tensor:
    """p(answer) at the last position, one value per row."""
    kwargs = {"logits_to_keep": 1} if hasattr(model, "hf") else {}
    logits = model(tokens, **kwargs)[:, -1].float()  # (B, V)
    return logits.softmax(-1)[:, answer]


def _rows(kinds, layers, positions, L, windows):
    """Row specs (kind index, layer index, pos index, names restored): the corrupted baseline first."""
    rows = [(None, None, None, [])]
    for ki, kind in enumerate(kinds):
        for li, layer in enumerate(layers):
            names = [hook_name(kind, l) for l in _window(layer, windows[kind], L)]
            rows += [(ki, li, pi, names) for pi in range(len(positions))]
    return rows


def _hooks(chunk, positions, clean, noise_rows, subject):
    """Noise on the subject's embeddings of every row; each restored name patches its own rows."""
    def add_noise(x, hook):  # (B, T, d)
        x = x.clone()
        x[:, subject[0]:subject[1]] += noise_rows.to(x)
        return x

    by_name: dict[str, tuple[list[int], list[int]]] = {}
    for r, (_, _, pi, names) in enumerate(chunk):
        for name in names:
            by_name.setdefault(name, ([], []))[0].append(r)
            by_name[name][1].append(positions[pi])
    hooks = [("hook_embed", add_noise)]
    for name, (rows, pos) in by_name.items():
        def restore(x, hook, rows=torch.tensor(rows), pos=torch.tensor(pos), value=clean[name]):
            x = x.clone()
            x[rows, pos] = value[0, pos].to(x)
            return x
        hooks.append((name, restore))
    return hooks


@torch.no_grad()
def causal_trace(model, tokens: torch.Tensor, answer: int, subject: tuple[int, int], noise_std: float,
                 generator: torch.Generator, layers: Sequence[int] | None = None,
                 positions: Sequence[int] | None = None, kinds: Sequence[str] = ("resid_post", "mlp_out"),
                 windows: dict[str, int] | None = None, samples: int = 1, chunk: int = 128) -> Trace:
    """ROME's causal trace of one prompt ``tokens`` (T,) whose correct next token is ``answer``.

    ``subject`` = (start, stop) token positions to corrupt; ``noise_std`` = ν (ROME: 3 × embedding σ);
    ``kinds`` = hooks to restore (short names); ``windows[kind]`` = how many layers around l are
    restored together (default 1). ``samples`` noise draws, averaged. Batches of ``chunk`` rows.
    """
    L = n_layers(model)
    layers = list(range(L)) if layers is None else list(layers)
    positions = list(range(len(tokens))) if positions is None else list(positions)
    windows = {k: (windows or {}).get(k, 1) for k in kinds}
    x = tokens[None]  # (1, T)
    names = sorted({hook_name(k, l) for k in kinds for l in range(L)})
    logits, clean = model.run_with_cache(x, names_filter=names)
    p_clean = float(logits[0, -1].float().softmax(-1)[answer])
    rows = _rows(list(kinds), layers, positions, L, windows)
    n_subj = subject[1] - subject[0]
    d = clean[names[0]].shape[-1]
    values = torch.zeros(samples, len(kinds), len(layers), len(positions), dtype=torch.float64)
    p_corrupt = 0.0
    for s in range(samples):
        noise = torch.randn(n_subj, d, generator=generator) * noise_std  # (n_subj, d), shared by the rows
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            with model.hooks(_hooks(part, positions, clean, noise.expand(len(part), n_subj, d), subject)):
                p = _prob(model, x.expand(len(part), -1), answer)
            for (ki, li, pi, _), value in zip(part, p.tolist()):
                if ki is None:
                    p_corrupt += value / samples
                else:
                    values[s, ki, li, pi] = value
    restored = Labelled(values.mean(0), ("kind", "layer", "pos"),
                        {"kind": list(kinds), "layer": layers, "pos": positions})
    return Trace(restored, p_clean, p_corrupt)
