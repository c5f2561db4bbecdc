"""Toy models of superposition: sparse features get stored in fewer dimensions than there are features.

Lab notebook. Elhage et al. (2022) train x' = ReLU(WᵀW x + b) to reconstruct n synthetic features
through m < n hidden dimensions, with feature importances I_i and sparsity S (each feature is 0
with probability S, else U[0, 1]); loss Σ_i I_i (x_i − x'_i)². With dense features the model keeps
the m most important ones in orthogonal directions and drops the rest (like PCA); as features get
sparser it stores more than m of them, "in superposition", first as antipodal pairs (two features
on one line, cos = −1: each dimension holds two), then in pentagons and other polytopes.

Our version (5.6 s on one core of the shared machine; 20–60 s under heavy contention): n = 20, m = 5, I_i = 0.9^i; feature densities 1 − S ∈ {1, 0.3,
0.1, 0.03, 0.01}; for each, 3 independently initialised models (Xavier-normal W, b = 0) trained
together (batched einsum) for 1,500 AdamW steps of 512 samples, lr 1e-2 decaying linearly to 1e-3;
the lowest-loss model per density is analysed (the paper also trains many and keeps the best,
because some runs stall in local minima). Seeded by --lab-seed (init and data).
* a feature is *represented* when ‖W_i‖ > 0.5; features per dimension = ‖W‖_F² / m (= 1 when m
  orthogonal unit features, 2 for antipodal pairs filling all dimensions);
* cosines between the represented features' directions.

Predictions (from the issue, written before running): dense (1 − S = 1): about m features
represented and no superposition; sparse (1 − S ≤ 0.1): more than m features represented, with
antipodal pairs (some cosine ≈ −1). Operationalised: dense: n_represented ≤ m + 1, features per
dimension ≤ 1.1, no represented pair with cos < −0.5; 1 − S = 0.1: n_represented > m, features per
dimension ≥ 1.5; features per dimension non-decreasing as 1 − S falls (ρ ≤ −0.9 with density);
antipodal: every 1 − S ≤ 0.1 has a represented pair with cos < −0.9.

Seen in the prototypes (seed 0; 3,000 steps lr 1e-3, and 1,500 steps lr 1e-2 → 1e-3): dense: 4
features at norm 1.0 and features 4 and 5 sharing the fifth direction (norms 0.6/0.8, cos +0.98) —
a near-tie: the clean "top 5" solution's loss 0.01954 is within batch noise of the shared one — so
6 features pass the norm threshold but features per dimension is 1.00; 1 − S = 0.3: 10 features as
5 exact antipodal pairs (cos −1.00, 2.0 features/dim); 1 − S = 0.1: 12–13 features, min cos −1.00 in
one run and −0.81 (= cos 144°, a pentagon) in the other; 0.03 and 0.01: 16–19 features, min cos
−0.64 … −0.77, 3.9–5.1 features/dim. So the antipodal prediction holds at 1 − S = 0.3, not at
sparser settings, where the paper's own geometry section predicts pentagons and denser polytopes
(strict xfail below, with these numbers).
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="interp_superposition_toy",
    paper="interp",
    statement=(
        "“we use toy models — small ReLU networks trained on synthetic data with sparse input features — to "
        "investigate how and when models represent more features than they have dimensions. We call this "
        "phenomenon superposition … When features are sparse, superposition allows compression beyond what a "
        "linear model would do” (abstract). Paraphrase of §2: dense features → the m most important, orthogonal; "
        "sparser → more than m, first as antipodal pairs."
    ),
    source=Source(title="Toy Models of Superposition", arxiv="2209.10652", version="v1",
                  where="§2 'Demonstrating Superposition' (Fig. 'W^TW and ‖W_i‖ vs sparsity', n=20, m=5, I_i=0.9^i); "
                        "§4 'Superposition and Geometry' (antipodal pairs, pentagons)"),
    paper_value="n=20, m=5: dense → 5 features, orthogonal; 1−S=0.1 → ≈ 10 features as antipodal pairs and more at higher sparsity",
    prediction=(
        "Dense: n_rep ≤ m+1, ‖W‖²_F/m ≤ 1.1, no represented pair with cos < −0.5. 1−S=0.1: n_rep > m, ‖W‖²_F/m ≥ 1.5. "
        "Features per dimension rises as features get sparser (Spearman ρ with density ≤ −0.9). Every 1−S ≤ 0.1 "
        "has an antipodal pair (cos < −0.9)."
    ),
    metric="n_rep = #{i: ‖W_i‖ > 0.5}; features per dimension ‖W‖²_F/m; min cosine between represented features",
    tolerance="as in the prediction; the antipodal-at-every-1−S≤0.1 part is a strict xfail",
    tolerance_why=(
        "Thresholds from the issue's wording ('about m' → ≤ m+1 because of the near-tie seen in the prototype; "
        "'more than m'), written before the seed sweep and not moved after it. Table "
        "fixtures/calibration/interp_superposition_toy.json, seeds 0–4: 5/5 passed, antipodal test 5/5 xfailed; "
        "dense 5–6 features, 1.003–1.006 features/dim, min cos ≥ −0.10; 1−S=0.1: 12–13 features, 2.66–2.89/dim; "
        "ρ = −1 on every seed; min cos at 1−S=0.03 −0.80…−0.65 (never antipodal). Fresh seeds 100–104 "
        "(fixtures/calibration/interp_superposition_toy.fresh.json): 5/5 passed, 5/5 xfailed; dense exactly 5 "
        "features (1.003–1.007/dim), 1−S=0.1 12–13 features (2.66–2.85/dim), 1−S=0.03 min cos −0.75…−0.65. "
        "Broken variant (the same run with the ReLU removed — the paper's linear model, seed 0): 5 features at "
        "every density, 1.00/dim, so the sparse assertion fails — the test can fail."
    ),
    tier="quick",
    status="confirmed",
    calibration="fixtures/calibration/interp_superposition_toy.json",
)

N, M, K, BATCH, STEPS, LR = 20, 5, 3, 512, 1500, 1e-2
DENSITIES = (1.0, 0.3, 0.1, 0.03, 0.01)


def _train(seed):
    """Train K models per density together; return the best model's W (m, n) and loss per density."""
    g = torch.Generator().manual_seed(seed)
    D = len(DENSITIES)
    density = torch.tensor(DENSITIES)[:, None, None, None]
    importance = 0.9 ** torch.arange(N, dtype=torch.float32)
    W = torch.nn.Parameter(torch.randn(D, K, M, N, generator=g) * (2 / (M + N)) ** 0.5)
    b = torch.nn.Parameter(torch.zeros(D, K, N))
    opt = torch.optim.AdamW([W, b], lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * (1 - s / STEPS))
    for _ in range(STEPS):
        x = torch.rand(D, K, BATCH, N, generator=g) * (torch.rand(D, K, BATCH, N, generator=g) < density)
        h = torch.einsum("dkmn,dkbn->dkbm", W, x)
        out = torch.relu(torch.einsum("dkmn,dkbm->dkbn", W, h) + b[:, :, None])
        loss = (importance * (x - out) ** 2).mean((2, 3))  # (D, K)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        sched.step()
    loss = loss.detach()
    best = loss.argmin(1)
    return [W[d, best[d]].detach() for d in range(D)], [float(loss[d, best[d]]) for d in range(D)]


def _analyse(w):
    norms = w.norm(dim=0)
    rep = (norms > 0.5).nonzero().flatten()
    unit = w[:, rep] / norms[rep]
    cos = unit.T @ unit
    off = cos + 3 * torch.eye(len(rep))  # mask the diagonal for the minimum
    return {"n_rep": len(rep), "fpd": float((w ** 2).sum()) / M, "norms": norms.numpy().round(3).tolist(),
            "min_cos": float(off.min()) if len(rep) > 1 else 1.0,
            "max_cos": float((cos - 3 * torch.eye(len(rep))).max()) if len(rep) > 1 else -1.0}


@pytest.fixture(scope="module")
def toy(lab_seed):
    ws, losses = _train(lab_seed)
    return {"W": ws, "loss": losses, "stats": [_analyse(w) for w in ws]}


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _record_and_plot(lab, toy):
    st = toy["stats"]
    lab.record(densities=list(DENSITIES), loss=np.round(toy["loss"], 5).tolist(),
               n_represented=[s["n_rep"] for s in st], features_per_dim=[round(s["fpd"], 3) for s in st],
               min_cos=[round(s["min_cos"], 3) for s in st], max_cos=[round(s["max_cos"], 3) for s in st],
               dense_n_rep=st[0]["n_rep"], dense_fpd=st[0]["fpd"], dense_min_cos=st[0]["min_cos"],
               sparse01_n_rep=st[2]["n_rep"], sparse01_fpd=st[2]["fpd"], sparse01_min_cos=st[2]["min_cos"],
               sparse03_min_cos=st[1]["min_cos"], rho_fpd_density=_spearman(DENSITIES, [s["fpd"] for s in st]))
    fig, axes = plt.subplots(1, len(DENSITIES) + 1, figsize=(4 * (len(DENSITIES) + 1), 3.8))
    for ax, d, w, s in zip(axes, DENSITIES, toy["W"], st):
        im = ax.imshow((w.T @ w).numpy(), cmap="RdBu", vmin=-1.2, vmax=1.2)
        ax.set(title=f"WᵀW, 1−S={d}: {s['n_rep']} feats, {s['fpd']:.2f}/dim", xlabel="feature j", ylabel="feature i")
    fig.colorbar(im, ax=axes[len(DENSITIES) - 1])
    axes[-1].semilogx(DENSITIES, [s["fpd"] for s in st], "o-", label="‖W‖²_F / m")
    axes[-1].semilogx(DENSITIES, [s["n_rep"] / M for s in st], "s--", label="#(‖W_i‖ > 0.5) / m")
    axes[-1].axhline(1, color="k", lw=0.6)
    axes[-1].invert_xaxis()
    axes[-1].set(xlabel="feature density 1−S (sparser →)", ylabel="features per dimension",
                 title=f"n={N}, m={M}, I_i=0.9^i")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "superposition")


def test_sparse_features_go_into_superposition(lab, toy):
    _record_and_plot(lab, toy)
    dense, sparse = toy["stats"][0], toy["stats"][2]
    fpd = [s["fpd"] for s in toy["stats"]]
    # control first: dense features must come out the other way (≈ m features, orthogonal, 1 per dimension)
    assert dense["n_rep"] <= M + 1 and dense["fpd"] <= 1.1, f"dense: {dense['n_rep']} features, {dense['fpd']:.2f}/dim"
    assert dense["min_cos"] > -0.5, f"dense: represented features interfere (min cos {dense['min_cos']:.2f})"
    assert sparse["n_rep"] > M and sparse["fpd"] >= 1.5, f"1−S=0.1: {sparse['n_rep']} features, {sparse['fpd']:.2f}/dim"
    rho = _spearman(DENSITIES, fpd)
    assert rho <= -0.9, f"features per dimension vs density: ρ = {rho:.2f} ({np.round(fpd, 2)})"


@pytest.mark.xfail(strict=True, reason=(
    "prototypes, seed 0: min cosine between represented features −1.00/−0.81 at 1−S=0.1, −0.64/−0.70 at 0.03, "
    "−0.77/−0.77 at 0.01 (exact antipodal pairs only at 1−S=0.3: −1.00). Hypothesis: as the paper's geometry "
    "section describes, sparser features pack more densely than pairs — pentagons (cos 144° = −0.81) and "
    "other polytopes — so 'antipodal pairs' is the moderate-sparsity regime, not every 1−S ≤ 0.1"))
def test_antipodal_pairs_at_high_sparsity(lab, toy):
    _record_and_plot(lab, toy)
    mins = {d: s["min_cos"] for d, s in zip(DENSITIES, toy["stats"]) if d <= 0.1}
    assert all(v < -0.9 for v in mins.values()), f"min cosine between represented features per 1−S: {mins}"
