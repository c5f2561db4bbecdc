"""QLoRA on a base that quantisation visibly hurts: the adapters recover the quantisation damage.

Lab notebook. QLoRA's central empirical claim (§4, Tables 3–4): LoRA adapters trained on top of
an NF4 + double-quantised frozen model match 16-bit LoRA — e.g. mean 5-shot MMLU 53.1 (NF4 + DQ)
vs 53.0 (BFloat16) over LLaMA 7–65B; the paper reads this as the performance lost to the
imprecise quantisation being recovered by adapter fine-tuning after quantisation (paraphrase).

Why not NF4 here: this 2-layer base barely notices NF4 + DQ (post-training ΔCE 3.7–6.9e-4 nats,
fixtures/calibration/qlora_ptq_ordering_small.json), so "QLoRA ≈ LoRA" at NF4 passed even with
adapters that recover nothing (audit, 2026-12). The coarser grid below — **2-bit NormalFloat
(``nf_codebook(2)``: −1, 0, 0.34, 1) in blocks of 1024, + DQ** — is a stand-in for a base model
where 4-bit quantisation hurts (larger LLMs have outlier features that 4-bit does notice); it is
*not* the paper's data type, and nothing here says NF4 on a large model behaves the same.

Arms, all-linear LoRA r = 8, α = 8, 100 steps on task B, the same batches, lr LORA_LR:

* **fp32 LoRA** (16-bit LoRA's stand-in): L_lora;
* **QLoRA nf2/1024 + DQ** (fake quantisation: quantise → dequantise the frozen base): L_qlora;
* control **LoRA, then quantise**: the fp32 LoRA model with its frozen base weights quantised
  afterwards (the adapters never saw the quantiser): L_naive. The quantisation damage at the
  fine-tuned point is G = L_naive − L_lora;
* control **quantised base, no adapters**: L_q0.

Recovery R = (L_naive − L_qlora) / G — the share of the damage that training the adapters
*through* the quantised base wins back (1 = matches 16-bit LoRA, 0 = no better than quantising
after the fact). The no-adapter arm's recovery on the same scale, (L_naive − L_q0) / G, is hugely
negative and must fail the bound; so must the LoRA-then-quantise arm (R = 0 by definition). The
NF4 + DQ QLoRA difference is recorded (not asserted) for comparison with the old claim.
Prediction (written before seeds 0–4, from one exploratory seed-0 run: G 0.079, R 0.96):
G ≥ 0.03 nats in every seed and R ≥ 0.8. Measured: see the calibration table.
"""

import copy

import matplotlib.pyplot as plt

from labcore.finetuning import quantized as QM
from labcore.finetuning.recipes import FinetuneRecipe
from labcore.notebook.claims import Claim, Source
from labcore.tasks.markov_domains import expected_loss

QUANT, BLOCK = "nf2", 1024
R_MIN, GAP_MIN = 0.8, 0.03

CLAIM = Claim(
    id="qlora_matches_lora_small",
    paper="qlora",
    statement=(
        "“Our results consistently show that 4-bit QLoRA with NF4 data type matches 16-bit full "
        "finetuning and 16-bit LoRA finetuning performance on academic benchmarks with well-"
        "established evaluation setups.”"
    ),
    source=Source(
        title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
        where="§4 (“k-bit QLoRA matches 16-bit full finetuning and 16-bit LoRA performance”), Tables 3–4",
    ),
    paper_value="MMLU 5-shot mean: NF4+DQ 53.1 vs BFloat16 53.0; GLUE/Super-NaturalInstructions on par",
    prediction=(
        "On a base where the quantiser hurts (2-bit NF, blocks of 1024, + DQ: a stand-in for a model that "
        "4-bit quantisation hurts), QLoRA recovers ≥ 80 % of the damage G = L(LoRA, then quantise) − "
        "L(fp32 LoRA), with G ≥ 0.03 nats; the no-adapter quantised base and LoRA-then-quantise fail the bound."
    ),
    metric="final expected CE on 512 held-out task-B sequences after 100 steps; recovery R = (L_naive − L_qlora) / G",
    tolerance=f"G ≥ {GAP_MIN} nats (control: quantisation must hurt); R(QLoRA) ≥ {R_MIN}; controls: "
              f"R(no adapters) < {R_MIN} and R(LoRA then quantise) = 0 < {R_MIN}",
    tolerance_why=(
        "Set before the seed sweep from one exploratory seed-0 run (G 0.079, R 0.96) and the old claim's "
        "paired noise (σ ≈ 0.001 nats, i.e. ≈ 0.013 in R at G ≈ 0.08): 0.8 leaves > 10σ for seed-to-seed "
        "variation of G. Seeds 0–4 (table): G 0.049–0.079, R 0.925–0.964 (QLoRA stays 0.0025–0.0037 nats "
        "above fp32 LoRA: close, not equal), no-adapter recovery −9.9…−5.6; 0.8 is ≈ 8 seed-std below the "
        "smallest R. Fresh seeds 100–104 (never used to choose anything; same claim code hash), 5/5 pass: "
        "G 0.043–0.075, R 0.914–0.957 (QLoRA 0.0021–0.0037 nats above fp32 LoRA), no-adapter recovery "
        "−9.8…−5.5; smallest fresh R 0.914 leaves 0.11 above the bound, smallest G 0.043 is 1.4× the 0.03 floor."
    ),
    tier="quick",
    calibration="fixtures/calibration/qlora_matches_lora_small.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

LORA = FinetuneRecipe(method="lora", targets="all_linear", r=8, alpha=8)
QLORA = FinetuneRecipe(method="qlora", targets="all_linear", r=8, alpha=8, quant=QUANT, block_size=BLOCK, backend="fake")
QLORA_NF4 = FinetuneRecipe(method="qlora", targets="all_linear", r=8, alpha=8, quant="nf4", backend="fake")


def quantised(model):
    """A copy of ``model`` whose frozen linear weights go through the QLoRA arm's quantiser."""
    model = copy.deepcopy(model)
    QM.fake_quantize_model(model, QUANT, block_size=BLOCK, double_quant=True)
    return model


def test_qlora_recovers_the_quantisation_damage(lab, finetune_lab):
    fl = finetune_lab
    lora, qlora, nf4 = fl.run(LORA), fl.run(QLORA), fl.run(QLORA_NF4)
    evalset = fl.eval_set("B")
    l_lora, l_qlora = lora.final["B"], qlora.final["B"]
    l_naive = expected_loss(quantised(lora.model), evalset)       # LoRA, then quantise
    l_q0 = expected_loss(quantised(fl.base_copy()), evalset)      # quantised base, no adapters
    gap = l_naive - l_lora
    rec = lambda loss: (l_naive - loss) / gap  # noqa: E731
    recovery, recovery_no_adapters = rec(l_qlora), rec(l_q0)
    base = fl.base_loss("B")
    lab.record(
        loss_fp32_lora=l_lora, loss_qlora=l_qlora, loss_lora_then_quantise=l_naive, loss_quantised_base=l_q0,
        loss_base=base, oracle=fl.oracle("B"), gap=gap, recovery=recovery,
        recovery_no_adapters=recovery_no_adapters, residual_qlora=l_qlora - l_lora,
        recovery_vs_quantised_base=(l_q0 - l_qlora) / (l_q0 - l_lora),
        ptq_damage_base=l_q0 - base, nf4_qlora_minus_lora=nf4.final["B"] - l_lora,
        forgetting_A={r.recipe.label: r.final["A"] - fl.base_loss("A") for r in (lora, qlora, nf4)},
        quant=QUANT, block_size=BLOCK,
    )

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, run in (("fp32 LoRA", lora), (f"QLoRA {QUANT}/{BLOCK}+DQ", qlora), ("QLoRA nf4+DQ", nf4)):
        ax.plot(run.curve_steps, run.curves["B"], label=f"{name}: {run.final['B']:.3f}")
    ax.axhline(l_naive, color="C3", ls="--", label=f"LoRA, then quantise: {l_naive:.3f}")
    ax.axhline(fl.oracle("B"), color="gray", ls=":", label="oracle")
    ax.set(xlabel="fine-tuning step", ylabel="expected CE on task B (nats)",
           title=f"recovery of the {QUANT}/{BLOCK} damage: {recovery:.0%}")
    ax.legend(fontsize=7)
    lab.savefig(fig, "qlora_recovery")

    assert gap >= GAP_MIN, f"control: quantising the fine-tuned model costs only {gap:.4f} nats (< {GAP_MIN}): nothing to recover"
    assert recovery_no_adapters < R_MIN, f"control: the quantised base without adapters 'recovers' {recovery_no_adapters:.2f}"
    assert recovery >= R_MIN, (
        f"QLoRA recovers {recovery:.2f} of the quantisation damage G = {gap:.4f} nats (< {R_MIN}): "
        f"L_qlora {l_qlora:.4f}, L_lora {l_lora:.4f}, L_naive {l_naive:.4f}")
