"""LoRA learns less and forgets less? Fine-tuning the small pretrained model on B and re-testing it on A.

Lab notebook. Biderman et al. 2024 fine-tune Llama-2-7B on code and math with full finetuning
and LoRA and find that LoRA learns less of the target domain but keeps more of the base model's
abilities outside it; plotted as forgetting vs learning over training, the two methods "occupy
the same Pareto curve", LoRA sitting at the learn-less/forget-less end.

Small-model version (labcore.finetuning.recipes): the 2-layer base is pretrained on two tagged Markov
domains, A and B₀; fine-tuning (100 steps) teaches a shifted domain B and never shows A, but the
tag tells the domains apart, so a model *could* learn B without touching A. "Learned" = base
B-loss − final B-loss; "forgot" = final A-loss − base A-loss (expected CE on 512 held-out
sequences each). Methods, each at its learning rate from labcore.finetuning.recipes (LORA_LR for every
LoRA variant, FULL_LR for full fine-tuning — both chosen on task B alone): full fine-tuning,
LoRA r = 8 on W_Q, W_V, LoRA r = 8 on all linear layers, QLoRA (NF4 + DQ fake-quantised base,
all linear, r = 8). The forgetting curves (A-loss against B-loss every 10 steps) are plotted like
the paper's Fig. 4.

Measured (seeds 0–4; learned / forgot, nats, min–max): full 0.426–0.447 / 0.197–0.211; LoRA q,v
0.381–0.398 / 0.068–0.217; LoRA all-linear 0.419–0.440 / 0.376–0.499; QLoRA all-linear
0.419–0.441 / 0.397–0.516. Every LoRA variant learns less (q,v clearly, all-linear by only
0.004–0.007 nats). LoRA on q,v forgets less in 4 seeds of 5, but never by much; LoRA on all
linear layers forgets about *twice* as much as full fine-tuning. On the trade-off plot, q,v LoRA
ends on full fine-tuning's curve (its A-loss minus full FT's A-loss at the same B-loss:
−0.06…+0.11, median +0.02) — the paper's "same Pareto curve"; all-linear LoRA and QLoRA end well
above it (+0.18…+0.32).
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore.notebook.claims import Claim, Source
from labcore.finetuning.recipes import FinetuneRecipe

FULL = FinetuneRecipe(method="full")
VARIANTS = {
    "LoRA q,v r=8": FinetuneRecipe(targets=("q", "v"), r=8, alpha=8),
    "LoRA all-linear r=8": FinetuneRecipe(targets="all_linear", r=8, alpha=8),
    "QLoRA NF4 all-linear r=8": FinetuneRecipe(method="qlora", targets="all_linear", r=8, alpha=8, quant="nf4"),
}

#: Seed-to-seed std (seeds 0–4) of the paired differences learned(full) − learned(variant) and
#: forgot(full) − forgot(variant), per variant (nats).
SIGMA_LEARN = {"LoRA q,v r=8": 0.0061, "LoRA all-linear r=8": 0.00078, "QLoRA NF4 all-linear r=8": 0.0014}
SIGMA_FORGET = {"LoRA q,v r=8": 0.065, "LoRA all-linear r=8": 0.049, "QLoRA NF4 all-linear r=8": 0.050}

CLAIM = Claim(
    id="forgetting_small_model",
    paper="forgetting",
    statement=(
        "“Our results show that, in the standard low-rank settings, LoRA substantially underperforms "
        "full finetuning. Nevertheless, LoRA better maintains the base model's performance on tasks "
        "outside the target domain.”"
    ),
    source=Source(
        title="LoRA Learns Less and Forgets Less", arxiv="2405.09673", version="v2",
        where="abstract; §4.1–4.3, Fig. 4 (learning–forgetting trade-off)",
    ),
    paper_value="qualitative: LoRA learns less (HumanEval, GSM8K) and forgets less (HellaSwag, ARC, WinoGrande)",
    prediction=(
        "Every LoRA variant learns less of B and forgets less of A than full fine-tuning. (Measured: "
        "all learn less; q,v forgets less in 4/5 seeds but never by 2σ; all-linear LoRA and QLoRA "
        "forget about twice as much as full fine-tuning.)"
    ),
    metric=(
        "learned = base − final expected CE on task B; forgot = final − base expected CE on domain A "
        "(512 held-out sequences each), 100 steps"
    ),
    tolerance="learned(full) − learned(LoRA) ≥ 2σ_learn and forgot(full) − forgot(LoRA) ≥ 2σ_forget, per variant",
    tolerance_why=(
        "σ = seed-to-seed std (seeds 0–4) of each paired margin, per variant (SIGMA_LEARN, "
        "SIGMA_FORGET). Learning margins (min/median/max): q,v 0.045/0.048/0.060, all-linear "
        "0.0052/0.0064/0.0072, QLoRA 0.0042/0.0072/0.0076 — all ≥ 2σ. Forgetting margins: q,v "
        "−0.018/0.028/0.143 (positive in 4/5, ≥ 2σ = 0.13 only on seed 3: inconclusive); all-linear "
        "−0.30/−0.22/−0.17 and QLoRA −0.31/−0.23/−0.19 (forget more in every seed)."
    ),
    tier="quick",
    calibration="fixtures/calibration/forgetting_small_model.json",
)


def _learned_forgot(finetune_lab, run):
    return finetune_lab.base_loss("B") - run.final["B"], run.final["A"] - finetune_lab.base_loss("A")


def _plot_tradeoff(lab, finetune_lab, runs):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, run) in enumerate(runs.items()):
        style = "k-" if name == "full fine-tune" else f"C{i}-"
        axes[0].plot(run.curves["B"], run.curves["A"], style, marker="o", ms=3, label=name)
        axes[0].plot(run.curves["B"][-1:], run.curves["A"][-1:], style[:-1] + "*", ms=12)
        axes[1].plot(run.curve_steps, run.curves["A"], style, label=name)
    axes[0].invert_xaxis()
    axes[0].set(xlabel="task-B expected CE (→ learned more)", ylabel="domain-A expected CE (↑ forgot more)",
                title="learning–forgetting trade-off (★ = end)")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="fine-tuning step", ylabel="domain-A expected CE", title="forgetting curves")
    axes[1].axhline(finetune_lab.oracle("A", 512), color="gray", ls=":", label="oracle A")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "learning_forgetting_tradeoff")


def _interp_on_curve(run, b_value):
    """A-loss on ``run``'s trajectory at the point where its B-loss equals ``b_value``."""
    b, a = run.curves["B"], run.curves["A"]
    order = np.argsort(b)
    return float(np.interp(b_value, b[order], a[order]))


def _measure(lab, finetune_lab, variant):
    full = finetune_lab.run(FULL)
    run = finetune_lab.run(VARIANTS[variant])
    learned_full, forgot_full = _learned_forgot(finetune_lab, full)
    learned, forgot = _learned_forgot(finetune_lab, run)
    # the paper's §4.3 question: at the same amount of learning, does LoRA forget less?
    a_full_at_same_b = _interp_on_curve(full, run.curves["B"][-1])
    lab.record(
        variant=variant, learned=learned, forgot=forgot, learned_full=learned_full, forgot_full=forgot_full,
        learn_margin=learned_full - learned, forget_margin=forgot_full - forgot,
        a_loss_end=float(run.curves["A"][-1]), a_loss_full_at_same_b=a_full_at_same_b,
        excess_forgetting_at_matched_learning=float(run.curves["A"][-1]) - a_full_at_same_b,
    )
    runs = {"full fine-tune": full, **{k: finetune_lab.run(v) for k, v in VARIANTS.items()}}
    _plot_tradeoff(lab, finetune_lab, runs)
    return learned_full - learned, forgot_full - forgot


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_learns_less(lab, finetune_lab, variant):
    learn_margin, _ = _measure(lab, finetune_lab, variant)
    assert learn_margin >= 2 * SIGMA_LEARN[variant], (
        f"{variant}: learned only {learn_margin:.4f} nats less than full FT (2σ = {2 * SIGMA_LEARN[variant]:.4f})"
    )


FORGET_MORE = (
    "measured (seeds 0–4): forgets MORE than full fine-tuning in every seed — forgot {v} vs full "
    "0.197–0.211 nats, margin {m}. Hypothesis: LoRA_LR (chosen for q,v on task-B loss, which is flat "
    "in lr) is too hot for 12 adapted matrices: the MLP adapters change computation both domains "
    "share; at lr 1e-2 all-linear LoRA forgets about as much as full FT (seed 0, 96-sequence curve set: 0.23 vs 0.20)"
)


# "LoRA q,v r=8 forgets less" is measured (test_lora_learns_less records its forgetting margin)
# but asserted neither way: over seeds 0–4 it forgets less in 4/5 seeds (margins 0.028, 0.020,
# 0.100, 0.143, −0.018 nats) yet clears 2σ = 0.13 only on seed 3, and its forgetting varies 3×
# between seeds (0.068–0.217) while full FT's is stable (0.197–0.211). A pass would overstate it,
# a strict xfail would fail on seed 3, and a non-strict xfail cannot fail: inconclusive here.
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("LoRA all-linear r=8", marks=pytest.mark.xfail(strict=True, reason=FORGET_MORE.format(
            v="0.376–0.499", m="−0.30…−0.17"))),
        pytest.param("QLoRA NF4 all-linear r=8", marks=pytest.mark.xfail(strict=True, reason=FORGET_MORE.format(
            v="0.397–0.516", m="−0.31…−0.19"))),
    ],
)
def test_lora_forgets_less(lab, finetune_lab, variant):
    _, forget_margin = _measure(lab, finetune_lab, variant)
    assert forget_margin >= 2 * SIGMA_FORGET[variant], (
        f"{variant}: forgot {forget_margin:+.4f} nats less than full FT (need ≥ 2σ = {2 * SIGMA_FORGET[variant]:.3f})"
    )
