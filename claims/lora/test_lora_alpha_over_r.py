"""Scaling the update by α/r lets r change without retuning: early training looks the same for every r.

Lab notebook. §4.1 of the LoRA paper scales ΔWx by α/r with α constant in r: "This scaling
helps to reduce the need to retune hyperparameters when we vary r". Why, with Adam: every entry
of B moves by about lr per step whatever r is, and B·A sums r such contributions, so ‖BA‖ grows
∝ r; the 1/r cancels it. With α ∝ r instead (a constant scaling factor), the r = 64 update is
16× the r = 4 one at the same learning rate.

Experiment: LoRA on W_Q, W_V of the small pretrained base, r ∈ {4, 16, 64}, the same learning
rate (LORA_LR), the same batches, 100 steps on task B:
* α/r policy: α = 8 for every r (scaling 2, 0.5, 0.125);
* control, α ∝ r: α = 2r (scaling 2 for every r; identical to the α/r policy at r = 4).
Metric: the *excess* expected loss above the language's entropy, E(t) = L(t) − oracle, on the
eval curve (96 held-out sequences, every 10 steps); D = mean over t ∈ {10, …, 50} of
|E_r(t) − E_4(t)| / E_4(t), the worst of r = 16 and r = 64. (Raw losses all sit near 1.7–2.0, so
"within 10 % of the loss" would not distinguish anything; the excess is what training changes.)

Measured (median over seeds 0–4): α = 8: E at step 20 is 0.145 / 0.136 / 0.135 for r = 4 / 16 /
64; α = 2r: 0.145 / 0.135 / 0.221 — the r = 64 run with α ∝ r (scaling 2, i.e. 16× the α/r update)
overshoots and ends worse (final 1.714 vs 1.699 with α = 8).
"""

import matplotlib.pyplot as plt
import numpy as np

from labcore.notebook.claims import Claim, Source
from labcore.finetuning.recipes import FinetuneRecipe

RANKS = (4, 16, 64)
EARLY = (10, 20, 30, 40, 50)

CLAIM = Claim(
    id="lora_alpha_over_r",
    paper="lora",
    statement=(
        "“We then scale ∆Wx by α/r, where α is a constant in r. When optimizing with Adam, tuning α "
        "is roughly the same as tuning the learning rate if we scale the initialization "
        "appropriately. As a result, we simply set α to the first r we try and do not tune it. This "
        "scaling helps to reduce the need to retune hyperparameters when we vary r.”"
    ),
    source=Source(
        title="LoRA: Low-Rank Adaptation of Large Language Models", arxiv="2106.09685", version="v2",
        where="§4.1",
    ),
    paper_value="qualitative (no retuning needed across r with α/r)",
    prediction=(
        "With α fixed, the early excess-loss curves of r = 16 and r = 64 stay close to r = 4's; with "
        "α ∝ r they differ clearly more."
    ),
    metric=(
        "D = max over r ∈ {16, 64} of mean_{t=10..50} |E_r(t) − E_4(t)| / E_4(t), E = expected CE − "
        "oracle on 96 held-out task-B sequences, for α = 8 and for α = 2r"
    ),
    tolerance="D(α = 8) ≤ 0.2; control: D(α = 2r) ≥ 2 × D(α = 8)",
    tolerance_why=(
        "Measured (seeds 0–4): D(α = 8) = 0.051/0.080/0.099 (min/median/max), D(α = 2r) = "
        "0.29/0.52/0.79, ratio 2.9–11.8. 0.2 is 2× the largest D(α = 8); the control ratio 2 is "
        "below the smallest observed ratio (2.9). The eval set is fixed and shared, so D measures "
        "the runs, not eval noise."
    ),
    tier="quick",
    calibration="fixtures/calibration/lora_alpha_over_r.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)


def _excess(run, oracle):
    steps = list(run.curve_steps)
    return np.array([run.curves["B"][steps.index(t)] - oracle for t in EARLY]), run.curves["B"] - oracle


def _spread(excess):
    ref = excess[4]
    return max(float(np.mean(np.abs(excess[r] - ref) / ref)) for r in RANKS if r != 4)


def test_alpha_over_r_keeps_early_training_rank_independent(lab, finetune_lab):
    oracle = finetune_lab.language.eval_batch("B", 96, seed=1).oracle  # the curve eval set's floor
    policies = {"α = 8 (α/r)": lambda r: 8.0, "α = 2r (α ∝ r)": lambda r: 2.0 * r}
    runs = {
        p: {r: finetune_lab.run(FinetuneRecipe(targets=("q", "v"), r=r, alpha=alpha(r))) for r in RANKS}
        for p, alpha in policies.items()
    }
    early = {p: {r: _excess(run, oracle)[0] for r, run in rs.items()} for p, rs in runs.items()}
    D = {p: _spread(e) for p, e in early.items()}
    d_fixed, d_prop = D["α = 8 (α/r)"], D["α = 2r (α ∝ r)"]
    lab.record(
        D_alpha_fixed=d_fixed, D_alpha_prop=d_prop, ratio=d_prop / d_fixed if d_fixed else float("inf"),
        excess_step20={p: {r: float(e[r][1]) for r in RANKS} for p, e in early.items()},
        final_loss={p: {r: run.final["B"] for r, run in rs.items()} for p, rs in runs.items()},
    )

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, (p, rs) in zip(axes, runs.items()):
        for r, run in rs.items():
            ax.semilogy(run.curve_steps[1:], _excess(run, oracle)[1][1:], "o-", ms=3, label=f"r={r}")
        ax.axvspan(EARLY[0], EARLY[-1], color="gray", alpha=0.1, label="early window")
        ax.set(xlabel="fine-tuning step", title=f"{p}: D = {D[p]:.2f}")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("excess expected CE (nats, log)")
    fig.tight_layout()
    lab.savefig(fig, "alpha_over_r")

    assert d_fixed <= 0.2, f"α fixed: early curves differ by D = {d_fixed:.3f} > 0.2"
    assert d_prop >= 2 * d_fixed, f"control: α ∝ r should differ more, D = {d_prop:.3f} vs {d_fixed:.3f}"
