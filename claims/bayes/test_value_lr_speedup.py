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

Measured numbers (speed-ups per chain, final losses, the controls) are in the calibration tables
``fixtures/calibration/bayes_value_lr_speedup.json`` (seeds 0–4) and ``.fresh.json`` (100–104), and
summarised in the CLAIM's ``tolerance_why``. Wall time: the SGD and EM runs dominate (≈ 5 ms/step
of CPU at T = 500, 6 runs of 1,000 steps); the controls stop at the crossing and add a few seconds.

Picture (loss_curves.png): SGD at lr 0.01 barely leaves chance (ln 8 = 2.079 nats) in 1000
steps, while the EM-like run bends down after a few hundred steps. So "2.3× faster" here means
"escapes the initial plateau much sooner".

**Equal-learning-rate controls (science audit, issue 13).** The old control (SGD against its own
final loss) was 1.00 by construction. "10× on W_V is faster" can mean two things: the *values*
(the M-step of the EM reading) are what needs the larger step, or *any* larger step escapes the
plateau of a small init. Two controls on the same chain and init separate them:

* 10× on W_Q and W_K only (the "frame", the E-step side) — if the EM reading is right, this
  should help much less than 10× on W_V. Asserted as the value-specific claim: EM speed-up
  ≥ 1.5 × this control's in ≥ 2 of 3 chains. Prediction, written after one look at lab seed 0
  (where it already failed: Q/K 10× was as fast or faster), so it is a strict xfail.
* 10× on every parameter — plain SGD's gradient flow run 10× faster, so it must reach SGD's final
  loss ≈ 10× sooner (a check of the bookkeeping, asserted in [8, 10.5]) and no later than EM-like.

What the controls show: the 2–4× speed-up of the paper's schedule is real, but it is not
value-specific here — a 10× step on the query/key side of the head escapes the plateau at least as
fast. At init (std 0.1) every factor of the head's output is small, so enlarging any factor's
step speeds the escape; nothing singles out the M-step.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore.measures.lr_speedup import steps_to_loss
from labcore.notebook.claims import Claim, Source
from labcore.tasks.sticky_chain import conditional_entropy_nats, sticky_transition_matrix
from labcore.training.em_vs_sgd import run_em_vs_sgd

CLAIM = Claim(
    id="bayes_value_lr_speedup",
    paper="bayes",
    statement="“EM-like schedule converges 2.3× faster (430 vs 1000 steps)” to SGD's final loss, "
              "on the sticky Markov-chain task.",
    source=Source(title="Gradient Dynamics of Attention: How Cross-Entropy Sculpts Bayesian Manifolds",
                  arxiv="2512.22473", version="v2",
                  where="§5.2 sticky Markov-chain simulation (EM-like vs SGD); authors' em_vs_sgd_multiseed.py"),
    paper_value="2.3× (430 vs 1000 steps), T=2000, 5 seeds",
    prediction="With T=500 (CPU budget) the EM-like run still reaches SGD's final loss about 2× sooner, and ends lower, "
               "in each of the paper's seeds 42, 2024, 1337. Equal-LR controls (written after one look at lab seed 0): "
               "10× on all parameters ≈ 10× (time rescaling); the value-specific reading (EM ≥ 1.5× the Q/K-10× control) fails",
    metric="per chain: 1000 / (first step with loss < SGD final loss) for EM-like (10× W_V), 10× W_Q+W_K, 10× all; "
           "final full-batch CE of SGD and EM",
    tolerance=(
        "EM speed-up ≥ 1.7 in ≥ 2 of 3 chains; EM final < SGD final in all 3; 10× on all parameters: speed-up in "
        "[8, 10.5] and ≥ EM in every chain; value-specific (EM ≥ 1.5 × the 10×-on-W_Q/W_K speed-up in ≥ 2 of 3 "
        "chains) is a strict xfail"
    ),
    tolerance_why=(
        "Research note: 1.7 is below every calibrated speed-up (2.37–2.69 at T=2000). Exploration, --lab-seed "
        "0..4 (15 chains, min/median/max per chain slot): EM speed-up 2.00–3.76 (medians 2.45, 2.78, 2.30); "
        "EM final below SGD final in all 15. Controls on the same chain and init: 10× on W_Q, W_K only "
        "3.16–4.44 (medians 3.8–3.9) — faster than the value LR in 14 of 15 chains; EM / Q-K ratio "
        "0.48–1.15, never ≥ 1.5 (strict xfail: the speed-up is not value-specific). 10× on all parameters "
        "crosses at step 101 in every chain (9.90×): plain SGD's gradient flow 10× faster, a bookkeeping "
        "check. The old control (SGD against its own final loss, 1.00 by construction) is gone. "
        "Fresh seeds 100–104 (15 chains): all tests held — EM speed-up 1.59–4.05 (one chain below 1.7, "
        "1.59 at seed 102: the '2 of 3' rule absorbs it), Q/K-10× 3.26–5.46, EM / Q-K 0.31–1.01 (never ≥ 1.5), 10× on all 9.90 "
        "in every chain."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_value_lr_speedup.json",
    status="confirmed",
)

PAPER_SEEDS = (42, 2024, 1337)
T, STEPS = 500, 1000
MIN_SPEEDUP, MIN_SEEDS = 1.7, 2
UNIFORM_RANGE = (8.0, 10.5)   # a uniform 10× is a 10× time rescaling of the same gradient flow
VALUE_SPECIFIC = 1.5          # EM speed-up ≥ 1.5 × the Q/K control's = "the value LR is what matters"
CONTROLS = {                  # equal 10× factors on other parameters (lr 0.01 × factor, plain SGD)
    "qk_10x": {"W_Q": 10.0, "W_K": 10.0},
    "all_10x": {"W_Q": 10.0, "W_K": 10.0, "W_V": 10.0, "W_O": 10.0},
}


@pytest.fixture(scope="module")
def chains(lab_seed):
    """Per chain: SGD and EM-like for 1,000 steps, and each control until it beats SGD's final loss."""
    seeds = [s + 100_000 * lab_seed for s in PAPER_SEEDS]
    runs = [run_em_vs_sgd(s, T=T, steps=STEPS) for s in seeds]
    controls = {name: [steps_to_loss(r.seed, r.sgd_final, f, T=T, max_steps=STEPS) for r in runs]
                for name, f in CONTROLS.items()}
    speed = {"em": [r.speedup for r in runs],
             **{name: [a.speedup(STEPS) for a in arms] for name, arms in controls.items()}}
    return dict(seeds=seeds, runs=runs, controls=controls, speed=speed)


def _record_and_plot(lab, c):
    runs, speed = c["runs"], c["speed"]
    h_min = conditional_entropy_nats(sticky_transition_matrix())
    lab.record(
        seeds=c["seeds"], T=T, steps=STEPS, h_min_nats=h_min,
        h_min_authors_code_nats=conditional_entropy_nats(sticky_transition_matrix(authors_code=True)),
        speedup=speed["em"], em_steps_to_sgd_final=[r.em_steps_to_sgd_final for r in runs],
        sgd_final=[r.sgd_final for r in runs], em_final=[r.em_final for r in runs],
        speedup_median=float(np.median(speed["em"])), seconds=[r.seconds for r in runs],
        **{f"{name}_speedup": speed[name] for name in CONTROLS},
        **{f"{name}_steps_to_sgd_final": [a.steps_to_threshold for a in c["controls"][name]] for name in CONTROLS},
        em_over_qk=[e / q for e, q in zip(speed["em"], speed["qk_10x"])],
    )
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), sharey=True)
    for i, (ax, r) in enumerate(zip(np.atleast_1d(axes), runs)):
        ax.plot(r.sgd_losses, color="C3", label="SGD, lr 0.01")
        ax.plot(r.em_losses, color="C0", label="EM-like, 10× on W_V")
        ax.plot(c["controls"]["qk_10x"][i].losses, color="C1", ls="--", label="control: 10× on W_Q, W_K")
        ax.plot(c["controls"]["all_10x"][i].losses, color="C4", ls="--", label="control: 10× on all")
        ax.axhline(r.sgd_final, color="C3", ls=":", lw=0.8)
        ax.axhline(h_min, color="green", ls="--", label=f"H_min = {h_min:.3f}")
        ax.axhline(np.log(8), color="gray", ls=":", label="chance, ln 8")
        ax.set(xlabel="step", title=f"seed {r.seed}: EM {r.speedup:.2f}×, Q/K {speed['qk_10x'][i]:.2f}×, "
                                    f"all {speed['all_10x'][i]:.2f}×")
        ax.title.set_fontsize(8)
    np.atleast_1d(axes)[0].set_ylabel("full-batch CE (nats)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"sticky Markov chain, T={T}, single-head attention (controls stop at SGD's final loss)")
    fig.tight_layout()
    lab.savefig(fig, "loss_curves")


def test_value_lr_speedup(lab, chains):
    """The paper's number: 10× on W_V reaches plain SGD's final loss ≥ 1.7× sooner, and ends lower."""
    _record_and_plot(lab, chains)
    runs, speedups = chains["runs"], chains["speed"]["em"]
    fast = sum(s >= MIN_SPEEDUP for s in speedups)
    assert fast >= MIN_SEEDS, f"speed-ups {np.round(speedups, 2)}: only {fast} of {len(runs)} ≥ {MIN_SPEEDUP}"
    lower = [r.em_final < r.sgd_final for r in runs]
    assert all(lower), f"EM final {[round(r.em_final, 4) for r in runs]} vs SGD {[round(r.sgd_final, 4) for r in runs]}"


def test_uniform_10x_is_a_time_rescaling(lab, chains):
    """Bookkeeping check: 10× on *every* parameter is plain SGD's gradient flow run 10× faster, so it must
    reach SGD's final loss ≈ 10× sooner (only the discretisation differs) — and no later than EM-like."""
    speed = chains["speed"]
    lab.record(em_speedup=speed["em"], all_10x_speedup=speed["all_10x"], qk_10x_speedup=speed["qk_10x"])
    assert all(UNIFORM_RANGE[0] <= a <= UNIFORM_RANGE[1] for a in speed["all_10x"]), (
        f"10× on all parameters gave speed-ups {np.round(speed['all_10x'], 2)}, not ≈ 10")
    assert all(a >= e for a, e in zip(speed["all_10x"], speed["em"])), (
        f"10× on all parameters {np.round(speed['all_10x'], 2)} is slower than 10× on W_V {np.round(speed['em'], 2)}")


@pytest.mark.xfail(strict=True, reason=(
    "measured over --lab-seed 0..4 (15 chains): the 10× Q/K control is as fast as or faster than 10× on W_V — "
    "see tolerance_why for the numbers; hypothesis: at init (std 0.1) every path of the single head is small, "
    "so a larger step on ANY of its factors escapes the saddle sooner; nothing singles out the values (M-step)"))
def test_speedup_is_value_specific(lab, chains):
    """The EM reading: the speed-up comes from the value (M-step) learning rate, not from any larger LR."""
    speed = chains["speed"]
    ratio = [e / q for e, q in zip(speed["em"], speed["qk_10x"])]
    lab.record(em_over_qk=ratio, em_speedup=speed["em"], qk_10x_speedup=speed["qk_10x"])
    specific = sum(r >= VALUE_SPECIFIC for r in ratio)
    assert specific >= MIN_SEEDS, (
        f"EM speed-up / Q-K-control speed-up {np.round(ratio, 2)}: only {specific} of {len(ratio)} ≥ {VALUE_SPECIFIC}")
