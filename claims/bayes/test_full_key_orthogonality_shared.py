"""GPU tier: the orthogonal key frame, on the shared-vocabulary format where the paper makes the claim.

Lab notebook. ``bayes_key_orthogonality`` (quick tier) measures layer-0 key orthogonality on the
production *sep-vocab* model and finds the opposite of the claim: there keys are never looked up
again, and layer 0's keys collapse onto one direction. The paper's claim belongs to its own
variant (``labcore.tasks.bijection_paired``): keys and values share one vocabulary and the
sequence ends with a query key whose value must be recalled, ``[k1, v1, ..., kL, vL, q]``. Finding
the query's earlier occurrence is a content lookup, which is what a frame of near-orthogonal key
directions would serve. On CPU a V=10 paired model does not learn that lookup within the quick
budget (query accuracy at chance, 0.08–0.13, after 1,000 steps at batch 128, 60 s of CPU), so this
runs on a GPU: the authors' paired-variant settings (``experiments/jlens/train_paired_variant.py``:
V=20, L=19, 6L/6H/d192, RMSNorm, AdamW 3e-4, wd 0.1, warmup + cosine, batch 256), 20k steps
instead of 50k, through the fast path (sizing as ``bayes_full_bijection``: ≥ 400 steps/s targeted,
not yet measured). The training lives in ``labcore.training.paired_variant`` (moved there unchanged)
so that ``bayes_frame_head_shared`` (test_full_frame_head_shared.py) ablates the same model: one
training per seed and process, kept in the model cache.

Prediction (written before any run): the model learns the lookup (query accuracy ≥ 0.9), and the
most orthogonal layer-0 head — the authors' frame head, ``identify_frame_head`` in
``experiments/jlens/subspaces.py`` — has mean |cos| among the keys of all V tokens ≤ 0.8× the
random-init baseline (paper v3: 0.052 vs 0.082, −37 %). Control: the random baseline itself is
not orthogonal (head means ≥ 0.1; E|cos| ≈ √(2/(π·32)) = 0.14 for d_head = 32).
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore import GPT
from labcore.measures.probes import key_orthogonality
from labcore.notebook.claims import Claim, Source
from labcore.tasks.bijection_paired import paired_scores
from labcore.training.paired_variant import MODEL_CONFIG, V, train_paired_variant
from labcore.training.trainer import seeded_model

CLAIM = Claim(
    id="bayes_key_orthogonality_shared",
    paper="bayes",
    statement=(
        "“Geometric diagnostics reveal orthogonal key bases …” (abstract); v3 quantifies layer-0 key "
        "orthogonality as mean |cos| 0.052 vs 0.082 for random keys (−37 %, p < 0.001)."
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v3",
                  where="abstract; layer-0 key orthogonality (secondary note of v3); code "
                        "experiments/jlens/train_paired_variant.py, subspaces.py::identify_frame_head"),
    paper_value="mean |cos| 0.052 trained vs 0.082 random (v3), a 37 % reduction; REPRODUCE: layer-0 cosine < 0.1",
    prediction="Paired shared-vocab V=20 model, 20k steps: query accuracy ≥ 0.9 and the most orthogonal "
               "layer-0 head at ≤ 0.8× the random-init mean |cos|.",
    metric="per layer-0 head: mean off-diagonal |cos| of W_K·norm(E[i]), i = 0..V−1 (all tokens), trained vs "
           "8 random inits; query accuracy and KL(Bayes‖model) at the key positions on 2,048 sequences",
    tolerance="query accuracy ≥ 0.9 (precondition); min over heads ≤ 0.8 × random mean; control: random head "
              "means ≥ 0.1",
    tolerance_why=(
        "0.8 is the research note's BWT-6 threshold (about half the paper's 37 % drop), applied to the "
        "authors' frame-head choice (the minimum over heads). Not calibrated: no GPU run has been made — "
        "the first runs should be read as the calibration."
    ),
    tier="full",
    tags=("gpu",),
    needs="a CUDA GPU; ~1–2 min on an H200 through the fast path (estimate, not measured)",
)

ACC_MIN, RATIO_MAX, RANDOM_MIN, N_INITS = 0.9, 0.8, 0.1, 8


@pytest.fixture(scope="module")
def paired_run(lab_seed, lab_device):
    """The paired-variant model of this seed, trained once per process (shared with
    ``bayes_frame_head_shared``) or loaded from the model cache."""
    return train_paired_variant(lab_seed, lab_device)


def test_shared_vocab_keys_become_orthogonal(lab, paired_run):
    run, tokens = paired_run, list(range(V))
    assert not run.diverged, run.message
    model, ev = run.model, run.eval_batch
    with torch.no_grad():
        scores = paired_scores(model(ev.tokens), ev)
    trained = key_orthogonality(model, tokens)                                         # (H,)
    inits = np.stack([key_orthogonality(seeded_model(lambda: GPT(MODEL_CONFIG), 50_000 + 100 * lab.seed + i), tokens)
                      for i in range(N_INITS)])                                         # (N_INITS, H)
    ratio_min, ratio_mean = trained.min() / inits.mean(), trained.mean() / inits.mean()
    curve = run.curve
    lab.record(**scores, trained_per_head=trained, trained_min_head=float(trained.min()),
               trained_mean=float(trained.mean()), random_mean=float(inits.mean()),
               random_head_mean_min=float(inits.mean(1).min()), ratio_min_head=float(ratio_min),
               ratio_mean=float(ratio_mean), frame_head=int(trained.argmin()), seconds=run.seconds,
               steps_per_second=run.steps_per_second, from_cache=run.from_cache,
               curve=curve, paper_trained=0.052, paper_random=0.082)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    steps = [c[0] for c in curve]
    ax.plot(steps, [c[1] for c in curve], "C0o-", label="query accuracy")
    ax.plot(steps, [c[3] for c in curve], "C3s-", label="min-head mean |cos| (layer 0)")
    ax.axhline(inits.mean(), color="gray", ls=":", label="random init mean |cos|")
    ax.set(xlabel="step", title=f"paired shared-vocab V={V}: frame head H{int(trained.argmin())}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "shared_vocab_keys")

    assert inits.mean(1).min() >= RANDOM_MIN, f"control: random-init keys already orthogonal ({inits.mean(1).min():.3f})"
    assert scores["query_accuracy"] >= ACC_MIN, (
        f"the lookup was not learned (query accuracy {scores['query_accuracy']:.3f}): the frame claim needs it")
    assert ratio_min <= RATIO_MAX, (
        f"most orthogonal layer-0 head {trained.min():.3f} vs random {inits.mean():.3f}: ratio {ratio_min:.2f} > {RATIO_MAX}")
