"""Geometry probes and ablations for glass-box models: how a trained transformer lays out what it knows.

These are the measurements behind the geometric claims of *The Bayesian Geometry of Transformer
Attention* (arXiv 2512.22471) — orthogonal keys, Q–K alignment, a value manifold parameterised
by entropy, a linearly decodable belief state, frame–precision dissociation, layer ablations —
written so that they work on any :class:`labcore.glassbox.model.GPT` and any task batch, not only the
bijection wind tunnel. Every function states its formula. Conventions:

* Inputs may be torch tensors or numpy arrays; the arithmetic is float64 on detached CPU copies.
* Results are numpy arrays or Python floats (probes are read, plotted and recorded, not trained).
* Random splits take an explicit ``torch.Generator``, so a probe is a pure function of its seed.
* Ablations are *hook lists* ``[(hook name, fn), ...]`` for ``with model.hooks(fwd_hooks=...)``,
  so they compose (``zero_head(0, 1) + zero_mlp(2)``) and are removed when the block exits.

Summary of the formulas (details in each docstring):

=============================  ==============================================================
key_orthogonality              per head h: mean_{i≠j} |cos(k_i^h, k_j^h)|, k_i^h = W_K^h ln1(E[t_i])
qk_alignment_by_prefix         per layer: mean_{b,h, kp<qp} cos(q[b,qp,h], k[b,kp,h]) per query qp
pca                            SVD of the centred data: explained ratio S²/ΣS², components, scores
ridge_probe_r2                 held-out R² of ridge regression on standardised features
linear_probe_balanced_accuracy held-out balanced accuracy of one linear classifier per label column
spearman                       Spearman rank correlation (scipy.stats.spearmanr)
attention_map_correlation      per head Pearson r over the causal entries (q ≥ 1, k ≤ q)
=============================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from labcore.glassbox.hooks import HookPoint

Hook = tuple[str, Callable[[torch.Tensor, HookPoint], torch.Tensor | None]]

__all__ = [
    "BalancedAccuracy",
    "attention_map_correlation",
    "bypass_block",
    "key_cosine_matrices",
    "key_orthogonality",
    "layer_residuals",
    "linear_probe_balanced_accuracy",
    "logit_lens",
    "mean_offdiag_abs_cos",
    "pca",
    "qk_alignment_by_prefix",
    "ridge_probe_r2",
    "spearman",
    "zero_attention",
    "zero_head",
    "zero_mlp",
]


def _t64(x) -> torch.Tensor:
    """A float64 CPU copy of a tensor or array (detached)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _split(n: int, train_frac: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (train, test) index split of range(n); at least one sample on each side."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac={train_frac} must lie strictly between 0 and 1")
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=generator)
    n_train = min(max(1, int(round(train_frac * n))), n - 1)
    return order[:n_train], order[n_train:]


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale both by the *train* mean and std (constant columns get std 1)."""
    mu = train.mean(0, keepdim=True)
    sd = train.std(0, keepdim=True)
    sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
    return (train - mu) / sd, (test - mu) / sd


# ------------------------------------------------------------------------------------------------
# keys and queries


def mean_offdiag_abs_cos(vectors) -> float:
    """mean_{i≠j} |cos(v_i, v_j)| over the rows of ``vectors`` (n, d), n ≥ 2.

    0 for mutually orthogonal rows, 1 for parallel (or anti-parallel) rows.
    """
    v = _t64(vectors)
    if v.dim() != 2 or v.shape[0] < 2:
        raise ValueError(f"need (n >= 2, d) vectors, got shape {tuple(v.shape)}")
    c = _cos_matrix(v)
    n = c.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    return float(c[off].abs().mean())


def _cos_matrix(v: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, n) cosine similarities (zero rows give cos 0)."""
    norms = v.norm(dim=-1, keepdim=True)
    u = v / torch.where(norms > 0, norms, torch.ones_like(norms))
    return u @ u.T


@torch.no_grad()
def _projected_keys(model, token_ids, layer: int, normalize: bool) -> torch.Tensor:
    """(H, n, dh) float64: W_K of ``layer`` (with bias, if any) applied to the token embeddings."""
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(f"layer={layer} out of range for a {cfg.n_layers}-layer model")
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=model.W_E.weight.device).flatten()
    if ids.numel() < 2:
        raise ValueError("need at least two token ids to compare their keys")
    x = model.W_E(ids) * cfg.embed_scale                     # (n, d): token embeddings, no position
    block = model.blocks[layer]
    if normalize:
        x = block.ln1.norm(x)                                # the block's pre-norm (LayerNorm/RMSNorm/identity)
    k = block.attn.W_K(x)                                    # (n, H*dh)
    k = k.view(ids.numel(), cfg.n_heads, cfg.head_dim)       # (n, H, dh)
    return k.permute(1, 0, 2).detach().to("cpu", torch.float64)


def key_cosine_matrices(model, token_ids, layer: int = 0, normalize: bool = True) -> np.ndarray:
    """(H, n, n) cosine matrices of the W_K-projected embeddings of ``token_ids``, per head.

    See :func:`key_orthogonality` for what is projected; this returns the full matrices for plots.
    """
    k = _projected_keys(model, token_ids, layer, normalize)
    return torch.stack([_cos_matrix(kh) for kh in k]).numpy()


def key_orthogonality(model, token_ids, layer: int = 0, normalize: bool = True) -> np.ndarray:
    """Per-head mean |cos| off the diagonal among the keys of ``token_ids``: (H,) numpy.

        k_i^h = W_K^h · ln1(E[t_i])            (plus W_K's bias if the model has one)
        O_h   = mean_{i≠j} |cos(k_i^h, k_j^h)|

    E[t] is the token embedding (times ``embed_scale``) **without** the position embedding —
    the authors' ``qkv_analysis.py`` projects ``E_tok[0..V-1]`` the same way. For a pre-norm
    model the block's ``ln1`` is applied first (``normalize=True``, the default), because that is
    what W_K actually sees; ``normalize=False`` projects the raw embeddings (the authors'
    RMSNorm-free shortcut). The authors' ``src/utils/geometry.py`` uses this absolute-value mean;
    ``qkv_analysis.py`` uses the signed mean. 0 = mutually orthogonal keys; for random keys in
    dh dimensions E|cos| ≈ √(2/(π·dh)) (0.20 for dh = 16). Only layer 0 reads embeddings
    directly; for ``layer > 0`` this is the same formula with that layer's W_K and ln1.
    """
    k = _projected_keys(model, token_ids, layer, normalize)
    return np.array([mean_offdiag_abs_cos(kh) for kh in k])


def qk_alignment_by_prefix(cache, query_positions: Sequence[int], key_positions: Sequence[int],
                           layers: Sequence[int] | None = None) -> np.ndarray:
    """Q–K alignment as the prefix grows: (n_layers, n_queries) numpy.

        A[l, i] = mean_{b, h, kp ∈ key_positions, kp < qp_i} cos(q_l[b, qp_i, h], k_l[b, kp, h])

    ``cache`` is an :class:`labcore.glassbox.hooks.ActivationCache` holding ``blocks.{l}.attn.hook_q`` and
    ``hook_k`` (after RoPE, if used) for the requested layers (default: every layer cached). The
    keys compared are the *earlier* context keys only (strictly before the query); a query
    with no earlier key gets NaN. The authors' ``qkv_analysis.py`` measures this at the last
    position for growing prefixes; here every query position is one point on the curve.
    """
    if layers is None:
        layers = sorted({int(n.split(".")[1]) for n in cache if n.endswith("attn.hook_q")})
    if not layers:
        raise ValueError("the cache holds no blocks.{l}.attn.hook_q; cache 'hook_q' and 'hook_k'")
    kpos = torch.as_tensor(list(key_positions), dtype=torch.long)
    out = np.full((len(layers), len(query_positions)), np.nan)
    for li, layer in enumerate(layers):
        q = _t64(cache["q", layer])                               # (B, T, H, dh)
        k = _t64(cache["k", layer])
        qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kn = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        for qi, qp in enumerate(query_positions):
            earlier = kpos[kpos < qp]
            if earlier.numel() == 0:
                continue
            cos = torch.einsum("bhd,bkhd->bkh", qn[:, qp], kn[:, earlier])   # (B, n_keys, H)
            out[li, qi] = float(cos.mean())
    return out


# ------------------------------------------------------------------------------------------------
# representations


def pca(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of the rows of ``x`` (N, D).

    Centre the columns, take the thin SVD Xc = U S Vᵀ, and return

    * ``explained_ratio`` (r,) = S² / ΣS²  (fraction of the variance per component, descending)
    * ``components``      (r, D) = Vᵀ      (unit principal directions; the sign is arbitrary)
    * ``projections``     (N, r) = Xc V    (the scores)

    with r = min(N, D). All zeros if the data have no variance.
    """
    X = _t64(x)
    if X.dim() != 2 or X.shape[0] < 2:
        raise ValueError(f"pca needs (N >= 2, D) data, got shape {tuple(X.shape)}")
    Xc = X - X.mean(0, keepdim=True)
    _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
    var = S.pow(2)
    total = float(var.sum())
    ratio = (var / total) if total > 0 else torch.zeros_like(var)
    return ratio.numpy(), Vh.numpy(), (Xc @ Vh.T).numpy()


def ridge_probe_r2(features, target, alpha: float = 1e-3, train_frac: float = 0.8,
                   generator: torch.Generator | None = None) -> float:
    """Held-out R² of a ridge-regression probe from ``features`` (N, D) to ``target`` (N,) or (N, k).

    Split the rows at random (``train_frac`` for fitting, the rest held out), standardise the
    features with the train mean/std, centre the target with its train mean, and solve

        w = argmin (1/n)‖X w − y‖² + α‖w‖²   =   (XᵀX/n + α I)⁻¹ Xᵀy/n

    Held out: R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ_test)², averaged over target columns. ≈ 1 for a
    linear relation, ≈ 0 (or negative) for noise. A constant target gives NaN.
    """
    X, y = _t64(features), _t64(target)
    if X.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(X.shape)}")
    squeeze = y.dim() == 1
    if squeeze:
        y = y[:, None]
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"features have N={X.shape[0]} rows, target {y.shape[0]}")
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be >= 0")
    tr, te = _split(X.shape[0], train_frac, generator)
    Xtr, Xte = _standardise(X[tr], X[te])
    ymu = y[tr].mean(0, keepdim=True)
    n, D = Xtr.shape
    A = Xtr.T @ Xtr / n + alpha * torch.eye(D, dtype=torch.float64)
    w = torch.linalg.lstsq(A, Xtr.T @ (y[tr] - ymu) / n).solution        # (D, k)
    pred = Xte @ w + ymu
    ss_res = (y[te] - pred).pow(2).sum(0)
    ss_tot = (y[te] - y[te].mean(0, keepdim=True)).pow(2).sum(0)
    r2 = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot, torch.full_like(ss_tot, float("nan")))
    return float(r2.mean())


@dataclass
class BalancedAccuracy:
    """Result of :func:`linear_probe_balanced_accuracy`."""

    mean: float                 # held-out balanced accuracy averaged over label columns
    per_column: np.ndarray      # (V,) held-out balanced accuracy of each column's probe
    train_mean: float           # the same on the training rows (a large gap = overfitting)
    n_train: int
    n_test: int


def _balanced_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per column: mean of the recalls of the classes present ((TPR + TNR)/2 if both are)."""
    pos, neg = truth, ~truth
    n_pos, n_neg = pos.sum(0), neg.sum(0)
    tpr = (pred & pos).sum(0) / n_pos.clamp_min(1)
    tnr = (~pred & neg).sum(0) / n_neg.clamp_min(1)
    both = (n_pos > 0) & (n_neg > 0)
    return torch.where(both, (tpr + tnr) / 2, torch.where(n_pos > 0, tpr, tnr)).to(torch.float64)


def linear_probe_balanced_accuracy(features, labels, method: str = "logistic", alpha: float = 1e-4,
                                   train_frac: float = 0.8, generator: torch.Generator | None = None,
                                   max_iter: int = 200) -> BalancedAccuracy:
    """One linear classifier per label column, scored by held-out balanced accuracy.

    ``features`` (N, D), ``labels`` (N, V) bool (e.g. "value v is already eliminated").
    Rows are split at random; features standardised with the train statistics. Then

    * ``method="logistic"``: V independent logistic regressions (one linear layer W (D, V), b (V)),
      fitted jointly by full-batch L-BFGS on mean BCE + α‖W‖², ``max_iter`` iterations;
      predict ``W·x + b > 0``.
    * ``method="lstsq"``: ridge regression onto ±1 targets (the closed form of
      :func:`ridge_probe_r2`); predict ``ŷ > 0``.

    Balanced accuracy of a column = (TPR + TNR) / 2 on the held-out rows (0.5 = chance, however
    unbalanced the labels); if a column has one class only in the held-out rows, that class's
    recall. Deterministic given ``generator``.
    """
    X, Y = _t64(features), torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor)
                                           else labels.detach().cpu())
    if Y.dim() == 1:
        Y = Y[:, None]
    Y = Y.to(torch.bool)
    if X.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"features (N, D) and labels (N, V) must share N; got {tuple(X.shape)}, {tuple(Y.shape)}")
    if method not in ("logistic", "lstsq"):
        raise ValueError(f"method={method!r}: use 'logistic' or 'lstsq'")
    tr, te = _split(X.shape[0], train_frac, generator)
    Xtr, Xte = _standardise(X[tr], X[te])
    Ytr, Yte = Y[tr], Y[te]
    n, D = Xtr.shape
    if method == "lstsq":
        T = Ytr.to(torch.float64) * 2 - 1
        Tmu = T.mean(0, keepdim=True)
        A = Xtr.T @ Xtr / n + alpha * torch.eye(D, dtype=torch.float64)
        W = torch.linalg.lstsq(A, Xtr.T @ (T - Tmu) / n).solution
        score_tr, score_te = Xtr @ W + Tmu, Xte @ W + Tmu
    else:
        W = torch.zeros(D, Y.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(Y.shape[1], dtype=torch.float64, requires_grad=True)
        target = Ytr.to(torch.float64)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(Xtr @ W + b, target)
            loss = loss + alpha * W.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            score_tr, score_te = Xtr @ W + b, Xte @ W + b
    ba_te = _balanced_accuracy(score_te > 0, Yte)
    ba_tr = _balanced_accuracy(score_tr > 0, Ytr)
    return BalancedAccuracy(mean=float(ba_te.mean()), per_column=ba_te.detach().numpy(),
                            train_mean=float(ba_tr.mean()), n_train=int(tr.numel()), n_test=int(te.numel()))


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-D samples (``scipy.stats.spearmanr``); NaN if constant."""
    from scipy.stats import spearmanr

    x, y = _t64(a).flatten().numpy(), _t64(b).flatten().numpy()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs samples of one length, got {x.shape} and {y.shape}")
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


# ------------------------------------------------------------------------------------------------
# attention maps


def attention_map_correlation(patterns_a, patterns_b) -> np.ndarray:
    """Per-head Pearson correlation of two sets of attention patterns: (H,) numpy.

    ``patterns_*`` are (B, H, T, T) (or (H, T, T)) softmax patterns of the *same* inputs, e.g. a
    checkpoint's and the final model's ``hook_pattern`` on a fixed probe batch. Only the causal
    entries that carry information enter: key ≤ query, and query ≥ 1 (row 0 is always [1]).
    Entries above the diagonal are 0 in both maps and would inflate r towards 1. A head whose
    pattern is constant over those entries gets NaN.
    """
    a, b = _t64(patterns_a), _t64(patterns_b)
    if a.shape != b.shape:
        raise ValueError(f"patterns differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"patterns must be (B, H, T, T), got {tuple(a.shape)}")
    T = a.shape[-1]
    if T < 2:
        raise ValueError("need T >= 2 positions")
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    mask[0] = False
    xa = a[..., mask].transpose(0, 1).flatten(1)              # (H, B * n_entries)
    xb = b[..., mask].transpose(0, 1).flatten(1)
    xa = xa - xa.mean(1, keepdim=True)
    xb = xb - xb.mean(1, keepdim=True)
    den = xa.norm(dim=1) * xb.norm(dim=1)
    r = torch.where(den > 0, (xa * xb).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
    return r.numpy()


# ------------------------------------------------------------------------------------------------
# residual stream readouts


@torch.no_grad()
def layer_residuals(model, tokens: torch.Tensor, include_embed: bool = True) -> list[torch.Tensor]:
    """The residual stream after the embedding (``blocks.0.hook_resid_pre``, if ``include_embed``)
    and after every block (``blocks.{l}.hook_resid_post``): a list of (B, T, d) tensors."""
    names = (["blocks.0.hook_resid_pre"] if include_embed else []) + [
        f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)
    ]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[n] for n in names]


@torch.no_grad()
def logit_lens(model, tokens: torch.Tensor, include_embed: bool = True) -> list[torch.Tensor]:
    """``model.unembed`` (final norm + unembedding) applied to each of :func:`layer_residuals`:
    a list of (B, T, vocab) logits, the last one equal to the model's own output."""
    return [model.unembed(r) for r in layer_residuals(model, tokens, include_embed)]


# ------------------------------------------------------------------------------------------------
# ablations (hook lists for `with model.hooks(fwd_hooks=...)`)


def zero_head(layer: int, head: int) -> list[Hook]:
    """Zero one head's output: ``blocks.{layer}.attn.hook_z[:, :, head] = 0``, so that head's
    ``hook_result`` (z_h W_O^h) is 0 and the other heads' results are untouched (the authors'
    ``head_mask``)."""

    def fn(z: torch.Tensor, hook) -> torch.Tensor:  # (B, T, H, dh)
        if not 0 <= head < z.shape[2]:
            raise ValueError(f"head={head} out of range for {z.shape[2]} heads")
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    return [(f"blocks.{layer}.attn.hook_z", fn)]


def bypass_block(layer: int) -> list[Hook]:
    """Skip block ``layer`` entirely: ``resid_post := resid_pre`` (the authors' ``bypass``).

    The block still runs (its internal hooks fire), but its output is replaced by its input, so
    everything downstream sees the residual stream as if the block were not there.
    """
    saved: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook) -> None:
        saved["pre"] = x
        return None

    def restore(x: torch.Tensor, hook) -> torch.Tensor:
        return saved.pop("pre")

    return [(f"blocks.{layer}.hook_resid_pre", keep), (f"blocks.{layer}.hook_resid_post", restore)]


def zero_attention(layer: int) -> list[Hook]:
    """Remove block ``layer``'s attention sublayer: ``hook_attn_out := 0``."""
    return [(f"blocks.{layer}.hook_attn_out", lambda x, hook: torch.zeros_like(x))]


def zero_mlp(layer: int) -> list[Hook]:
    """Remove block ``layer``'s MLP sublayer: ``hook_mlp_out := 0`` (needs a model with an MLP)."""
    return [(f"blocks.{layer}.hook_mlp_out", lambda x, hook: torch.zeros_like(x))]
