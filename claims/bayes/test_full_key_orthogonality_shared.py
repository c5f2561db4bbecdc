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
not yet measured).

Prediction (written before any run): the model learns the lookup (query accuracy ≥ 0.9), and the
most orthogonal layer-0 head — the authors' frame head, ``identify_frame_head`` in
``experiments/jlens/subspaces.py`` — has mean |cos| among the keys of all V tokens ≤ 0.8× the
random-init baseline (paper v3: 0.052 vs 0.082, −37 %). Control: the random baseline itself is
not orthogonal (head means ≥ 0.1; E|cos| ≈ √(2/(π·32)) = 0.14 for d_head = 32).
"""

import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore import GPT, GPTConfig
from labcore.measures.probes import key_orthogonality
from labcore.notebook.claims import Claim, Source
from labcore.tasks.bijection import device_batches
from labcore.tasks.bijection_paired import PairedBijectionTask, paired_scores
from labcore.training.trainer import Every, TrainConfig, seeded_model, train

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

V, L = 20, 19
STEPS, WARMUP, BATCH = 20_000, 1_000, 256
ACC_MIN, RATIO_MAX, RANDOM_MIN, N_INITS = 0.9, 0.8, 0.1, 8
FAST = dict(sync_every=500, precision="bf16", stats_every=1000, compile=os.environ.get("LAB_COMPILE", "1") != "0")


def test_shared_vocab_keys_become_orthogonal(lab):
    task = PairedBijectionTask(V=V, L=L)
    cfg = GPTConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len, d_model=192, n_layers=6, n_heads=6,
                    norm="rmsnorm")
    build = lambda: GPT(cfg)  # noqa: E731
    model = seeded_model(build, lab.seed).to(lab.device)
    ev = task.sample(2048, torch.Generator().manual_seed(3_000_019 + lab.seed)).to(lab.device)
    tokens = list(range(V))
    start = time.perf_counter()
    result = train(model, device_batches(lambda g: task.sample(BATCH, g), lab.device),
                   TrainConfig(steps=STEPS, lr=3e-4, betas=(0.9, 0.999), weight_decay=0.1, schedule="warmup_cosine",
                               warmup_steps=WARMUP, grad_clip=1.0, seed=lab.seed, track_update_ratio=False,
                               device=str(lab.device), **FAST),
                   callbacks=[Every(2000, lambda s, m: {**paired_scores(m(ev.tokens), ev),
                                                       "orth_min": float(key_orthogonality(m, tokens).min())},
                                    "curve")])
    seconds = time.perf_counter() - start
    assert not result.diverged, result.message
    with torch.no_grad():
        scores = paired_scores(model(ev.tokens), ev)
    trained = key_orthogonality(model, tokens)                                         # (H,)
    inits = np.stack([key_orthogonality(seeded_model(build, 50_000 + 100 * lab.seed + i), tokens)
                      for i in range(N_INITS)])                                         # (N_INITS, H)
    ratio_min, ratio_mean = trained.min() / inits.mean(), trained.mean() / inits.mean()
    curve = result.evals["curve"]
    lab.record(**scores, trained_per_head=trained, trained_min_head=float(trained.min()),
               trained_mean=float(trained.mean()), random_mean=float(inits.mean()),
               random_head_mean_min=float(inits.mean(1).min()), ratio_min_head=float(ratio_min),
               ratio_mean=float(ratio_mean), frame_head=int(trained.argmin()), seconds=seconds,
               steps_per_second=result.steps_per_second,
               curve=[[s, v["query_accuracy"], v["key_kl_bits"], v["orth_min"]] for s, v in curve],
               paper_trained=0.052, paper_random=0.082)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    steps = [s for s, _ in curve]
    ax.plot(steps, [v["query_accuracy"] for _, v in curve], "C0o-", label="query accuracy")
    ax.plot(steps, [v["orth_min"] for _, v in curve], "C3s-", label="min-head mean |cos| (layer 0)")
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
