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

Seen over 5 seeds before the audit: the KL falls ~1 → 0.6 → 0.2 → 0.005 bits, except that one
seed (3) solves the task in two blocks (KL 0.0047 after block 1) and leaves the third idle.

**Per-layer drop (science audit, issue 13).** The old check (KL may rise by ≤ 0.05 bits per
layer, last within 0.05 of the best) had a slack ten times the final KL of ~0.005 bits, so it
said nothing about the last layers. Now every block that *has work to do* — it receives a stream
whose KL is more than 2× the model's final KL — must sharpen it: divide the KL by ≥ 1.1 and the
mass on eliminated values by ≥ 1.5. A block that receives an already calibrated stream (seed 3's
idle last block) is exempt, and the last readout must be within 2× of the best one. The thresholds
were chosen after seeing lab seed 0, where block 0's logit-lens KL falls only 1.24× (1.00 → 0.81
bits) while its eliminated mass halves: the logit lens reads block 0 poorly, the support shows its
work. The exploration and fresh tables say whether they hold. A model with no sharpening at all (no
readout's KL above 2× the final one, e.g. an untrained net) fails with that message rather than
passing the per-block check vacuously.

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
    metric="KL(Bayes‖layer) in bits and mass on eliminated values per readout (embedding, block 0, 1, 2) on "
           "1,024 evaluation sequences; per block: KL in / KL out and mass in / mass out",
    tolerance="every block fed a stream with KL > 2× the final KL cuts the KL ≥ 1.1× and the eliminated mass "
              "≥ 1.5×; the last readout within 2× of the best; KL(last) ≤ 0.1·KL(embed); control: embedding KL ≥ 0.5",
    tolerance_why=(
        "Before the audit the check was 'KL non-increasing within 0.05 bits', a slack 10× the final KL "
        "(~0.005), so it could not see the last layers. Now per block, with thresholds set after lab seed 0 "
        "(block 0: KL ÷1.24, mass ÷2.10 — the logit lens reads block 0 poorly while its support work is "
        "plain): KL ÷ ≥ 1.1 and mass ÷ ≥ 1.5 for every block fed KL > 2× the final. Exploration seeds 0–4 "
        "(min/median/max): KL per readout 0.99/1.02/1.11, 0.45/0.58/0.82, 0.0047/0.19/0.44, "
        "0.0049/0.0051/0.0052; smallest KL drop of a block with work 1.21/1.74/2.39, smallest mass drop "
        "1.86/2.41/2.76. Seed 3 leaves its last block idle (KL 0.0047 → 0.0049, exempt: it receives a "
        "calibrated stream). "
        "Fresh seeds 100–104: held in 5/5, but the KL-drop bound is tight — smallest KL drop of a block "
        "with work 1.118/1.38/2.50 against 1.1 (block 0's logit-lens drop is marginal by nature); the mass "
        "drop, 1.98/2.09/2.64 against 1.5, carries the per-layer claim. "
        "Issue 13: an untrained model (the run's step-0 snapshot) used to crash the test on an empty min(); "
        "it now fails the explicit 'no sharpening with depth' assertion (seed 0: KL 0.917 at every readout). "
        "Both tables were rewritten after that fix (same seeds, same code path): every recorded value is "
        "identical to the previous tables."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_layerwise_elimination.json",
    status="confirmed",
)

KL_DROP = 1.1      # a block fed an uncalibrated stream must divide its KL by at least this ...
MASS_DROP = 1.5    # ... and the mass on eliminated values by at least this
FLOOR = 2.0        # "already calibrated": the KL it receives is within 2× of the model's final KL


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

    drops = [a / b for a, b in zip(kl, kl[1:])]                   # per block: KL in / KL out
    mass_drops = [a / max(b, 1e-12) for a, b in zip(em, em[1:])]  # per block: eliminated mass in / out
    owed = [a > FLOOR * kl[-1] for a in kl[:-1]]                  # did the block receive work to do?
    lab.record(kl_drop_per_block=drops, block_had_work=owed, eliminated_mass_drop_per_block=mass_drops,
               min_kl_drop_with_work=min((d for d, w in zip(drops, owed) if w), default=float("nan")),
               min_mass_drop_with_work=min((d for d, w in zip(mass_drops, owed) if w), default=float("nan")))
    assert kl[0] >= 0.5, f"control: the embedding readout should be near the 0.9-bit plateau, got KL {kl[0]:.3f}"
    assert any(owed), (f"no sharpening with depth: no readout has KL > {FLOOR}× the final KL {kl[-1]:.3f} bits "
                       f"(KL per readout {np.round(kl, 4)}) — is the model trained?")
    lazy = [i for i, (d, m, w) in enumerate(zip(drops, mass_drops, owed)) if w and (d < KL_DROP or m < MASS_DROP)]
    assert not lazy, (f"blocks {lazy} received KL > {FLOOR}× the final but cut it by < {KL_DROP}× or the eliminated "
                      f"mass by < {MASS_DROP}×: KL {np.round(kl, 4)}, drops {np.round(drops, 2)}, "
                      f"mass drops {np.round(mass_drops, 2)}")
    assert kl[-1] <= FLOOR * min(kl), f"the last readout is not within {FLOOR}× of the best: KL {np.round(kl, 4)}"
    assert kl[-1] <= 0.1 * kl[0], f"little sharpening from the embedding to the output: KL {np.round(kl, 4)}"
