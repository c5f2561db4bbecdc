"""The value manifold: is the final representation a one-dimensional curve parameterised by entropy?

Lab notebook. The paper's geometric picture: the last layer's representation at the query lies
on a low-dimensional manifold whose main coordinate is the posterior entropy (the authors'
REPRODUCE checklist expects PC1 > 80 % of the variance). Their analysis code PCA's the final-norm
residual at the query position and colours it by H_Bayes; its "100-sequence" plot re-seeds the
generator on every call, so it is 100 copies of *one* sequence (papers.md §1.9).

Here: the final-norm residual (``ln_final.hook_normalized``) at the 9 query positions of 512
probe sequences (4,608 points, d=64).

1. Entropy is linearly decodable *at positions the probe never saw*: a ridge probe residual →
   H_Bayes fitted on the even query positions (5 entropy levels) and scored (R²) on the odd ones
   (4 levels it never saw). Controls that must fail: the untrained network (its position codes
   are unrelated random directions, so a probe cannot interpolate) and shuffled entropies. The old
   random-split R² is recorded, not asserted: the untrained network passed it (0.993–0.996).
2. The mean representation at each entropy level (the 9 level means; here level = position) is a
   one-dimensional curve ordered by entropy: PC1 share of the level means and |Spearman(PC1, H)|,
   against the untrained network's level means (control). This is the denoised version of what
   the authors' figure shows (one sequence's trajectory).
3. The checklist's version over *all* points: PC1 > 80 %, and PC1 ordered by entropy (strict xfails).

What we found (5 seeds): (1) on a random 80/20 split R² ≈ 0.996 — but the untrained network gives
0.994: without replacement H_Bayes = log2(V − t) is a function of the position alone (zero
variance within a position), so a random split only asks "is position decodable", which learned
position embeddings give for free; nothing can be decoded "beyond position" in this task. The
held-out-position probe asks what training adds: an ordered coordinate on which unseen levels fall
in place (exploratory seed 0: trained 0.995, untrained 0.07). It cannot tell entropy from
position either (a probe to t does as well): the entropy-vs-position question needs a task with
replacement or variable history, not this one. (2) holds
cleanly (PC1 ≈ 98 %, |ρ| = 1.00; untrained ≈ 23 %), the trained model's mean state really moves
along one entropy-ordered curve. (3) fails in every seed: the points spread evenly over 10
components (PC1 ≈ 12 %) and PC1 has nothing to do with entropy (|ρ| < 0.08). Nine of those
components encode which values are already eliminated; the entropy axis is the 10th.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source
from labcore.measures.probes import pca, ridge_probe_r2, spearman

CLAIM = Claim(
    id="bayes_value_manifold",
    paper="bayes",
    statement=(
        "“Geometric diagnostics reveal … a low-dimensional value manifold parameterized by "
        "posterior entropy.” (abstract)"
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="abstract; value-manifold figure (section not verified offline); repo REPRODUCE.md checklist 'PC1 > 80%'; "
                        "experiments/paper1_bijection/figures/qkv_analysis.py"),
    paper_value="PC1 > 80 % of variance (REPRODUCE checklist); entropy linearly decodable, R² = 1.00 (jlens)",
    prediction="Entropy is linearly decodable at held-out positions (probe fitted on even query positions, "
               "R² ≥ 0.9 on the odd ones) while the untrained network's R² stays < 0.5, and the mean representation "
               "per entropy level is a 1-D curve ordered by entropy; PC1 > 80 % of all points is expected to fail.",
    metric="final-norm residual at 4,608 query positions (512 sequences × 9): ridge R² → H_Bayes (α = 1e-3) "
           "fitted on the 5 even query positions, scored on the 4 odd ones, trained vs untrained network, "
           "with a shuffled control; PCA of the 9 entropy-level means (PC1 share, "
           "|Spearman(PC1, H)|) vs the untrained network; PCA of all points (PC1 share, |Spearman|)",
    tolerance="hard: held-out-position R² ≥ 0.9, untrained network's < 0.5, shuffled random-split R² ≤ 0.05; level means PC1 ≥ 0.8 and |ρ| ≥ 0.9 while the "
              "untrained network's level means are not both; strict xfail: all-points PC1 ≥ 0.8, |ρ(PC1, H)| ≥ 0.8",
    tolerance_why=(
        "Held-out-position probe (2026-12 audit): R² 0.9 kept from research note BWT-5; the untrained "
        "control's 0.5 chosen from one exploratory seed-0 run (trained 0.995, untrained 0.07; odd→even "
        "0.994 / −0.11) before the seed sweep, not changed after. Other thresholds from BWT-5 (|ρ| 0.8, PC1 "
        "as the checklist's 0.8). Seeds 0–4 (table; min/median/max), all pass/xfail as designed: held-out "
        "R² 0.974/0.986/0.995, untrained −1.64/−0.55/0.07 (odd→even untrained up to 0.45, not asserted); "
        "old random-split R² 0.994/0.996/0.997 vs untrained 0.993/0.994/0.996 (position alone gives it), "
        "shuffled −0.007/0.000/0.003; level-means PC1 0.970/0.978/0.987, |ρ| = 1.000 in all seeds "
        "(untrained PC1 0.22–0.24, |ρ| 0.17–0.58); all-points PC1 0.115/0.120/0.121, |ρ(PC1, H)| "
        "0.012/0.028/0.074, the entropy axis is PC10 in every seed (|ρ| 0.89–0.97). Fresh seeds 100–104 "
        "(/tmp/audit-fresh, same code hash), all pass/xfail: held-out R² 0.983/0.993/0.994, untrained "
        "−2.22/−1.35/0.33 (the tightest margin: 0.17 below 0.5), shuffled −0.009…0.002; level-means PC1 "
        "0.977–0.983, |ρ| 1.000 (untrained PC1 0.20–0.24, |ρ| 0.20–0.72); all-points PC1 0.116–0.124, "
        "|ρ| 0.03–0.12, entropy axis PC10 (|ρ| 0.92–0.94). The level-means test was added after seed 0, "
        "as the denoised form of the authors' one-sequence trajectory."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_value_manifold.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

R2_MIN, RHO_MIN, PC1_MIN, SHUFFLED_MAX = 0.9, 0.8, 0.8, 0.05
R2_INIT_MAX = 0.5  # the untrained network must stay below this on the held-out-position probe
MEANS_PC1_MIN, MEANS_RHO_MIN = 0.8, 0.9


@torch.no_grad()
def final_residual(model, batch, task) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, d) final-norm residuals at the query positions and (B, L) their H_Bayes."""
    _, cache = model.run_with_cache(batch.tokens, names_filter="ln_final.hook_normalized")
    return cache["ln_final.hook_normalized"][:, task.query_positions], batch.entropy_bits


def level_means_manifold(x: torch.Tensor, h: torch.Tensor) -> tuple[float, float, np.ndarray]:
    """PCA of the mean residual at each entropy level (= each query position here): the curve the
    representation traces as the posterior narrows, with the per-sequence scatter averaged out.
    Returns (PC1 share, Spearman(PC1, H), PC1 scores)."""
    means, levels = x.mean(0), h.mean(0)                                   # (L, d), (L,)
    ratio, _, proj = pca(means)
    return float(ratio[0]), spearman(proj[:, 0], levels), proj[:, 0]


def held_out_position_r2(xs: torch.Tensor, y: torch.Tensor, train_pos, test_pos, alpha: float = 1e-3) -> float:
    """R² of a ridge probe (B, L, d) → (B, L) fitted on the query positions ``train_pos`` (features
    standardised with their mean/std, target centred) and scored on ``test_pos``: the levels it is
    scored on were never seen while fitting, so only an ordered coordinate can interpolate them."""
    X = lambda pos: xs[:, pos].reshape(-1, xs.shape[-1]).double()  # noqa: E731
    Xtr, Xte, ytr, yte = X(train_pos), X(test_pos), y[:, train_pos].reshape(-1).double(), y[:, test_pos].reshape(-1).double()
    mu, sd = Xtr.mean(0), Xtr.std(0).clamp_min(1e-8)
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    n, d = Xtr.shape
    w = torch.linalg.solve(Xtr.T @ Xtr / n + alpha * torch.eye(d, dtype=torch.float64), Xtr.T @ (ytr - ytr.mean()) / n)
    pred = Xte @ w + ytr.mean()
    return float(1 - (yte - pred).pow(2).sum() / (yte - yte.mean()).pow(2).sum())


@pytest.fixture(scope="module")
def manifold(bijection_run, init_model) -> dict:
    run, task = bijection_run, bijection_run.task
    g = lambda k=0: torch.Generator().manual_seed(run.seed + k)  # noqa: E731
    xs, hs = final_residual(run.model, run.probe_batch, task)          # (B, L, d), (B, L)
    x, h = xs.reshape(-1, xs.shape[-1]), hs.reshape(-1)
    ratio, _, proj = pca(x)
    rhos = [spearman(proj[:, i], h) for i in range(min(16, proj.shape[1]))]
    h_shuffled = h[torch.randperm(h.numel(), generator=g(1))]
    xs0, _ = final_residual(init_model, run.probe_batch, task)
    x0 = xs0.reshape(-1, xs0.shape[-1])
    ratio0, _, _ = pca(x0)
    means_pc1, means_rho, means_proj = level_means_manifold(xs, hs)
    means_pc1_init, means_rho_init, _ = level_means_manifold(xs0, hs)
    one, _, _ = pca(xs[0])                                             # one sequence's 9 queries
    even, odd = list(range(0, hs.shape[1], 2)), list(range(1, hs.shape[1], 2))
    pos = torch.arange(hs.shape[1], dtype=torch.float64).expand(hs.shape)
    return dict(
        x=x, h=h, proj=proj, ratio=ratio, ratio_init=ratio0,
        pc1=float(ratio[0]), pc2=float(ratio[1]), pcs_for_90pct=int(np.searchsorted(np.cumsum(ratio), 0.9) + 1),
        spearman_pc1_entropy=rhos[0], abs_spearman_pc1=abs(rhos[0]),
        spearman_top_pcs=rhos, entropy_pc_index=int(np.nanargmax(np.abs(rhos))) + 1,
        entropy_pc_abs_spearman=float(np.nanmax(np.abs(rhos))),
        ridge_r2=ridge_probe_r2(x, h, alpha=1e-3, generator=g()),
        ridge_r2_shuffled=ridge_probe_r2(x, h_shuffled, alpha=1e-3, generator=g()),
        ridge_r2_init=ridge_probe_r2(x0, h, alpha=1e-3, generator=g()),
        heldout_pos_r2=held_out_position_r2(xs, hs, even, odd),
        heldout_pos_r2_init=held_out_position_r2(xs0, hs, even, odd),
        heldout_pos_r2_odd_to_even=held_out_position_r2(xs, hs, odd, even),
        heldout_pos_r2_odd_to_even_init=held_out_position_r2(xs0, hs, odd, even),
        heldout_pos_r2_position=held_out_position_r2(xs, pos, even, odd),
        extrapolate_r2_first6_to_last3=held_out_position_r2(xs, hs, list(range(6)), [6, 7, 8]),
        pc1_init=float(ratio0[0]), pc1_single_sequence=float(one[0]),
        means_pc1=means_pc1, means_abs_spearman=abs(means_rho), means_proj=means_proj,
        means_pc1_init=means_pc1_init, means_abs_spearman_init=abs(means_rho_init),
        levels=hs.mean(0), n_points=int(x.shape[0]),
    )


def _record(lab, m):
    skip = {"x", "h", "proj", "ratio", "ratio_init", "means_proj", "levels"}
    lab.record(**{k: v for k, v in m.items() if k not in skip}, explained_ratio_top12=m["ratio"][:12].tolist())


def test_entropy_is_linearly_decodable(lab, manifold):
    m = manifold
    _record(lab, m)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    h = m["h"].numpy()
    k = m["entropy_pc_index"] - 1
    sc = axes[0].scatter(m["proj"][:, 0], m["proj"][:, 1], c=h, s=3, cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="H_Bayes (bits)")
    axes[0].set(xlabel=f"PC1 ({m['ratio'][0]:.0%})", ylabel=f"PC2 ({m['ratio'][1]:.0%})",
                title=f"all {m['n_points']} queries: ρ(PC1, H) = {m['spearman_pc1_entropy']:.2f}")
    axes[1].scatter(m["proj"][:, k], m["proj"][:, 0], c=h, s=3, cmap="viridis")
    axes[1].set(xlabel=f"PC{k + 1} ({m['ratio'][k]:.0%}), |ρ| = {m['entropy_pc_abs_spearman']:.2f}",
                ylabel="PC1", title="the entropy axis is a minor component")
    axes[2].bar(range(1, 13), m["ratio"][:12], label="trained")
    axes[2].plot(range(1, 13), m["ratio_init"][:12], "C3o-", ms=3, label="init")
    axes[2].axhline(0.8, color="gray", ls=":", label="paper: PC1 > 80 %")
    axes[2].set(xlabel="component", ylabel="variance share",
                title=f"held-out-position R² {m['heldout_pos_r2']:.3f} (init {m['heldout_pos_r2_init']:.2f})")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "value_manifold_pca")
    assert m["ridge_r2_shuffled"] <= SHUFFLED_MAX, f"control: a probe on shuffled entropies reached R² {m['ridge_r2_shuffled']:.3f}"
    assert m["heldout_pos_r2_init"] < R2_INIT_MAX, (
        f"control: the untrained network's probe reaches R² {m['heldout_pos_r2_init']:.3f} ≥ {R2_INIT_MAX} at held-out "
        f"positions — the test would not show what training adds")
    assert m["heldout_pos_r2"] >= R2_MIN, (
        f"probe fitted on even query positions reaches R² {m['heldout_pos_r2']:.3f} < {R2_MIN} on the odd ones")


def test_mean_representation_is_a_1d_curve_ordered_by_entropy(lab, manifold):
    m = manifold
    _record(lab, m)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(m["levels"].numpy(), m["means_proj"], "o-")
    ax.set(xlabel="H_Bayes (bits)", ylabel="PC1 of the level means",
           title=f"level means: PC1 {m['means_pc1']:.0%} (init {m['means_pc1_init']:.0%}), |ρ| = {m['means_abs_spearman']:.2f}")
    lab.savefig(fig, "level_means_curve")
    assert m["means_pc1_init"] < MEANS_PC1_MIN or m["means_abs_spearman_init"] < MEANS_RHO_MIN, (
        f"control: the untrained network's level means already form an ordered 1-D curve "
        f"(PC1 {m['means_pc1_init']:.2f}, |ρ| {m['means_abs_spearman_init']:.2f})")
    assert m["means_pc1"] >= MEANS_PC1_MIN, f"PC1 of the entropy-level means explains only {m['means_pc1']:.1%}"
    assert m["means_abs_spearman"] >= MEANS_RHO_MIN, f"|Spearman(PC1 of level means, H)| {m['means_abs_spearman']:.3f}"


@pytest.mark.xfail(strict=True, reason=(
    "measured over seeds 0–4: PC1 holds 11.5–12.1 % of the variance (10 components share ~99.9 %); "
    "hypothesis: the final representation must also say *which* values are eliminated (bayes_belief_state), "
    "and those ~9 equally likely directions dominate the variance over many sequences; the authors' "
    "'100-sequence' plot is one sequence repeated (one sequence alone gives PC1 0.44–0.47 here)"))
def test_pc1_explains_most_variance(lab, manifold):
    _record(lab, manifold)
    assert manifold["pc1"] >= PC1_MIN, f"PC1 explains {manifold['pc1']:.1%} of the variance (paper's checklist: > 80 %)"


@pytest.mark.xfail(strict=True, reason=(
    "measured over seeds 0–4: |Spearman(PC1, H_Bayes)| 0.01–0.07; the entropy axis is the 10th component "
    "(|ρ| 0.89–0.97) behind nine belief-state directions; hypothesis as for PC1"))
def test_pc1_is_ordered_by_entropy(lab, manifold):
    _record(lab, manifold)
    assert manifold["abs_spearman_pc1"] >= RHO_MIN, (
        f"|Spearman(PC1, H_Bayes)| {manifold['abs_spearman_pc1']:.3f} < {RHO_MIN}; the most entropy-like "
        f"component is PC{manifold['entropy_pc_index']} (|ρ| {manifold['entropy_pc_abs_spearman']:.2f})")
