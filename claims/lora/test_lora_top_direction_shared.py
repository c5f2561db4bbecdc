"""The top singular direction of A is shared between a rank-8 and a rank-64 LoRA.

Lab notebook. §7.2 of the LoRA paper trains r = 8 and r = 64 adapters from the same pretrained
model and compares the subspaces spanned by the top-i and top-j right-singular vectors of their
A matrices with φ(A₈, A₆₄, i, j) = ‖U₈^{i⊤} U₆₄^{j}‖²_F / min(i, j) (Eq. 4): the top direction
overlaps with φ > 0.5, the others hardly — "providing an explanation of why r = 1 performs
quite well". Two random subspaces give E[φ] = max(i, j)/d (labcore.measures.subspace.random_phi_baseline).

Here: the r = 8 and r = 64 runs of the rank sweep (LoRA on W_Q, W_V, 2 layers, d_model 64, α = 8,
100 steps on task B). Their A matrices start from *independent* random inits (different seeds
per recipe, as separate runs are). φ(1,1) is measured on all four adapted matrices; the control
is the same φ between the two *initial* A matrices, which must look random (≈ 1/64). Caveat of
the tiny scale: r = 64 = d_model, so A₆₄'s row space is all of ℝ⁶⁴ and φ(i, j = 64) = 1 by
construction; only small j is informative. Heat maps like the paper's Fig. 3 are saved.

Measured (seeds 0–4): median over the four matrices 0.64–0.77, above the paper's 0.5 in every
seed; W_V shares its top direction reliably (0.54–0.89), W_Q less so (0.07–0.84, seed-dependent);
the random inits give ≤ 0.13 (chance 1/64 = 0.016). B's column spaces tell the same story
(recorded: W_V 0.69–0.97, W_Q 0.001–0.62).

Is the shared direction just the input's principal direction (the science audit's question)?
If it were, any adapter on these layers would find it, whatever the task. Two controls, asserted
(added after the audit; prediction written before running them: both far below the threshold):
* **other task:** φ(1,1) between the near-task A₈ and the A₈ of the *far* task (domain B's table
  replaced by a fresh random one; the run of ``lora_low_rank_suffices``), same base, same init
  seed policy — median over the 4 matrices must stay < 0.3;
* **input statistics:** φ(1,1) between A₈ and the top eigenvector of the second-moment matrix
  E[x xᵀ] of the adapted layer's input x (the base's ln1 output on 512 task-B sequences) — median
  < 0.3. (The centred covariance's top direction is recorded too.)
Numbers: fixtures/calibration/lora_top_direction_shared*.json.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore.notebook.claims import Claim, Source
from labcore.finetuning.lora import lora_factors
from labcore.finetuning.recipes import FinetuneRecipe, prepare
from labcore.measures.subspace import phi_grid, random_phi_baseline, subspace_similarity

CLAIM = Claim(
    id="lora_top_direction_shared",
    paper="lora",
    statement=(
        "“Directions corresponding to the top singular vector overlap significantly between "
        "A_{r=8} and A_{r=64}, while others do not. Specifically, ∆Wv (resp. ∆Wq) of A_{r=8} and "
        "∆Wv (resp. ∆Wq) of A_{r=64} share a subspace of dimension 1 with normalized similarity "
        "> 0.5, providing an explanation of why r = 1 performs quite well in our downstream tasks "
        "for GPT-3.”"
    ),
    source=Source(
        title="LoRA: Low-Rank Adaptation of Large Language Models", arxiv="2106.09685", version="v2",
        where="§7.2, Eq. 4, Fig. 3",
    ),
    paper_value="φ(A_{r=8}, A_{r=64}, 1, 1) > 0.5 (GPT-3 layer 48, Wq and Wv)",
    prediction=(
        "The trained A₈ and A₆₄ share their top direction far above chance; their random inits do not."
    ),
    metric="φ(A₈, A₆₄, 1, 1) for W_Q and W_V in both layers (median over the 4 matrices); same for the inits",
    tolerance=(
        "median φ(1,1) ≥ max(0.3, 10 × 1/64); paper's > 0.5 recorded (soft); controls: every init "
        "φ(1,1) < 0.3; median φ(1,1) with the far-task A₈ < 0.3; median φ(1,1) with the input's top "
        "second-moment direction < 0.3"
    ),
    tolerance_why=(
        "0.3 is the research note's threshold for tiny models (more noise left in A than in GPT-3), "
        "19× the chance level 1/64; the median over the 4 matrices guards against one matrix that "
        "barely trained. Measured (seeds 0–4, before the audit): median φ(1,1) 0.64/0.70/0.77 "
        "(min/median/max), per matrix 0.07–0.89; init φ(1,1) ≤ 0.13. The two task/input controls use the "
        "same 0.3 line: the claim is that the shared direction is specific to the task, so a different "
        "task's adapter and the input's principal direction must fall below the bar the claim clears. "
        "Exploration table after the redesign (seeds 0–4, 5/5 passed): median φ(1,1) 0.64–0.77; far-task "
        "control median 0.003–0.10; input-PC1 control median 0.001–0.05."
    ),
    status="confirmed",
    tier="quick",
    calibration="fixtures/calibration/lora_top_direction_shared.json",
)

FAR = FinetuneRecipe(targets=("q", "v"), r=8, alpha=8, task="far")


def _input_top_directions(finetune_lab) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: top eigenvector of E[x xᵀ] and of Cov[x] of the attention input x (1 × d each)."""
    tokens = finetune_lab.eval_set("B", 512).tokens
    with torch.no_grad():
        _, cache = finetune_lab.base.run_with_cache(tokens, names_filter=lambda n: n.endswith("ln1.hook_normalized"))
    out = {}
    for layer in range(finetune_lab.base.cfg.n_layers):
        x = cache[f"blocks.{layer}.ln1.hook_normalized"].flatten(0, 1).double()  # (N·T, d)
        second = x.T @ x / len(x)  # E[x xᵀ], (d, d)
        xc = x - x.mean(0)
        cov = xc.T @ xc / len(x)
        out[layer] = (torch.linalg.eigh(second)[1][:, -1:].T, torch.linalg.eigh(cov)[1][:, -1:].T)
    return out


def test_top_direction_is_shared_between_r8_and_r64(lab, finetune_lab):
    recipes = {r: FinetuneRecipe(targets=("q", "v"), r=r, alpha=8) for r in (8, 64)}
    trained = {r: finetune_lab.run(rec).factors() for r, rec in recipes.items()}
    initial = {r: lora_factors(prepare(finetune_lab.base, rec, finetune_lab.seed)[0]) for r, rec in recipes.items()}
    d = finetune_lab.base.cfg.d_model
    baseline = random_phi_baseline(d, 1, 1)

    far = finetune_lab.run(FAR).factors()
    inputs = _input_top_directions(finetune_lab)

    phi, phi_init, phi_B, phi_far, phi_input, phi_input_centred = {}, {}, {}, {}, {}, {}
    for name in trained[8]:
        phi[name] = subspace_similarity(trained[8][name].A, trained[64][name].A, 1, 1)
        phi_init[name] = subspace_similarity(initial[8][name].A, initial[64][name].A, 1, 1)
        phi_B[name] = subspace_similarity(trained[8][name].B.T, trained[64][name].B.T, 1, 1)
        phi_far[name] = subspace_similarity(trained[8][name].A, far[name].A, 1, 1)
        top_second, top_cov = inputs[int(name.split(".")[1])]
        phi_input[name] = subspace_similarity(trained[8][name].A, top_second, 1, 1)
        phi_input_centred[name] = subspace_similarity(trained[8][name].A, top_cov, 1, 1)
    median = float(np.median(list(phi.values())))
    median_far = float(np.median(list(phi_far.values())))
    median_input = float(np.median(list(phi_input.values())))
    threshold = max(0.3, 10 * baseline)
    lab.record(
        phi11=phi, phi11_median=median, phi11_min=min(phi.values()), phi11_init=phi_init,
        phi11_B_columns=phi_B, random_baseline=baseline, threshold=threshold,
        paper_soft_check_gt_0_5=median > 0.5, phi11_near_vs_far=phi_far, phi11_near_vs_far_median=median_far,
        phi11_input_pc1=phi_input, phi11_input_pc1_median=median_input, phi11_input_cov_pc1=phi_input_centred,
    )

    names = ["blocks.1.attn.W_Q", "blocks.1.attn.W_V"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, name in zip(axes[:2], names):
        grid = phi_grid(trained[8][name].A, trained[64][name].A)[:, :16]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
        ax.set_xticks(range(0, 16, 3), [str(j + 1) for j in range(0, 16, 3)])
        ax.set_yticks(range(8), [str(i + 1) for i in range(8)])
        ax.set(xlabel="j (A_{r=64})", ylabel="i (A_{r=8})", title=f"φ(i, j), {name.split('.', 1)[1]}")
    fig.colorbar(im, ax=axes[1], fraction=0.05)
    x = np.arange(len(phi))
    axes[2].bar(x - 0.2, list(phi.values()), 0.4, label="trained")
    axes[2].bar(x + 0.2, list(phi_init.values()), 0.4, label="at init")
    axes[2].axhline(baseline, color="gray", ls=":", label="random 1/d")
    axes[2].axhline(0.5, color="C3", ls="--", lw=0.8, label="paper: > 0.5")
    axes[2].set_xticks(x, [n.replace("blocks.", "L").replace(".attn.W_", " ") for n in phi], fontsize=7)
    axes[2].set(ylabel="φ(1, 1)", ylim=(0, 1), title="top direction overlap")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "phi_heatmap")

    assert max(phi_init.values()) < 0.3, f"control: the random inits already overlap: {phi_init}"
    assert median >= threshold, f"median φ(1,1) {median:.3f} < {threshold:.3f}; per matrix {phi}"
    assert median_far < 0.3, f"control: the far-task adapter shares the top direction too (median {median_far:.3f}): {phi_far}"
    assert median_input < 0.3, (
        f"control: A₈'s top direction is the input's principal direction (median φ {median_input:.3f}): {phi_input}"
    )
