"""Critical batch size: steps to a target follow S = S_min(1 + B_noise/B), and B_simple predicts B_noise.

Lab notebook. McCandlish et al. model one SGD step on a batch of B as a noisy estimate of the true
gradient. With the best learning rate at every B, the number of steps S and of examples E = B·S to
reach a given loss trade off as (S/S_min − 1)(E/E_min − 1) = 1, i.e. S = S_min(1 + B_noise/B):
below B_noise doubling the batch halves the steps, above it doubling the batch buys almost nothing.
B_noise = tr(HΣ)/(GᵀHG), and when the Hessian H is a multiple of the identity it equals the *simple*
noise scale B_simple = tr Σ/|G|², which can be measured from gradient norms at two batch sizes.

Setup: labcore.dynamics.toy's Gaussian linear regression, d = 16, noise σ = 1, w₀ = 0 — H = I, so
B_noise = B_simple exactly, and the noise scale at any w is known: B_simple = d(1 + σ²/|δ|²) + 1
(δ = w − w*). The target is |δ|² = 0.25 (loss ½(0.25 + σ²)), where B_simple = 81. For each B in
{2, …, 256}, plain SGD runs 8 replicas at each of 10 learning rates (0.025 … 1.6, geometric); S(B) is
the best lr's mean first step at which |δ|² ≤ 0.25 (exact, no evaluation noise). We fit log S =
log S_min + log(1 + B_noise/B) and compare B_noise with B_simple measured at the target by the
two-batch estimator (labcore.dynamics.noise_scale.measure_noise_scale, B_small 8, B_big 64).

Control (must come out the other way): the same fit on the noiseless task σ = 0 — there B_simple at
the target is only d + 1 = 17, so the fitted B_noise must be markedly smaller than with σ = 1.

Prediction (written after an exploratory sweep of seeds 0–2 in a scratch script): σ = 1: fitted
B_noise 88–90 vs B_simple 81 (ratio ≈ 1.1); σ = 0: fitted 36–41 vs 17 (ratio ≈ 2.2 — the model is a
one-step, optimal-lr approximation and S ≈ 2 steps at the largest batches is coarse). Asserted:
fitted/measured within [1/3, 3] for σ = 1 and fitted(σ=1)/fitted(σ=0) ≥ 1.5.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import curve_fit

from labcore.dynamics.noise_scale import measure_noise_scale
from labcore.dynamics.toy import LinearRegressionTask
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="dynamics_critical_batch_size",
    paper="dynamics",
    statement=(
        "“we demonstrate that a simple and easy-to-measure statistic called the gradient noise scale predicts "
        "the largest useful batch size across many domains and applications” (Abstract), with the trade-off "
        "(S/S_min − 1)(E/E_min − 1) = 1 and B_crit ≈ B_noise ≈ B_simple (§2)"
    ),
    source=Source(title="An Empirical Model of Large-Batch Training", arxiv="1812.06162", version="v1",
                  where="Abstract; §2.2 (B_noise, B_simple), §2.3 (steps–examples trade-off)"),
    paper_value="S = S_min(1 + B_noise/B); B_noise = B_simple when H ∝ I; agreement 'roughly' in real tasks",
    prediction=(
        "σ = 1: fitted B_noise ≈ 1.1 × measured B_simple (81); control σ = 0: fitted B_noise ≈ 40, less than half "
        "of the σ = 1 value."
    ),
    metric=(
        "B_noise from a least-squares fit of log S(B), B ∈ {2..256}, S = best-lr mean steps (8 replicas, 10 lrs) "
        "to |δ|² ≤ 0.25; B_simple by the two-batch estimator at |δ|² = 0.25 (200 draws)"
    ),
    tolerance="σ = 1: fitted B_noise / measured B_simple ∈ [1/3, 3]; control: fitted(σ=1)/fitted(σ=0) ≥ 1.5",
    tolerance_why=(
        "The paper's own agreement is qualitative ('predicts', order of magnitude in its Fig. 4); here H = I "
        "makes B_noise = B_simple exact at one point of the trajectory, but B_simple grows from ≈ 17 at init "
        "to 81 at the target, so a factor 3 allows for that drift. Exploratory seeds 0–2: ratio 1.09–1.12, "
        "control ratio 2.2–2.5. Fresh seeds 100–104 (lab calibrate --start 100): ratio 1.06–1.32, control 2.08–2.53, 5/5 pass."
        " lab calibrate seeds 0–4: fitted/measured (σ=1) 0.88–1.22 (B_noise fit 78–99 vs B_simple 81–89); σ=0 fit/measured 1.96–2.33; control ratio 2.02–2.53."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_critical_batch_size.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

D, REPLICAS, TARGET = 16, 8, 0.25
BATCHES = [2, 4, 8, 16, 32, 64, 128, 256]
LRS = np.geomspace(0.025, 1.6, 10)
MAX_STEPS = 1000


def steps_to_target(task: LinearRegressionTask, batch: int, lr: float, gen: torch.Generator) -> float:
    """Mean over replicas of the first SGD step at which |w − w*|² ≤ TARGET (MAX_STEPS if never)."""
    w_star, w = task.w_star, torch.zeros(REPLICAS, D, dtype=torch.float64)
    hit = np.full(REPLICAS, MAX_STEPS)
    for t in range(1, MAX_STEPS + 1):
        x = torch.randn(REPLICAS, batch, D, generator=gen, dtype=torch.float64)
        y = x @ w_star + task.noise_std * torch.randn(REPLICAS, batch, generator=gen, dtype=torch.float64)
        residual = torch.einsum("rbd,rd->rb", x, w) - y
        w = w - lr * torch.einsum("rbd,rb->rd", x, residual) / batch  # ∇ of mean ½(xᵀw − y)²
        d2 = (w - w_star).pow(2).sum(1).numpy()
        hit[(d2 <= TARGET) & (hit == MAX_STEPS)] = t
        if (hit < MAX_STEPS).all() or not np.isfinite(d2).all() or d2.min() > 1e6:
            break
    return float(hit.mean())


def fit_b_noise(batches, steps) -> tuple[float, float]:
    def model(b, log_s_min, log_b_noise):
        return log_s_min + np.log1p(np.exp(log_b_noise) / b)

    (log_s_min, log_b_noise), _ = curve_fit(model, np.asarray(batches, float), np.log(steps),
                                            p0=[np.log(min(steps)), np.log(50.0)])
    return float(np.exp(log_s_min)), float(np.exp(log_b_noise))


def measured_b_simple(task: LinearRegressionTask, seed: int) -> float:
    """Two-batch estimate of B_simple at a point on the target shell |δ|² = TARGET."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(D, generator=gen, dtype=torch.float64)
    w = task.w_star + direction / direction.norm() * TARGET**0.5
    est = measure_noise_scale(task.model(w), task.loss, task.sample, b_small=8, b_big=64, n_draws=200, seed=seed)
    return est.b_simple


def sweep(noise_std: float, seed: int) -> dict:
    task = LinearRegressionTask(D, noise_std=noise_std, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    steps = [min(steps_to_target(task, b, float(lr), gen) for lr in LRS) for b in BATCHES]
    s_min, b_noise = fit_b_noise(BATCHES, steps)
    exact = D * (1 + noise_std**2 / TARGET) + 1
    return {"steps": steps, "s_min": s_min, "b_noise": b_noise, "b_simple_exact": exact,
            "b_simple_measured": measured_b_simple(task, seed + 2)}


def test_steps_follow_critical_batch_law(lab):
    noisy, clean = sweep(1.0, lab.seed), sweep(0.0, lab.seed)
    ratio = noisy["b_noise"] / noisy["b_simple_measured"]
    control = noisy["b_noise"] / clean["b_noise"]
    lab.record(batches=BATCHES, steps_sigma1=noisy["steps"], steps_sigma0=clean["steps"],
               s_min_sigma1=noisy["s_min"], b_noise_fit_sigma1=noisy["b_noise"],
               b_simple_measured_sigma1=noisy["b_simple_measured"], b_simple_exact_sigma1=noisy["b_simple_exact"],
               fit_over_measured_sigma1=ratio, b_noise_fit_sigma0=clean["b_noise"],
               b_simple_measured_sigma0=clean["b_simple_measured"],
               fit_over_measured_sigma0=clean["b_noise"] / clean["b_simple_measured"], control_ratio=control)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    grid = np.geomspace(BATCHES[0], BATCHES[-1], 100)
    for res, label, color in ((noisy, "σ = 1", "C0"), (clean, "σ = 0 (control)", "C2")):
        ax.loglog(BATCHES, res["steps"], "o", color=color, label=f"{label}: measured S(B)")
        ax.loglog(grid, res["s_min"] * (1 + res["b_noise"] / grid), "-", color=color,
                  label=f"fit S_min(1 + B_noise/B), B_noise = {res['b_noise']:.0f}")
        ax.axvline(res["b_simple_measured"], color=color, ls=":", label=f"measured B_simple = {res['b_simple_measured']:.0f}")
    ax.set(xlabel="batch size B", ylabel="steps to target (best lr)", title="Critical batch size (McCandlish et al.)")
    ax.legend(fontsize=7)
    lab.savefig(fig, "steps_vs_batch")

    assert 1 / 3 <= ratio <= 3, (
        f"σ=1: fitted B_noise {noisy['b_noise']:.1f} vs measured B_simple {noisy['b_simple_measured']:.1f} "
        f"(ratio {ratio:.2f}) not within a factor 3")
    assert control >= 1.5, (
        f"control: fitted B_noise σ=1 {noisy['b_noise']:.1f} vs σ=0 {clean['b_noise']:.1f} (ratio {control:.2f} < 1.5): "
        "the fit does not see the gradient noise")
