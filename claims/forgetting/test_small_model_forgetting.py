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

Redesign after the science audit (issue 13). The first version asserted "learns less" at each
method's own learning rate and passed for all-linear LoRA by 0.004–0.007 nats (~1.5 %), which
is not "substantially". Biderman et al. compare methods *along the learning–forgetting
curve* (several learning rates and checkpoints per method). So now:

1. **Learns substantially less, at matched steps** (100 steps, each method at its tuned lr):
   shortfall = (learned_full − learned_LoRA) / learned_full ≥ 5 %. Prediction (from the first
   version's numbers): q,v passes (≈ 10–14 %); all-linear LoRA and QLoRA fail (≈ 1–2 %) — strict
   xfails. 5 % is the same line at which ``lora_full_ft_rank`` calls LoRA "on par".
2. **The Pareto curve** (``labcore.measures.pareto``): every checkpoint (every 10 steps, 96-
   sequence curve sets) of full fine-tuning at lr 3e-4 and 1e-3 (FULL_LR) forms the reference
   frontier of (learned B, forgot A); LoRA q,v at lr 1e-2 and 3e-2 (LORA_LR) is placed against it.
   best excess = min over LoRA's checkpoints of (its forgetting − the full frontier's at the same
   learning). "Forgets less at matched learning" ⇔ best excess ≤ −0.03 nats; "same Pareto curve"
   ⇔ |best excess| ≤ 0.03. Prediction (seeds 0–1 explored): LoRA at 1e-2 sits *on* full FT's
   curve (−0.01…+0.015), LoRA at 3e-2 above it — "same curve" passes, "forgets less at matched
   learning" is a strict xfail. Control that must come out large: all-linear LoRA (LORA_LR) lies
   ≥ 0.1 nats above the frontier (explored: +0.17).
3. **Forgets less at matched steps** for all-linear LoRA and QLoRA: strict xfails, as before
   (they forget about twice as much as full fine-tuning at LORA_LR).

τ = 0.03 nats: ≈ 15 % of full fine-tuning's forgetting at FULL_LR (≈ 0.2) and 3× the q,v−full
distance explored on seeds 0–1; the curve sets are fixed (the same 96 sequences for every run), so
the noise between methods is the seed's, which the calibration tables show.
Measured numbers: fixtures/calibration/forgetting_small_model*.json and docs/papers/lora.md.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore.finetuning.recipes import FinetuneRecipe
from labcore.measures.pareto import excess_forgetting, pareto_front
from labcore.notebook.claims import Claim, Source

FULL = FinetuneRecipe(method="full")
VARIANTS = {
    "LoRA q,v r=8": FinetuneRecipe(targets=("q", "v"), r=8, alpha=8),
    "LoRA all-linear r=8": FinetuneRecipe(targets="all_linear", r=8, alpha=8),
    "QLoRA NF4 all-linear r=8": FinetuneRecipe(method="qlora", targets="all_linear", r=8, alpha=8, quant="nf4"),
}
#: The learning-rate sweeps of the Pareto test (lr=None is the tuned default, so the runs are shared).
FULL_SWEEP = {"full lr 3e-4": FinetuneRecipe(method="full", lr=3e-4), "full lr 1e-3": FULL}
LORA_SWEEP = {"LoRA q,v lr 1e-2": FinetuneRecipe(targets=("q", "v"), r=8, alpha=8, lr=1e-2),
              "LoRA q,v lr 3e-2": VARIANTS["LoRA q,v r=8"]}
SUBSTANTIAL = 0.05  # "learns substantially less": ≥ 5 % less of task B than full fine-tuning
TAU = 0.03  # nats: "same Pareto curve" ⇔ |best excess forgetting| ≤ TAU
CONTROL_OFF_CURVE = 0.1  # all-linear LoRA must lie at least this far above the full-FT frontier

CLAIM = Claim(
    id="forgetting_small_model",
    paper="forgetting",
    statement=(
        "“Our results show that, in the standard low-rank settings, LoRA substantially underperforms "
        "full finetuning. Nevertheless, LoRA better maintains the base model's performance on tasks "
        "outside the target domain.” §4.3: “LoRA and full finetuning seem to occupy the same Pareto "
        "curve, with the LoRA models on the lower right – learning less and forgetting less.”"
    ),
    source=Source(
        title="LoRA Learns Less and Forgets Less", arxiv="2405.09673", version="v2",
        where="abstract; §4.1–4.3, Fig. 4 (learning–forgetting trade-off)",
    ),
    paper_value="qualitative: LoRA learns less (HumanEval, GSM8K) and forgets less (HellaSwag, ARC, WinoGrande); same Pareto curve",
    prediction=(
        "q,v LoRA learns ≥ 5 % less than full FT, all-linear LoRA/QLoRA do not (strict xfail); q,v LoRA "
        "lies on full FT's learning–forgetting frontier (|best excess| ≤ 0.03), not below it (strict "
        "xfail); all-linear LoRA lies ≥ 0.1 above it (control)."
    ),
    metric=(
        "shortfall = (learned_full − learned_LoRA)/learned_full on task B after 100 steps; best excess "
        "forgetting of LoRA q,v's checkpoints (lr 1e-2, 3e-2) over full FT's frontier (lr 3e-4, 1e-3)"
    ),
    tolerance="shortfall ≥ 0.05; |best excess| ≤ 0.03 (same curve), ≤ −0.03 (forgets less); control ≥ 0.1",
    tolerance_why=(
        "0.05: the boundary between 'on par' and 'substantially less' shared with lora_full_ft_rank; "
        "first-version margins were q,v 0.045–0.060 nats (10–14 %), all-linear 0.004–0.007 (1–2 %). "
        "τ = 0.03 nats ≈ 15 % of full FT's forgetting at FULL_LR and 3× the q,v distance from the "
        "frontier explored on seeds 0–1 (−0.01…+0.015); the control's 0.1 is a third of the explored "
        "+0.17…+0.31. Exploration table (seeds 0–4): shortfall q,v 10.5–13.6 % (passes), all-linear "
        "1.2–1.7 % and QLoRA 1.0–1.7 % (strict xfails); best excess q,v −0.018…+0.006 (same curve passes, "
        "forgets-less xfails); control all-linear +0.17…+0.22."
    ),
    status="confirmed",
    tier="quick",
    calibration="fixtures/calibration/forgetting_small_model.json",
)


def _learned_forgot(finetune_lab, run):
    return finetune_lab.base_loss("B") - run.final["B"], run.final["A"] - finetune_lab.base_loss("A")


def _points(run, with_start: bool = False) -> np.ndarray:
    """(learned, forgot) at every curve checkpoint of ``run`` (step 0 = the base = (0, 0))."""
    pts = np.stack([run.curves["B"][0] - run.curves["B"], run.curves["A"] - run.curves["A"][0]], axis=1)
    return pts if with_start else pts[1:]


def _plot_tradeoff(lab, runs, front):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, run) in enumerate(runs.items()):
        style = "k-" if name.startswith("full") else f"C{i}-"
        if name == "full lr 3e-4":
            style = "k--"
        pts = _points(run, with_start=True)
        axes[0].plot(pts[:, 0], pts[:, 1], style, marker="o", ms=3, label=name)
        axes[1].plot(run.curve_steps, run.curves["A"], style, label=name)
    axes[0].plot(front[:, 0], front[:, 1], color="gray", lw=4, alpha=0.3, label="full-FT frontier")
    axes[0].set(xlabel="learned: task-B CE drop (nats)", ylabel="forgot: domain-A CE rise (nats)",
                title="learning–forgetting (every 10 steps)")
    axes[0].legend(fontsize=6)
    axes[1].set(xlabel="fine-tuning step", ylabel="domain-A expected CE", title="forgetting curves")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    lab.savefig(fig, "learning_forgetting_tradeoff")


def _pareto(lab, finetune_lab) -> dict[str, float]:
    full_runs = {k: finetune_lab.run(v) for k, v in FULL_SWEEP.items()}
    lora_runs = {k: finetune_lab.run(v) for k, v in LORA_SWEEP.items()}
    control = finetune_lab.run(VARIANTS["LoRA all-linear r=8"])
    reference = np.concatenate([_points(r, with_start=True) for r in full_runs.values()])
    excess = {k: excess_forgetting(_points(r), reference) for k, r in lora_runs.items()}
    best = float(np.nanmin(np.concatenate(list(excess.values()))))
    best_control = float(np.nanmin(excess_forgetting(_points(control), reference)))
    out = {"best_excess": best, "best_excess_control_all_linear": best_control,
           **{f"end_excess[{k}]": float(e[-1]) for k, e in excess.items()},
           **{f"learned_forgot[{k}]": list(_learned_forgot(finetune_lab, r)) for k, r in {**full_runs, **lora_runs}.items()}}
    lab.record(**out)
    _plot_tradeoff(lab, {**full_runs, **lora_runs, "LoRA all-linear r=8": control}, pareto_front(reference))
    return out


@pytest.mark.parametrize("variant", [
    "LoRA q,v r=8",
    *[pytest.param(v, marks=pytest.mark.xfail(strict=True, reason=(
        "seeds 0–4 (first version): learns only 0.004–0.007 nats (1–2 %) less than full fine-tuning at "
        "its tuned lr — resolved (σ < 0.002) but not substantial; adapting the MLP too, LoRA r=8 "
        "almost matches full fine-tuning on this near task"))) for v in ("LoRA all-linear r=8", "QLoRA NF4 all-linear r=8")],
])
def test_lora_learns_substantially_less(lab, finetune_lab, variant):
    learned_full, forgot_full = _learned_forgot(finetune_lab, finetune_lab.run(FULL))
    learned, forgot = _learned_forgot(finetune_lab, finetune_lab.run(VARIANTS[variant]))
    shortfall = (learned_full - learned) / learned_full
    lab.record(variant=variant, learned=learned, forgot=forgot, learned_full=learned_full, forgot_full=forgot_full,
               learn_margin=learned_full - learned, forget_margin=forgot_full - forgot, shortfall=shortfall)
    assert learned_full > 0.2, f"control: full fine-tuning learned only {learned_full:.3f} nats"
    assert shortfall >= SUBSTANTIAL, (
        f"{variant}: learned {learned:.4f} vs full FT {learned_full:.4f} nats, only {shortfall:.1%} less (< {SUBSTANTIAL:.0%})"
    )


def test_lora_on_the_same_pareto_curve(lab, finetune_lab):
    out = _pareto(lab, finetune_lab)
    assert out["best_excess_control_all_linear"] >= CONTROL_OFF_CURVE, (
        f"control: all-linear LoRA is only {out['best_excess_control_all_linear']:+.3f} nats above the full-FT "
        f"frontier (need ≥ {CONTROL_OFF_CURVE}): the measure cannot tell methods apart"
    )
    assert abs(out["best_excess"]) <= TAU, f"LoRA q,v best excess forgetting {out['best_excess']:+.4f} not within ±{TAU}: {out}"


@pytest.mark.xfail(strict=True, reason=(
    "explored seeds 0–1: q,v LoRA's best checkpoint lies on full fine-tuning's frontier (best excess "
    "−0.009…+0.014 nats), not ≥ 0.03 below it. Hypothesis: with lr 3e-4 in its sweep, full fine-tuning "
    "reaches every amount of learning LoRA reaches with as little forgetting; LoRA forgets less at its "
    "default lr only because it learns less (the paper's 'same Pareto curve')"))
def test_lora_forgets_less_at_matched_learning(lab, finetune_lab):
    out = _pareto(lab, finetune_lab)
    assert out["best_excess"] <= -TAU, f"LoRA q,v best excess forgetting {out['best_excess']:+.4f} > −{TAU}"


FORGET_MORE = (
    "measured (seeds 0–4): forgets MORE than full fine-tuning in every seed — forgot {v} vs full "
    "0.197–0.211 nats, margin {m}. Hypothesis: LoRA_LR (chosen for q,v on task-B loss, which is flat "
    "in lr) is too hot for 12 adapted matrices: the MLP adapters change computation both domains "
    "share; at lr 1e-2 all-linear LoRA forgets about as much as full FT (seed 0, 96-sequence curve set: 0.23 vs 0.20)"
)


# q,v LoRA at matched steps is not asserted either way: it forgets less in 4/5 seeds (margins 0.028,
# 0.020, 0.100, 0.143, −0.018 nats), ≥ 2σ = 0.13 only on seed 3 — the Pareto tests above ask the
# sharper question.
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("LoRA all-linear r=8", marks=pytest.mark.xfail(strict=True, reason=FORGET_MORE.format(
            v="0.376–0.499", m="−0.30…−0.17"))),
        pytest.param("QLoRA NF4 all-linear r=8", marks=pytest.mark.xfail(strict=True, reason=FORGET_MORE.format(
            v="0.397–0.516", m="−0.31…−0.19"))),
    ],
)
def test_lora_forgets_less_at_matched_steps(lab, finetune_lab, variant):
    learned_full, forgot_full = _learned_forgot(finetune_lab, finetune_lab.run(FULL))
    learned, forgot = _learned_forgot(finetune_lab, finetune_lab.run(VARIANTS[variant]))
    lab.record(variant=variant, forgot=forgot, forgot_full=forgot_full, forget_margin=forgot_full - forgot)
    assert forgot < forgot_full, f"{variant}: forgot {forgot:.4f} vs full FT {forgot_full:.4f} nats"
