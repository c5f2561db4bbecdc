"""Batch size × k: scale the learning rate by k for SGD (linear rule), by √k for Adam (square-root rule).

Lab notebook. If a batch grows from B to kB, how should the learning rate change so that training
follows the same loss-against-examples curve? Goyal et al. (SGD): multiply it by k — k small steps
on batches of B move the weights about as far as one step of kη on a batch of kB, as long as the
gradient changes little over those steps. Malladi et al. (adaptive methods, via stochastic
differential equations): for Adam multiply it by √k (and 1 − β₁, 1 − β₂ by k, ε by 1/√k) — Adam
divides by √v̂, whose noise part shrinks like 1/√B, so its steps already grow with the batch.

Setup: labcore.dynamics.toy.LinearRegressionTask, d = 16, label noise σ = 3, w₀ = w* + 0.3·N(0, I)
(so the gradient noise dominates its mean from the start: the regime both rules are derived for), 64 replicas
trained side by side (vectorised by hand), each on fresh Gaussian batches. Base: batch B = 4,
SGD η = 0.02, Adam η = 0.005 with β = (0.9, 0.999), ε = 1e-8. Scaled: B = 16 (k = 4) for the
same 4096 examples, η × k ("linear") or η × √k ("sqrt"); for Adam both scaled runs use Malladi's
β₁ = 1 − k(1 − 0.9) = 0.6, β₂ = 1 − k(1 − 0.999) = 0.996 and ε/√k, so only η differs between them.
Curve: the replica mean of |w − w*|² (the excess loss ×2) after each step, against examples seen.
Distance between a scaled curve and the base: mean over the scaled run's steps of
|log10(scaled) − log10(base at the same number of examples)|.

Control (must come out the other way): the same comparison for the other optimizer — for SGD the
√k rule must be the worse one, for Adam the linear rule; plus "none" (η unchanged) recorded.

Prediction (written before running any of it): SGD: linear distance ≤ 0.1 and < ½ of the sqrt one;
Adam: sqrt distance < linear distance. First runs (seeds 0–1) started at w₀ = 0 with σ = 1: SGD as
predicted (linear 0.02–0.03, sqrt 0.33–0.38), Adam split (sqrt 0.32/0.39 vs linear 0.48/0.33) — far
from w* Adam's gradient mean dominates its noise and it moves like sign descent, whose per-example
progress η/B wants the *linear* rule; the SDE argument behind √k assumes noise-dominated gradients.
Hence the start near w* with σ = 3 (changed once, before the claim file was calibrated); seeds 0–2
then gave SGD linear 0.023–0.029 vs sqrt 0.26–0.28 and Adam sqrt 0.018–0.038 vs linear 0.19–0.20, and
the Adam check was tightened to sqrt ≤ 0.1 and < ½ of linear (the mirror of the SGD check).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore.dynamics.toy import LinearRegressionTask
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="dynamics_lr_batch_scaling",
    paper="dynamics",
    statement=(
        "“Linear Scaling Rule: When the minibatch size is multiplied by k, multiply the learning rate by k.” "
        "(Goyal et al. §2.1); for adaptive methods, “the Square Root Scaling Rule: When multiplying the batch size "
        "by κ, multiply the learning rate by √κ, and also change other hyperparameters: 1 − β → κ(1 − β), "
        "ε → ε/√κ” (Malladi et al., Definition 4.3, for Adam)"
    ),
    source=Source(title="Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arxiv="1706.02677",
                  version="v2", where="§2.1; Malladi et al. 2205.10287 §4 (square-root rule)"),
    paper_value="SGD: η ∝ B keeps the curve against examples; Adam: η ∝ √B (with β, ε adjusted)",
    prediction=(
        "SGD: linear-rule distance ≤ 0.1 decades and < ½ the sqrt one; Adam: sqrt-rule distance < linear one (tightened "
        "after seeds 0–2 to the mirror of the SGD check)"
    ),
    metric=(
        "mean |log10 excess loss(scaled) − log10 excess loss(base)| at equal examples, 64 replicas, k = 4, "
        "4096 examples"
    ),
    tolerance="SGD: d_linear ≤ 0.1 and d_linear < d_sqrt / 2; Adam: d_sqrt ≤ 0.1 and d_sqrt < d_linear / 2",
    tolerance_why=(
        "0.1 decades (a factor 1.26 in excess loss) and the factor 2 were set before running, as the mirror of each "
        "other. lab calibrate seeds 0–4: SGD linear 0.023–0.029 vs sqrt 0.260–0.277 (sqrt/linear 9.0–11.5×); Adam "
        "sqrt 0.014–0.038 vs linear 0.187–0.206 (linear/sqrt 5.3–13.1×); 5/5 pass. Fresh seeds 100–104: SGD linear "
        "0.020–0.026 vs sqrt 0.260–0.280; Adam sqrt 0.031–0.071 vs linear 0.186–0.211 (linear/sqrt 2.9–5.9×, the "
        "closest margin of the claim, above the 2× bound); 5/5 pass."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_lr_batch_scaling.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

D, SIGMA, START, REPLICAS, B0, K, EXAMPLES = 16, 3.0, 0.3, 64, 4, 4, 4096
LR0 = {"sgd": 0.02, "adam": 0.005}
FACTOR = {"base": 1.0, "linear": float(K), "sqrt": float(np.sqrt(K)), "none": 1.0}


def run(task: LinearRegressionTask, w0: torch.Tensor, opt: str, lr: float, batch: int, betas: tuple[float, float],
        eps: float, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(examples seen after each step, replica-mean |w − w*|² there) for SGD or a hand-written Adam."""
    w = w0.expand(REPLICAS, D).clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    steps = EXAMPLES // batch
    out = np.empty(steps)
    for t in range(1, steps + 1):
        x = torch.randn(REPLICAS, batch, D, generator=gen, dtype=torch.float64)
        y = x @ task.w_star + SIGMA * torch.randn(REPLICAS, batch, generator=gen, dtype=torch.float64)
        resid = torch.einsum("rbd,rd->rb", x, w) - y
        g = torch.einsum("rb,rbd->rd", resid, x) / batch  # gradient of the batch mean of ½ residual²
        if opt == "sgd":
            w = w - lr * g
        else:
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            w = w - lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        out[t - 1] = float((w - task.w_star).pow(2).sum(1).mean())
    return np.arange(1, steps + 1) * batch, out


def curves(seed: int) -> dict:
    task = LinearRegressionTask(D, SIGMA, seed=seed)
    w0 = task.w_star + START * torch.randn(D, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    result = {}
    for opt in ("sgd", "adam"):
        for rule, factor in FACTOR.items():
            batch = B0 if rule == "base" else B0 * K
            betas, eps = (0.9, 0.999), 1e-8
            if opt == "adam" and rule != "base":  # Malladi et al.: 1 − β → k(1 − β), ε → ε/√k
                betas, eps = (1 - K * 0.1, 1 - K * 0.001), 1e-8 / np.sqrt(K)
            gen = torch.Generator().manual_seed(seed * 1000 + 7)
            result[(opt, rule)] = run(task, w0, opt, LR0[opt] * factor, batch, betas, eps, gen)
    return result


def distance(base: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean |log10 other − log10 base| at the examples counts of ``other`` (base interpolated in log)."""
    base_at = np.interp(other[0], base[0], np.log10(base[1]))
    return float(np.mean(np.abs(np.log10(other[1]) - base_at)))


def test_linear_rule_for_sgd_sqrt_rule_for_adam(lab):
    c = curves(lab.seed)
    dist = {opt: {rule: distance(c[(opt, "base")], c[(opt, rule)]) for rule in ("linear", "sqrt", "none")}
            for opt in ("sgd", "adam")}
    lab.record(k=K, **{f"{opt}_{rule}": d for opt, ds in dist.items() for rule, d in ds.items()},
               sgd_sqrt_over_linear=dist["sgd"]["sqrt"] / dist["sgd"]["linear"],
               adam_linear_over_sqrt=dist["adam"]["linear"] / dist["adam"]["sqrt"],
               final_excess={f"{o}_{r}": float(c[(o, r)][1][-1]) for o, r in c})

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, opt in zip(axes, ("sgd", "adam")):
        for rule, color in (("base", "k"), ("linear", "C0"), ("sqrt", "C3"), ("none", "C7")):
            ex, curve = c[(opt, rule)]
            label = f"B = {B0}" if rule == "base" else f"B = {B0 * K}, η × {FACTOR[rule]:g} (d = {dist[opt][rule]:.3f})"
            ax.loglog(ex, curve, color=color, lw=1, label=label)
        ax.set(xlabel="examples seen", ylabel="|w − w*|² (replica mean)", title=f"{opt.upper()}: batch × {K}")
        ax.legend(fontsize=8)
    lab.savefig(fig, "lr_batch_scaling")

    s, a = dist["sgd"], dist["adam"]
    assert s["linear"] <= 0.1, f"SGD linear rule: curve distance {s['linear']:.3f} decades (> 0.1)"
    assert s["linear"] < s["sqrt"] / 2, f"SGD: linear {s['linear']:.3f} not < half of sqrt {s['sqrt']:.3f}"
    # Control: Adam's comparison comes out the other way round.
    assert a["sqrt"] <= 0.1, f"Adam sqrt rule: curve distance {a['sqrt']:.3f} decades (> 0.1)"
    assert a["sqrt"] < a["linear"] / 2, f"Adam: sqrt {a['sqrt']:.3f} not < half of linear {a['linear']:.3f}"
