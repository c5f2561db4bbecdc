"""Capacity-matched MLPs fail by orders of magnitude — true for the per-position MLP, not for a flattened one.

Lab notebook. The abstract's architectural separation: "capacity-matched MLPs fail by orders of
magnitude". Two different networks hide behind "MLP" (labcore.glassbox.baselines):

* the **per-position MLP** (the authors' ``MLPControl``: residual MLP blocks applied to each token
  on its own, with position embeddings). It cannot see the context, so it converges to the
  context-free marginal and sits *exactly* at the analytic plateau (0.901 bits at V=10,
  bayes_mlp_plateau). It fails for a structural reason, within a few dozen steps. Its "≥ 10×"
  is therefore not evidence about MLPs: it *follows* from bayes_calibration (transformer MAE
  ≤ 0.06 bits) and the plateau (0.901 / 0.06 = 15×). It stays here as the control arm — the
  baseline that must come out large — and as a check that training reaches the plateau.
* a **flattened-context MLP**: position t sees the whole prefix, concatenated into one vector
  (exactly causal, no attention, no weight sharing across slots). It can represent the posterior,
  so it is the *informative* baseline: the one the paper's sentence is really about.

Both are matched to the shared transformer's 150k parameters (``match_param_count``) and
trained with its recipe (AdamW 3e-3, warmup + cosine, batch 128) — the per-position MLP for 150
steps (it is on its plateau after ~30), the flattened MLP for 400 steps (fewer than the
transformer's 1,000, which can only favour the claim).

Asserted: (1) the per-position MLP sits on its plateau and ≥ 10× the transformer (the control);
(2) the flattened MLP *learns from the context*: its MAE is ≤ 1/10 of the context-blind plateau
— without this, a failure of the flattened MLP could just mean it was broken or under-trained;
(3) the paper's separation for the flattened MLP, ratio ≥ 10 — a strict xfail: at V=10 it does
not hold (numbers in the calibration table, fixtures/calibration/bayes_mlp_fails*.json, and in
the xfail reason). The V=20 question, with trained flattened, deep flattened MLPs and an LSTM, is
the GPU claim bayes_full_separation. (A community replication reports 0.46 bits for a flattened
MLP at V=20; see docs/papers/bayesian-geometry.md.)
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore.glassbox.baselines import FlattenedContextMLP, PerPositionMLP, match_param_count, param_count
from labcore.measures.posterior import evaluate_bijection, mlp_plateau_mae_bits
from labcore.notebook.claims import Claim, Source
from labcore.tasks.bijection import batch_fn
from labcore.training.trainer import TrainConfig, seeded_model, train

CLAIM = Claim(
    id="bayes_mlp_fails",
    paper="bayes",
    statement=(
        "“… small transformers reproduce Bayesian posteriors with 10⁻³–10⁻⁴ bit accuracy, while "
        "capacity-matched MLPs fail by orders of magnitude, establishing a clear architectural "
        "separation.” (abstract)"
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="abstract; the V=20 numbers (MLP ≈ 1.85 bits vs transformer 3×10⁻³) are v1's Table 1 as "
                        "reported by secondary notes (not read from the paper directly); the v3 table and the "
                        "authors' README also give 1.85"),
    paper_value="MLP ≈ 1.85 bits vs transformer 0.003 bits (~600×), V=20; jlens MLP plateau 1.107 bits",
    prediction="Per-position MLP (150k params): MAE within ±0.03 of the 0.901-bit plateau and ≥ 10× the "
               "transformer's (implied by bayes_calibration). Flattened-context MLP (150k params): expected to "
               "learn the task at V=10, so the paper's ≥ 10× separation fails for it.",
    metric="per-sample entropy MAE on the shared 1,024-sequence evaluation batch; ratio MLP / transformer",
    tolerance="per-position: |MAE − 0.901| ≤ 0.03 and ratio ≥ 10; flattened: MAE ≤ plateau / 10, and "
              "ratio ≥ 10 (strict xfail)",
    tolerance_why=(
        "±0.03 is the research note's BWT-2 band (calibrated 1.101 vs 1.107 at V=20); 10× is its CPU "
        "ratio — for the per-position MLP it is implied by bayes_calibration (0.901 / 0.06 = 15×), so that test "
        "is the control arm, not evidence. Seeds 0–4 (min/median/max): per-position MAE 0.9003/0.9004/0.9005 "
        "(plateau 0.9007), ratio 31.7/33.5/33.7; flattened MAE 0.044/0.048/0.057, ratio 1.6/1.7/2.1 — the "
        "separation fails for the flattened MLP in every seed (strict xfail); context gain (plateau / flattened "
        "MAE) 15.8/18.6/20.6 — its ≥ 10 bound was set after seeing these numbers (an untrained flattened MLP "
        "gives 1.1, the broken variant). Fresh seeds 100–104, all green: per-position ratio 31.8/33.2/34.1; "
        "flattened MAE 0.043/0.047/0.052, ratio 1.5/1.8/1.9 (5/5 strict xfail); context gain 17.4/19.0/20.8."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_mlp_fails.json",
    status="confirmed",
)

PLATEAU_BAND, RATIO_MIN, CONTEXT_GAIN_MIN = 0.03, 10.0, 10.0
PER_POSITION_STEPS, FLATTENED_STEPS = 150, 400


def train_baseline(run, build, steps):
    model = seeded_model(build, run.seed)
    cfg = TrainConfig(steps=steps, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01, schedule="warmup_cosine",
                      warmup_steps=min(200, steps // 5), grad_clip=1.0, seed=run.seed, track_update_ratio=False)
    result = train(model, batch_fn(run.task, run.batch_size), cfg)
    with torch.no_grad():
        report = evaluate_bijection(model(run.eval_batch.tokens), run.eval_batch, run.task)
    return model, report, result


@pytest.fixture(scope="module")
def baselines(bijection_run):
    run, task = bijection_run, bijection_run.task
    target = run.model.num_params()
    T, vocab = task.seq_len, task.vocab_size
    d_mlp = match_param_count(lambda m: PerPositionMLP(vocab, 64, 4, m, n_positions=T), target)
    hidden = match_param_count(lambda h: FlattenedContextMLP(vocab, T, 16, h, 2), target)
    per_position = train_baseline(run, lambda: PerPositionMLP(vocab, 64, 4, d_mlp, n_positions=T), PER_POSITION_STEPS)
    flattened = train_baseline(run, lambda: FlattenedContextMLP(vocab, T, 16, hidden, 2), FLATTENED_STEPS)
    return {"transformer_params": target, "per_position": per_position, "flattened": flattened,
            "per_position_shape": dict(d_model=64, n_blocks=4, d_mlp=d_mlp),
            "flattened_shape": dict(d_model=16, hidden=hidden, n_layers=2)}


def _plot(lab, run, rows, name):
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    t = np.arange(run.task.L)
    ax.plot(t, run.report.entropy_bayes_curve, "k-", lw=2, label="Bayes")
    ax.plot(t, run.report.entropy_model_curve, "C0o--", ms=3, label=f"transformer ({run.report.entropy_mae_bits:.3f})")
    for i, (label, rep) in enumerate(rows.items()):
        ax.plot(t, rep.entropy_model_curve, f"C{i + 1}s:", ms=3, label=f"{label} ({rep.entropy_mae_bits:.3f})")
    ax.set(xlabel="query t", ylabel="entropy (bits)", title="entropy per position (MAE in brackets)")
    ax.legend(fontsize=7)
    lab.savefig(fig, name)


def test_per_position_mlp_sits_at_plateau(lab, bijection_run, baselines):
    run = bijection_run
    model, rep, result = baselines["per_position"]
    plateau = mlp_plateau_mae_bits(run.task.V, run.task.L)
    ratio = rep.entropy_mae_bits / run.report.entropy_mae_bits
    lab.record(mlp_mae=rep.entropy_mae_bits, mlp_kl=rep.kl_bits, mlp_eliminated_mass=rep.eliminated_mass,
               plateau=plateau, transformer_mae=run.report.entropy_mae_bits, ratio=ratio,
               mlp_params=param_count(model), transformer_params=baselines["transformer_params"],
               mlp_shape=baselines["per_position_shape"], steps=PER_POSITION_STEPS, train_seconds=result.seconds)
    _plot(lab, run, {"per-position MLP": rep}, "per_position_entropy")
    assert abs(rep.entropy_mae_bits - plateau) <= PLATEAU_BAND, (
        f"per-position MLP MAE {rep.entropy_mae_bits:.4f} not within {PLATEAU_BAND} of the plateau {plateau:.4f}")
    assert ratio >= RATIO_MIN, f"MLP/transformer MAE ratio {ratio:.1f} < {RATIO_MIN}"


def test_flattened_mlp_learns_from_context(lab, bijection_run, baselines):
    """The control for the xfail below: the informative baseline is not broken — it beats the context-blind
    plateau by ≥ 10×, so its small ratio to the transformer is a real result, not a failed training run."""
    run = bijection_run
    _, rep, result = baselines["flattened"]
    plateau = mlp_plateau_mae_bits(run.task.V, run.task.L)
    gain = plateau / rep.entropy_mae_bits
    lab.record(flat_mae=rep.entropy_mae_bits, plateau=plateau, context_gain=gain,
               flat_final_loss=float(result.metrics["loss"][-20:].mean()))
    assert gain >= CONTEXT_GAIN_MIN, (
        f"flattened MLP MAE {rep.entropy_mae_bits:.4f} is only {gain:.1f}× below the context-blind plateau {plateau:.4f}")


@pytest.mark.xfail(strict=True, reason=(
    "measured at V=10 (seeds 0–4): a parameter-matched flattened-context MLP reaches 0.044–0.057 bits in 400 "
    "steps, 1.6–2.1× the transformer's MAE, not ≥ 10×; hypothesis: at V=10 the prefix is short (17 tokens) "
    "and the bookkeeping per slot is learnable without weight sharing — the separation may need V=20"))
def test_flattened_mlp_fails_by_10x(lab, bijection_run, baselines):
    run = bijection_run
    model, rep, result = baselines["flattened"]
    ratio = rep.entropy_mae_bits / run.report.entropy_mae_bits
    lab.record(flat_mae=rep.entropy_mae_bits, flat_kl=rep.kl_bits, flat_eliminated_mass=rep.eliminated_mass,
               transformer_mae=run.report.entropy_mae_bits, ratio=ratio, flat_params=param_count(model),
               transformer_params=baselines["transformer_params"], flat_shape=baselines["flattened_shape"],
               steps=FLATTENED_STEPS, train_seconds=result.seconds,
               flat_loss_curve=result.metrics["loss"][::20])
    _plot(lab, run, {"flattened MLP": rep, "per-position MLP": baselines["per_position"][1]}, "flattened_entropy")
    assert ratio >= RATIO_MIN, (
        f"flattened-context MLP MAE {rep.entropy_mae_bits:.4f} is only {ratio:.2f}× the transformer's "
        f"{run.report.entropy_mae_bits:.4f}")
