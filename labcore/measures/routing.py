"""The routing law of softmax attention, from Paper II of the Bayesian-attention trilogy: *Gradient Dynamics of Attention: How Cross-Entropy
Sculpts Bayesian Manifolds* (Agarwal, Dalal & Misra, arXiv 2512.22473).

**The routing law** (exact first-order identities of softmax attention). For one query i with
scores s_ij, weights alpha_ij = softmax_j(s_ij), values v_j and output o_i = sum_j alpha_ij v_j,
let u_i = dL/do_i be the upstream gradient at the attention output. Then

    dL/ds_ij = alpha_ij (b_ij - E_{alpha_i}[b]),   b_ij = u_i . v_j,   E_{alpha_i}[b] = sum_k alpha_ik b_ik
    dL/dv_j  = sum_i alpha_ij u_i

(the first is the chain rule through the softmax Jacobian diag(alpha) - alpha alpha^T; the
second is linearity of o in v). Read as an "advantage": a query moves its weight toward keys
whose values are better than average *for its own error signal* b, and each value moves
against the responsibility-weighted error of the queries that use it, an EM-like loop
(attention = E-step responsibilities, values = M-step). :func:`routing_gradients` computes
both; :func:`routing_gradients_heads` takes labcore's hook layouts.

The sticky Markov experiment of the same paper (§5.2) uses three other rooms: the chain is
``labcore.tasks.sticky_chain``, the one-head model ``labcore.glassbox.single_head`` and the
EM-vs-SGD run ``labcore.training.em_vs_sgd``.
"""

from __future__ import annotations

import torch

# -----------------------------------------------------------------------------
# the routing law


def routing_gradients(scores: torch.Tensor, values: torch.Tensor,
                      upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper II's analytic gradients of softmax attention.

    scores   (..., T_q, T_k)  pre-softmax scores; -inf marks masked keys (causal mask)
    values   (..., T_k, d_v)
    upstream (..., T_q, d_v)  u_i = dL/do_i, the gradient at the attention output
    -> dscores (..., T_q, T_k) = alpha * (b - E_alpha[b]),  b = u v^T
       dvalues (..., T_k, d_v) = alpha^T u

    Masked entries have alpha = 0 and get gradient 0 (as autograd gives through masked_fill).
    """
    if scores.shape[-1] != values.shape[-2]:
        raise ValueError(f"scores {tuple(scores.shape)} and values {tuple(values.shape)}: T_k differs")
    if scores.shape[-2] != upstream.shape[-2] or values.shape[-1] != upstream.shape[-1]:
        raise ValueError(
            f"upstream {tuple(upstream.shape)} must be (..., T_q={scores.shape[-2]}, d_v={values.shape[-1]})"
        )
    alpha = torch.softmax(scores, dim=-1)                                # (..., Tq, Tk)
    b = upstream @ values.transpose(-1, -2)                              # (..., Tq, Tk) b_ij = u_i . v_j
    baseline = (alpha * b).sum(-1, keepdim=True)                         # E_{alpha_i}[b]
    dscores = alpha * (b - baseline)
    dvalues = alpha.transpose(-1, -2) @ upstream                         # sum_i alpha_ij u_i
    return dscores, dvalues


def uncentred_score_gradient(scores: torch.Tensor, values: torch.Tensor,
                             upstream: torch.Tensor) -> torch.Tensor:
    """alpha * b *without* the E_alpha[b] baseline: a deliberately WRONG formula, the control
    that shows a check of :func:`routing_gradients` can fail (it ignores that the softmax
    weights must keep summing to one)."""
    alpha = torch.softmax(scores, dim=-1)
    return alpha * (upstream @ values.transpose(-1, -2))


def routing_gradients_heads(scores: torch.Tensor, v: torch.Tensor,
                            dz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`routing_gradients` in labcore's hook layouts: scores ``hook_attn_scores``
    (B, H, T_q, T_k), values ``hook_v`` (B, T, H, dh), upstream dL/d``hook_z`` (B, T, H, dh)
    -> (dscores (B, H, T_q, T_k), dv (B, T, H, dh))."""
    vh = v.permute(0, 2, 1, 3)                                           # (B, H, T, dh)
    uh = dz.permute(0, 2, 1, 3)
    ds, dvh = routing_gradients(scores, vh, uh)
    return ds, dvh.permute(0, 2, 1, 3)
