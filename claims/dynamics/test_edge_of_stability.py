"""Edge of stability: under full-batch GD the sharpness rises to 2/η and hovers there.

Lab notebook. Classical analysis says gradient descent with step η is stable only where the top
Hessian eigenvalue (the sharpness) is below 2/η. Cohen et al. found that full-batch GD on real
networks does not stay safely below: the sharpness rises during training ("progressive
sharpening") until it reaches 2/η, then hovers there, while the loss keeps falling over long
times but goes up and down from step to step.

Setup: a tanh MLP 8 → 32 → 32 → 1 (float64) fits 64 random Gaussian targets from 64 Gaussian
inputs with MSE ½·mean(f(x) − y)² — a fixed small dataset, so the full-batch sharpness costs 20
Hessian-vector products (labcore.dynamics.sharpness.top_hessian_eigenvalue, 20 power iterations).
Full-batch GD (torch SGD, no momentum) for 800 steps, sharpness every 20 steps. Main run η = 0.2
(2/η = 10); the sharpness at init is ≈ 2. Control: η = 0.02 (2/η = 100), same 800 steps.

Prediction (written after one exploratory sweep, seed 0, η ∈ {0.03, 0.1} on teacher targets, which
showed *no* sharpening — the task was too easy; then η ∈ {0.2, 0.5, 1.0} on random targets, which
hovered at 10.0 and 4.0 and diverged at 1.0): for η = 0.2, the sharpness over steps 400–800 has
max/(2/η) in [0.8, 1.3] and mean/(2/η) in [0.9, 1.1]; the loss goes up on ≥ 10 of those steps yet
is lower at step 800 than at 400. Control η = 0.02: max/(2/η) ≤ 0.5 and the loss never goes up.
Claim-file seeds 0–4 (this setup): late max/(2/η) 1.03, 1.10, 1.15, 1.31, 1.29 — seed 3 broke the
[0.8, 1.3] band: the max catches the brief spikes above the edge (the "just above" of the paper)
and is the noisiest statistic. The mean was 0.99–1.01 on every seed. Bands after seeing this:
mean ∈ [0.9, 1.1] (the claim: it hovers at 2/η) and max ∈ [0.95, 1.6] (it reaches the edge and does
not run away) — exploratory until fresh seeds 100–104 pass (they did, 5/5).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from labcore.dynamics.sharpness import top_hessian_eigenvalue
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="dynamics_edge_of_stability",
    paper="dynamics",
    statement=(
        "“full-batch gradient descent on neural network training objectives typically operates in a regime "
        "we call the Edge of Stability. In this regime, the maximum eigenvalue of the training loss Hessian "
        "hovers just above the numerical value 2/(step size), and the training loss behaves non-monotonically "
        "over short timescales, yet consistently decreases over long timescales.”"
    ),
    source=Source(title="Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
                  arxiv="2103.00065", version="v3", where="Abstract; Fig. 1"),
    paper_value="sharpness → ≈ 2/η (just above), loss non-monotone but decreasing",
    prediction=(
        "η = 0.2: late sharpness max/(2/η) ∈ [0.8, 1.3], mean ∈ [0.9, 1.1]; ≥ 10 loss increases; loss(800) < "
        "loss(400). Control η = 0.02: max/(2/η) ≤ 0.5, no loss increase."
    ),
    metric=(
        "top Hessian eigenvalue (20 power iterations) every 20 steps over steps 400–800, divided by 2/η; count "
        "of steps with loss(t+1) > loss(t) over steps 400–800"
    ),
    tolerance=(
        "η = 0.2: mean/(2/η) ∈ [0.9, 1.1] and max/(2/η) ∈ [0.95, 1.6], ≥ 10 increases, loss(800) < loss(400); "
        "control: max/(2/η) ≤ 0.5 and 0 increases"
    ),
    tolerance_why=(
        "Exploratory seeds 0–4 (before the claim file): late max/(2/η) 1.016–1.163, mean 0.994–1.032, "
        "51–168 increases; control max/(2/η) 0.048–0.085, 0 increases. Claim-file seeds 0–4: mean 0.99–1.01, "
        "max 1.03–1.31 (seed 3 broke the first band, [0.8, 1.3]), 27–163 increases, control max 0.03–0.10. "
        "Mean: ±10 % around the paper's 'hovers at 2/η' (≥ 7× the seen spread); max ≤ 1.6 = 'just above', not "
        "running away; the control's 0.5 is ≥ 5× its largest value. Fresh seeds 100–104: mean 0.988–1.033, max 1.05–1.27, control max ≤ 0.066, 5/5 pass."
        " lab calibrate seeds 0–4: mean 0.991–1.012, max 1.047–1.309, 34–152 increases, loss(800)/loss(400) 0.006–0.47; control max 0.031–0.089, 0 increases."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_edge_of_stability.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

N, D, H = 64, 8, 32
STEPS, EVERY, LATE = 800, 20, 400
ETA, ETA_CONTROL = 0.2, 0.02


def problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randn(N, 1, generator=g, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 1)).double()
    return net, x, y


def full_batch_gd(eta: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss per step, steps at which sharpness was measured, sharpness there)."""
    net, x, y = problem(seed)

    def loss_fn():
        return 0.5 * (net(x) - y).pow(2).mean()

    opt = torch.optim.SGD(net.parameters(), lr=eta)
    losses, at, sharp = [], [], []
    for t in range(STEPS + 1):
        if t % EVERY == 0:
            at.append(t)
            sharp.append(top_hessian_eigenvalue(loss_fn, net.parameters(), iters=20, tol=1e-3, seed=seed + t).eigenvalue)
        opt.zero_grad()
        loss = loss_fn()
        losses.append(float(loss.detach()))
        if t < STEPS:
            loss.backward()
            opt.step()
    return np.array(losses), np.array(at), np.array(sharp)


def test_sharpness_hovers_at_two_over_eta(lab):
    stats, runs = {}, {}
    for eta in (ETA, ETA_CONTROL):
        loss, at, sharp = runs[eta] = full_batch_gd(eta, lab.seed)
        late = sharp[at >= LATE] * eta / 2
        stats[eta] = {"max": float(late.max()), "mean": float(late.mean()),
                      "increases": int((np.diff(loss[LATE:]) > 0).sum()),
                      "loss_late_ratio": float(loss[-1] / loss[LATE]), "sharp0": float(sharp[0])}
    s, c = stats[ETA], stats[ETA_CONTROL]
    lab.record(eta=ETA, eta_control=ETA_CONTROL, sharpness_init=s["sharp0"],
               late_max_over_2_eta=s["max"], late_mean_over_2_eta=s["mean"], loss_increases=s["increases"],
               loss_800_over_400=s["loss_late_ratio"], control_late_max_over_2_eta=c["max"],
               control_loss_increases=c["increases"], control_loss_800_over_400=c["loss_late_ratio"])

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for eta, color in ((ETA, "C0"), (ETA_CONTROL, "C2")):
        loss, at, sharp = runs[eta]
        axes[0].plot(loss, color=color, lw=0.8, label=f"η = {eta}")
        axes[1].plot(at, sharp, "o-", ms=3, color=color, label=f"sharpness, η = {eta}")
        axes[1].axhline(2 / eta, color=color, ls="--", lw=1, label=f"2/η = {2 / eta:g}")
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="full-batch GD, tanh MLP, random targets")
    axes[1].set(xlabel="step", ylabel="λ_max(Hessian)", yscale="log", title="sharpness rises to 2/η (Cohen et al. Fig. 1)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    lab.savefig(fig, "sharpness_and_loss")

    assert 0.95 <= s["max"] <= 1.6, f"η={ETA}: late max sharpness / (2/η) = {s['max']:.3f}, not in [0.95, 1.6]"
    assert 0.9 <= s["mean"] <= 1.1, f"η={ETA}: late mean sharpness / (2/η) = {s['mean']:.3f}, not in [0.9, 1.1]"
    assert s["increases"] >= 10, f"η={ETA}: loss went up on only {s['increases']} late steps — not non-monotone"
    assert s["loss_late_ratio"] < 1, f"η={ETA}: loss(800)/loss(400) = {s['loss_late_ratio']:.3f} — not decreasing"
    # Control: a 10× smaller step stays far below its own 2/η over the same horizon, monotonically.
    assert c["max"] <= 0.5, f"control η={ETA_CONTROL}: sharpness reached {c['max']:.3f} × 2/η (> 0.5)"
    assert c["increases"] == 0, f"control η={ETA_CONTROL}: loss went up on {c['increases']} steps"
