"""ΔW amplifies directions that W already has but does not emphasise (LoRA Table 7).

Lab notebook. §7.3 of the LoRA paper projects W_q onto the r-dimensional subspace of the learned
ΔW_q, ‖UᵀW_qVᵀ‖_F with U, V the top-r singular vectors of ΔW, and compares it with W_q's own
top-r directions and with random directions (GPT-3 layer 48, r = 4): 0.32 vs 21.67 vs 0.02.
So ΔW correlates with W more than a random matrix does, but mostly *not* with W's top
directions; and it amplifies them by ‖ΔW‖_F / ‖UᵀWV‖_F = 6.91/0.32 ≈ 21.5 at r = 4, only
≈ 1.9 at r = 64.

Regime (redesign after the science audit, issue 13). The first version read ΔW off the runs at
LORA_LR = 3e-2, where ‖ΔW_Q‖_F = 10–18 against ‖W_Q‖_F = 3.4–3.7: ΔW ≫ W, the opposite of the
paper's regime (‖ΔW_q‖ = 6.91 vs ‖W_q‖ = 61.95, 11 %). Now ΔW comes from dedicated runs at lr
2e-3 (15× lower; r = 4 and r = 64, α = 8, W_Q and W_V, 100 steps on task B), where ‖ΔW_Q‖ < ‖W_Q‖
and the r=4 adapter still learns about a quarter of a nat of task B (lr 1e-3 was explored too and
left ΔW's directions inside the random range in one layer). The regime is asserted: ‖ΔW_Q‖_F <
‖W_Q‖_F for each W_Q, and the r=4 run must have learned ≥ 0.1 nats.

The random column (redesign 2, issue 13 "weak claims"). The paper's "random" is one draw; here
it is the exact random RMS, √E‖UᵀWV‖²_F = r‖W‖_F/√(d·k) for Haar-random U, V
(``labcore.measures.amplification``), and "excess" = ‖U_ΔWᵀWV_ΔW‖_F / random RMS (paper: ≈ 16).
At d = 64 random directions see r/d = 1/16 of W (4/12288 in GPT-3), so the excess — and the
amplification factor, bounded by roughly (‖ΔW‖/‖W‖)·d/r ≤ 16 while ΔW < W — cannot reach the
paper's values; they are recorded, not asserted. Statement 1 ("stronger correlation with W than a
random matrix") is tested per matrix type, pooled over the two layers, as the paper reports one
number per matrix type: the geometric mean of the two W_Q excesses must exceed the 99th
percentile of the same statistic for random directions (4,000 Monte-Carlo draws). The previous
version asked it of each W_Q separately against that layer's p99; at d = 64 a single layer's ΔW
sometimes sits at the edge of the random range (see tolerance_why). Statements 2 and 3 stay per
W_Q: ΔW-directions < W-top-directions, and amplification(r=4) > amplification(r=64). Deviation
forced by the tiny width: r = 64 = d_model, so both amplification factors use the top-4
directions of each ΔW. W_V is recorded too. Numbers: fixtures/calibration/lora_delta_w_amplifies*.json.
Outcome: exploration seeds 0–4 and untouched fresh seeds 200–204 all pass (100–104 were seen when
the per-layer version failed on two of them); a random ΔW of the same norm fails (tolerance_why).
"""

import matplotlib.pyplot as plt
import numpy as np

from labcore.notebook.claims import Claim, Source
from labcore.finetuning.recipes import FinetuneRecipe
from labcore.measures.amplification import pooled_excess
from labcore.measures.subspace import delta_w_projection

N_RANDOM = 4000
R_PROJ = 4
LR = 2e-3  # the regime ‖ΔW‖ < ‖W‖ (see the docstring); LORA_LR = 3e-2 gives ΔW ≫ W
RUNS = {r: FinetuneRecipe(targets=("q", "v"), r=r, alpha=8, lr=LR) for r in (4, 64)}

CLAIM = Claim(
    id="lora_delta_w_amplifies",
    paper="lora",
    statement=(
        "“First, ∆W has a stronger correlation with W compared to a random matrix, indicating that "
        "∆W amplifies some features that are already in W. Second, instead of repeating the top "
        "singular directions of W, ∆W only amplifies directions that are not emphasized in W. "
        "Third, the amplification factor is rather huge: 21.5 ≈ 6.91/0.32 for r = 4.”"
    ),
    source=Source(
        title="LoRA: Low-Rank Adaptation of Large Language Models", arxiv="2106.09685", version="v2",
        where="§7.3, Table 7",
    ),
    paper_value="‖UᵀWqVᵀ‖_F at r=4: ΔWq 0.32, Wq 21.67, random 0.02; amplification 21.5 (r=4) vs ≈1.9 (r=64)",
    prediction=(
        "At lr 2e-3 (‖ΔW_Q‖ < ‖W_Q‖): pooled over both layers, ΔW_Q's top-4 directions see several "
        "times more of W_Q than random directions (geometric-mean excess above the random p99, "
        "≈ 1.4); per W_Q, ΔW-directions < W-top-directions and amplification r=4 > r=64."
    ),
    metric=(
        "‖UᵀW_QV‖_F on the top-4 directions of ΔW_Q (r=4 run) and of W_Q; excess = that / random RMS "
        "r‖W‖_F/√(dk), geometric mean over the W_Q layers vs the p99 of 4,000 random draws of the same "
        "statistic; amplification ‖ΔW‖_F/‖UᵀWV‖_F for r=4 and r=64"
    ),
    tolerance=(
        "regime: ‖ΔW_Q‖_F < ‖W_Q‖_F per W_Q and ≥ 0.1 nats learned; W_Q pooled over layers: excess "
        "geomean > random p99; per W_Q: ΔW-dirs < W-top and amplification(r=4) > amplification(r=64)"
    ),
    tolerance_why=(
        "Orderings against a Monte-Carlo null, no free parameter: p99 of 4,000 Haar draws of the pooled "
        "statistic (MC error ≈ 1 %). History: at LORA_LR (ΔW ≫ W) the per-layer r=4 > r=64 check failed "
        "on seed 4; the audit found that regime unlike the paper's and moved to lr 2e-3 (explored on seeds "
        "0–2) with per-layer checks 'ΔW-dirs > that layer's random p99'. Those passed seeds 0–4 but only "
        "3/5 fresh seeds 100–104 (seed 103 layer 1: 0.397 vs p99 0.416; seed 104 layer 0: 0.3602 vs "
        "0.3602), so 100–104 became seen. Redesign 2 (chosen on seeds 0–4 only): statement 1 pooled over "
        "the two W_Q layers (geometric-mean excess over the exact random RMS vs the p99 of the same "
        "statistic), as the paper reports one number per matrix type; statements 2 and 3 stay per layer. "
        "Seeds 0–4 (5/5): pooled excess 2.65–3.78 vs null p99 1.38–1.42 (log-margin ≈ 4.8 seed-SDs); "
        "per-layer excess 2.2–4.6; ΔW-dirs 0.59–1.07 vs W-top 2.9–4.1; amplification r=4 1.6–4.3 vs "
        "r=64 1.0–2.2; ‖ΔW_Q‖/‖W_Q‖ 0.31–0.83; learned 0.24–0.29 nats. Confirmed on untouched seeds "
        "200–204 (5/5): pooled 2.60–3.46 vs p99 1.39–1.42 (per layer 2.0–4.1). Post hoc on the seen "
        "100–104 (not used to choose): pooled 2.24–3.61, all above p99 ≈ 1.40 (per layer down to 1.5). "
        "Broken variant (ΔW_Q → a random rank-4 matrix of the same norm): pooled 0.71–1.33 < p99 on all "
        "10 seeds 0–4 and 100–104 (the claim fails as it should). Paper: excess ≈ 0.32/0.02 = 16 and "
        "amplification 21.5 at d = 12288; at d = 64 with ΔW < W both are bounded far lower (docstring): "
        "recorded, not asserted."
    ),
    tier="quick",
    calibration="fixtures/calibration/lora_delta_w_amplifies.json",
    status="confirmed",  # redesign 2 passed on untouched seeds 200-204 (<claim>.fresh.json); 100-104 were seen
)


def _short(name: str) -> str:
    return name.replace("blocks.", "L").replace(".attn.", "_")


def _plot(lab, rows: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(rows)
    x = np.arange(len(names))
    for k, (key, label) in enumerate([("random_mean", "random (mean)"), ("delta_w", "ΔW top-4 (r=4)"), ("w_top", "W top-4")]):
        axes[0].bar(x + (k - 1) * 0.27, [rows[n][key] for n in names], 0.27, label=label)
    axes[0].errorbar(x - 0.27, [rows[n]["random_mean"] for n in names],
                     yerr=[[0] * len(names), [rows[n]["random_p99"] - rows[n]["random_mean"] for n in names]],
                     fmt="none", color="k", capsize=3, lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_xticks(x, [_short(n).replace("_W_", " ") for n in names], fontsize=8)
    axes[0].set(ylabel="‖UᵀWV‖_F", title="Table 7: projection of W on 4 directions (bar: random p99)")
    axes[0].legend(fontsize=7)
    axes[1].bar(x - 0.2, [rows[n]["amplification_r4"] for n in names], 0.4, label="r=4")
    axes[1].bar(x + 0.2, [rows[n]["amplification_r64"] for n in names], 0.4, label="r=64 (top-4)")
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, [_short(n).replace("_W_", " ") for n in names], fontsize=8)
    axes[1].set(ylabel="‖ΔW‖_F / ‖UᵀWV‖_F", title="amplification factor")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "table7_projection")


def test_delta_w_amplifies_unemphasised_directions_of_w(lab, finetune_lab):
    run4 = finetune_lab.run(RUNS[4])
    f4, f64 = run4.factors(), finetune_lab.run(RUNS[64]).factors()
    learned = finetune_lab.base_loss("B") - run4.final["B"]
    rows, pooled = {}, {}
    for kind in ("W_Q", "W_V"):  # one pooled test per matrix type, over the layers (the paper: W_q)
        names = [n for n in f4 if n.endswith(kind)]
        pooled[kind] = pooled_excess([f4[n].W0 for n in names], [f4[n].delta_w for n in names],
                                     R_PROJ, N_RANDOM, seed=lab.seed)
        for name, vs_random in zip(names, pooled[kind]["per_matrix"]):
            p4 = delta_w_projection(f4[name].W0, f4[name].delta_w, R_PROJ)
            p64 = delta_w_projection(f64[name].W0, f64[name].delta_w, R_PROJ)
            rows[name] = vs_random | {
                "norm_w": p4["norm_w"], "norm_delta_w_r4": p4["norm_delta_w"],
                "norm_delta_w_r64": p64["norm_delta_w"], "amplification_r4": p4["amplification"],
                "amplification_r64": p64["amplification"], "delta_w_r64": p64["delta_w"],
            }
    lab.record(**{_short(name): row for name, row in rows.items()})
    _plot(lab, rows)

    q_rows = {name: row for name, row in rows.items() if name.endswith("W_Q")}  # the paper's claim is about W_q
    geo = {r: float(np.exp(np.mean([np.log(row[f"amplification_r{r}"]) for row in q_rows.values()]))) for r in (4, 64)}
    q = pooled["W_Q"]
    lab.record(amplification_r4_geomean=geo[4], amplification_r64_geomean=geo[64], learned_r4=learned,
               norm_ratio_q={n: row["norm_delta_w_r4"] / row["norm_w"] for n, row in q_rows.items()},
               excess_geomean_q=q["excess_geomean"], excess_null_p99_q=q["null_p99"], excess_p_value_q=q["p_value"],
               excess_geomean_v=pooled["W_V"]["excess_geomean"], excess_null_p99_v=pooled["W_V"]["null_p99"])
    # the regime: a gentle update that still learned something (the paper: ‖ΔW_q‖ ≈ 11 % of ‖W_q‖)
    assert learned >= 0.1, f"the r=4 run at lr {LR} learned only {learned:.3f} nats of task B"
    # 1. ΔW correlates with W more than random directions do (W_Q pooled over the layers)
    assert q["excess_geomean"] > q["null_p99"], (
        f"ΔW_Q's top-{R_PROJ} directions see {q['excess_geomean']:.2f}× the random RMS of W_Q (geometric mean "
        f"over layers), not above the random p99 {q['null_p99']:.2f}: {q_rows}"
    )
    for name, row in q_rows.items():
        assert row["norm_delta_w_r4"] < row["norm_w"], f"{name}: ‖ΔW‖ {row['norm_delta_w_r4']:.2f} ≥ ‖W‖ {row['norm_w']:.2f}"
        # 2. ... but not W's top directions
        assert row["delta_w"] < row["w_top"], f"{name}: ΔW-dirs {row['delta_w']:.3f} ≥ W-top {row['w_top']:.3f}"
        # 3. the amplification factor is larger at low rank
        assert row["amplification_r4"] > row["amplification_r64"], (
            f"{name}: amplification r=4 {row['amplification_r4']:.2f} ≤ r=64 {row['amplification_r64']:.2f}"
        )
