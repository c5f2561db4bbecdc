"""Adam's step is ≈ η per coordinate and invariant to the scale of the gradient; SGD's is not.

Lab notebook. Kingma & Ba §2.1: the effective step is Δ = α·m̂/√v̂; rescaling the gradient by c
scales m̂ by c and √v̂ by c, which cancel. So training on c·L instead of L leaves Adam's trajectory
unchanged (up to ε = 1e-8, which is far below √v̂ here), while plain SGD's step is multiplied by c.

Setup: a 1-layer glass-box GPT on pair recall, float64, 40 full steps on the same batches, no
gradient clipping (clipping would rescale the gradient itself), from the same init. We compare the
runs on L and on 1000·L by the parameter distance after 40 steps relative to the distance travelled:
r = ‖θ_c(40) − θ_1(40)‖ / ‖θ_1(40) − θ(0)‖.

Bias correction (§3): m and v start at 0, so after one step m₁ = (1−β1)g and v₁ = (1−β2)g². The
probe (OptimizerStateProbe) records ‖m̂‖/‖m‖ = 1/(1−β1) = 10 and 1−β2^t = 1e-3 at t = 1, i.e.
v̂₁ = v₁/(1−β2) = 1000·v₁; the corrected first step is exactly η·sign(g) (|s| = η), whereas the
uncorrected m₁/√v₁ = (1−β1)/√(1−β2)·sign(g) would be 3.16× too large with β2 = 0.999.

Prediction (written before the run): Adam r ≤ 1e-6 (float64 rounding through 40 steps); SGD
(lr 0.05) r ≥ 10 (a 1000× larger step: the c = 1000 run leaves the region or diverges; a
non-finite result counts as r = ∞). First-step mean |s| / η within 1e-6 of 1; ‖m̂‖/‖m‖ = 10 and
the uncorrected factor (1−β1)/√(1−β2) = 3.162 to 1e-6.
Seed 0, first run: the prediction was wrong for Adam at torch's default ε = 1e-8: r = 6.5e-4, and
the first step's |s|/η ranged down to 0.13 — some coordinates (rarely used embedding rows) have
|g| ~ 1e-9, comparable to ε, and on loss × 1000 their ε term vanishes. So the claim is checked
twice: at ε = 1e-8 (r ≤ 1e-2: invariance to 0.1 %, ε the residue) and at ε = 1e-16 (r ≤ 1e-8:
the paper's ε-free formula, exact); the first-step check uses the median |s|/η. These bounds were
set after seeing seed 0 and are exploratory until the fresh seeds pass (seeds 100–104 did, 5/5:
r 2.0e-4–1.6e-3 at ε = 1e-8, ≤ 1.6e-10 at ε = 1e-16).
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore import GPT, GPTConfig
from labcore.dynamics.optimizer_state import OptimizerStateProbe
from labcore.notebook.claims import Claim, Source
from labcore.tasks.pair_recall import PairRecallTask
from labcore.training.trainer import next_token_loss, seeded_model

CLAIM = Claim(
    id="dynamics_adam_scale_invariance",
    paper="dynamics",
    statement=(
        "“The effective stepsize is also invariant to the scale of the gradients; rescaling the gradients g "
        "with factor c will scale m̂_t with a factor c and v̂_t with a factor c², which cancel out: "
        "(c·m̂_t)/(√(c²·v̂_t)) = m̂_t/√v̂_t.” (§2.1) and “it is exactly this case of small 1 − β2 where a lack "
        "of initialisation bias correction would lead to initial steps that are much larger.” (§3)"
    ),
    source=Source(title="Adam: A Method for Stochastic Optimization", arxiv="1412.6980", version="v9",
                  where="§2.1 (effective stepsize), §3 (initialization bias correction)"),
    paper_value="step invariant to gradient scale c; bias correction factors 1/(1−β1), 1/(1−β2) at t = 1",
    prediction=(
        "Adam: r ≤ 1e-6 for c = 1000; SGD (control): r ≥ 10. First step |s| = η; ‖m̂‖/‖m‖ = 10; uncorrected "
        "first step 3.162× the corrected one."
    ),
    metric=(
        "r = ‖θ_c(40) − θ_1(40)‖/‖θ_1(40) − θ(0)‖ for c = 1000, 40 steps, float64 1-layer GPT; first-step "
        "probe ratios"
    ),
    tolerance=(
        "Adam r ≤ 1e-2 at ε=1e-8 and ≤ 1e-8 at ε=1e-16; SGD r ≥ 10; |median first-step |s|/η − 1| ≤ 1e-3; "
        "bias-correction factors to 1e-6"
    ),
    tolerance_why=(
        "ε is the only term that breaks invariance; at ε = 1e-8 coordinates with |g| ~ ε exist (seed 0: "
        "r = 6.5e-4), so 1e-2 is ~15× that; at ε = 1e-16 only float64 rounding remains. SGD's step is 1000× larger, so r ≫ 1 unless "
        "the run is broken. First-step |s| = η·|g|/(|g|+ε): exact up to ε/|g|; coordinates with g = 0 "
        "(unused embedding rows) are excluded. lab calibrate seeds 0–4 in the calibration table."
        " lab calibrate seeds 0–4: r(ε=1e-8) 3.6e-4–6.4e-4, r(ε=1e-16) 5e-12–3.6e-11, SGD r = ∞ in 4 seeds and 9e51 in one; first-step median |s|/η = 1 to 7e-7; factors 10, 1000, 3.1623 exact."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_adam_scale_invariance.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

TASK = PairRecallTask(n_keys=8, n_values=8, n_pairs=4)
STEPS, BATCH, SCALE = 40, 64, 1000.0
BETAS = (0.9, 0.999)
EPS_TINY = 1e-16  # ε → 0: the exact invariance of the paper's formula (ε only prevents 0/0)


def make_model(seed: int) -> GPT:
    cfg = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=32, n_layers=1, n_heads=2)
    return seeded_model(lambda: GPT(cfg), seed).double()


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def trajectory(kind: str, scale: float, seed: int, probe: bool = False, eps: float = 1e-8):
    """Parameters after each step of Adam or SGD on scale·L; the probe's trace if asked."""
    model = make_model(seed)
    lr = 1e-3 if kind == "adam" else 0.05
    opt = (torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS, eps=eps) if kind == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr))
    pr = OptimizerStateProbe(model, opt, group_by=lambda n: "all", dtype=torch.float64) if probe else None
    g = torch.Generator().manual_seed(seed)
    points, first = [flat(model)], None
    for _ in range(STEPS):
        opt.zero_grad()
        (scale * next_token_loss(model, TASK.sample(BATCH, g))).backward()
        opt.step()
        if pr is not None:
            pr()
        if first is None and kind == "adam":
            first = first_step_stats(model, opt)
        points.append(flat(model))
    return torch.stack(points), (pr.result() if pr else None), first


def first_step_stats(model, opt) -> dict:
    """|s|/η on the coordinates that had a gradient, and the uncorrected step's factor."""
    ratios, uncorrected = [], []
    for p in model.parameters():
        st, used = opt.state[p], p.grad != 0
        m, v = st["exp_avg"][used], st["exp_avg_sq"][used]
        m_hat, v_hat = m / (1 - BETAS[0]), v / (1 - BETAS[1])
        ratios.append((m_hat / (v_hat.sqrt() + 1e-8)).abs())
        uncorrected.append((m / v.sqrt()).abs() / (m_hat / v_hat.sqrt()).abs())
    return {"step_over_lr": torch.cat(ratios), "uncorrected_factor": torch.cat(uncorrected)}


def relative_gap(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> float:
    gap = float((a - b).norm() / (b - start).norm())
    return gap if math.isfinite(gap) else math.inf


def test_adam_is_scale_invariant_sgd_is_not(lab):
    runs = {}
    for kind in ("adam", "sgd"):
        for c in (1.0, SCALE):
            runs[kind, c] = trajectory(kind, c, lab.seed, probe=(kind == "adam"))
    for c in (1.0, SCALE):
        runs["adam_eps0", c] = trajectory("adam", c, lab.seed, eps=EPS_TINY)
    r = {k: relative_gap(runs[k, SCALE][0][-1], runs[k, 1.0][0][-1], runs[k, 1.0][0][0])
         for k in ("adam", "adam_eps0", "sgd")}
    trace, first = runs["adam", 1.0][1], runs["adam", 1.0][2]
    m = trace.of("all")
    mhat_over_m = float(m["m_hat_norm"][0] / m["m_norm"][0])
    v_correction = float(1 / m["bias_correction2"][0])
    step_over_lr = first["step_over_lr"]
    uncorrected = first["uncorrected_factor"]
    lab.record(r_adam=r["adam"], r_adam_eps_tiny=r["adam_eps0"], r_sgd=r["sgd"],
               first_step_over_lr_median=float(step_over_lr.median()), mhat_over_m_step1=mhat_over_m, vhat_over_v_step1=v_correction,
               first_step_over_lr_min=float(step_over_lr.min()), first_step_over_lr_max=float(step_over_lr.max()),
               uncorrected_factor_mean=float(uncorrected.mean()),
               step_abs_mean_over_lr_last=float(m["step_abs_mean"][-1] / 1e-3))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = np.arange(1, STEPS + 1)
    axes[0].plot(steps, m["step_abs_mean"] / 1e-3, label="mean |s| / η")
    axes[0].plot(steps, m["step_abs_max"] / 1e-3, label="max |s| / η")
    axes[0].plot(steps, m["m_hat_norm"] / m["m_norm"], label="‖m̂‖/‖m‖ = 1/(1−β1^t)")
    axes[0].axhline(1, color="k", ls=":", lw=1)
    axes[0].set(xlabel="step", yscale="log", title="Adam's effective step (loss × 1)")
    axes[0].legend(fontsize=8)
    for kind, color in (("adam", "C0"), ("sgd", "C3")):
        for c, ls in ((1.0, "-"), (SCALE, "--")):
            pts = runs[kind, c][0]
            dist = (pts - pts[0]).norm(dim=1).numpy()
            axes[1].plot(np.arange(STEPS + 1), dist, ls, color=color, label=f"{kind}, loss × {c:g}")
    axes[1].set(xlabel="step", ylabel="‖θ(t) − θ(0)‖", yscale="log", title="distance travelled")
    axes[1].legend(fontsize=8)
    lab.savefig(fig, "effective_step_and_distance")

    assert r["adam"] <= 1e-2, f"Adam (ε=1e-8): loss × {SCALE:g} moved the trajectory by r = {r['adam']:.2e} (> 1e-2)"
    assert r["adam_eps0"] <= 1e-8, f"Adam (ε=1e-16): r = {r['adam_eps0']:.2e} (> 1e-8): something besides ε breaks invariance"
    assert r["sgd"] >= 10, f"control SGD: loss × {SCALE:g} gives r = {r['sgd']:.3g} (< 10) — the test cannot see scale"
    assert abs(float(step_over_lr.median()) - 1) <= 1e-3, f"first step median |s|/η = {float(step_over_lr.median()):.6f}"
    assert abs(mhat_over_m - 1 / (1 - BETAS[0])) <= 1e-6 * 10, f"‖m̂‖/‖m‖ at t=1 = {mhat_over_m}"
    assert abs(v_correction - 1 / (1 - BETAS[1])) <= 1e-6 * 1000, f"1/(1−β2^1) = {v_correction}"
    expect = (1 - BETAS[0]) / math.sqrt(1 - BETAS[1])
    assert float((uncorrected - expect).abs().max()) <= 1e-6, f"uncorrected first step factor {uncorrected.mean():.6f} ≠ {expect:.6f}"
