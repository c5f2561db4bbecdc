"""NF4 vs FP4 *after* QLoRA fine-tuning, on a base that 4-bit quantisation visibly hurts.

Lab notebook. QLoRA Table 4 (mean 5-shot MMLU of LLaMA 7–65B fine-tuned on Alpaca and FLAN v2):
BFloat16 53.0, Float4 52.2, NFloat4 + DQ 53.1 — "NF4 with double quantization fully recovers the
16-bit LoRA MMLU performance", while "FP4 is consistently one percentage point behind" (§4). So the
data type's advantage seen after post-training quantisation (Table 2) is claimed to *survive*
adapter fine-tuning: the adapters do not wipe out the difference between the two 4-bit types.

Why not the plain small base: at 4 (and 3) bits it barely notices quantisation — QLoRA ends within
±0.001 nats of fp32 LoRA for NF4 and FP4 alike and the NF-vs-FP order flips between seeds
(exploration, seeds 0–2: FP4 − NF4 after QLoRA +0.0017, +0.0007, −0.0004; FP3 − NF3 +0.0006,
+0.0012, −0.0007). Here the base gets **outlier features** by a function-preserving
reparametrisation (``labcore.finetuning.outliers``: channel 7 of the residual stream is divided by
s = 30 in ln1/ln2 and multiplied by 30 in every weight column reading it, and likewise for the value
→ output path). The fp32 model computes the same function (logits equal to ~1e-6); but each
absmax block of 64 weights now holds one weight ~30× larger than the rest, the structure that
makes 4-bit quantisation hurt large LLMs (LLM.int8(), arXiv 2208.07339). It is a stand-in: nothing
here says a real LLM's outliers look like this one.

Arms on that base, all-linear LoRA r = 8, α = 8, 100 steps on task B, the same batches and the
same LoRA init (same recipe seed), lr LORA_LR:
* **16-bit LoRA** (fp32 stand-in): L_lora, the reference;
* **QLoRA NF4 + DQ** and **QLoRA FP4 + DQ** (fake quantisation, block 64): L_nf, L_fp;
* **LoRA, then quantise** to NF4 / FP4: the damage before any adapter saw the quantiser,
  G_nf = L_naive,nf − L_lora and G_fp likewise; Δ_before = G_fp − G_nf.
Δ_after = L_fp − L_nf is the data type's advantage after QLoRA fine-tuning.

Prediction (written before seeds 0–4, from exploration on seeds 0 and 1 at s = 30; s = 20 and 50
tried on seed 0): quantisation hurts and NF4 hurts less *before* fine-tuning (G_fp ≥ 0.02, Δ_before
≥ 0.01 in every seed); QLoRA recovers ≥ 80 % of the damage for both types; and — against the paper —
NF4's advantage does **not** survive fine-tuning here: Δ_after < ¼ Δ_before in every seed (both
types end within a few 1e-3 nats of 16-bit LoRA), so that part is a strict xfail.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore.finetuning import quantized as QM
from labcore.finetuning.outliers import inject_outlier_features
from labcore.finetuning.recipes import FinetuneRecipe, finetune
from labcore.notebook.claims import Claim, Source
from labcore.tasks.markov_domains import expected_loss

SCALE = 30.0  # outlier feature size (channel 7 of each 64-block)
KINDS = ("nf4", "fp4")
GAP_MIN, DELTA_MIN, R_MIN, SURVIVE = 0.02, 0.01, 0.8, 0.25

CLAIM = Claim(
    id="qlora_nf4_vs_fp4_finetuned",
    paper="qlora",
    statement=(
        "“… NF4 with double quantization fully recovers the 16-bit LoRA MMLU performance …”; "
        "“… FP4 is consistently one percentage point behind …” (fragments as transcribed in the "
        "lab's research notes)"
    ),
    source=Source(
        title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
        where="§4 (k-bit QLoRA matches 16-bit full finetuning and 16-bit LoRA performance), Table 4 (mean 5-shot MMLU: BF16 53.0, FP4 52.2, NF4+DQ 53.1)",
    ),
    paper_value="after fine-tuning: NF4+DQ 53.1 ≈ BF16 53.0 > FP4 52.2 (mean MMLU, LLaMA 7–65B)",
    prediction=(
        "On a base with outlier features (function-preserving, s = 30): before fine-tuning FP4 damage "
        "≥ 0.02 nats and ≥ 0.01 above NF4's; QLoRA recovers ≥ 80 % of it for both; NF4's advantage after "
        "QLoRA is < ¼ of its size before (does not survive) in every seed → strict xfail."
    ),
    metric=(
        "expected CE on 512 held-out task-B sequences after 100 steps; G_X = L(LoRA, then quantise to X) − "
        "L(16-bit LoRA); Δ_before = G_fp − G_nf; Δ_after = L(QLoRA FP4) − L(QLoRA NF4); R_X = 1 − (L_X − L_lora)/G_X"
    ),
    tolerance=(
        f"controls: G_fp ≥ {GAP_MIN}, Δ_before ≥ {DELTA_MIN}; R_fp ≥ {R_MIN} and L(QLoRA NF4) − L_lora ≤ "
        f"{1 - R_MIN:.1f} × G_fp; "
        f"paper: Δ_after ≥ {SURVIVE} × Δ_before (strict xfail)"
    ),
    tolerance_why=(
        "Bounds set before the seed sweep from exploration (seed 0, s = 30: G_nf 0.021, G_fp 0.063; QLoRA "
        "residuals −0.0008 / +0.0024; seed 1: G 0.012 / 0.043, residuals 0.0004 / 0.0010; a second LoRA "
        "init moves a residual by up to 0.0009). 0.02 and 0.01 are half the smallest explored G_fp and "
        "Δ_before; R ≥ 0.8 as in qlora_matches_lora_small. ¼ of Δ_before (≈ 0.008–0.01 nats, ~10× the "
        "init noise) is what 'the advantage survives' means here: Table 4 keeps FP4 a full point behind. "
        "Changed after seeds 0–4 (disclosed): NF4's recovery was first asserted on its own damage, R_nf ≥ 0.8; "
        "but G_nf is only 0.012–0.021 nats, so R_nf (0.85–1.04) is init noise over a small denominator; it is "
        "now asserted on the FP4 scale (residual ≤ 0.2 × G_fp), recorded as before. Seeds 0–4 (table): G_nf "
        "0.012–0.022, G_fp 0.034–0.063, Δ_before 0.020–0.042 (NF4 hurts less in 5/5); R_fp 0.90–0.98; NF4 "
        "residual −0.0008…0.0024 (bound 0.2 × G_fp ≥ 0.0067); Δ_after −0.0006…+0.0033, i.e. −1 % … 10 % of "
        "Δ_before (< ¼ in 5/5: strict xfail holds). Fresh seeds 100–104 (never used to choose anything), "
        "5/5 passed + 5/5 xfailed: G_fp 0.038–0.087, Δ_before 0.023–0.053, R_fp 0.93–0.97, NF4 residual "
        "0.0006–0.0026, Δ_after −0.0003…+0.0028 (−1 % … 10 % of Δ_before). NF4 stays ahead after QLoRA in "
        "8/10 seeds, but by ~1e-3 nats — the size of the init noise, not Table 4's 'one point'."
    ),
    tier="quick",
    calibration="fixtures/calibration/qlora_nf4_vs_fp4_finetuned.json",
    status="confirmed",
)

LORA = FinetuneRecipe(method="lora", targets="all_linear", r=8, alpha=8)
QLORA = {k: FinetuneRecipe(method="qlora", targets="all_linear", r=8, alpha=8, quant=k, backend="fake") for k in KINDS}


@pytest.fixture(scope="module")
def arms(finetune_lab):
    fl = finetune_lab
    base = copy.deepcopy(fl.base)
    inject_outlier_features(base, SCALE)  # same function, outlier weights in every block
    evalset = fl.eval_set("B")
    lora = finetune(base, fl.language, LORA, fl.seed)
    out = {"lora": lora.final["B"], "base_shift": expected_loss(base, evalset) - fl.base_loss("B"),
           "curves": {"16-bit LoRA": (lora.curve_steps, lora.curves["B"])}}
    for kind in KINDS:
        run = finetune(base, fl.language, QLORA[kind], fl.seed)
        naive = copy.deepcopy(lora.model)
        QM.fake_quantize_model(naive, kind, double_quant=True)  # LoRA, then quantise
        q0 = copy.deepcopy(base)
        QM.fake_quantize_model(q0, kind, double_quant=True)
        out[kind] = {"qlora": run.final["B"], "naive": expected_loss(naive, evalset),
                     "ptq_base": expected_loss(q0, evalset) - fl.base_loss("B")}
        out["curves"][f"QLoRA {kind.upper()}+DQ"] = (run.curve_steps, run.curves["B"])
    gaps = {k: out[k]["naive"] - out["lora"] for k in KINDS}
    out.update(gaps=gaps, delta_before=gaps["fp4"] - gaps["nf4"],
               delta_after=out["fp4"]["qlora"] - out["nf4"]["qlora"],
               recovery={k: 1 - (out[k]["qlora"] - out["lora"]) / gaps[k] for k in KINDS})
    return out


def _record(lab, arms):
    lab.record(
        loss_lora=arms["lora"], base_shift_by_reparametrisation=arms["base_shift"],
        loss_qlora={k: arms[k]["qlora"] for k in KINDS}, residual={k: arms[k]["qlora"] - arms["lora"] for k in KINDS},
        gap=arms["gaps"], ptq_base={k: arms[k]["ptq_base"] for k in KINDS}, recovery=arms["recovery"],
        delta_before=arms["delta_before"], delta_after=arms["delta_after"],
        surviving_fraction=arms["delta_after"] / arms["delta_before"], scale=SCALE,
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, (steps, curve) in arms["curves"].items():
        ax1.plot(steps, curve, label=name)
    ax1.set(xlabel="fine-tuning step", ylabel="expected CE on task B (nats)", title=f"outlier base (s = {SCALE:g})")
    ax1.legend(fontsize=7)
    x = np.arange(len(KINDS))
    ax2.bar(x - 0.2, [arms["gaps"][k] for k in KINDS], 0.4, label="LoRA, then quantise")
    ax2.bar(x + 0.2, [arms[k]["qlora"] - arms["lora"] for k in KINDS], 0.4, label="QLoRA")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xticks(x, [k.upper() + "+DQ" for k in KINDS])
    ax2.set(ylabel="loss − 16-bit LoRA (nats)", title="damage before / after fine-tuning through it")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "nf4_vs_fp4_finetuned")


def test_quantisation_hurts_and_qlora_recovers_both_types(lab, arms):
    _record(lab, arms)
    g, rec = arms["gaps"], arms["recovery"]
    assert abs(arms["base_shift"]) < 1e-4, f"the reparametrisation changed the fp32 model's loss by {arms['base_shift']:.2e}"
    assert g["fp4"] >= GAP_MIN, f"control: quantising the fine-tuned model to FP4 costs only {g['fp4']:.4f} nats"
    assert arms["delta_before"] >= DELTA_MIN, (
        f"control: before fine-tuning NF4 should hurt clearly less than FP4: G_nf {g['nf4']:.4f}, G_fp {g['fp4']:.4f}")
    assert rec["fp4"] >= R_MIN, f"QLoRA FP4 recovers only {rec['fp4']:.2f} of its damage {g['fp4']:.4f}"
    # NF4's own damage (0.012–0.021 nats) is too small for its own recovery ratio to be resolved
    # (init noise ~0.001–0.002 nats → R_nf 0.85–1.04 over seeds 0–4): on the FP4 scale instead,
    # QLoRA NF4 must end as close to 16-bit LoRA as R_MIN demands of FP4.
    residual_nf = arms["nf4"]["qlora"] - arms["lora"]
    assert residual_nf <= (1 - R_MIN) * g["fp4"], (
        f"QLoRA NF4 ends {residual_nf:.4f} nats above 16-bit LoRA (> {1 - R_MIN:.1f} × G_fp = {(1 - R_MIN) * g['fp4']:.4f})")


@pytest.mark.xfail(strict=True, reason=(
    "predicted before the sweep (see the module docstring): on this base QLoRA recovers nearly all the "
    "damage of both types, so NF4's advantage before fine-tuning (Δ_before ≈ 0.03–0.04 nats in exploration) "
    "shrinks to the size of init noise (|Δ_after| ≲ 0.003) — the Table 4 gap does not survive here. "
    "Hypothesis: 100 steps of all-linear adapters on a 2-layer model can re-learn what any 4-bit grid "
    "loses; the paper's 7–65B models cannot"))
def test_nf4_advantage_survives_finetuning(lab, arms):
    lab.record(delta_before=arms["delta_before"], delta_after=arms["delta_after"],
               surviving_fraction=arms["delta_after"] / arms["delta_before"])
    assert arms["delta_after"] >= SURVIVE * arms["delta_before"], (
        f"after QLoRA FP4 − NF4 = {arms['delta_after']:+.4f} nats, < {SURVIVE} × its size before fine-tuning "
        f"({arms['delta_before']:.4f})")
