"""A small transformer matches the Bayesian entropy curve of bijection elimination (V=10, L=9).

Lab notebook. The headline of the paper: trained on next-token prediction alone, a small
transformer's predictive distribution at every query equals the Bayes posterior — uniform over
the values the context has not used yet — to 10⁻³–10⁻⁴ bits (V=20, 50k+ steps on a GPU). On one
CPU core we get ~1,000 steps of a 150k-parameter, 3-layer model (conftest.py), so we test the same
statement at the scale the budget allows: V=10, L=9, target 0.05 bits (the issue's target).

Three numbers, because entropy alone can be right for the wrong reason (a model uniform over the
wrong V−t values has the right entropy): per-sample entropy MAE (value-slice softmax, the strict
metric of the authors' jlens code), KL(Bayes‖model), and the mass on eliminated values. All on
a fixed 1,024-sequence evaluation batch drawn from its own generator. Control that must be
large: the same network at initialisation (≈ the 0.901-bit context-free plateau).

What we saw (5 seeds): the MAE drops below 0.05 bits after 350–500 steps (24–52 s on a busy
core) and then flattens at 0.027–0.028 bits, while KL keeps falling (to ~0.005 bits). The residual MAE is the
entropy of the leak: ~0.3 % of mass spread thinly over the eliminated values adds −q log q per
value, which costs far more entropy than KL. The model's curve lies just *above* log2(V−t).
"""

import matplotlib.pyplot as plt
import numpy as np

from labcore.measures.posterior import mlp_plateau_mae_bits
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="bayes_calibration",
    paper="bayes",
    statement=(
        "“In these settings, small transformers reproduce Bayesian posteriors with 10⁻³–10⁻⁴ bit "
        "accuracy …” (abstract)"
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="abstract; bijection results table (section/table number not verified offline; MAE 3×10⁻³ bits at V=20; v3: 0.007)"),
    paper_value="entropy MAE 3e-3 bits (v1) / 7e-3 bits (v3), V=20, L=19, 2.7M params, ≥50k steps",
    prediction="At V=10, L=9 after 1,000 CPU steps: per-sample MAE ≲ 0.03 bits, KL ≲ 0.01 bits, "
               "eliminated mass ≲ 0.005, far below the untrained network (~0.9 bits).",
    metric="per-sample entropy MAE, KL(Bayes‖model), eliminated mass on 1,024 fixed evaluation sequences",
    tolerance="MAE ≤ 0.05 bits, KL ≤ 0.015 bits, eliminated mass ≤ 0.01; control: init-model MAE ≥ 0.5 bits",
    tolerance_why=(
        "Measured over seeds 0–4 (1,000 steps; min/median/max): MAE 0.0268/0.0269/0.0284 bits, KL "
        "0.0049/0.0051/0.0052 bits, eliminated mass 0.0028/0.0028/0.0030; first eval step with MAE ≤ "
        "0.05: 350/400/500; init MAE 0.884–0.889. 0.05 is the issue's target, 1.8× the worst seed; "
        "the KL and mass bounds are ≈3× the worst seed. The paper's 10⁻³ needs ~50× more steps "
        "(papers.md §7), which is the GPU claim bayes_full_bijection."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_calibration.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

MAE_MAX, KL_MAX, EM_MAX, INIT_MIN = 0.05, 0.015, 0.01, 0.5


def test_transformer_matches_bayes_entropy(lab, bijection_run, init_model):
    run, task = bijection_run, bijection_run.task
    rep = run.report
    init = run.calibrate(init_model)
    first_below = next((c["step"] for c in run.curve if c["mae"] <= 0.05), None)
    lab.record(entropy_mae_bits=rep.entropy_mae_bits, mean_curve_mae_bits=rep.mean_curve_mae_bits,
               kl_bits=rep.kl_bits, eliminated_mass=rep.eliminated_mass, offslice_mass=rep.offslice_mass,
               init_entropy_mae_bits=init.entropy_mae_bits, init_kl_bits=init.kl_bits,
               plateau_mae_bits=mlp_plateau_mae_bits(task.V, task.L),
               entropy_model_curve=rep.entropy_model_curve, entropy_bayes_curve=rep.entropy_bayes_curve,
               first_step_mae_below_0p05=first_below, steps=run.steps,
               train_seconds=run.train_seconds, steps_per_second=run.steps_per_second,
               seconds_to_0p05=(first_below / run.steps_per_second
                                if first_below and run.steps_per_second else None),
               from_cache=run.from_cache,
               mae_curve=[[c["step"], c["mae"]] for c in run.curve])

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    t = np.arange(task.L)
    ax.plot(t, rep.entropy_bayes_curve, "k-", lw=2, label="Bayes log2(V−t)")
    ax.plot(t, rep.entropy_model_curve, "C0o--", label=f"transformer (MAE {rep.entropy_mae_bits:.3f})")
    ax.plot(t, init.entropy_model_curve, "C3:", label=f"at init (MAE {init.entropy_mae_bits:.2f})")
    ax.set(xlabel="query t (pairs seen)", ylabel="entropy (bits)", title=f"V={task.V}, L={task.L}, seed {run.seed}")
    ax.legend(fontsize=7)
    steps = [c["step"] for c in run.curve]
    for key, label in (("mae", "entropy MAE"), ("kl", "KL(Bayes‖model)"), ("eliminated_mass", "eliminated mass")):
        ax2.semilogy(steps, [c[key] for c in run.curve], label=label)
    ax2.axhline(0.05, color="gray", ls=":", lw=1)
    ax2.set(xlabel="step", title="calibration during training")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "entropy_per_position")

    assert init.entropy_mae_bits >= INIT_MIN, f"control: the untrained net's MAE {init.entropy_mae_bits:.3f} should be ~0.9"
    assert rep.entropy_mae_bits <= MAE_MAX, f"entropy MAE {rep.entropy_mae_bits:.4f} bits > {MAE_MAX}"
    assert rep.kl_bits <= KL_MAX, f"KL(Bayes‖model) {rep.kl_bits:.4f} bits > {KL_MAX}"
    assert rep.eliminated_mass <= EM_MAX, f"mass on eliminated values {rep.eliminated_mass:.4f} > {EM_MAX}"
