"""A linear belief state: which values are already eliminated can be read off the residual stream.

Lab notebook. "Residual streams serve as the belief substrate": if the model carries the
posterior in its residual stream, the set of surviving hypotheses must be decodable there. The
authors' 2026 note decodes it from layer 1 with balanced accuracy 0.977 (rank-24 subspace) to
1.000 (full residual).

Probe (``labcore.measures.probes.linear_probe_balanced_accuracy``): at each query position t of 512 probe
sequences (4,608 rows), the residual after block ℓ (d = 64) → the 10 binary labels "value v is
already eliminated"; one logistic regression per value, 80/20 split, balanced accuracy on the
held-out rows (0.5 = chance, however unbalanced). Asserted on the *best* block; all are recorded.

Controls that must fail:
* the same probe on shuffled labels (rows permuted): ≈ 0.5;
* the embedding layer (``blocks.0.hook_resid_pre``): it knows the current key and the position,
  nothing about earlier values. It is not 0.5 — position alone predicts "eliminated" better than
  chance, because a value is more likely to be gone late in the sequence (P = t/V). So the
  embedding probe is compared with a probe on a one-hot position code (the position-only ceiling)
  and must not beat it by more than 0.03.
* the untrained network (same architecture, this seed's init): attention at init averages the
  prefix, so the eliminated set is *partly* linear there too — 0.88–0.93 — which is why the bar is
  the paper's 0.97 and not 0.9.

Seen over 5 seeds: the trained residual decodes the set at 0.92–0.97 after block 0, 0.98–1.00
after block 1 and 1.000 after block 2.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore.notebook.claims import Claim, Source
from labcore.measures.probes import layer_residuals, linear_probe_balanced_accuracy

CLAIM = Claim(
    id="bayes_belief_state",
    paper="bayes",
    statement=(
        "“… residual streams serve as the belief substrate, feed-forward networks perform the "
        "posterior update, and attention provides content-addressable routing.” (abstract)"
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="abstract; mechanism section; balanced accuracy from the authors' jlens note "
                        "(experiments/jlens/RESULTS.md)"),
    paper_value="balanced accuracy 0.977 (rank-24 subspace, layer 1) – 1.000 (full residual) (jlens note)",
    prediction="The best block's residual decodes the eliminated set with balanced accuracy ≥ 0.97 (the "
               "paper's lower value); the untrained network, shuffled labels and the embedding layer do not.",
    metric="held-out balanced accuracy (mean over the 10 values) of per-value logistic probes, "
           "4,608 rows, 80/20 split",
    tolerance="best block ≥ 0.97; controls: untrained network's best block < 0.97, shuffled ≤ 0.55, "
              "embedding ≤ position-only + 0.03",
    tolerance_why=(
        "First written with the research note's 0.9 (BWT-8). Seed 0 showed that the *untrained* network "
        "already reaches 0.88–0.93 after blocks 0–2 (attention at init averages the prefix, and the mean "
        "of random value embeddings is linearly decodable), so 0.9 would not separate training from "
        "architecture; the bar was raised to the paper's 0.977 rounded down to 0.97 (a tightening). "
        "Measured over seeds 0–4 (min/median/max): trained per readout (embed, block 0, 1, 2) "
        "0.714/0.719/0.722, 0.917/0.945/0.971, 0.984/0.988/1.000, 1.000/1.000/1.000; untrained best "
        "0.910/0.924/0.926; shuffled 0.4997/0.5000/0.5004; embedding 0.714–0.722 vs position-only "
        "0.714–0.723. The s.e. of the mean balanced accuracy on ~920 held-out rows is ≈ 0.005."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_belief_state.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

BEST_MIN, SHUFFLED_MAX, EMBED_SLACK = 0.97, 0.55, 0.03


def probe(features, labels, seed):
    return linear_probe_balanced_accuracy(features, labels, method="logistic", alpha=1e-4,
                                          generator=torch.Generator().manual_seed(seed))


def test_eliminated_set_is_linearly_decodable(lab, bijection_run, init_model):
    run, task = bijection_run, bijection_run.task
    batch = run.probe_batch
    qpos = task.query_positions
    labels = batch.eliminated.reshape(-1, task.V)                          # (B·L, V) bool
    at_queries = lambda r: r[:, qpos].reshape(-1, r.shape[-1])             # noqa: E731

    resids = layer_residuals(run.model, batch.tokens)                      # [embed, block 0, 1, 2]
    names = ["embed"] + [f"block {l}" for l in range(run.model.cfg.n_layers)]
    scores = [probe(at_queries(r), labels, run.seed) for r in resids]
    ba = [s.mean for s in scores]
    best = int(np.argmax(ba[1:]) + 1)

    shuffled = labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(run.seed + 7))]
    ba_shuffled = probe(at_queries(resids[best]), shuffled, run.seed).mean
    t = torch.arange(task.L).repeat(batch.tokens.shape[0])
    ba_position = probe(torch.nn.functional.one_hot(t, task.L).double(), labels, run.seed).mean
    init_resids = layer_residuals(init_model, batch.tokens)
    ba_init = [probe(at_queries(r), labels, run.seed).mean for r in init_resids]
    lab.record(readouts=names, balanced_accuracy=ba, train_balanced_accuracy=[s.train_mean for s in scores],
               best_readout=names[best], best_balanced_accuracy=ba[best],
               best_per_value=scores[best].per_column, shuffled_balanced_accuracy=ba_shuffled,
               embedding_balanced_accuracy=ba[0], position_only_balanced_accuracy=ba_position,
               init_balanced_accuracy=ba_init)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(names))
    ax.bar(x - 0.2, ba, 0.4, label="trained")
    ax.bar(x + 0.2, ba_init, 0.4, label="init", color="C7")
    ax.axhline(ba_shuffled, color="C3", ls=":", label=f"shuffled labels ({ba_shuffled:.2f})")
    ax.axhline(ba_position, color="C2", ls="--", label=f"position only ({ba_position:.2f})")
    ax.axhline(BEST_MIN, color="k", lw=0.8, label=f"threshold {BEST_MIN}")
    ax.set_xticks(x, names)
    ax.set(ylim=(0.4, 1.02), ylabel="held-out balanced accuracy", title="probe: residual → eliminated values")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    lab.savefig(fig, "belief_probe")

    assert ba_shuffled <= SHUFFLED_MAX, f"control: shuffled labels decoded at {ba_shuffled:.3f}"
    assert ba[0] <= ba_position + EMBED_SLACK, (
        f"control: the embedding layer ({ba[0]:.3f}) beats the position-only ceiling ({ba_position:.3f})")
    assert max(ba_init[1:]) < BEST_MIN, (
        f"control: the untrained network already decodes the eliminated set at {max(ba_init[1:]):.3f}")
    assert ba[best] >= BEST_MIN, f"best block ({names[best]}) balanced accuracy {ba[best]:.3f} < {BEST_MIN}"
