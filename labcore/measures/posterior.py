"""Calibration metrics against exact Bayesian posteriors, all in bits.

The wind-tunnel tasks (:mod:`labcore.tasks`) put the exact posterior p beside every batch, so a
model's predictive distribution q can be graded against the optimum itself. Following the notes
on *The Bayesian Geometry of Transformer Attention* (arXiv 2512.22471), always report three
numbers, because entropy matching alone does not prove the *support* is right (a model uniform
over the wrong V - t values has the right entropy and the wrong answer):

* per-sample entropy MAE   mean_{b,t} |H(q_bt) - H(p_bt)|
* KL(Bayes || model)        mean_{b,t} sum_y p(y) log2 (p(y) / q(y))
* eliminated mass           mean_{b,t} sum_{y : p(y) = 0} q(y)

Conventions: H(p) = -sum_y p(y) log2 p(y) with 0 log 0 = 0; terms with p(y) = 0 contribute 0
to KL(p || q). Everything is computed in float64 on detached tensors; the scalar metrics are
returned as Python floats and the curves as numpy arrays (one entry per query position).

For the bijection task the model's distribution is the softmax **restricted to the value slice**
(tokens V..2V-1) at the key/query positions, as in the authors' ``eval_entropy_mae``; the mass the
full softmax puts elsewhere (on key tokens) is reported separately as the off-slice mass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

LN2 = math.log(2.0)


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def _check_bijection_logits(logits: torch.Tensor, task) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, vocab), got shape {tuple(logits.shape)}")
    if logits.shape[1] != task.seq_len:
        raise ValueError(f"logits have T={logits.shape[1]}, the task's sequences {task.seq_len}")
    if logits.shape[2] < task.vocab_size:
        raise ValueError(
            f"logits have vocab {logits.shape[2]} < the task's {task.vocab_size} tokens"
        )


# -----------------------------------------------------------------------------
# the model's distribution over values


def value_slice_log_probs(logits: torch.Tensor, task) -> torch.Tensor:
    """log q_t(y) = log_softmax over the value tokens V..2V-1 only, at each query position.

    logits (B, 2L-1, vocab >= 2V) -> (B, L, V) float64. A padded vocabulary is fine: only the
    value slice enters; what the full softmax puts outside it is :func:`full_vocab_offslice_mass`.
    """
    _check_bijection_logits(logits, task)
    qpos = task.query_positions.to(logits.device)
    lv = _f64(logits[:, qpos, task.V:2 * task.V])                        # (B, L, V)
    return torch.log_softmax(lv, dim=-1)


def entropy_bits(log_probs: torch.Tensor) -> torch.Tensor:
    """H(q) = -sum_y q(y) log2 q(y), 0 log 0 = 0. (..., V) log-probs -> (...) float64."""
    lp = _f64(log_probs)
    p = lp.exp()
    plogp = torch.where(p > 0, p * lp, torch.zeros_like(lp))
    return (0.0 - plogp.sum(-1)) / LN2


def _exact_entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy of an exact posterior given as probabilities (exact zeros allowed)."""
    p = _f64(p)
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    return (0.0 - plogp.sum(-1)) / LN2


def _check_pair(model_log_probs: torch.Tensor, exact: torch.Tensor) -> None:
    if model_log_probs.shape != exact.shape:
        raise ValueError(
            f"model log-probs {tuple(model_log_probs.shape)} and exact posterior "
            f"{tuple(exact.shape)} must have the same shape"
        )


# -----------------------------------------------------------------------------
# scalar metrics


def entropy_mae_bits(model_log_probs: torch.Tensor, exact_posterior: torch.Tensor) -> float:
    """Per-sample entropy MAE (the strict variant, ``jlens/train_mlp_control.py``):

        MAE = mean_{b,t} | H(q_bt) - H(p_bt) |

    Over- and under-confident samples cannot cancel. (B, L, V) each -> float.
    """
    _check_pair(model_log_probs, exact_posterior)
    h_model = entropy_bits(model_log_probs)
    h_bayes = _exact_entropy_bits(exact_posterior)
    return float((h_model - h_bayes).abs().mean())


def mean_curve_mae_bits(model_log_probs: torch.Tensor, exact_posterior: torch.Tensor) -> float:
    """The authors' weaker variant (``src/utils/entropy.py``, the paper's headline numbers):
    average the entropies over samples per position *first*, then take |.|:

        MAE_curve = mean_t | mean_b H(q_bt) - mean_b H(p_bt) |

    Always <= :func:`entropy_mae_bits` (triangle inequality); over- and under-confident samples
    cancel, so it flatters a model. (B, L, V) each -> float.
    """
    _check_pair(model_log_probs, exact_posterior)
    if model_log_probs.dim() < 3:
        raise ValueError("mean_curve_mae_bits needs (B, L, V): a batch axis and a position axis")
    h_model = entropy_bits(model_log_probs).mean(0)              # (L,)
    h_bayes = _exact_entropy_bits(exact_posterior).mean(0)       # (L,)
    return float((h_model - h_bayes).abs().mean())


def kl_bits(exact: torch.Tensor, model_log_probs: torch.Tensor, reduction: str = "mean"):
    """KL(Bayes || model) = sum_y p(y) (log2 p(y) - log2 q(y)), terms with p(y) = 0 being 0.

    Zero iff q = p on the support of p; +inf if the model gives zero mass to a possible value.
    (B, L, V) each -> float (``reduction="mean"``) or (B, L) tensor (``"none"``).
    """
    _check_pair(model_log_probs, exact)
    p = _f64(exact)
    lq = _f64(model_log_probs)
    terms = torch.where(p > 0, p * (torch.log(p) - lq), torch.zeros_like(p))
    kl = terms.sum(-1) / LN2
    return _reduce(kl, reduction)


def eliminated_mass(model_probs: torch.Tensor, eliminated_mask: torch.Tensor,
                    reduction: str = "mean"):
    """Mass the model puts on values the posterior has ruled out: sum_{y eliminated} q(y).

    model_probs (B, L, V) probabilities (not logs), eliminated_mask (B, L, V) bool
    -> float or (B, L) tensor. The support error that entropy MAE cannot see.
    """
    if model_probs.shape != eliminated_mask.shape:
        raise ValueError(
            f"model_probs {tuple(model_probs.shape)} and eliminated_mask "
            f"{tuple(eliminated_mask.shape)} must have the same shape"
        )
    if eliminated_mask.dtype != torch.bool:
        raise ValueError(f"eliminated_mask must be bool, got {eliminated_mask.dtype}")
    mass = (_f64(model_probs) * eliminated_mask.to(torch.float64)).sum(-1)
    return _reduce(mass, reduction)


def full_vocab_offslice_mass(logits: torch.Tensor, task, reduction: str = "mean"):
    """Mass the *full* softmax puts outside the value slice V..2V-1 at the query positions
    (on key tokens, or padding). The value-slice metrics renormalise it away, so report it:
    a trained model should drive it to ~0. (B, 2L-1, vocab) -> float or (B, L) tensor."""
    _check_bijection_logits(logits, task)
    qpos = task.query_positions.to(logits.device)
    p = torch.softmax(_f64(logits[:, qpos]), dim=-1)                   # (B, L, vocab)
    outside = torch.ones(p.shape[-1], dtype=torch.bool, device=p.device)
    outside[task.V:2 * task.V] = False
    return _reduce(p[..., outside].sum(-1), reduction)


def _reduce(x: torch.Tensor, reduction: str):
    if reduction == "mean":
        return float(x.mean())
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# -----------------------------------------------------------------------------
# the bijection report


@dataclass
class CalibrationReport:
    """All bijection calibration numbers of one evaluation batch (bits; curves over t = 0..L-1)."""

    entropy_mae_bits: float             # per-sample |H_model - H_Bayes|, averaged (strict)
    mean_curve_mae_bits: float          # |mean-curve difference|, averaged (authors' variant)
    kl_bits: float                      # KL(Bayes || model), averaged
    eliminated_mass: float              # mass on ruled-out values, averaged
    offslice_mass: float                # full-softmax mass outside the value slice, averaged
    entropy_model_curve: np.ndarray     # (L,) mean_b H(q_bt)
    entropy_bayes_curve: np.ndarray     # (L,) mean_b H(p_bt)  (= log2(V - t) w/o replacement)
    kl_curve: np.ndarray                # (L,) mean_b KL_bt
    eliminated_mass_curve: np.ndarray   # (L,) mean_b eliminated mass
    n_sequences: int

    def as_dict(self) -> dict:
        """Plain floats and lists, ready for ``lab.record(**report.as_dict())``."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in asdict(self).items()}


def evaluate_bijection(logits: torch.Tensor, batch, task) -> CalibrationReport:
    """Grade a model's logits (B, 2L-1, vocab) on ``batch`` (a BijectionBatch of ``task``)."""
    if logits.shape[0] != batch.posterior.shape[0]:
        raise ValueError(f"logits batch {logits.shape[0]} != batch size {batch.posterior.shape[0]}")
    lq = value_slice_log_probs(logits, task)                                # (B, L, V)
    p = _f64(batch.posterior).to(lq.device)
    elim = batch.eliminated.to(lq.device)
    h_model = entropy_bits(lq)                                              # (B, L)
    h_bayes = _exact_entropy_bits(p)                                        # (B, L)
    kl = kl_bits(p, lq, reduction="none")                                   # (B, L)
    em = eliminated_mass(lq.exp(), elim, reduction="none")                  # (B, L)
    np_ = lambda x: x.mean(0).cpu().numpy()  # noqa: E731  (L,) curve over positions
    return CalibrationReport(
        entropy_mae_bits=float((h_model - h_bayes).abs().mean()),
        mean_curve_mae_bits=float((h_model.mean(0) - h_bayes.mean(0)).abs().mean()),
        kl_bits=float(kl.mean()),
        eliminated_mass=float(em.mean()),
        offslice_mass=full_vocab_offslice_mass(logits, task),
        entropy_model_curve=np_(h_model),
        entropy_bayes_curve=np_(h_bayes),
        kl_curve=np_(kl),
        eliminated_mass_curve=np_(em),
        n_sequences=int(logits.shape[0]),
    )


def logit_lens_kl_per_layer(layer_logits: list[torch.Tensor], batch, task,
                            reverse: bool = False, eps: float = 1e-12) -> list[float]:
    """Layer-wise hypothesis elimination: the KL to Bayes of each layer's logit-lens prediction.

    ``layer_logits[l]`` (B, 2L-1, vocab) is the caller's final-norm + unembedding of the residual
    after layer l (``model.unembed(resid)``). Default: KL(Bayes || layer) in bits, averaged, the
    same quantity as :func:`kl_bits`. ``reverse=True`` gives the authors' direction
    (``train.py::evaluate_kl_layers``): KL(layer || Bayes_eps), with the Bayes posterior smoothed
    to (p + eps) / sum(p + eps) so that mass on eliminated values costs a finite amount.
    """
    if len(layer_logits) == 0:
        raise ValueError("layer_logits is empty")
    p = _f64(batch.posterior)
    out = []
    for logits in layer_logits:
        lq = value_slice_log_probs(logits, task)                              # (B, L, V)
        p_ = p.to(lq.device)
        if reverse:
            ps = (p_ + eps) / (p_ + eps).sum(-1, keepdim=True)
            q = lq.exp()
            terms = torch.where(q > 0, q * (lq - ps.log()), torch.zeros_like(q))
            out.append(float((terms.sum(-1) / LN2).mean()))
        else:
            out.append(kl_bits(p_, lq))
    return out


# -----------------------------------------------------------------------------
# HMM


@dataclass
class HMMReport:
    """HMM state-head calibration at the observation positions (bits)."""

    kl_bits: float                  # mean_{b,t} KL(alpha_bt || q_bt)
    entropy_mae_bits: float         # mean_{b,t} |H(q_bt) - H(alpha_bt)|
    per_position_kl: np.ndarray     # (K,) mean_b KL, for length generalisation curves

    def as_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in asdict(self).items()}


def evaluate_hmm(state_logits: torch.Tensor, posterior: torch.Tensor) -> HMMReport:
    """Grade an S-way state head: state_logits (B, K, S) read at the observation positions,
    posterior (B, K, S) the forward-algorithm alpha_t. The authors print PASS at KL < 0.1 bits."""
    if state_logits.dim() != 3:
        raise ValueError(f"state_logits must be (B, K, S), got {tuple(state_logits.shape)}")
    lq = torch.log_softmax(_f64(state_logits), dim=-1)
    _check_pair(lq, posterior)
    kl = kl_bits(posterior, lq, reduction="none")                           # (B, K)
    return HMMReport(
        kl_bits=float(kl.mean()),
        entropy_mae_bits=entropy_mae_bits(lq, posterior),
        per_position_kl=kl.mean(0).cpu().numpy(),
    )


# -----------------------------------------------------------------------------
# the analytic plateau of a context-free predictor


def _check_VL(V: int, L: int) -> None:
    for name, x in (("V", V), ("L", L)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be a positive int, got {x!r}")
    if L > V:
        raise ValueError(f"L={L} > V={V}: without replacement at most V keys")


def mlp_plateau_mae_bits(V: int, L: int) -> float:
    """Entropy MAE of the context-free marginal predictor (uniform over the V values), which is
    where CE training drives a per-position MLP that cannot see the context:

        MAE = (1/L) sum_{t=0}^{L-1} (log2 V - log2(V - t)) = log2 V - log2(V! / (V-L)!) / L

    (H_model = log2 V >= H_Bayes(t), so |.| is the difference.) 1.107 bits for V=20, L=19
    (the authors' MLP plateau); 0.901 for V=10, L=9. Keys without replacement. This is also
    KL(Bayes || uniform), since KL(p || uniform) = log2 V - H(p).
    """
    _check_VL(V, L)
    mean_log = sum(math.log2(V - t) for t in range(L)) / L
    return math.log2(V) - mean_log


def mlp_plateau_eliminated_mass(V: int, L: int) -> float:
    """Mass the uniform-over-V predictor puts on eliminated values: (1/L) sum_t t / V
    = (L - 1) / (2V). 0.45 for V=20, L=19."""
    _check_VL(V, L)
    return sum(t / V for t in range(L)) / L
