"""QLoRA vs LoRA on a real model: does a 4-bit NF4 base fine-tune to the same loss as an fp32 one?

Lab notebook. QLoRA's central claim (§4, Tables 3–4): LoRA adapters trained on a 4-bit NF4 base
(with double quantisation) reach the performance of 16-bit LoRA and of full 16-bit fine-tuning —
"the performance lost due to the imprecise quantization can be fully recovered through adapter
finetuning after quantization".

Setup (sized to ~1–1.5 min on one shared CPU core):
* base: SmolLM2-135M as loaded (fp32, itself de-quantised from a Q4_1 GGUF) vs the same model with
  every linear layer of all 30 blocks stored as bitsandbytes NF4 + DQ (``quantize_model_4bit``,
  guarded against the CPU repacking pitfall; compute in fp32).
* adapters: peft LoRA r=8, α=16 on every linear layer (q, k, v, o, gate, up, down) of the **top 4
  blocks only**, the same initial A, B in both arms (same seed; checked) and the same batches.
  The bottom 26 blocks are frozen in both arms, so their output for the 24 training windows is
  computed once per base (``labcore.pretrained.topk``); a step then costs 4 blocks + the output layer
  (~0.7 s for 4×32 tokens instead of ~2.6 s through the whole model). QLoRA adapts all blocks:
  this is the deviation that makes the experiment fit, and it is the first suspect if the 4-bit
  arm cannot catch up (the bottom 26 blocks' quantisation error is never trained against).
* data: the lab corpus' code domain (fixtures/corpus/code.txt), 24 training windows of 32 tokens;
  30 AdamW steps, batch 4, lr 2e-3 constant, grad clip 1.
* metric: mean next-token loss on the 24 training windows after training (eval mode). With 24
  windows the adapters fit the data rather than generalise (held-out code loss barely moves:
  recorded, not asserted), so this measures whether the 4-bit base can be *fitted* as well as
  the fp32 one — the mechanism behind the paper's benchmark numbers, not the numbers.

Measured while writing this (seed 0, lr 1e-3 and 3e-3 tried first to see the scale — the claim's
lr 2e-3 was fixed before any seed sweep): untuned training-window loss fp32 2.33, NF4+DQ 2.64
(the PTQ gap, 0.31 nats); after 30 steps at lr 1e-3: 1.36 vs 1.54 (gap 0.17), at 3e-3: 0.65 vs
0.73 (gap 0.08).

Seed sweep (lab calibrate, seeds 0–4, lr 2e-3): after 30 steps fp32 0.830 ± 0.025, NF4+DQ
0.941 ± 0.034; gap 0.112 ± 0.018 against 2 σ_seed = 0.049 → the 4-bit base does *not* catch up
here (strict xfail). It does close most of the gap: 64 ± 6 % of the 0.311 nats it started behind.
Held-out code loss *rose* in both arms (fp32 2.56 → 2.92 ± 0.06): 24 windows are memorised, not
generalised from — which is why the metric is the training-window loss.
Wall time: 113–178 s per seed during the sweep (the machine's other core and part of this one
busy with other jobs; training 20–52 s per arm); ~60–70 s expected on an idle 2-core machine.
Recalibrated 2026-12-04 with the strict xfail in place: identical numbers, 170–190 s per seed
under load average 10–12.
"""

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="qlora_smollm2_matches_lora",
    paper="qlora",
    statement=(
        "“In both datasets, we observe that 16-bit, 8-bit, and 4-bit adapter methods replicate the "
        "performance of the fully finetuned 16-bit baseline. This suggests that the performance "
        "lost due to the imprecise quantization can be fully recovered through adapter finetuning "
        "after quantization.”"
    ),
    source=Source(
        title="QLoRA: Efficient Finetuning of Quantized LLMs", arxiv="2305.14314", version="v1",
        where="§4 'k-bit QLoRA matches 16-bit full finetuning and 16-bit LoRA performance', Table 3",
    ),
    paper_value="QLoRA NF4+DQ vs LoRA BF16: T5-80M 40.4 vs 40.5, T5-250M 42.7 vs 42.6, T5-3B 55.3 vs 55.4 RougeL",
    prediction=(
        "After 30 identical LoRA steps the NF4+DQ-base model's training loss equals the fp32-base "
        "model's within the seed-to-seed spread of LoRA itself, although it starts 0.31 nats worse."
    ),
    metric="final mean next-token loss on the 24 code training windows (eval mode), NF4+DQ base − fp32 base",
    tolerance="|loss(NF4+DQ) − loss(fp32)| ≤ 2 σ_seed of loss(fp32); control: untuned − tuned ≥ 0.5 nats in both arms",
    tolerance_why=(
        "lab calibrate, 5 seeds (seed = LoRA init + batch order): the fp32 arm's final loss is "
        "0.830 ± 0.025 (range 0.795–0.860), so 2 σ_seed = 0.049 nats: two LoRA runs of the same "
        "model differ by about that much, so a 4-bit base that 'matches' must be at least that "
        "close. Measured gap 0.112 ± 0.018 (0.086–0.128), > 0.049 in every seed: strict xfail. "
        "Control: loss drops 1.50 ± 0.02 (fp32) and 1.70 ± 0.03 (NF4+DQ) nats, ≥ 0.5 in every seed. "
        "Recalibrated 2026-12-04 (the 2026-11-29 table predated the strict xfail and read '5/5 failed'): same "
        "numbers to the last digit, now 5/5 xfailed + control 5/5 passed, with the code hash stored. Runtime: "
        "170–190 s per seed under load average 10–12 (training 35–63 s per arm, cached SmolLM2 load 11–14 s); "
        "over the 90 s quick-tier limit on a loaded machine (~60–80 s measured alone earlier). "
        "Fresh seeds 100–104 (2026-12-05, .fresh.json; 64 s per seed for this file and the PTQ claim together "
        "on a quiet machine): strict xfail 5/5 and control 5/5 passed — gap 0.105 ± 0.033 (0.071–0.155), "
        "recovered 66 ± 11 %, drops 1.49 / 1.70 nats. Caveat the fresh table shows: there the fp32 arm's σ_seed "
        "is 0.041, not 0.025, so with that σ the smallest fresh gap (0.071) would sit inside 2 σ (0.081); the "
        "xfail's verdict 'does not fully catch up' rests on the mean gap (≈ 0.11 over 10 seeds, ~3 σ_seed), "
        "not on every seed."
    ),
    tier="quick",
    tags=("real_model",),
    calibration="fixtures/calibration/qlora_smollm2_matches_lora.json",
    status="confirmed",  # strict xfail + control held on fresh seeds 100-104 (<claim>.fresh.json)
)

TOP_K = 4  # blocks that carry LoRA; the rest is frozen (and cached)
N_TRAIN, SEQ_LEN, BATCH, STEPS, LR, RANK, ALPHA = 24, 32, 4, 30, 2e-3, 8, 16
SIGMA_SEED = 0.0247  # std over seeds 0..4 of the fp32 arm's final loss (fixtures/calibration/...json)
TOLERANCE = 2 * SIGMA_SEED


@pytest.fixture(scope="module")
def arms(lab_seed):
    from labcore.pretrained.corpus import load_domain
    from labcore.finetuning.lora import peft_lora
    from labcore.finetuning.quantized import quantize_model_4bit
    from labcore.pretrained.smollm2 import pristine_smollm2
    from labcore.pretrained.topk import CachedWindows, decoder_layers, embeds_lm_loss, eval_cached, keep_top_layers
    from labcore.training.trainer import TrainConfig, train

    base, tokenizer, load_seconds = pristine_smollm2()
    code = load_domain("code", tokenizer)
    train_ids, held_ids = code.train_blocks(SEQ_LEN)[:N_TRAIN], code.eval_blocks(SEQ_LEN)
    n_layers = len(decoder_layers(base))
    out = {"load_seconds": load_seconds}
    for arm in ("fp32", "nf4_dq"):
        model = copy.deepcopy(base)
        if arm == "nf4_dq":
            quantize_model_4bit(model, "nf4", double_quant=True)
        train_w = CachedWindows.build(model, train_ids, n_layers - TOP_K)
        held_w = CachedWindows.build(model, held_ids, n_layers - TOP_K)
        keep_top_layers(model, TOP_K)
        before = {"train": eval_cached(model, train_w), "held": eval_cached(model, held_w)}
        torch.manual_seed(lab_seed)  # peft draws A from the global RNG: same A in both arms
        model = peft_lora(model, "all_linear", r=RANK, alpha=ALPHA)
        first_a = next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()
        run = train(model, train_w.batch_fn(BATCH),
                    TrainConfig(steps=STEPS, lr=LR, seed=lab_seed, track_update_ratio=False),
                    loss_fn=embeds_lm_loss)
        after = {"train": eval_cached(model, train_w), "held": eval_cached(model, held_w)}
        out[arm] = {"before": before, "after": after, "curve": run.metrics["loss"], "seconds": run.seconds,
                    "first_a": first_a, "diverged": run.diverged}
        del model
    return out


@pytest.mark.xfail(
    strict=True,
    reason=(
        "NF4+DQ base ends 0.112 ± 0.018 nats above the fp32 base (5 seeds; tolerance 2 σ_seed = 0.049): "
        "LoRA recovered 64 ± 6 % of the 0.311-nat quantisation gap in 30 steps, not all of it. "
        "Hypothesis: only the top 4 of 30 blocks carry LoRA here; the quantisation error of the 26 "
        "frozen blocks below is never trained against (QLoRA adapts every block, for thousands of steps)"
    ),
)
def test_qlora_base_fits_as_well_as_fp32_base(lab, arms):
    fp, q = arms["fp32"], arms["nf4_dq"]
    assert torch.equal(fp["first_a"], q["first_a"]), "the two arms did not start from the same LoRA A"
    assert not fp["diverged"] and not q["diverged"]
    gap_before = q["before"]["train"] - fp["before"]["train"]
    gap_after = q["after"]["train"] - fp["after"]["train"]
    lab.record(
        load_seconds=arms["load_seconds"], train_seconds_fp32=fp["seconds"], train_seconds_nf4dq=q["seconds"],
        **{f"{arm}_{when}_{split}": arms[arm][when][split]
           for arm in ("fp32", "nf4_dq") for when in ("before", "after") for split in ("train", "held")},
        gap_before=gap_before, gap_after=gap_after, recovered_fraction=1 - gap_after / gap_before,
        tolerance=TOLERANCE, sigma_seed=SIGMA_SEED,
    )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = np.arange(1, STEPS + 1)
    ax1.plot(steps, fp["curve"], label="LoRA, fp32 base", color="C0")
    ax1.plot(steps, q["curve"], label="QLoRA, NF4+DQ base", color="C1")
    ax1.set(xlabel="step", ylabel="training batch loss (nats)", title=f"SmolLM2, LoRA r={RANK} on top {TOP_K} blocks")
    ax1.legend()
    for i, (arm, color) in enumerate((("fp32", "C0"), ("nf4_dq", "C1"))):
        ax2.bar([i - 0.2, i + 0.2], [arms[arm]["before"]["train"], arms[arm]["after"]["train"]], width=0.4,
                color=color, alpha=0.5 + 0.5 * np.array([0, 1]))
    ax2.set_xticks([0, 1], ["fp32 base", "NF4+DQ base"])
    ax2.set(ylabel="loss on the 24 training windows", title=f"before | after; gap {gap_before:.2f} → {gap_after:.2f}")
    fig.tight_layout()
    lab.savefig(fig, "qlora_vs_lora")

    if TOLERANCE is None:
        lab.not_yet_run("calibrate σ_seed with --lab-seed 0..4 and set SIGMA_SEED / TOLERANCE")
    assert abs(gap_after) <= TOLERANCE, (
        f"after {STEPS} steps the NF4+DQ base is {gap_after:+.3f} nats from the fp32 base "
        f"(before: {gap_before:+.3f}); tolerance ±{TOLERANCE:.3f} (2 σ_seed)"
    )


def test_finetuning_moves_the_loss(lab, arms):
    """Control: the 'matches' above is only informative if fine-tuning changed the loss a lot."""
    drops = {arm: arms[arm]["before"]["train"] - arms[arm]["after"]["train"] for arm in ("fp32", "nf4_dq")}
    lab.record(**{f"drop_{arm}": v for arm, v in drops.items()})
    for arm, drop in drops.items():
        assert drop >= 0.5, f"{arm}: fine-tuning lowered the training loss by only {drop:.3f} nats"
