"""Layer-wise hypothesis elimination: read through the logit lens, the posterior sharpens with depth.

Lab notebook. The paper's mechanistic story is that each layer removes hypotheses: read out after
layer ℓ (final norm + unembedding of the residual stream, the "logit lens"), the prediction
should get closer to the Bayes posterior layer by layer, and the last layer should be best. The
authors measure KL(layer ‖ Bayes_ε) per layer (``train.py::evaluate_kl_layers``); we report both
directions and the eliminated mass, and assert on KL(Bayes ‖ layer), which cannot be gamed by a
layer that puts its mass on a few surviving values.

Readouts: the embedding (``blocks.0.hook_resid_pre``) and the residual after each of the 3
blocks, at the query (key) positions of the fixed evaluation batch. Control that must be large:
the embedding layer (it cannot know which values were used: its KL is ≳ the 0.9-bit
context-free plateau).

Seen over 5 seeds: the KL falls ~1 → 0.5 → 0.2 → 0.005 bits, except that one seed (3) solves the
task in two blocks (KL 0.0047 after block 1) and leaves the third idle.

We also record the progressive Q–K alignment of the paper (mean cosine between each query and
the earlier context keys, per layer; ``labcore.measures.probes.qk_alignment_by_prefix``) — reported, not
asserted: with learned positions and LayerNorm its sign and size depend on details the paper
does not pin down.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore.measures.posterior import eliminated_mass, logit_lens_kl_per_layer, value_slice_log_probs
from labcore.notebook.claims import Claim, Source
from labcore.measures.probes import logit_lens, qk_alignment_by_prefix

CLAIM = Claim(
    id="bayes_layerwise_elimination",
    paper="bayes",
    statement=(
        "“Geometric diagnostics reveal orthogonal key bases, progressive query–key alignment, …” "
        "(abstract); layer-wise, the residual stream's posterior sharpens as hypotheses are "
        "eliminated with depth (paraphrase of the per-layer KL analysis; exact sentence not available offline)."
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="abstract; layer-wise analysis (section not verified offline); code experiments/paper1_bijection/train.py::evaluate_kl_layers"),
    paper_value="monotone sharpening of the per-layer posterior with depth (qualitative)",
    prediction="KL(Bayes‖logit lens) falls from ~1 bit at the embedding to the model's own KL (~0.005) at "
               "the last layer, without rising along the way.",
    metric="KL(Bayes‖layer) in bits per readout (embedding, block 0, 1, 2) on 1,024 evaluation sequences",
    tolerance="KL non-increasing along depth within 0.05 bits at every step; the last readout within 0.05 "
              "bits of the best; total sharpening KL(last) ≤ 0.1·KL(embed); control: embedding KL ≥ 0.5",
    tolerance_why=(
        "Slack 0.05 bits is the research note's (papers.md §1.10, BWT-3). Measured over seeds 0–4, KL "
        "(embed, block 0, 1, 2): medians 1.017, 0.584, 0.191, 0.0051; ranges 0.99–1.11, 0.45–0.82, "
        "0.0047–0.44, 0.0049–0.0052. The first version asserted argmin = last *exactly*; seed 3 failed "
        "it by 0.0002 bits (0.0047 after block 1, 0.0049 after block 2) because its last block is idle "
        "(bypassing it *lowers* the MAE, bayes_layer_ablation). We now apply the pre-stated 0.05 slack "
        "to 'best' as well — a loosening made after seeing that seed, stated here; the monotonicity "
        "check was tightened from 'last half' to every step, and it holds in 5/5 seeds."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_layerwise_elimination.json",
)

SLACK = 0.05


@torch.no_grad()
def test_logit_lens_kl_decreases_with_depth(lab, bijection_run):
    run, task, model = bijection_run, bijection_run.task, bijection_run.model
    batch = run.eval_batch
    lens = logit_lens(model, batch.tokens)                        # [embed, block 0, 1, 2]
    kl = logit_lens_kl_per_layer(lens, batch, task)
    kl_rev = logit_lens_kl_per_layer(lens, batch, task, reverse=True)
    em = [eliminated_mass(value_slice_log_probs(lg, task).exp(), batch.eliminated) for lg in lens]
    names = ["embed"] + [f"block {i}" for i in range(model.cfg.n_layers)]

    _, cache = model.run_with_cache(batch.tokens[:256], names_filter=lambda n: n.endswith(("hook_q", "hook_k")))
    qpos = task.query_positions.tolist()
    align = qk_alignment_by_prefix(cache, qpos, qpos)              # (layers, L): query vs earlier keys

    seq = batch.tokens[0]                                          # attention for the report's viewer
    for snap, m in (("before", run.snapshots[0]), ("after", model)):
        _, pc = m.run_with_cache(seq[None], names_filter=lambda n: n.endswith("hook_pattern"))
        lab.save_attention([f"k{t}" if t < task.V else f"v{t - task.V}" for t in seq.tolist()],
                           torch.stack([pc[f"blocks.{l}.attn.hook_pattern"][0] for l in range(model.cfg.n_layers)]), snap)

    lab.record(readouts=names, kl_bayes_to_layer=kl, kl_layer_to_bayes=kl_rev, eliminated_mass_per_layer=em,
               qk_alignment=np.nan_to_num(align, nan=0.0).tolist(), model_kl=run.report.kl_bits)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = np.arange(len(names))
    ax.semilogy(x, kl, "o-", label="KL(Bayes‖layer)")
    ax.semilogy(x, kl_rev, "s--", label="KL(layer‖Bayes_ε) (authors')")
    ax.semilogy(x, em, "^:", label="eliminated mass")
    ax.set_xticks(x, names)
    ax.set(ylabel="bits / probability", title="logit lens per layer")
    ax.legend(fontsize=7)
    for li in range(align.shape[0]):
        ax2.plot(range(1, task.L), align[li, 1:], "o-", ms=3, label=f"layer {li}")
    ax2.set(xlabel="query t", ylabel="mean cos(q_t, earlier keys)", title="Q–K alignment by prefix")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "kl_per_layer")

    assert kl[0] >= 0.5, f"control: the embedding readout should be near the 0.9-bit plateau, got KL {kl[0]:.3f}"
    rises = [b - a for a, b in zip(kl, kl[1:])]
    assert all(r <= SLACK for r in rises), f"KL rises by {np.round(rises, 4)} bits along depth {np.round(kl, 4)}"
    assert kl[-1] <= min(kl) + SLACK, f"the last readout is not (within {SLACK}) the best: KL {np.round(kl, 4)}"
    assert kl[-1] <= 0.1 * kl[0], f"little sharpening from the embedding to the output: KL {np.round(kl, 4)}"
