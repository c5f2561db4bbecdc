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
{2, …, 256}, plain SGD runs 32 replicas at each of 10 learning rates (0.025 … 1.6, geometric); S(B) is
the best lr's mean first step at which |δ|² ≤ 0.25 (exact, no evaluation noise). We fit log S =
log S_min + log(1 + B_noise/B) and compare B_noise with B_simple measured at the target by the
two-batch estimator (labcore.dynamics.noise_scale.measure_noise_scale, B_small 8, B_big 64).

Control (must come out the other way): the same fit on the noiseless task σ = 0 — there B_simple at
the target is only d + 1 = 17, so the fitted B_noise must be markedly smaller than with σ = 1.

Prediction (written after an exploratory sweep of seeds 0–2 in a scratch script): σ = 1: fitted
B_noise 88–90 vs B_simple 81 (ratio ≈ 1.1); σ = 0: fitted 36–41 vs 17 (ratio ≈ 2.2 — the model is a
one-step, optimal-lr approximation and S ≈ 2 steps at the largest batches is coarse).

**Can it fail? (science audit, issue 13).** The first version asserted fitted/measured ∈ [1/3, 3] with
8 replicas. Broken variants run on seed 0 (scratch script, old design): the noiseless task in place
of the noisy one gives ratio 2.34 — *inside* [1/3, 3], so the ratio check could not tell a task
whose steps the law mispredicts by 2× from one it predicts (only the control caught it); steps
shuffled across batch sizes gave ratios 1e-14–0.17 and a log-residual of 1.0–1.2; a sweep whose
steps do not depend on B (every B run at batch 16) gave B_noise 0.14 (ratio 0.002); B_simple
measured at the start instead of at the target gave ratio 5.8. Redesign, chosen on exploration
seeds 0–4 only: 32 replicas instead of 8 (σ = 1 ratio over seeds 0–4: 0.87–1.26 with 8, 1.00–1.18
with 32; ~7 s per seed), the window tightened to a factor 1.5, and the law's fit quality asserted
(RMS of the log-residual ≤ 0.15; measured 0.02–0.05 for σ = 1, shuffled steps ≥ 1). Asserted:
fit RMS ≤ 0.15 and fitted/measured ∈ [1/1.5, 1.5] for σ = 1; control fitted(σ=1)/fitted(σ=0) ≥ 1.5.
The noiseless task's own ratio (≈ 2) is recorded: it is the variant the window must reject.
Run against the redesigned test (temporary edits, seed 0, reverted): the noiseless task as the σ = 1
arm fails the ratio check (40.8 vs 16.9, ratio 2.42); steps shuffled across B fail the fit check
(RMS 1.20).
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
        "B_noise from a least-squares fit of log S(B), B ∈ {2..256}, S = best-lr mean steps (32 replicas, 10 lrs) "
        "to |δ|² ≤ 0.25; B_simple by the two-batch estimator at |δ|² = 0.25 (200 draws)"
    ),
    tolerance=("σ = 1: RMS log-residual of the fit ≤ 0.15 and fitted B_noise / measured B_simple ∈ [1/1.5, 1.5]; "
               "control: fitted(σ=1)/fitted(σ=0) ≥ 1.5"),
    tolerance_why=(
        "The paper's own agreement is qualitative ('predicts', order of magnitude in its Fig. 4); here H = I "
        "makes B_noise = B_simple exact at the target, so the window only has to cover the fit's coarse "
        "large-B end (S ≈ 2 steps; it biases the fit up by ~10 %) and the estimators' noise: a factor 1.5. "
        "It must reject the noiseless regime, where the same fit overestimates B_simple ≈ 17 by ≈ 2× "
        "(old design: a factor-3 window let that through; see the docstring's broken variants). "
        "Which seeds chose what: the old design (8 replicas, [1/3, 3]) was calibrated on 0–4 and confirmed "
        "on 100–104; the redesign (32 replicas, factor 1.5, fit RMS ≤ 0.15) was chosen from scratch runs "
        "of seeds 0–4 only, its exploration table is lab calibrate seeds 0–4 "
        "(fixtures/calibration/dynamics_critical_batch_size.json) and its confirmation ran on the untouched "
        "seeds 200–204 (the .fresh.json beside it). Redesign tables: exploration 0–4 5/5 passed, fitted/measured "
        "(σ = 1) 1.01–1.17, fit RMS 0.025–0.048, noiseless-task ratio 2.01–2.40 (outside the window), control "
        "2.33–2.55; fresh 200–204 5/5 passed, fitted/measured 1.11–1.25, fit RMS 0.044–0.065, noiseless-task "
        "ratio 2.19–2.49, control 2.32–2.55."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_critical_batch_size.json",
    status="confirmed",  # redesign passed on untouched seeds 200-204 (<claim>.fresh.json)
)

D, REPLICAS, TARGET = 16, 32, 0.25
RATIO = 1.5     # fitted B_noise within this factor of the measured B_simple (σ = 1)
FIT_RMS = 0.15  # the law must fit: RMS of log S(B) − log[S_min(1 + B_noise/B)] over the 8 batch sizes
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


def fit_b_noise(batches, steps) -> tuple[float, float, float]:
    """Least squares on log S(B) = log S_min + log(1 + B_noise/B) → (S_min, B_noise, RMS log-residual)."""
    def model(b, log_s_min, log_b_noise):
        return log_s_min + np.log1p(np.exp(log_b_noise) / b)

    b, log_s = np.asarray(batches, float), np.log(steps)
    (log_s_min, log_b_noise), _ = curve_fit(model, b, log_s, p0=[np.log(min(steps)), np.log(50.0)])
    rms = float(np.sqrt(np.mean((log_s - model(b, log_s_min, log_b_noise)) ** 2)))
    return float(np.exp(log_s_min)), float(np.exp(log_b_noise)), rms


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
    s_min, b_noise, rms = fit_b_noise(BATCHES, steps)
    exact = D * (1 + noise_std**2 / TARGET) + 1
    return {"steps": steps, "s_min": s_min, "b_noise": b_noise, "fit_rms": rms, "b_simple_exact": exact,
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
               fit_over_measured_sigma0=clean["b_noise"] / clean["b_simple_measured"], control_ratio=control,
               fit_rms_sigma1=noisy["fit_rms"], fit_rms_sigma0=clean["fit_rms"])

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

    assert noisy["fit_rms"] <= FIT_RMS, (
        f"σ=1: S(B) does not follow S_min(1 + B_noise/B): RMS log-residual {noisy['fit_rms']:.3f} > {FIT_RMS} "
        f"(steps {np.round(noisy['steps'], 2)})")
    assert 1 / RATIO <= ratio <= RATIO, (
        f"σ=1: fitted B_noise {noisy['b_noise']:.1f} vs measured B_simple {noisy['b_simple_measured']:.1f} "
        f"(ratio {ratio:.2f}) not within a factor {RATIO}")
    assert control >= 1.5, (
        f"control: fitted B_noise σ=1 {noisy['b_noise']:.1f} vs σ=0 {clean['b_noise']:.1f} (ratio {control:.2f} < 1.5): "
        "the fit does not see the gradient noise")
