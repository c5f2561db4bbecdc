"""Layer ablation is catastrophic: bypass any one block and the calibration error jumps ≥ 10×.

Lab notebook. The paper reports that removing any single layer of its bijection model raises the
error by more than an order of magnitude — the computation is spread over depth, no layer is
spare. We bypass each block of the shared 3-layer model in turn (``resid_post := resid_pre``,
``labcore.measures.probes.bypass_block``, the authors' ``bypass``) and compare the entropy MAE on the
evaluation batch with the intact model's.

Then the finer question behind "attention routes, the FFN updates": ablate only the attention
sublayer, or only the MLP, of each block, and look at *two* numbers — the mass on eliminated
values (support: did the model still find which values were used?) and the entropy MAE
(calibration). Expectation (research note, not a paper claim): removing attention destroys the
support (mass on eliminated values towards the 0.4 of a context-free guess), removing an MLP
hurts calibration more than support. Those sublayer numbers are recorded and plotted, not
asserted — the paper makes no quantitative sublayer claim.

Seen over seeds 0–7 before the audit (numbers in ``tolerance_why`` and the calibration tables):
block 0 is indispensable in every seed; blocks 1 and 2 range from indispensable to idle (in some
seeds bypassing one of them even improves the MAE slightly); removing the MLP of block 0 is
catastrophic while the MLPs of blocks 1 and 2 change nothing — the "FFN posterior update"
happens once, in block 0; attention is needed in blocks 0 and 1.

**Strengthened after the science audit (issue 13)**: the paper says *every* layer matters; only
block 0 was asserted, with no control. Now asserted, per layer where it holds:

* block 0: bypassing it costs ≥ 10× (the paper's factor), and *each* of its sublayers is needed —
  without its MLP the MAE rises ≥ 10×, without its attention the mass on eliminated values rises
  ≥ 10× (the support is lost);
* blocks 1 and 2: one at a time they are seed-dependent (recorded), but bypassing both together
  must cost ≥ 10× — block 0 alone does not do the computation (prediction written before the
  exploration seeds);
* control: a kick of the same size as the block's write in a random direction
  (``labcore.measures.ablation_controls.random_direction_block``, 3 draws) must hurt at most half
  as much as the bypass, for every block whose bypass reaches 10×. The bound written before
  measuring was 1/5 ("far less"); seed 0 gave about 1/3, so 1/5 is kept as a strict xfail and the
  asserted bound is 1/2 — a loosening made after seeing seed 0, stated here.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source
from labcore.measures.ablation_controls import random_direction_block
from labcore.measures.probes import bypass_block, zero_attention, zero_mlp

CLAIM = Claim(
    id="bayes_layer_ablation",
    paper="bayes",
    statement=(
        "Removing any single layer increases the calibration error by more than 10× (paraphrase; "
        "v1 ablation section, as summarised in two independent notes of v1 and v3 — the exact "
        "sentence was not available offline)."
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="ablation section (number not verified offline); code experiments/ablations/layer_ablation.py (bypass)"),
    paper_value="> 10× error increase for every single-layer removal (6-layer model, V=20)",
    prediction="Bypassing any block of the 3-layer V=10 model multiplies the entropy MAE by ≥ 10 "
               "(written before measuring; see the tolerance for what held).",
    metric="MAE(ablated) / MAE(intact) on 1,024 evaluation sequences, for: block ℓ bypassed (ℓ = 0, 1, 2), blocks 1+2 bypassed, "
           "block 0 without its MLP / attention (eliminated-mass ratio for attention), and a same-norm random kick after block ℓ",
    tolerance=(
        "block 0 bypassed ≥ 10× (the paper's factor); block 0 without its MLP: MAE ≥ 10×; without its attention: "
        "eliminated mass ≥ 10×; blocks 1+2 bypassed together ≥ 10×; control: for every block whose bypass reaches "
        "10×, the same-norm random kick costs ≤ 1/2 of the bypass (the pre-stated ≤ 1/5 is a strict xfail). Each "
        "of blocks 1, 2 alone ('every block ≥ 10×') is recorded, not asserted: seed-dependent here"
    ),
    tolerance_why=(
        "Before the audit, seeds 0–4, bypass ratios (block 0, 1, 2): [24.7, 11.6, 11.9], [25.8, 13.7, 7.6], "
        "[42.3, 13.7, 5.1], [25.1, 14.0, 0.79], [23.7, 9.1, 13.1]; a fresh-seed flakiness run at seed 7 gave "
        "[36.1, 0.70, 0.90] (blocks 1 and 2 idle). So 'every block ≥ 10×' held in 1/5 seeds and is recorded. "
        "Exploration of the strengthened file (seeds 0–4, min/median/max): block 0 bypass 23.7/25.1/42.3; "
        "blocks 1+2 together 15.7/19.0/22.3 (prediction written before these seeds: ≥ 10); block 0 without "
        "its MLP 14.1/31.1/45.7× MAE; without its attention 51/59/73× eliminated mass; random-kick / bypass "
        "share over the blocks that reach 10×: max 0.31/0.36/0.41 — the pre-stated 1/5 fails in every seed "
        "(strict xfail), the asserted 1/2 was set after seed 0 (0.34). The kick alone costs 8.3–10.3× after "
        "block 0: at d=64 with LayerNorm a perturbation of a block's size hurts by itself, so part of the "
        "paper's '> 10×' is size, not content. "
        "Fresh seeds 100–104 (never used to choose anything): all tests held — block 0 bypass "
        "20.2/29.0/40.0, blocks 1+2 15.9/20.5/24.8, no MLP 11.9/23.9/35.2× (closest to its bound), no "
        "attention 46/71/87×, max control share 0.33/0.35/0.44; seed 101 again leaves block 2 idle (0.74)."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_layer_ablation.json",
    status="confirmed",
)

PAPER_RATIO, FALLBACK_RATIO = 10.0, 5.0
CONTROL_SHARE = 0.5      # a same-norm random kick may do at most half the bypass's harm (asserted)
PRESTATED_SHARE = 0.2    # the bound written before measuring: at most 1/5 (a strict xfail)
CONTROL_DRAWS = 3


def _upper_blocks_bypassed(n_layers: int) -> list:
    return [h for layer in range(1, n_layers) for h in bypass_block(layer)]


@pytest.fixture(scope="module")
def ablations(bijection_run) -> dict:
    run, model = bijection_run, bijection_run.model
    n, base = model.cfg.n_layers, run.report.entropy_mae_bits
    rows = {}
    with torch.no_grad():
        for kind, hooks in (("bypass", bypass_block), ("no_attention", zero_attention), ("no_mlp", zero_mlp)):
            for layer in range(n):
                with model.hooks(fwd_hooks=hooks(layer)):
                    rows[(kind, layer)] = run.calibrate(model)
        g = torch.Generator().manual_seed(7_000 + run.seed)
        control = []                           # per block: mean MAE over draws of a same-norm random kick
        for layer in range(n):
            maes = []
            for _ in range(CONTROL_DRAWS):
                with model.hooks(fwd_hooks=random_direction_block(layer, g)):
                    maes.append(run.calibrate(model).entropy_mae_bits)
            control.append(float(np.mean(maes)))
        with model.hooks(fwd_hooks=_upper_blocks_bypassed(n)):
            upper = run.calibrate(model)
    ratios = [rows[("bypass", l)].entropy_mae_bits / base for l in range(n)]
    return {"rows": rows, "ratios": ratios, "control_ratios": [c / base for c in control],
            "upper_ratio": upper.entropy_mae_bits / base,
            "sublayer_ratio": {k: rows[k].entropy_mae_bits / base for k in rows},
            "elim_ratio": {k: rows[k].eliminated_mass / run.report.eliminated_mass for k in rows}}


def _record_and_plot(lab, run, ablations):
    rows, ratios, control = ablations["rows"], ablations["ratios"], ablations["control_ratios"]
    base, n = run.report, len(ratios)
    lab.record(intact_mae=base.entropy_mae_bits, intact_eliminated_mass=base.eliminated_mass,
               bypass_ratio=ratios, min_bypass_ratio=min(ratios), second_largest_ratio=sorted(ratios)[-2],
               random_direction_ratio=control, upper_blocks_bypassed_ratio=ablations["upper_ratio"],
               **{f"{kind}_L{l}_{m}": getattr(rows[(kind, l)], attr)
                  for (kind, l) in rows
                  for m, attr in (("mae", "entropy_mae_bits"), ("kl", "kl_bits"), ("elim", "eliminated_mass"))})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.2
    x = np.arange(n)
    for i, kind in enumerate(("bypass", "no_attention", "no_mlp")):
        axes[0].bar(x + (i - 1.5) * width, [rows[(kind, l)].entropy_mae_bits for l in range(n)], width, label=kind)
        axes[1].bar(x + (i - 1.5) * width, [rows[(kind, l)].eliminated_mass for l in range(n)], width, label=kind)
    axes[0].bar(x + 1.5 * width, [c * base.entropy_mae_bits for c in control], width, color="gray",
                label="control: same-norm random kick")
    for ax, base_value, title in ((axes[0], base.entropy_mae_bits, "entropy MAE (bits): calibration"),
                                  (axes[1], base.eliminated_mass, "eliminated mass: support")):
        ax.axhline(base_value, color="k", ls=":", lw=1, label="intact")
        ax.set_yscale("log")
        ax.set_xticks(x, [f"block {l}" for l in range(n)])
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "ablations")


def test_first_block_is_indispensable(lab, bijection_run, ablations):
    _record_and_plot(lab, bijection_run, ablations)
    ratios = ablations["ratios"]
    # The paper's "every block ≥ 10×" (1/5 seeds) and the 2-of-3 ≥ 5× fallback (failed seed 7) are
    # seed-dependent here: a pass would overstate them, a strict xfail would fail on the seeds where
    # they hold, a non-strict xfail cannot fail. They are recorded.
    lab.record(min_ratio=min(ratios), blocks_at_paper_ratio=int(sum(r >= PAPER_RATIO for r in ratios)),
               two_blocks_at_fallback=bool(sorted(ratios)[-2] >= FALLBACK_RATIO))
    assert ratios[0] >= PAPER_RATIO, (
        f"MAE ratios (bypassed / intact) per block {np.round(ratios, 2)}: block 0 is not ≥ {PAPER_RATIO}×")


def test_both_sublayers_of_block0_are_needed(lab, ablations):
    """Per sublayer of block 0: without its MLP calibration collapses (MAE ≥ 10×); without its
    attention the support is lost (eliminated mass ≥ 10× the intact model's)."""
    mlp, attn = ablations["sublayer_ratio"][("no_mlp", 0)], ablations["elim_ratio"][("no_attention", 0)]
    lab.record(no_mlp_L0_mae_ratio=mlp, no_attention_L0_elim_ratio=attn,
               no_attention_L0_mae_ratio=ablations["sublayer_ratio"][("no_attention", 0)])
    assert mlp >= PAPER_RATIO, f"removing block 0's MLP multiplies the MAE by only {mlp:.2f}"
    assert attn >= PAPER_RATIO, f"removing block 0's attention multiplies the eliminated mass by only {attn:.2f}"


def test_depth_beyond_block0_is_needed(lab, ablations):
    """Blocks 1 and 2 are sometimes idle one at a time (a seed can leave either spare), but bypassing
    both together must cost the paper's 10×: block 0 alone does not do the computation."""
    upper, ratios = ablations["upper_ratio"], ablations["ratios"]
    lab.record(upper_blocks_bypassed_ratio=upper, bypass_ratio=ratios)
    assert upper >= PAPER_RATIO, (
        f"bypassing blocks 1..{len(ratios) - 1} together multiplies the MAE by only {upper:.2f} "
        f"(one at a time: {np.round(ratios[1:], 2)})")


def _control_shares(ablations) -> tuple[list[float], list[int]]:
    """Random-kick harm / bypass harm per block, and the blocks whose bypass reaches the paper's 10×."""
    ratios, control = ablations["ratios"], ablations["control_ratios"]
    return [c / r for c, r in zip(control, ratios)], [l for l, r in enumerate(ratios) if r >= PAPER_RATIO]


def test_random_kick_of_the_same_size_hurts_less(lab, ablations):
    """Control: for every block whose bypass costs ≥ 10×, a random direction of the block's own write
    norm costs at most half as much — the harm is the block's content, not the size of the kick."""
    share, needed = _control_shares(ablations)
    lab.record(random_direction_ratio=ablations["control_ratios"], bypass_ratio=ablations["ratios"],
               control_share=share, max_control_share=max(share[l] for l in needed) if needed else 0.0)
    bad = [l for l in needed if share[l] > CONTROL_SHARE]
    assert 0 in needed and not bad, (
        f"bypass ratios {np.round(ablations['ratios'], 2)} vs same-norm random-kick ratios "
        f"{np.round(ablations['control_ratios'], 2)}: blocks {bad} are hurt nearly as much by a random kick")


@pytest.mark.xfail(strict=True, reason=(
    "pre-stated 'far less' = at most 1/5 of the bypass's harm; measured over seeds 0–4 the same-norm random "
    "kick costs about a third as much (see tolerance_why); hypothesis: with d=64 and LayerNorm, a kick as "
    "large as a block's write moves the normalised stream far enough to hurt by itself"))
def test_random_kick_hurts_five_times_less(lab, ablations):
    share, needed = _control_shares(ablations)
    lab.record(control_share=share)
    bad = [l for l in needed if share[l] > PRESTATED_SHARE]
    assert not bad, f"random-kick / bypass harm {np.round(share, 3)} > {PRESTATED_SHARE} for blocks {bad}"
