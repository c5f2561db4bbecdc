"""ΔW amplifies directions that W already has but does not emphasise (LoRA Table 7).

Lab notebook. §7.3 of the LoRA paper projects W_q onto the r-dimensional subspace of the learned
ΔW_q, ‖UᵀW_qVᵀ‖_F with U, V the top-r singular vectors of ΔW, and compares it with W_q's own
top-r directions and with random directions (GPT-3 layer 48, r = 4): 0.32 vs 21.67 vs 0.02.
So ΔW correlates with W more than a random matrix does, but mostly *not* with W's top
directions; and it amplifies them by ‖ΔW‖_F / ‖UᵀWV‖_F = 6.91/0.32 ≈ 21.5 at r = 4, only
≈ 1.9 at r = 64.

Regime (redesign after the science audit, issue 13). The first version read ΔW off the runs at
LORA_LR = 3e-2, where ‖ΔW_Q‖_F = 10–18 against ‖W_Q‖_F = 3.4–3.7: ΔW ≫ W, the opposite of the
paper's regime (‖ΔW_q‖ = 6.91 vs ‖W_q‖ = 61.95, 11 %), and its r=4-vs-r=64 comparison passed
narrowly (12.0 vs 11.5 on seed 4). Now ΔW comes from dedicated runs at lr 2e-3 (15× lower; r = 4
and r = 64, α = 8, W_Q and W_V, 100 steps on task B): explored on seeds 0–2, ‖ΔW_Q‖/‖W_Q‖ was
0.39–0.80 and the r=4 adapter still learned 0.24–0.26 nats of task B (0.39 at LORA_LR). lr 1e-3
gave 0.22–0.37 but its ΔW-directions in layer 1 fell inside the random range on seed 0 (0.36 vs a
p99 of ≈ 0.44), so the other explored value, 2e-3, was chosen — an exploratory
choice, confirmed (or not) on fresh seeds by the calibration. The regime is asserted:
‖ΔW_Q‖_F < ‖W_Q‖_F for each W_Q, and the r=4 run must have learned ≥ 0.1 nats (so ΔW is small
because of a gentle update, not because nothing was learned).

"Random" is the Monte-Carlo distribution of ‖UᵀWV‖_F over 1,000 pairs of Haar-random 4-dim
subspaces (its mean is ≈ r·‖W‖_F/d: at d = 64 random directions see 4/64 of W, not 4/12288 as in
GPT-3, so the random column is relatively much larger here than in the paper, and the
amplification factor ‖ΔW‖/‖UᵀWV‖ cannot reach the paper's 21.5 while ΔW < W: it is bounded by
roughly (‖ΔW‖/‖W‖)·d/r ≤ 16). Deviation forced by the tiny width: r = 64 = d_model, so both
amplification factors are computed on the top-4 directions of each ΔW. Assertions are per W_Q
matrix (both layers); W_V is recorded too. Numbers: fixtures/calibration/lora_delta_w_amplifies*.json.
Outcome: 5/5 exploration seeds, 3/5 fresh seeds — two fresh seeds had one W_Q layer whose ΔW
directions projected W no more than the random p99 (the other checks held), so the claim stays
exploratory (details in tolerance_why).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore.notebook.claims import Claim, Source
from labcore.finetuning.recipes import FinetuneRecipe
from labcore.measures.subspace import delta_w_projection, random_orthonormal

N_RANDOM = 1000
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
        "At lr 2e-3 (‖ΔW_Q‖ < ‖W_Q‖), for W_Q in both layers: random p99 < ΔW-directions < W-top-"
        "directions, and the r=4 amplification factor exceeds the r=64 one."
    ),
    metric=(
        "‖UᵀW_QV‖_F on the top-4 directions of ΔW_Q (r=4 run), of W_Q, and of random subspaces "
        "(99th percentile of 1,000 draws); amplification ‖ΔW‖_F/‖UᵀWV‖_F for r=4 and r=64"
    ),
    tolerance=(
        "regime: ‖ΔW_Q‖_F < ‖W_Q‖_F per W_Q and ≥ 0.1 nats learned; per W_Q matrix: random p99 < "
        "ΔW-dirs < W-top and amplification(r=4) > amplification(r=64)"
    ),
    tolerance_why=(
        "Orderings, no free parameter: the random column is the 99th percentile of 1,000 Haar draws "
        "(Monte-Carlo error < 2 %). History: at LORA_LR (ΔW ≫ W) the per-layer r=4 > r=64 check failed "
        "on seed 4 and was moved to a geometric mean; the audit found that regime unlike the paper's. "
        "The redesign picks lr 2e-3 (explored on seeds 0–2: ‖ΔW_Q‖/‖W_Q‖ 0.39–0.80, amplification r=4 "
        "1.6–4.3 vs r=64 1.0–2.0 per layer) and returns to per-matrix checks. The paper's absolute 21.5 "
        "is out of reach at d=64 with ΔW < W (bound ≈ (‖ΔW‖/‖W‖)·d/r); it is recorded, not asserted. "
        "Exploration table (seeds 0–4, 5/5 passed): ‖ΔW_Q‖/‖W_Q‖ 0.31–0.83; learned 0.24–0.29 nats; "
        "ΔW-dirs 0.59–1.07 vs random p99 0.35–0.46; amplification r=4 1.6–4.3 vs r=64 1.0–2.2 per layer. "
        "Fresh seeds 100–104: FAILED on 2 of 5, both on 'ΔW-dirs > random p99' in one layer (seed 103 "
        "layer 1: 0.397 vs p99 0.416; seed 104 layer 0: 0.3602 vs 0.3602); W-top and amplification r=4 > "
        "r=64 held on all 5 — so the claim stays exploratory: at d=64 with ‖ΔW‖ < ‖W‖, ΔW's directions "
        "are more W-aligned than random in most seeds and layers but not resolved in all; "
        "not re-toleranced, since choosing again after the fresh seeds would be tuning to pass."
    ),
    tier="quick",
    calibration="fixtures/calibration/lora_delta_w_amplifies.json",
)


def _random_projection_norms(W: torch.Tensor, r: int, n: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    W64 = W.double()
    out = np.empty(n)
    for i in range(n):
        U = random_orthonormal(W64.shape[0], r, g)
        V = random_orthonormal(W64.shape[1], r, g)
        out[i] = float(torch.linalg.matrix_norm(U.T @ W64 @ V))
    return out


def test_delta_w_amplifies_unemphasised_directions_of_w(lab, finetune_lab):
    run4 = finetune_lab.run(RUNS[4])
    f4, f64 = run4.factors(), finetune_lab.run(RUNS[64]).factors()
    learned = finetune_lab.base_loss("B") - run4.final["B"]
    rows = {}
    for name in f4:
        W = f4[name].W0
        p4 = delta_w_projection(W, f4[name].delta_w, R_PROJ, seed=lab.seed)
        p64 = delta_w_projection(W, f64[name].delta_w, R_PROJ, seed=lab.seed)
        rand = _random_projection_norms(W, R_PROJ, N_RANDOM, seed=lab.seed)
        rows[name] = {
            "delta_w": p4["delta_w"], "w_top": p4["w_top"], "random_mean": float(rand.mean()),
            "random_p99": float(np.percentile(rand, 99)), "norm_w": p4["norm_w"],
            "norm_delta_w_r4": p4["norm_delta_w"], "norm_delta_w_r64": p64["norm_delta_w"],
            "amplification_r4": p4["amplification"], "amplification_r64": p64["amplification"],
            "delta_w_r64": p64["delta_w"],
        }
    lab.record(**{name.replace("blocks.", "L").replace(".attn.", "_"): row for name, row in rows.items()})

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(rows)
    x = np.arange(len(names))
    for k, (key, label) in enumerate([("random_mean", "random (mean)"), ("delta_w", "ΔW top-4 (r=4)"), ("w_top", "W top-4")]):
        axes[0].bar(x + (k - 1) * 0.27, [rows[n][key] for n in names], 0.27, label=label)
    axes[0].errorbar(x - 0.27, [rows[n]["random_mean"] for n in names],
                     yerr=[[0] * len(names), [rows[n]["random_p99"] - rows[n]["random_mean"] for n in names]],
                     fmt="none", color="k", capsize=3, lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_xticks(x, [n.replace("blocks.", "L").replace(".attn.W_", " ") for n in names], fontsize=8)
    axes[0].set(ylabel="‖UᵀWV‖_F", title="Table 7: projection of W on 4 directions")
    axes[0].legend(fontsize=7)
    axes[1].bar(x - 0.2, [rows[n]["amplification_r4"] for n in names], 0.4, label="r=4")
    axes[1].bar(x + 0.2, [rows[n]["amplification_r64"] for n in names], 0.4, label="r=64 (top-4)")
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, [n.replace("blocks.", "L").replace(".attn.W_", " ") for n in names], fontsize=8)
    axes[1].set(ylabel="‖ΔW‖_F / ‖UᵀWV‖_F", title="amplification factor")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "table7_projection")

    q_rows = {name: row for name, row in rows.items() if ".W_Q" in name}  # the paper's claim is about W_q
    geo = {r: float(np.exp(np.mean([np.log(row[f"amplification_r{r}"]) for row in q_rows.values()]))) for r in (4, 64)}
    lab.record(amplification_r4_geomean=geo[4], amplification_r64_geomean=geo[64], learned_r4=learned,
               norm_ratio_q={n: row["norm_delta_w_r4"] / row["norm_w"] for n, row in q_rows.items()})
    # the regime: a gentle update that still learned something (the paper: ‖ΔW_q‖ ≈ 11 % of ‖W_q‖)
    assert learned >= 0.1, f"the r=4 run at lr {LR} learned only {learned:.3f} nats of task B"
    for name, row in q_rows.items():
        assert row["norm_delta_w_r4"] < row["norm_w"], f"{name}: ‖ΔW‖ {row['norm_delta_w_r4']:.2f} ≥ ‖W‖ {row['norm_w']:.2f}"
        assert row["random_p99"] < row["delta_w"] < row["w_top"], f"{name}: {row}"
        assert row["amplification_r4"] > row["amplification_r64"], (
            f"{name}: amplification r=4 {row['amplification_r4']:.2f} ≤ r=64 {row['amplification_r64']:.2f}"
        )
