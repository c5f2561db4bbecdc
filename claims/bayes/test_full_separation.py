"""GPU tier: at V=20, trained capacity-matched MLPs miss the posterior by ≥ 10×; an LSTM does not.

Lab notebook. Paper I's abstract (arXiv 2512.22471): "capacity-matched MLPs fail by orders of
magnitude, establishing a clear architectural separation"; its v3 "inference primitives" table
compares Transformers, Mamba, LSTMs and MLPs and reports, for the bijection task (belief
*accumulation*), transformer 0.007 bits, LSTM 0.009, MLP 1.85 — "LSTMs realize only accumulation
… and MLPs realize none". The quick claim bayes_mlp_fails found that at V=10 the separation
holds only for the context-blind per-position MLP (which cannot fail to fail: it sits on an
analytic plateau), while a flattened-context MLP gets within 1.6–2.1× of the transformer. This
file asks the question at the paper's size, V=20, L=19, where a flattened MLP has to keep the
bookkeeping of 19 slots without weight sharing (a community replication reports 0.46 bits).

Setup (labcore.training.separation; one recipe for every arm, fresh sequences every step):
    task        bijection elimination, V=20, L=19, sep-vocab, keys without replacement (37 tokens)
    transformer GPT, 4 layers, d=128, 4 heads, LayerNorm pre-norm, learned positions; ≈ 0.80M params
    baselines   each sized to the transformer's parameter count (within 1 %):
                per-position MLP (4 residual blocks; the authors' MLPControl, context-blind),
                flattened-context MLP (2 residual blocks over the whole prefix),
                deep flattened-context MLP (8 residual blocks),
                LSTM (2 layers, embedding 64)
    recipe      AdamW (0.9, 0.99), lr 1e-3, wd 0.01, 500 warmup + cosine, clip 1.0, batch 256,
                8,000 steps each (the transformer's budget; no arm gets more)
    evaluation  2,048 fixed sequences: per-sample entropy MAE (value-slice softmax), KL, eliminated mass

Prediction (written before any run): transformer MAE ≤ 0.02 bits; per-position MLP on its 1.107-bit
plateau; flattened and deep flattened MLPs ≥ 10× the transformer's MAE — the least certain part
(at V=10 they were within 2×); LSTM within 3× of the transformer (the paper's table: 0.009 vs 0.007).

Asserted: each MLP arm's MAE ≥ 10× the transformer's (the paper's separation; the per-position
arm is the control that must come out large, ≥ 100× as the BWT-2 GPU ratio); the LSTM's MAE ≤ 3×
the transformer's (the paper's "LSTMs realize accumulation"; a ≥ 10× separation against the
LSTM would contradict the primitives table, so it is *not* asserted).

Sizing: 5 arms × 8,000 steps through the fast path (metrics read back every 500 steps, TF32, no
compile: five models would pay five compilations). Estimated 60–90 s on an H200 (≈ 300 steps/s
for the transformer, faster for the MLPs); not yet measured. Not yet calibrated: no GPU run has
been made — the first runs are the calibration. Skipped without CUDA (tag ``gpu``); the same code
path runs on a CPU with a tiny config in tests/test_separation.py.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from labcore.measures.posterior import mlp_plateau_mae_bits
from labcore.notebook.claims import Claim, Source
from labcore.training.separation import ARMS, SeparationConfig, run_separation

CLAIM = Claim(
    id="bayes_full_separation",
    paper="bayes",
    statement=(
        "“… small transformers reproduce Bayesian posteriors with 10⁻³–10⁻⁴ bit accuracy, while capacity-matched "
        "MLPs fail by orders of magnitude, establishing a clear architectural separation.” (v1 abstract); "
        "“LSTMs realize only accumulation (of static sufficient statistics); and MLPs realize none” (v3 abstract)"
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v3",
                  where="abstract; inference-primitives table (bijection column: transformer 0.007, LSTM 0.009, "
                        "MLP 1.85 bits)"),
    paper_value="bijection MAE: transformer 0.007 bits, LSTM 0.009, MLP 1.85 (v3); per-position MLP plateau 1.107",
    prediction="Transformer ≤ 0.02 bits; per-position MLP at its plateau; flattened and deep flattened MLPs "
               "≥ 10× the transformer (uncertain: within 2× at V=10); LSTM within 3× of the transformer.",
    metric="per-sample entropy MAE on 2,048 fixed V=20 sequences; ratio arm / transformer",
    tolerance="MLP arms: ratio ≥ 10 (per-position ≥ 100); LSTM: ratio ≤ 3",
    tolerance_why=(
        "10× is the paper's 'orders of magnitude' read at its weakest; 100× for the per-position arm is the research "
        "note's GPU ratio (BWT-2: plateau 1.107 bits vs ≤ 0.01). 3× for the LSTM gives 2.3× slack over the "
        "paper's 0.009/0.007. Not calibrated: no GPU run yet; the first runs are the calibration."
    ),
    tier="full",
    tags=("gpu",),
    needs="est. < 2 GB GPU memory, ~60–90 s on an H200 through the fast path (estimate, not measured)",
)

CONFIG = SeparationConfig(V=20, L=19, d_model=128, n_layers=4, n_heads=4, steps=8000, batch=256, lr=1e-3,
                          warmup=500, eval_size=2048, fast=dict(sync_every=500, precision="tf32", stats_every=1000))
MLP_RATIO_MIN, PER_POSITION_RATIO_MIN, LSTM_RATIO_MAX = 10.0, 100.0, 3.0


@pytest.fixture(scope="module")
def arms(lab_seed, lab_device):
    return run_separation(CONFIG, lab_seed, lab_device)


def _record_and_plot(lab, arms):
    ref = arms["transformer"].report.entropy_mae_bits
    lab.record(**{f"{n}_mae_bits": r.report.entropy_mae_bits for n, r in arms.items()},
               **{f"{n}_kl_bits": r.report.kl_bits for n, r in arms.items()},
               **{f"{n}_eliminated_mass": r.report.eliminated_mass for n, r in arms.items()},
               **{f"{n}_ratio": r.report.entropy_mae_bits / ref for n, r in arms.items()},
               **{f"{n}_params": r.params for n, r in arms.items()},
               **{f"{n}_steps_per_second": r.steps_per_second for n, r in arms.items()},
               **{f"{n}_train_seconds": r.train_seconds for n, r in arms.items()},
               plateau=mlp_plateau_mae_bits(CONFIG.V, CONFIG.L), steps=CONFIG.steps, batch=CONFIG.batch)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = np.arange(CONFIG.L)
    ax1.plot(t, arms["transformer"].report.entropy_bayes_curve, "k-", lw=2, label="Bayes")
    for i, (n, r) in enumerate(arms.items()):
        ax1.plot(t, r.report.entropy_model_curve, f"C{i}--", label=f"{n} ({r.report.entropy_mae_bits:.3g})")
        ax2.semilogy(np.arange(len(r.loss_curve)) * 50, r.loss_curve, f"C{i}-", label=n)
    ax1.set(xlabel="query t", ylabel="entropy (bits)", title=f"V={CONFIG.V}, {CONFIG.steps} steps each")
    ax1.legend(fontsize=7)
    ax2.set(xlabel="step", ylabel="training CE (nats)", title="training")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "separation")


def test_trained_mlps_fail_by_10x(lab, arms):
    _record_and_plot(lab, arms)
    ref = arms["transformer"].report.entropy_mae_bits
    ratios = {n: arms[n].report.entropy_mae_bits / ref for n in ARMS if n != "transformer"}
    assert ratios["per_position"] >= PER_POSITION_RATIO_MIN, (
        f"control: per-position MLP only {ratios['per_position']:.1f}× the transformer's MAE {ref:.4f}")
    weak = {n: round(ratios[n], 2) for n in ("flattened", "deep_flattened") if ratios[n] < MLP_RATIO_MIN}
    assert not weak, f"MLP arms within {MLP_RATIO_MIN}× of the transformer (MAE {ref:.4f} bits): {weak}"


def test_lstm_realises_accumulation(lab, arms):
    ref, lstm = arms["transformer"].report.entropy_mae_bits, arms["lstm"].report.entropy_mae_bits
    lab.record(transformer_mae_bits=ref, lstm_mae_bits=lstm, lstm_ratio=lstm / ref)
    assert lstm <= LSTM_RATIO_MAX * ref, (
        f"LSTM MAE {lstm:.4f} bits is {lstm / ref:.1f}× the transformer's {ref:.4f} (> {LSTM_RATIO_MAX}×)")
