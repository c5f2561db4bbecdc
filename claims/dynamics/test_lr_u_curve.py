"""The learning-rate U-curve: final loss against log η has an interior minimum and a cliff.

Lab notebook. With a fixed step budget, too small an η has not got far, a larger one trains fast
but settles noisily or bounces, and past a point the loss blows up — the divergence edge. Bengio's
practical guide turns the edge into a rule of thumb: the best η is usually within a factor 2 of the
largest η that does not diverge. We measure the U and the edge with labcore.dynamics.lr_sweep (same
init and same data stream at every η, so η is the only change) and test the rule of thumb as a
separate, strictly-expected-to-fail test for AdamW.

Setup: glass-box GPT (1 layer, d_model 32, 2 heads) on one domain of the tagged Markov language
(labcore.tasks.markov_domains, 16 tokens, length 16, entropy floor known), AdamW, batch 32, 200
steps, no clipping; 11 learning rates 1e-4 … 10 (two per decade). Final loss = mean of the last 10
training losses; diverged = non-finite, or final > 2 × initial (lr_sweep's blowup=2; its default 10
let seed 1's η = 3.16 run, which ended at 23 nats from 3.3, count as "stable").

Prediction (written after one exploratory sweep, seeds 0–1, in a scratch script): the best η is
3e-3–1e-2 (final ≈ 1.42–1.47 nats), 1e-4 ends ≥ 0.5 nats higher, 0.1–1 end ≥ 0.4 nats higher, and
η ≥ 3.16 (seed 0) or 10 (seed 1) diverges; so the rule of thumb fails by a factor ≈ 100–300 for
AdamW, whose step size is bounded by η per coordinate whatever the gradient, so a too-large η
makes it wander (loss near the unigram level) long before it blows up.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore import GPT, GPTConfig
from labcore.dynamics.lr_sweep import geometric_lrs, lr_sweep
from labcore.notebook.claims import Claim, Source
from labcore.tasks.markov_domains import DomainMarkovLanguage
from labcore.training.trainer import TrainConfig

CLAIM = Claim(
    id="dynamics_lr_u_curve",
    paper="dynamics",
    statement=(
        "“The optimal learning rate is usually close to (by a factor of 2) the largest learning rate that does "
        "not cause divergence of the training criterion”"
    ),
    source=Source(title="Practical Recommendations for Gradient-Based Training of Deep Architectures",
                  arxiv="1206.5533", version="v2", where="§3.1, 'The initial learning rate'"),
    paper_value="best η within ×2 of the largest non-divergent η (and, implicit, a divergence edge exists)",
    prediction=(
        "U-shape: best η interior (≈ 3e-3–1e-2), both ends ≥ 0.3 nats worse; the largest η (10) diverges. "
        "Rule of thumb (AdamW): fails, edge/best ≈ 100–300."
    ),
    metric=(
        "final loss (mean of last 10 of 200 steps) at 11 η from 1e-4 to 10; lr_sweep's u_shaped, edge, best_lr"
    ),
    tolerance=(
        "u_shaped; min(final at the smallest η, final at the largest stable η) − best ≥ 0.3 nats; largest η "
        "diverged (control). Rule of thumb: largest stable η / best η ≤ 2 (strict xfail expected)"
    ),
    tolerance_why=(
        "Exploratory seeds 0–1: smallest-η gap 0.85–0.87 nats, largest-stable-η gap 1.0 nats; 0.3 is ≈ 3× "
        "below both. Run-to-run noise of a 10-step mean of the training loss is ≈ 0.03 nats. Seeds 0–4 and "
        "fresh 100–104: gaps 0.85–0.86 / 0.97–1.09, edge (1, 3.16), 5/5 pass; rule-of-thumb ratio 100 (xfail 5/5)."
        " lab calibrate seeds 0–4: left gap 0.84–0.86, right gap 0.97–1.05 nats; best η 3.2e-3–1e-2; edge (1, 3.16) every seed; largest-stable/best 100–273 (xfail 5/5)."
    ),
    tier="quick",
    calibration="fixtures/calibration/dynamics_lr_u_curve.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

LANG = DomainMarkovLanguage(n_tokens=16, seq_len=16)
LRS = geometric_lrs(1e-4, 10.0, per_decade=2)


def sweep(seed: int):
    cfg = GPTConfig(vocab_size=LANG.vocab_size, n_ctx=LANG.seq_len + 1, d_model=32, n_layers=1, n_heads=2)
    train_cfg = TrainConfig(steps=200, optimizer="adamw", grad_clip=None, seed=seed, track_update_ratio=False)
    return lr_sweep(lambda: GPT(cfg), LANG.batch_fn("A", 32), train_cfg, LRS, model_seed=seed, blowup=2.0)


@pytest.fixture(scope="module")
def swept(lab_seed):
    return sweep(lab_seed)


def test_final_loss_is_u_shaped_with_a_divergence_edge(lab, swept):
    sw = swept
    stable = np.flatnonzero(~sw.diverged)
    best = float(sw.final_loss[stable].min())
    left_gap = float(sw.final_loss[0] - best)
    right_gap = float(sw.final_loss[stable[-1]] - best)
    oracle = LANG.eval_batch("A", n=256, seed=0).oracle
    lab.record(lrs=sw.lrs, final_loss=np.where(np.isfinite(sw.final_loss), sw.final_loss, np.nan),
               diverged=sw.diverged, best_lr=sw.best_lr, edge=sw.edge, u_shaped=sw.u_shaped,
               left_gap=left_gap, right_gap=right_gap, best_final_loss=best, entropy_floor=oracle)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    shown = np.minimum(sw.final_loss, 10)
    axes[0].semilogx(sw.lrs[stable], shown[stable], "o-", label="final loss (stable)")
    axes[0].semilogx(sw.lrs[sw.diverged], shown[sw.diverged], "x", color="C3", ms=9, label="diverged (clipped at 10)")
    axes[0].axhline(oracle, color="k", ls=":", lw=1, label="entropy floor")
    axes[0].axvline(sw.best_lr, color="C2", ls="--", lw=1, label=f"best η = {sw.best_lr:.2g}")
    axes[0].set(xlabel="learning rate η", ylabel="final loss (nats)", title="LR sweep: the U and the cliff")
    axes[0].legend(fontsize=8)
    for lr, curve in zip(sw.lrs, sw.curves):
        axes[1].plot(np.minimum(curve, 10), lw=0.8, color=plt.cm.viridis(np.log(lr / LRS[0]) / np.log(LRS[-1] / LRS[0])))
    axes[1].set(xlabel="step", ylabel="loss (clipped at 10)", title="loss curves, dark = small η, light = large η")
    lab.savefig(fig, "lr_u_curve")

    assert sw.u_shaped, f"no interior minimum among stable runs: {dict(zip(sw.lrs.round(5), sw.final_loss.round(3)))}"
    assert min(left_gap, right_gap) >= 0.3, f"U too shallow: left gap {left_gap:.3f}, right gap {right_gap:.3f} nats"
    # Control: the sweep reaches the cliff — the largest η must diverge.
    assert sw.diverged[-1], f"η = {sw.lrs[-1]:g} did not diverge (final {sw.final_loss[-1]:.3f}): no edge in range"


@pytest.mark.xfail(strict=True, reason=(
    "AdamW at this scale: exploratory seeds 0–1 put the best η at 3e-3–1e-2 and the largest non-diverging η at "
    "1–3.2, a factor ≈ 100–300, not ≤ 2. Hypothesis: the rule is for SGD, whose step grows with the gradient, so "
    "it blows up as soon as it is unstable; Adam's per-coordinate step is bounded by η, so a too-large η degrades "
    "the loss to near the unigram level for two decades of η before it blows up."))
def test_best_lr_within_factor_two_of_edge(lab, swept):
    stable = np.flatnonzero(~swept.diverged)
    ratio = float(swept.lrs[stable[-1]] / swept.best_lr)
    lab.record(largest_stable_over_best=ratio)
    assert ratio <= 2, f"largest stable η / best η = {ratio:.1f} (> 2)"
