"""An orthogonal key frame at layer 0: training pushes the keys of the V key tokens apart.

Lab notebook. The paper reads layer 0 as laying down a "hypothesis frame": the W_K-projected
embeddings of the key tokens become nearly orthogonal, so that a query can address one
hypothesis without touching the others. v3 quantifies it: mean off-diagonal |cos| 0.052 after
training vs 0.082 for random keys (−37 %). The authors' own follow-up adds a warning: this
metric picks a different head (H1) from the one ablation says matters (H3).

Measurement (``labcore.measures.probes.key_orthogonality``): for each layer-0 head h,
k_i^h = W_K^h · ln1(E[i]) for the key tokens i = 0..V−1 (token embedding without position, after
the block's LayerNorm, which is what W_K sees), and O_h = mean_{i≠j} |cos(k_i^h, k_j^h)|.
Compared with the *same architecture at initialisation* (20 independent inits give the random
baseline's distribution). With d_head = 16 and V = 10 random keys give O ≈ 0.2–0.25, the paper's
d_head = 32 gives less — so only the relative drop is comparable with the paper.

What we found (5 seeds): the opposite. After training the layer-0 keys of the 10 key tokens are
*parallel* (mean |cos| 0.998–0.999 in every head, also without ln1 and in layers 1–2), against
0.22 at init. The value tokens' keys also move together (0.52–0.66). That makes sense for this
format: keys are drawn without replacement, so the query key never appeared before and there is
nothing to look up by key identity; what layer 0 must do is collect the values already shown,
which needs a *type* direction ("this is a value token"), not a frame of orthogonal hypotheses.
The paper's orthogonal frame belongs to the shared-vocabulary, explicit-query variant (the
authors themselves note the single frame head does not reproduce on the sep-vocab checkpoint).

**After the science audit (issue 13): where the claim is made.** The claim belongs to the paired
shared-vocabulary format ``[k1, v1, ..., kL, vL, q]`` (``labcore.tasks.bijection_paired``, the
authors' ``train_paired_variant.py``), where the final query must be looked up by content. That
runs in the GPU tier, ``bayes_key_orthogonality_shared`` (test_full_key_orthogonality_shared.py):
on this CPU a V=10 paired model of the quick-tier size does not learn the lookup within budget
(query accuracy 0.08–0.13, chance 0.1, after 1,000 steps and 60 s of CPU, seed 0; its layer-0 keys
meanwhile went from mean |cos| 0.22 to 0.46 — but a model that has not learned the lookup cannot
test a frame that serves it). This file stays the sep-vocab comparison, and adds the authors' own
choice for sep-vocab models (``experiments/jlens/subspaces.py``): the hypotheses are the *value*
tokens, and the frame head is the most orthogonal layer-0 head. That too is a strict xfail: the
value tokens' keys also move together.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore.notebook.claims import Claim, Source
from labcore.measures.probes import key_cosine_matrices, key_orthogonality

CLAIM = Claim(
    id="bayes_key_orthogonality",
    paper="bayes",
    statement=(
        "“Geometric diagnostics reveal orthogonal key bases …” (abstract); v3 quantifies layer-0 "
        "key orthogonality as mean |cos| 0.052 vs 0.082 for random keys (−37 %, p < 0.001)."
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v3",
                  where="abstract; layer-0 key-orthogonality result (from a secondary note of v3; section not verified); code src/utils/geometry.py"),
    paper_value="mean |cos| 0.052 trained vs 0.082 random (v3), a 37 % reduction",
    prediction="Layer-0 mean |cos| among the W_K-projected key-token embeddings, averaged over heads, "
               "falls to ≤ 0.8× its value at initialisation.",
    metric="per-head mean off-diagonal |cos| of k_i = W_K·ln1(E[i]), i = 0..9 (key tokens), trained vs "
           "the same architecture at 20 random inits",
    tolerance="mean over heads (trained) ≤ 0.8 × mean over heads and inits (random), key tokens; the same "
              "bound on the most orthogonal head for the value tokens (authors' sep-vocab frame head) — both "
              "strict xfails; control: every random init's head-mean ≥ 0.12",
    tolerance_why=(
        "0.8 is the research note's threshold (BWT-6), about half the paper's 37 % drop. Exploration seeds "
        "0–4 (min/median/max): key tokens trained 0.998/0.999/0.999 vs random (20 inits each) "
        "0.221/0.223/0.227, ratio 4.40/4.49/4.52; value tokens (the authors' sep-vocab hypotheses), most "
        "orthogonal head vs random: ratio 1.89/2.30/2.52 — the opposite of the claim in every seed, hence "
        "two strict xfails. The control (random ≥ 0.12) is the hard check: head-means 0.195–0.206 at the "
        "least. The claim's own format (paired shared vocab) is the GPU claim bayes_key_orthogonality_shared. "
        "Fresh seeds 100–104: both strict xfails held (key-token ratio 4.40/4.49/4.59, value-token "
        "frame-head ratio 2.22/2.51/2.81); control head-means ≥ 0.190."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_key_orthogonality.json",
    status="confirmed",
)

RATIO_MAX, RANDOM_MIN, N_INITS = 0.8, 0.12, 20


@pytest.fixture(scope="module")
def orthogonality(bijection_run) -> dict:
    run, V = bijection_run, bijection_run.task.V
    keys, values = list(range(V)), list(range(V, 2 * V))          # key tokens 0..V-1, value tokens V..2V-1
    trained = key_orthogonality(run.model, keys, layer=0)         # (H,)
    inits = np.stack([key_orthogonality(run.fresh_model(10_000 + run.seed * 100 + i), keys, layer=0)
                      for i in range(N_INITS)])                   # (N_INITS, H)
    return dict(
        keys=keys, trained=trained, inits=inits, random_mean=float(inits.mean()),
        ratio=float(trained.mean()) / float(inits.mean()),
        own_init=key_orthogonality(run.snapshots[0], keys, layer=0),
        trained_raw=key_orthogonality(run.model, keys, layer=0, normalize=False),
        later=[float(key_orthogonality(run.model, keys, layer=l).mean()) for l in range(1, run.model.cfg.n_layers)],
        value_tokens_trained=key_orthogonality(run.model, values, layer=0),
        value_tokens_init=key_orthogonality(run.snapshots[0], values, layer=0),
        value_tokens_inits=np.stack([key_orthogonality(run.fresh_model(10_000 + run.seed * 100 + i), values, layer=0)
                                     for i in range(N_INITS)]),
    )


def test_random_init_keys_are_not_orthogonal(lab, orthogonality):
    """Control: the random baseline the claim is measured against is far from orthogonal."""
    inits = orthogonality["inits"]
    lab.record(random_mean=orthogonality["random_mean"], random_head_mean_min=float(inits.mean(1).min()),
               random_head_mean_max=float(inits.mean(1).max()), n_inits=N_INITS)
    assert inits.mean(1).min() >= RANDOM_MIN, f"random-init keys should not be orthogonal, got {inits.mean(1).min():.3f}"


@pytest.mark.xfail(strict=True, reason=(
    "measured over seeds 0–4: layer-0 key-token keys collapse to mean |cos| 0.998–0.999 (random init "
    "0.22), ratio ≈ 4.5 instead of ≤ 0.8; hypothesis: in the sep-vocab format with keys drawn without "
    "replacement no key is ever looked up again, so layer 0 never needs to tell key tokens apart — its "
    "attention gathers the *value* tokens, and W_K maps every key token onto one shared direction"))
def test_layer0_keys_become_orthogonal(lab, bijection_run, orthogonality):
    run, o = bijection_run, orthogonality
    trained = o["trained"]
    lab.record(trained_per_head=trained, trained_mean=float(trained.mean()), trained_min_head=float(trained.min()),
               random_mean=o["random_mean"], own_init_mean=float(o["own_init"].mean()), ratio=o["ratio"],
               trained_mean_without_ln1=float(o["trained_raw"].mean()), later_layers_mean=o["later"],
               value_tokens_trained_mean=float(o["value_tokens_trained"].mean()),
               value_tokens_init_mean=float(o["value_tokens_init"].mean()),
               paper_trained=0.052, paper_random=0.082, paper_ratio=0.052 / 0.082)

    H = trained.shape[0]
    cos_trained = key_cosine_matrices(run.model, o["keys"])
    cos_init = key_cosine_matrices(run.snapshots[0], o["keys"])
    fig, axes = plt.subplots(2, H, figsize=(2.2 * H, 4.4))
    for h in range(H):
        for row, (mats, label, vals) in enumerate(((cos_init, "init", o["own_init"]), (cos_trained, "trained", trained))):
            ax = axes[row, h]
            ax.imshow(mats[h], vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_title(f"{label} H{h}: {vals[h]:.3f}", fontsize=8)
            ax.set_xticks([]); ax.set_yticks([])
    fig.suptitle("layer-0 cos(W_K ln1 E[i], W_K ln1 E[j]) over the key tokens 0..9", fontsize=9)
    fig.tight_layout()
    lab.savefig(fig, "key_cosines")

    assert o["ratio"] <= RATIO_MAX, (
        f"trained mean |cos| {trained.mean():.3f} vs random {o['random_mean']:.3f}: ratio {o['ratio']:.2f} > {RATIO_MAX}")


@pytest.mark.xfail(strict=True, reason=(
    "measured over seeds 0–4: the value tokens' layer-0 keys also move together (mean |cos| 0.52–0.66 vs "
    "0.22 at init; see tolerance_why for the frame head); hypothesis: as for the key tokens, the sep-vocab "
    "model needs a 'value token' type direction, not a frame of hypotheses"))
def test_value_token_frame_head_is_orthogonal(lab, orthogonality):
    """The authors' own choice for sep-vocab models (``experiments/jlens/subspaces.py``): the hypotheses
    are the value tokens V..2V−1, and the frame head is the layer-0 head whose keys for them are most
    orthogonal. Same bound as above, on that head."""
    o = orthogonality
    trained, random_mean = o["value_tokens_trained"], float(o["value_tokens_inits"].mean())
    ratio = float(trained.min()) / random_mean
    lab.record(value_tokens_trained_per_head=trained, value_tokens_frame_head=int(trained.argmin()),
               value_tokens_random_mean=random_mean, value_tokens_ratio_min_head=ratio)
    assert ratio <= RATIO_MAX, (
        f"value tokens: most orthogonal layer-0 head {trained.min():.3f} vs random {random_mean:.3f}: "
        f"ratio {ratio:.2f} > {RATIO_MAX}")
