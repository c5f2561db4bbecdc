"""Trained: at large d_k, unscaled dot-product attention learns a retrieval task far worse.

Lab notebook. §3.2.1 says the two mechanisms "perform similarly" for small d_k, while for large
d_k the unscaled softmax saturates. The static claim (test_softmax_saturation) shows the
Jacobian collapse; here we check it matters for learning. Task: pair-token associative recall
(labcore.tasks.pair_recall) with 8 (key, value) pairs — one attention head must find the pair
whose key the query names. Model: 1 layer, 1 head, **d_model = 64 fixed and d_k = d_head varied**
(GPTConfig.d_head), so the two d_k's have the same residual width; q and k have unit-variance
components at init (init std 1/√d_model on LayerNorm'd inputs), the paper's footnote-4
assumption, so the raw score's std at init is √d_k. (The paper compares *additive* attention
with unscaled dot products; scaled vs unscaled dot products is our proxy.)

Setup: 250 AdamW steps, lr 1e-3, batch 64, three model seeds, scaled (1/√d_k) vs raw (1.0).

History (audit, 2026-12): the earlier version set d_model = d_k, so the d_k=16 control had a
16-wide residual and neither arm learned (2.91–2.98 nats, above chance 2.77): its "ratio ≈ 1"
showed nothing, and its written prediction (2.67–2.78) failed unremarked. Exploratory runs for
this version (d_model 64, seeds 0–2): at d_k=16 the raw arm already trails (ratio 1.5–1.7), so
"small" here means d_k=4 (scale ½ vs 1); at d_k=4 both arms learn (1.82–2.23 nats), ratio
1.06–1.11; at d_k=256 ratio 2.5–3.4.
Prediction for the calibration (written before seeds 0–4): d_k=4 both arms ≥ 0.4 nats below
chance and raw/scaled within 1 ± 0.25 in every seed; d_k=256 ratio ≥ 1.5 in every seed.
Measured: fixtures/calibration/aiayn_scaled_attention_trains.json.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore import GPT, GPTConfig
from labcore.notebook.claims import Claim, Source
from labcore.tasks.pair_recall import PairRecallTask
from labcore.training.trainer import TrainConfig, seeded_model, train

CLAIM = Claim(
    id="aiayn_scaled_attention_trains",
    paper="attention",
    statement=(
        "“While for small values of d_k the two mechanisms perform similarly, additive attention "
        "outperforms dot product attention without scaling for larger values of d_k.”"
    ),
    source=Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3.2.1"),
    paper_value="qualitative (unscaled dot-product attention degrades at large d_k)",
    prediction="d_model 64 fixed: at d_k=256 the raw model's final loss is ≥ 1.5× the scaled one's; at d_k=4 both "
               "arms learn (≥ 0.4 nats below chance) and match within 1 ± 0.25.",
    metric="final loss (mean of the last 20 steps) raw / scaled, per seed, after 250 steps; d_head = d_k, d_model = 64",
    tolerance="d_k=256: ratio ≥ 1.5 in every seed; d_k=4 (control): every arm ≤ chance − 0.4 nats and "
              "|ratio − 1| ≤ 0.25 in every seed",
    tolerance_why=(
        "Bounds written before calibrating (see the prediction in the docstring) and not changed after. "
        "lab calibrate seeds 0–4 (each run trains model seeds s..s+2, so model seeds 0–6; windows overlap), "
        "250 steps, 5/5 runs pass: d_k=256 per-seed raw/scaled ratio 2.51–3.46 (smallest per run 2.51–2.90), "
        "raw arm 2.20–2.37 nats vs scaled 0.65–0.93; d_k=4 control ratio 1.05–1.13, arms 1.80–2.22 nats "
        "(worst arm 2.04–2.22). Fresh seeds 100–104 (model seeds 100–106, /tmp/audit-fresh), 5/5 pass: "
        "d_k=256 ratio 2.45–3.73 (smallest per run 2.45–3.13); d_k=4 ratio 1.05–1.14, worst arm 2.28–2.32 nats. "
        "1.5 is ≤ 0.61× the smallest large-d_k ratio seen; the control's ±0.25 is > 1.7× its largest "
        "deviation (0.14). The tightest bound is the control's 'learned' margin: chance 2.77 − 0.4 = 2.37 nats "
        "vs worst arm 2.32 (fresh), only 0.05 nats of slack; the raw d_k=4 arm learns least."
    ),
    tier="quick",
    calibration="fixtures/calibration/aiayn_scaled_attention_trains.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

TASK = PairRecallTask(n_keys=16, n_values=16, n_pairs=8)
STEPS, SEEDS, D_MODEL = 250, 3, 64
SMALL_DK, LARGE_DK = 4, 256
RATIO_MIN, CONTROL_BAND, LEARNED_MARGIN = 1.5, 0.25, 0.4


def final_loss(d_k: int, scaled: bool, seed: int) -> tuple[float, np.ndarray]:
    cfg = GPTConfig(
        vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len, d_model=D_MODEL, d_head=d_k, n_layers=1, n_heads=1,
        positional="none", attn_scale=None if scaled else 1.0, init_std=1 / math.sqrt(D_MODEL),
    )
    model = seeded_model(lambda: GPT(cfg), seed)
    run = train(model, TASK.batch_fn(64), TrainConfig(steps=STEPS, lr=1e-3, seed=seed, track_update_ratio=False))
    return float(run.metrics["loss"][-20:].mean()), run.metrics["loss"]


@pytest.mark.parametrize("d_k", [SMALL_DK, LARGE_DK])
def test_unscaled_attention_degrades_only_at_large_d_k(lab, d_k):
    ratios, curves, finals = [], {}, []
    for seed in range(lab.seed, lab.seed + SEEDS):
        scaled, curves[("scaled", seed)] = final_loss(d_k, True, seed)
        raw, curves[("raw", seed)] = final_loss(d_k, False, seed)
        ratios.append(raw / scaled)
        finals += [scaled, raw]
        lab.record(**{f"scaled_loss_seed{seed - lab.seed}": scaled, f"raw_loss_seed{seed - lab.seed}": raw})
    lab.record(ratio_min=min(ratios), ratio_max=max(ratios), chance_loss=TASK.chance_loss,
               worst_arm_loss=max(finals), best_arm_loss=min(finals), d_model=D_MODEL, d_k=d_k)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (kind, seed), curve in curves.items():
        ax.plot(curve, color="C0" if kind == "scaled" else "C3", alpha=0.7, lw=0.8,
                label=kind if seed == lab.seed else None)
    ax.axhline(TASK.chance_loss, color="gray", ls=":", label="chance")
    ax.set(xlabel="step", ylabel="loss (nats)", title=f"pair recall, 1 head, d_k={d_k}")
    ax.legend()
    lab.savefig(fig, f"loss_curves_dk{d_k}")

    if d_k == LARGE_DK:
        assert min(ratios) >= RATIO_MIN, f"raw/scaled final-loss ratios {np.round(ratios, 3)}: not ≥ {RATIO_MIN} in every seed"
    else:
        assert max(finals) <= TASK.chance_loss - LEARNED_MARGIN, (
            f"control d_k={d_k}: an arm did not learn (final losses {np.round(finals, 3)}, chance {TASK.chance_loss:.2f})")
        assert max(abs(r - 1) for r in ratios) <= CONTROL_BAND, (
            f"control d_k={d_k}: ratios {np.round(ratios, 3)} not within 1 ± {CONTROL_BAND}")
