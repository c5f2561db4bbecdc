"""A small transformer learns HMM filtering: its state head tracks the forward-algorithm posterior.

Lab notebook. Paper I (arXiv 2512.22471) shows the model each HMM in its prompt — the transition
and emission matrices as probability tokens, then the observations — and trains an S-way state
head by soft-label cross-entropy on the exact filtering posterior α_t = p(s_t | o_1..o_t)
(labcore.tasks.hmm). Every batch draws fresh HMMs, so no HMM can be memorised: the network has to
run the filter, α_t ∝ E[:, o_t] ⊙ (α_{t−1} T), on matrices it reads from the context.

This is the CPU-sized version (the paper's size is bayes_full_hmm, GPU only):
    S = O = 3, K = 8 observations (header 21 tokens, sequence 37 tokens), min prob 0.05
    StateHeadGPT (labcore.glassbox.state_head): 2 layers, 4 heads, d = 64, GELU MLP ×4, learned
        positions, LayerNorm pre-norm, state head Linear(64, 3) on ln_final; 108k params
    AdamW (0.9, 0.99), lr 3e-3, wd 0.01, 100 warmup steps + cosine to 0, clip 1.0, batch 64,
    800 steps (fresh HMMs every step)
Graded on 2048 fresh HMMs from their own seeded generator: KL(α_t ‖ q_t) in bits per
observation position, averaged; per-sample entropy MAE alongside.

Sizing: 10–21 steps/s on this shared 2-core box (≈ 20 when quiet, 10 with ≈ 6 runnable
processes), so training takes 38–78 s and the file 45–95 s (under `lab calibrate`). Recipe search, seed 0, eval KL:
600 steps 0.041, 1000 steps 0.034, a 1600-step cosine 0.030; a 3rd layer was worse at equal
time (700 steps: 0.055); batch 128 was no better per second. The first calibration used 600
steps and failed on seed 1 (0.073 bits: it left the uniform plateau late, KL still 0.15 at step
300), so the recipe was lengthened to 800 steps and *every* seed re-run:

    --lab-seed     0      1      2      3      4      5      6
    KL (bits)    0.038  0.047  0.031  0.034  0.030  0.035  0.033   min 0.030 / median 0.034 / max 0.047
    entropy MAE  0.096  0.109  0.084  0.092  0.082  0.093  0.090
    uniform/model  9.6    7.7   12.1   11.0   12.3   10.6   10.9
    memoryless/model 3.5  2.7    4.6    3.9    4.4    3.8    4.0

The entropy plot shows *how* the model misses: it is under-confident from the second
observation on (H(q_t) sits 0.03–0.05 bits above H(α_t) ≈ 1.19–1.22 bits, seeds 0 and 4) — it
hedges on the transport step; at t = 1 (no transport) the two curves coincide.

Controls (exact, no training): the uniform predictor (what a context-free per-position model
converges to, by the symmetry of the Dirichlet prior: KL = log2 3 − H(α)) and the *memoryless*
Bayes predictor q_t ∝ E[:, o_t] (it reads the emission matrix and the current symbol but never
carries α across time — the "transport" the paper credits attention with). The model must beat
both by a wide margin. Position 0 needs no transport (α_0 ∝ E[:, o_0]); the model gets it to
0.002–0.03 bits while the later positions sit at 0.033–0.055: transport is the hard part.

Paper values: v1 7.5e-5 bits at K=20 (9 layers, d=256, hours of GPU); v3 0.049 bits. We
compare with v3's order of magnitude; v1's precision is the GPU claim's business. Which metric
v3's 0.049 is was not confirmed (the authors' code has both KL in bits, eval_length_gen.py, and
an entropy MAE, train_lstm.py); our KL is 0.030–0.047 and our entropy MAE 0.082–0.109, so against
an MAE reading of v3 we are ≈ 2× worse at this CPU size.
"""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from labcore import GPTConfig
from labcore.measures.posterior import evaluate_hmm
from labcore.notebook.claims import Claim, Source
from labcore.glassbox.state_head import StateHeadGPT, hmm_state_loss
from labcore.tasks.hmm import HMMTask, batch_fn
from labcore.training.trainer import Every, TrainConfig, seeded_model, train

CLAIM = Claim(
    id="bayes_hmm_filtering",
    paper="bayes",
    statement="“small transformers reproduce Bayesian posteriors with 10⁻³–10⁻⁴ bit accuracy” (v1 abstract); "
              "for HMM state tracking at the training length K=20, v1 reports 7.5×10⁻⁵ bits and v3 0.049 bits "
              "for the transformer.",
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v3",
                  where="HMM state-tracking results (transformer row, K=20); the quote is v1's abstract"),
    paper_value="v3: 0.049 bits at K=20 (v1: 7.5e-5 bits)",
    prediction="A 2-layer d=64 model trained 800 steps on S=O=3, K=8 gets within a few hundredths of a bit "
               "of the exact filter, far below the uniform and memoryless-Bayes predictors.",
    metric="mean over 2048 fresh HMMs × 8 positions of KL(α_t ‖ q_t) in bits",
    tolerance="KL ≤ 0.06 bits; controls: uniform KL ≥ 5× and memoryless-Bayes KL ≥ 2× the model's KL",
    tolerance_why=(
        "--lab-seed 0..6 at 800 steps: KL min 0.030 / median 0.034 / max 0.047 bits (7/7 pass); the worst "
        "seed escaped the uniform plateau late. 0.06 is 1.3× the worst seed and 1.2× the paper's v3 value "
        "(0.049), tighter than the authors' own PASS line (0.1 bits). Controls over the same seeds: "
        "uniform/model 7.7–12.3 (≥ 5), memoryless-Bayes/model 2.7–4.6 (≥ 2); the controls' KLs are "
        "0.366–0.371 and 0.129–0.139 bits."
    ),
    tier="quick",
    calibration="fixtures/calibration/bayes_hmm_filtering.json",
    status="confirmed",  # passed on fresh seeds 100-104 (<claim>.fresh.json)
)

TASK = HMMTask(S=3, O=3, K=8)
MODEL_CONFIG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=TASK.seq_len(), d_model=64, n_layers=2, n_heads=4)
STEPS, BATCH = 800, 64
TRAIN = dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.01, schedule="warmup_cosine", warmup_steps=100,
             grad_clip=1.0)
EVAL_SIZE, EVAL_SEED_BASE = 2048, 3_000_017
CURVE_EVERY = 100
TOL_KL, UNIFORM_RATIO, MEMORYLESS_RATIO = 0.06, 5.0, 2.0


def memoryless_logits(batch) -> torch.Tensor:
    """log E[s, o_t]: the exact posterior of a filter that forgets everything before o_t."""
    S = batch.E.shape[1]
    emit = batch.E.gather(2, batch.observations.unsqueeze(1).expand(-1, S, -1)).transpose(1, 2)  # (B, K, S)
    return emit.log()


@pytest.fixture(scope="module")
def trained(lab_seed):
    ev = TASK.sample(EVAL_SIZE, torch.Generator().manual_seed(EVAL_SEED_BASE + lab_seed))
    model = seeded_model(lambda: StateHeadGPT(MODEL_CONFIG, TASK.S), lab_seed)

    def grade(step, m):
        return evaluate_hmm(m(ev.tokens)[:, ev.obs_positions], ev.posterior).kl_bits

    run = train(model, batch_fn(TASK, BATCH), TrainConfig(steps=STEPS, seed=lab_seed, track_update_ratio=False,
                                                           **TRAIN),
                loss_fn=hmm_state_loss, callbacks=[Every(CURVE_EVERY, grade, "kl")])
    if run.diverged:
        pytest.fail(f"HMM model (seed {lab_seed}) {run.message}", pytrace=False)
    with torch.no_grad():
        logits = model(ev.tokens)[:, ev.obs_positions]
    return {"model": model, "eval": ev, "run": run, "logits": logits,
            "report": evaluate_hmm(logits, ev.posterior),
            "uniform": evaluate_hmm(torch.zeros_like(ev.posterior), ev.posterior),
            "memoryless": evaluate_hmm(memoryless_logits(ev), ev.posterior)}


def test_kl_to_exact_filter(lab, trained):
    rep, run, ev = trained["report"], trained["run"], trained["eval"]
    h_model = -(torch.softmax(trained["logits"].double(), -1) * torch.log_softmax(trained["logits"].double(), -1)).sum(-1) / np.log(2)
    lab.record(kl_bits=rep.kl_bits, entropy_mae_bits=rep.entropy_mae_bits, per_position_kl=rep.per_position_kl,
               model_entropy_curve_bits=h_model.mean(0).numpy(), exact_entropy_curve_bits=ev.entropy_bits.mean(0).numpy(),
               kl_curve=[[s, v] for s, v in run.evals["kl"]], steps=STEPS, steps_per_second=run.steps_per_second,
               train_seconds=run.seconds, final_train_loss_nats=float(run.metrics["loss"][-20:].mean()),
               mean_exact_entropy_bits=float(ev.entropy_bits.mean()))

    t = np.arange(1, TASK.K + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(t, ev.entropy_bits.mean(0).numpy(), "o-", color="k", label="exact filter H(α_t)")
    ax1.plot(t, h_model.mean(0).numpy(), "s--", color="C0", label="model H(q_t)")
    ax1.axhline(np.log2(TASK.S), color="gray", ls=":", label="uniform, log2 S")
    ax1.set(xlabel="observation t", ylabel="mean entropy (bits)", title=f"S=O={TASK.S}, K={TASK.K}, seed {lab.seed}")
    ax1.legend(fontsize=8)
    steps, kls = zip(*run.evals["kl"])
    ax2.semilogy(steps, kls, "o-", label="model KL (eval batch)")
    ax2.axhline(trained["uniform"].kl_bits, color="gray", ls=":", label="uniform predictor")
    ax2.axhline(trained["memoryless"].kl_bits, color="C1", ls="--", label="memoryless Bayes")
    ax2.axhline(TOL_KL, color="C3", ls="-.", lw=0.8, label="tolerance")
    ax2.set(xlabel="step", ylabel="KL(α ‖ q) (bits)", title="training")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    lab.savefig(fig, "entropy_and_kl")

    assert rep.kl_bits <= TOL_KL, f"KL to the exact filter {rep.kl_bits:.4f} bits > {TOL_KL} after {STEPS} steps"


def test_beats_context_free_and_memoryless_predictors(lab, trained):
    rep, uni, mem = trained["report"], trained["uniform"], trained["memoryless"]
    lab.record(kl_bits=rep.kl_bits, uniform_kl_bits=uni.kl_bits, memoryless_kl_bits=mem.kl_bits,
               uniform_per_position_kl=uni.per_position_kl, memoryless_per_position_kl=mem.per_position_kl,
               model_per_position_kl=rep.per_position_kl,
               uniform_ratio=uni.kl_bits / rep.kl_bits, memoryless_ratio=mem.kl_bits / rep.kl_bits)

    t = np.arange(1, TASK.K + 1)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.semilogy(t, uni.per_position_kl, ":", color="gray", label="uniform (context-free)")
    ax.semilogy(t, np.maximum(mem.per_position_kl, 1e-4), "--", color="C1",
                label="memoryless Bayes, q ∝ E[:, o_t] (exact at t=1)")
    ax.semilogy(t, rep.per_position_kl, "o-", color="C0", label="transformer")
    ax.set(xlabel="observation t", ylabel="KL(α_t ‖ q_t) (bits)", title="per-position KL")
    ax.legend(fontsize=8)
    lab.savefig(fig, "per_position_kl")

    assert uni.kl_bits >= UNIFORM_RATIO * rep.kl_bits, (
        f"uniform predictor KL {uni.kl_bits:.4f} is not ≥ {UNIFORM_RATIO}× the model's {rep.kl_bits:.4f}")
    assert mem.kl_bits >= MEMORYLESS_RATIO * rep.kl_bits, (
        f"memoryless Bayes KL {mem.kl_bits:.4f} is not ≥ {MEMORYLESS_RATIO}× the model's {rep.kl_bits:.4f}")
