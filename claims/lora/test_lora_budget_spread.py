"""At a fixed parameter budget, adapt more matrices at a lower rank rather than one at a higher rank.

Lab notebook. Table 5 of the LoRA paper fixes GPT-3's trainable budget at 18M parameters and
asks where to spend it: W_q alone at r = 8 scores 70.4 on WikiSQL, W_k alone 70.0, W_q and W_v
at r = 4 73.7 (seed std ±0.5) — "it is preferable to adapt more weight matrices than adapting a
single type of weights with a larger rank".

Same matched budget on the small pretrained base (labcore.finetuning.recipes): 2 layers × r·(64 + 64)
per matrix gives 2,048 trainable parameters for {W_Q, W_V} r=4, {W_Q} r=8 and {W_K} r=8.
100 fine-tuning steps on task B, same batches, α = 8, lr = LORA_LR.

Expectation at tiny scale: not obvious. W_Q and W_K only change *where* attention looks; the
task's shift (domain B's next-token preferences) needs the *values* to change, which only W_V
(or the MLP) can do. So we expected the paper's ordering, and measured it (median over seeds
0–4): q,v r=4 1.704 vs q r=8 1.959 vs k r=8 1.989 (base 2.096): the single-matrix budgets
recover only 31–37 % (q) and 20–32 % (k) of the gain that q,v r=4 gets.
"""

import matplotlib.pyplot as plt

from labcore.notebook.claims import Claim, Source
from labcore.finetuning.recipes import FinetuneRecipe

#: Seed-to-seed std (seeds 0–4) of the paired differences L(q r=8) − L(q,v r=4) and
#: L(k r=8) − L(q,v r=4), the larger of the two (nats); see tolerance_why.
SIGMA = 0.020

CLAIM = Claim(
    id="lora_budget_spread",
    paper="lora",
    statement=(
        "“Note that putting all the parameters in ∆Wq or ∆Wk results in significantly lower "
        "performance, while adapting both Wq and Wv yields the best result. This suggests that even "
        "a rank of four captures enough information in ∆W such that it is preferable to adapt more "
        "weight matrices than adapting a single type of weights with a larger rank.”"
    ),
    source=Source(
        title="LoRA: Low-Rank Adaptation of Large Language Models", arxiv="2106.09685", version="v2",
        where="§7.1, Table 5",
    ),
    paper_value="WikiSQL (18M params): Wq r=8 70.4, Wk r=8 70.0, Wq,Wv r=4 73.7 (±0.5)",
    prediction="At a matched 2,048-parameter budget, q,v r=4 ends below both q r=8 and k r=8.",
    metric="final expected CE on 512 held-out task-B sequences after 100 steps",
    tolerance="L(q,v r=4) + 2σ ≤ L(q r=8) and L(q,v r=4) + 2σ ≤ L(k r=8); control: budgets equal exactly",
    tolerance_why=(
        "σ = the larger seed-to-seed std (seeds 0–4) of the paired differences: 0.0067 (q) and 0.020 "
        "(k) nats. Measured (min/median/max): L(q r=8) − L(q,v r=4) = 0.247/0.249/0.261, L(k r=8) − "
        "L(q,v r=4) = 0.265/0.284/0.310, > 6σ in every seed; q r=8 recovers 31–37 % and k r=8 "
        "20–32 % of q,v r=4's gain."
    ),
    tier="quick",
    calibration="fixtures/calibration/lora_budget_spread.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

CONFIGS = {"q,v r=4": (("q", "v"), 4), "q r=8": (("q",), 8), "k r=8": (("k",), 8)}


def test_spreading_the_budget_beats_one_matrix(lab, finetune_lab):
    runs = {name: finetune_lab.run(FinetuneRecipe(targets=t, r=r, alpha=8)) for name, (t, r) in CONFIGS.items()}
    budgets = {name: run.trainable_params for name, run in runs.items()}
    final = {name: run.final["B"] for name, run in runs.items()}
    base = finetune_lab.base_loss("B")
    lab.record(
        **{f"loss_{k.replace(',', '').replace(' ', '_').replace('=', '')}": v for k, v in final.items()},
        loss_base=base, budgets=budgets, q_minus_qv=final["q r=8"] - final["q,v r=4"],
        k_minus_qv=final["k r=8"] - final["q,v r=4"],
        gain_fraction_q=(base - final["q r=8"]) / (base - final["q,v r=4"]),
        gain_fraction_k=(base - final["k r=8"]) / (base - final["q,v r=4"]),
    )

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, run in runs.items():
        axes[0].plot(run.curve_steps, run.curves["B"], label=f"{name} ({budgets[name]} params)")
    axes[0].axhline(finetune_lab.oracle("B"), color="gray", ls=":", label="oracle")
    axes[0].set(xlabel="fine-tuning step", ylabel="expected CE on task B (nats)", title="matched budget")
    axes[0].legend(fontsize=7)
    axes[1].bar(list(final), list(final.values()), color=["C2", "C0", "C1"])
    axes[1].axhline(base, color="k", ls="--", label="base (no fine-tuning)")
    axes[1].set(ylabel="final expected CE (nats)", ylim=(finetune_lab.oracle("B") - 0.05, base + 0.05))
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "budget_spread")

    assert len(set(budgets.values())) == 1, f"budgets differ: {budgets}"
    assert final["q,v r=4"] + 2 * SIGMA <= final["q r=8"], final
    assert final["q,v r=4"] + 2 * SIGMA <= final["k r=8"], final
