"""Paper II: a 10× larger learning rate on the values ("EM-like") reaches SGD's final loss sooner.

Lab notebook. Paper II (arXiv 2512.22473) reads attention's gradients as EM: the weights are
responsibilities (E-step), the values move toward the queries that use them (M-step). Its
sticky-Markov experiment (authors' code ``experiments/paper2_gradient/em_vs_sgd_multiseed.py``)
compares plain SGD with an "EM-like" schedule that is SGD with lr 0.1 on W_V and 0.01 on
W_Q, W_K, W_O — nothing more than a 10× value learning rate — and reports that it reaches SGD's
final loss 2.3× faster (430 vs 1000 steps).

Setup (labcore.measures.routing): 8 symbols, self-transition 0.3, off-diagonal ∝ 1/circular distance;
x_t = μ_{y_{t−1}} + N(0, I), d_x = 20, means fixed (seed 0); one causal attention head
d_k = 10, d_v = 15, readout to 8 classes, init N(0, 0.1²); full batch, 1000 steps, no
momentum, no clipping; the same init and chain for both runs. H_min = H(Y_t | Y_{t−1}) =
1.883 nats, computed exactly beside the generator. Speed-up = 1000 / (first step whose EM loss
is below SGD's final loss), per seed (the authors threshold at the mean SGD final over seeds).

**Deviation, for the CPU budget: T = 500, not 2000.** The cost is the T×T attention: one
1000-step run takes ≈ 8 ms/step at T = 500 but ≈ 25–37 ms/step at T = 1000 and ≈ 160 ms/step at
T = 2000 on this shared 2-core machine, so the paper's T = 2000 × 3 seeds (6 runs) would take
≈ 16 min; T = 500 × 3 seeds takes ≈ 1–2 min. Seeds: the paper's 42, 2024, 1337 (``--lab-seed n``
adds 100000·n to each, so a seed sweep draws new chains and inits).

Measured (T = 500, 1000 steps) over --lab-seed 0..4, i.e. 15 chains:
    speed-up  min 2.00 / median 2.45 / max 3.76   (paper 2.3; research re-implementation at
              T = 2000: 2.44 / 2.37 / 2.69 for seeds 42 / 2024 / 1337)
    per lab seed (42, 2024, 1337 + 100000 n):  n=0 3.76 2.16 2.25 | n=1 2.45 2.87 3.03 |
              n=2 3.75 2.78 2.12 | n=3 2.00 2.79 2.43 | n=4 2.21 2.50 2.30
    final CE  SGD 1.99–2.07, EM 1.88–2.02 nats; EM − SGD from −0.13 to −0.05, EM lower in every chain
    two more chains (seeds 7777, 9999): 2.94 and 1.93.
    T = 2000, seed 42, once: EM reaches SGD's final (2.066) at step 365, speed-up 2.74.
Wall time: 11 ms/step at T = 500 with the box loaded (≈ 6 runnable processes on 2 cores);
the file took 50–80 s per seed under `lab calibrate` (100–135 s when my own background jobs
competed as well).

Picture (loss_curves.png): SGD at lr 0.01 barely leaves chance (ln 8 = 2.079 nats) in 1000
steps, while the EM-like run bends down after ~200 steps and ends within 0.01–0.14 nats of
H_min. So "2.3× faster" here means "escapes the initial plateau much sooner".

Control: the metric applied to the SGD curve itself (SGD vs its own final loss) must give a
speed-up of ≈ 1 (it is 1.00 in every seed), so "≥ 1.7" is not something the bookkeeping
produces by construction.
"""

import matplotlib.pyplot as plt
import numpy as np

from labcore.notebook.claims import Claim, Source
from labcore.tasks.sticky_chain import conditional_entropy_nats, sticky_transition_matrix
from labcore.training.em_vs_sgd import run_em_vs_sgd, steps_to_threshold

CLAIM = Claim(
    id="bayes_value_lr_speedup",
    paper="bayes",
    statement="“EM-like schedule converges 2.3× faster (430 vs 1000 steps)” to SGD's final loss, "
              "on the sticky Markov-chain task.",
    source=Source(title="Gradient Dynamics of Attention: How Cross-Entropy Sculpts Bayesian Manifolds",
                  arxiv="2512.22473", version="v2",
                  where="§5.2 sticky Markov-chain simulation (EM-like vs SGD); authors' em_vs_sgd_multiseed.py"),
    paper_value="2.3× (430 vs 1000 steps), T=2000, 5 seeds",
    prediction="With T=500 (CPU budget) the EM-like run still reaches SGD's final loss about 2× sooner, "
               "and ends lower, in each of the paper's seeds 42, 2024, 1337.",
    metric="per seed: 1000 / (first step with EM loss < SGD final loss); final full-batch CE of both",
    tolerance="speed-up ≥ 1.7 in ≥ 2 of 3 seeds; EM final < SGD final in all 3; control speed-up < 1.2",
    tolerance_why=(
        "Research note: 1.7 is below every calibrated speed-up (2.37–2.69 at T=2000). Ours at T=500, "
        "--lab-seed 0..4 (15 chains): min 2.00 / median 2.45 / max 3.76 (2 more chains: 2.94, 1.93); none "
        "below 1.7, and '2 of 3 seeds' tolerates one unlucky chain. EM−SGD final CE: −0.13 to −0.05 nats in "
        "all 15 (≥ 0.05 nats is far above run-to-run noise: the runs are deterministic given the seed). "
        "Control (SGD vs its own final loss) is 1.00 by construction of a decreasing curve."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_value_lr_speedup.json",
)

PAPER_SEEDS = (42, 2024, 1337)
T, STEPS = 500, 1000
MIN_SPEEDUP, MIN_SEEDS = 1.7, 2


def test_value_lr_speedup(lab):
    seeds = [s + 100_000 * lab.seed for s in PAPER_SEEDS]
    runs = [run_em_vs_sgd(s, T=T, steps=STEPS) for s in seeds]
    h_min = conditional_entropy_nats(sticky_transition_matrix())
    control = [STEPS / max(steps_to_threshold(r.sgd_losses, r.sgd_final), 1) for r in runs]
    speedups = [r.speedup for r in runs]
    lab.record(
        seeds=seeds, T=T, steps=STEPS, h_min_nats=h_min,
        h_min_authors_code_nats=conditional_entropy_nats(sticky_transition_matrix(authors_code=True)),
        speedup=speedups, em_steps_to_sgd_final=[r.em_steps_to_sgd_final for r in runs],
        sgd_final=[r.sgd_final for r in runs], em_final=[r.em_final for r in runs],
        control_sgd_self_speedup=control, speedup_median=float(np.median(speedups)),
        seconds=[r.seconds for r in runs],
    )

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), sharey=True)
    for ax, r in zip(np.atleast_1d(axes), runs):
        ax.plot(r.sgd_losses, color="C3", label="SGD, lr 0.01")
        ax.plot(r.em_losses, color="C0", label="EM-like, lr 0.1 on W_V")
        ax.axhline(r.sgd_final, color="C3", ls=":", lw=0.8)
        ax.axvline(r.em_steps_to_sgd_final, color="C0", ls=":", lw=0.8)
        ax.axhline(h_min, color="green", ls="--", label=f"H_min = {h_min:.3f}")
        ax.axhline(np.log(8), color="gray", ls=":", label="chance, ln 8")
        ax.set(xlabel="step", title=f"seed {r.seed}: {r.speedup:.2f}× ({r.em_steps_to_sgd_final} steps)")
    np.atleast_1d(axes)[0].set_ylabel("full-batch CE (nats)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"sticky Markov chain, T={T}, single-head attention")
    fig.tight_layout()
    lab.savefig(fig, "loss_curves")

    fast = sum(s >= MIN_SPEEDUP for s in speedups)
    assert fast >= MIN_SEEDS, f"speed-ups {np.round(speedups, 2)}: only {fast} of {len(runs)} ≥ {MIN_SPEEDUP}"
    lower = [r.em_final < r.sgd_final for r in runs]
    assert all(lower), f"EM final {[round(r.em_final, 4) for r in runs]} vs SGD {[round(r.sgd_final, 4) for r in runs]}"
    assert max(control) < 1.2, f"control: SGD against its own final loss gave speed-ups {np.round(control, 3)}"
