"""Full fine-tuning's ΔW is high-rank; LoRA nonetheless matches full fine-tuning on the task.

Lab notebook. Two claims that pull in opposite directions, measured on the same runs.

(a) Biderman et al. 2024 ("LoRA Learns Less and Forgets Less", arXiv 2405.09673 v2, §4.5 and
the abstract): "full finetuning learns perturbations with a rank that is 10-100X greater than
typical LoRA configurations". They take the spectrum of ΔW = W_finetuned − W_base of Llama-2-7B
after continued pretraining on code/math and ask how many singular directions explain 90 % of it.
(b) The LoRA paper (arXiv 2106.09685 v2, Tables 2–4): LoRA on W_q, W_v "performs on-par or
better than fine-tuning" (RoBERTa, DeBERTa, GPT-2, GPT-3) — a low-rank ΔW is enough.

Here: the small pretrained base of ``labcore.finetuning.base`` (d_model 64, 2 layers) fine-tuned
for 100 steps on the near task B by full fine-tuning (FULL_LR) and by LoRA r = 8 on W_Q, W_V and
on all linear layers (LORA_LR) — runs that the forgetting and rank-sweep claims already train.
Measure: rank_for_energy(ΔW, 0.9) (``labcore.measures.spectrum``: smallest k whose top-k
singular values hold 90 % of Σσ²) for each of the four W_Q / W_V matrices, full FT's ΔW vs LoRA's
(α/r)·B·A; learned = base − final expected CE on task B (512 held-out sequences).

Prediction written before running: (a) at d = 64 a 10× ratio needs full FT's ΔW to use most of
the 64 directions while LoRA's uses one or two — we expected it to fail: 100 steps on a near
task that is a rank-1 tilt of the language should not need a high-rank update. (b) LoRA q,v
within 5 % of full FT's learning (the LoRA paper's claim); the forgetting claim already saw
q,v short by ≈ 0.05 nats, so we expected (b) to hold only for all-linear LoRA.

Controls (asserted): LoRA's ΔW has numerical rank ≤ r exactly (σ_{r+1}/σ₁ < 1e-6), and a random
Gaussian 64×64 matrix needs ≥ 40 % of its 64 directions for 90 % (≈ 33), so the measure can see
both a low-rank and a spread-out spectrum. Measured numbers: the calibration tables
(fixtures/calibration/lora_full_ft_rank*.json) and docs/papers/lora.md.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.finetuning.recipes import FinetuneRecipe
from labcore.measures.spectrum import energy_share, numerical_rank, rank_for_energy
from labcore.notebook.claims import Claim, Source

FULL = FinetuneRecipe(method="full")
LORA = {"q,v": FinetuneRecipe(targets=("q", "v"), r=8, alpha=8),
        "all-linear": FinetuneRecipe(targets="all_linear", r=8, alpha=8)}
ENERGY = 0.9
RATIO_PAPER = 10.0  # the low end of Biderman et al.'s "10-100X"
MATCH_TOL = 0.05  # "on par": LoRA's learning within 5 % of full fine-tuning's

CLAIM = Claim(
    id="lora_full_ft_rank",
    paper="lora",
    statement=(
        "“Full finetuning learns perturbations with a rank that is 10-100X greater than typical LoRA "
        "configurations” (Biderman et al. 2024, arXiv 2405.09673, abstract and §4.5) — and yet LoRA "
        "“performs on-par or better than fine-tuning” (LoRA Tables 2–4)."
    ),
    source=Source(
        title="LoRA: Low-Rank Adaptation of Large Language Models", arxiv="2106.09685", version="v2",
        where="Tables 2–4 (LoRA ≈ full FT); (a) is from Biderman et al. arXiv 2405.09673 v2 §4.5",
    ),
    paper_value="(a) rank for 90 % of ΔW's spectrum: full FT 10–100× LoRA; (b) LoRA within seed noise of full FT",
    prediction=(
        "(a) fails at d=64 after 100 steps on a near task (full FT's ΔW is low-rank too); "
        "(b) holds for all-linear LoRA, not for q,v LoRA (≈ 0.05 nats short)."
    ),
    metric=(
        "median over W_Q/W_V (2 layers) of rank_for_energy(ΔW_full, 0.9) / rank_for_energy(ΔW_LoRA r=8, 0.9); "
        "shortfall = (learned_full − learned_LoRA) / learned_full on task B"
    ),
    tolerance=(
        "(a) ratio ≥ 10; (b) shortfall ≤ 0.05; controls: LoRA numerical rank ≤ 8, random 64×64 "
        "rank_for_energy ≥ 0.4·64"
    ),
    tolerance_why=(
        "(a) 10 is the paper's lower bound. (b) 5 % of full FT's learning, the same boundary that "
        "forgetting_small_model uses for 'learns substantially less'; all-linear LoRA's shortfall was "
        "1.2–1.7 % and q,v's 10–14 % on seeds 0–4, so the bound sits between the two groups with a ≥ 2× "
        "margin on each side. Controls are exact (rank of B·A) or a property of Gaussian matrices "
        "(≈ 33 of 64, s.d. < 1). Exploration (seeds 0–4): random 33–34; median rank ratio 3.0–4.25 (strict "
        "xfail 5/5); shortfall all-linear 1.2–1.7 % (passes 5/5), q,v 10.5–13.6 % (strict xfail 5/5)."
    ),
    status="confirmed",
    tier="quick",
    calibration="fixtures/calibration/lora_full_ft_rank.json",
)


def _delta_w_full(finetune_lab, name: str) -> torch.Tensor:
    base = dict(finetune_lab.base.named_parameters())
    tuned = dict(finetune_lab.run(FULL).model.named_parameters())
    return (tuned[name + ".weight"] - base[name + ".weight"]).detach()


def _spectra(finetune_lab) -> dict[str, dict]:
    """Per q,v matrix: 90 %-ranks of full FT's ΔW, LoRA's ΔW and W₀, LoRA's numerical rank."""
    factors = finetune_lab.run(LORA["q,v"]).factors()
    rows = {}
    for name, f in factors.items():
        d_full = _delta_w_full(finetune_lab, name)
        rows[name] = {
            "rank90_full": rank_for_energy(d_full, ENERGY), "rank90_lora": rank_for_energy(f.delta_w, ENERGY),
            "rank90_w0": rank_for_energy(f.W0, ENERGY), "numerical_rank_lora": numerical_rank(f.delta_w),
            "norm_delta_full": float(d_full.norm()), "norm_delta_lora": float(f.delta_w.norm()),
            "share_full": energy_share(d_full), "share_lora": energy_share(f.delta_w),
        }
    return rows


def _plot(lab, rows, random_share):
    fig, ax = plt.subplots(figsize=(6, 3.8))
    k = np.arange(1, len(random_share) + 1)
    for i, (name, row) in enumerate(rows.items()):
        label = name.replace("blocks.", "L").replace(".attn.W_", " ")
        ax.plot(k, row["share_full"], f"C{i}-", label=f"full FT {label}")
        ax.plot(k, row["share_lora"], f"C{i}:", label=f"LoRA r=8 {label}")
    ax.plot(k, random_share, "k--", label="random Gaussian")
    ax.axhline(ENERGY, color="gray", lw=0.6)
    ax.set(xscale="log", xlabel="rank k", ylabel="share of Σσ² in top k", title="spectrum of ΔW (W_Q, W_V)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    lab.savefig(fig, "delta_w_spectra")


def test_control_lora_rank_is_exact_and_random_is_spread(lab, finetune_lab):
    rows = _spectra(finetune_lab)
    d = finetune_lab.base.cfg.d_model
    g = torch.Generator().manual_seed(lab.seed)
    gauss = torch.randn(d, d, generator=g, dtype=torch.float64)
    rank_random = rank_for_energy(gauss, ENERGY)
    lab.record(rank90_random=rank_random, numerical_rank_lora={n: r["numerical_rank_lora"] for n, r in rows.items()},
               rank90_w0={n: r["rank90_w0"] for n, r in rows.items()})
    _plot(lab, rows, energy_share(gauss))
    r = LORA["q,v"].r
    assert all(row["numerical_rank_lora"] <= r for row in rows.values()), f"LoRA ΔW rank > {r}: {rows}"
    assert rank_random >= 0.4 * d, f"a random {d}×{d} Gaussian needs only {rank_random} directions for 90 %"


@pytest.mark.xfail(strict=True, reason=(
    "seeds 0–4: full FT's ΔW needs 5–11 of 64 directions for 90 % of its spectrum, LoRA q,v r=8's 1–3: "
    "median ratio ≈ 2–6×, not ≥ 10× (the base's own W needs 9–29, a random matrix 33). Hypothesis: 100 "
    "steps on a near task that shifts the language by a rank-1 tilt need only a few directions, even "
    "without a rank limit; Biderman et al.'s ΔW comes from billions of tokens of a genuinely new domain"))
def test_full_ft_delta_w_needs_10x_the_rank_of_lora(lab, finetune_lab):
    rows = _spectra(finetune_lab)
    ratios = {n: row["rank90_full"] / row["rank90_lora"] for n, row in rows.items()}
    median = float(np.median(list(ratios.values())))
    lab.record(rank90_full={n: r["rank90_full"] for n, r in rows.items()},
               rank90_lora={n: r["rank90_lora"] for n, r in rows.items()}, rank_ratio=ratios,
               rank_ratio_median=median, norm_delta_full={n: r["norm_delta_full"] for n, r in rows.items()},
               norm_delta_lora={n: r["norm_delta_lora"] for n, r in rows.items()})
    assert median >= RATIO_PAPER, f"median rank ratio full/LoRA {median:.1f} < {RATIO_PAPER}: {ratios}"


@pytest.mark.parametrize("variant", [
    pytest.param("q,v", marks=pytest.mark.xfail(strict=True, reason=(
        "seeds 0–4: LoRA q,v r=8 learns 0.045–0.060 nats (10–14 %) less of task B than full fine-tuning "
        "at each method's tuned lr (higher LoRA lr does not close it: recipes.py grid). Hypothesis: the "
        "near task is a unigram/bigram tilt of the output distribution, which the MLP and readout carry; "
        "q,v adapters reach it only through attention's values, while all-linear LoRA (MLP adapted) "
        "comes within 2 %"))),
    "all-linear",
])
def test_lora_matches_full_finetuning(lab, finetune_lab, variant):
    base_b = finetune_lab.base_loss("B")
    learned_full = base_b - finetune_lab.run(FULL).final["B"]
    learned = base_b - finetune_lab.run(LORA[variant]).final["B"]
    shortfall = (learned_full - learned) / learned_full
    lab.record(variant=variant, learned_full=learned_full, learned_lora=learned,
               gap_nats=learned_full - learned, shortfall=shortfall)
    assert learned_full > 0.2, f"control: full fine-tuning learned only {learned_full:.3f} nats of task B"
    assert shortfall <= MATCH_TOL, (
        f"LoRA {variant} learned {learned:.4f} vs full FT {learned_full:.4f} nats: {shortfall:.1%} short (> {MATCH_TOL:.0%})"
    )
