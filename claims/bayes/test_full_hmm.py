"""HMM filtering at the paper's size: K=20 to 1e-3 bits, and what happens at K=30 and K=50.

Lab notebook. Paper I (arXiv 2512.22471) trains a transformer with an S-way state head, by
soft-label cross-entropy on the forward-algorithm posterior, on HMMs with S = O = 5 whose
matrices are part of the prompt (the 105-token format, a 53-token header, then [OBS] o_t pairs;
labcore.tasks.hmm), at K = 20 observations, and reports an error of 7.5e-5 bits at K=20 and
2.88e-2 bits at K=50 (v1; the v3 table gives 0.049 bits at K=20 instead). That number is a
per-position entropy MAE, |H(model) − H(Bayes)| averaged — the authors' README calls it
"per-position" MAE — not a KL: a KL can be larger than the MAE of the same predictions (an
over-confident and an under-confident position cancel in neither, but the MAE only compares
entropies). So the paper's number is compared with our entropy MAE; KL is recorded beside it. This is the GPU
version of bayes_hmm_filtering (which runs a 3-state toy on the CPU).

Setup — the paper's model and optimiser, with fresh HMMs every step instead of the authors'
fixed 10k-sequence dataset:
    S = O = 5, K = 20, min prob 0.05 on the 0.01 grid; n_ctx = 153 (room for K = 50)
    StateHeadGPT: 9 layers, 8 heads, d = 256, d_mlp = 1024, LayerNorm pre-norm, GELU,
        learned absolute positions (like the authors' GPT-Mini), no dropout; 7.15M params
    AdamW (0.9, 0.999), lr 3e-4, wd 0.01, 1000 warmup steps + cosine, clip 1.0, batch 64,
    STEPS = 8000 (the paper: 10k sequences × 50 epochs / batch 64 ≈ 7,800 steps)
Measured on one H200 through the default trainer: 29.8 steps/s (> 470 s). On CUDA this file now
trains through the fast path (FAST below), target ≥ 300 steps/s (≈ 27 s) — not yet measured.

Evaluation: 1024 fresh HMMs at each of K = 20, 30, 50 (their own seeded generator), KL in bits
per observation position, averaged, and the per-sample entropy MAE. Asserted: entropy MAE ≤
1e-3 bits at K = 20 (the paper's metric) and KL ≤ 1e-2 bits (a calibrated-posterior check the MAE
alone cannot give: a model with the right entropies on the wrong states has MAE 0), and the
control — the uniform predictor, KL = log2 5 − H(α) — must be ≥ 100× worse. K = 30 and K = 50 are recorded
and plotted, not asserted: positions beyond the training length use position embeddings that
were never trained (research note: "use sinusoidal or relative positions if asserting
extrapolation").

Not yet calibrated: no GPU was available when this was written (0 runs). The 1e-3 bound is the
brief's, an order of magnitude above the paper's v1 number and 50× below its v3 number.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore import GPTConfig
from labcore.measures.posterior import evaluate_hmm
from labcore.notebook.claims import Claim, Source
from labcore.notebook.hardware import needs
from labcore.glassbox.state_head import StateHeadGPT, hmm_state_loss
from labcore.tasks.bijection import device_batches
from labcore.tasks.hmm import HMMTask, batch_fn
from labcore.training.flops import train_flops_per_step
from labcore.training.trainer import TrainConfig, gpu_fast_options, seeded_model, train

CLAIM = Claim(
    id="bayes_full_hmm",
    paper="bayes",
    statement="“small transformers reproduce Bayesian posteriors with 10⁻³–10⁻⁴ bit accuracy” (abstract); "
              "for HMM filtering: 7.5×10⁻⁵ bits (per-position entropy MAE) at the training length K=20 "
              "and 2.88×10⁻² bits at K=50.",
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="HMM wind tunnel results (K=20 training, K=30/50 length generalisation)"),
    paper_value="entropy MAE v1: 7.5e-5 bits (K=20), 2.88e-2 bits (K=50); v3: 0.049 bits (K=20); repo: K=30 ≈ 0.012",
    prediction="The paper-size model trained ~8k steps on fresh HMMs reaches ≤ 1e-3 bits at K=20; "
               "error grows at K=30 and K=50 (reported only).",
    metric="mean over 1024 HMMs × K positions of |H(q_t) − H(α_t)| (entropy MAE) and of KL(α_t ‖ q_t), "
           "in bits, at K = 20 (and 30, 50)",
    tolerance="K=20: entropy MAE ≤ 1e-3 bits and KL ≤ 1e-2 bits; control: uniform predictor KL ≥ 100× the model's",
    tolerance_why=(
        "Not calibrated yet (no GPU run so far). Entropy MAE ≤ 1e-3 bits is the brief's bound on the paper's "
        "own metric: 13× the paper's v1 value and 49× below its v3 value, so it separates 'matches the v1 claim "
        "to an order of magnitude' from the v3 level. KL ≤ 1e-2 bits (not the paper's metric) guards against "
        "right entropies on wrong states. The uniform predictor's KL is ≈ 0.5 bits (S=5), ≥ 50× the KL bound."
    ),
    tier="full",
    tags=("gpu",),
    needs=needs("bayes_full_hmm"),  # estimate from the formulas in labcore/notebook/hardware.py
)

TASK = HMMTask(S=5, O=5, K=20)
EVAL_KS = (20, 30, 50)
N_CTX = TASK.seq_len(max(EVAL_KS))  # 153
MODEL_CONFIG = GPTConfig(vocab_size=TASK.vocab_size, n_ctx=N_CTX, d_model=256, n_layers=9, n_heads=8,
                         d_mlp=1024, positional="learned")
STEPS, BATCH = 8000, 64
TRAIN = dict(lr=3e-4, betas=(0.9, 0.999), weight_decay=0.01, schedule="warmup_cosine", warmup_steps=1000,
             grad_clip=1.0)
EVAL_SIZE, EVAL_SEED_BASE = 1024, 5_000_011
TOL_K20, TOL_KL_K20, CONTROL_RATIO = 1e-3, 1e-2, 100.0  # entropy MAE (paper's metric), KL
# the fast path on CUDA (docs/performance.md): SDPA attention, HMMs drawn and filtered on the GPU,
# metrics read back every 500 steps, TF32 matmuls (not bf16: the bound is 1e-3 bits and the paper's
# v1 value 7.5e-5), torch.compile unless LAB_COMPILE=0. On a CPU the default loop runs unchanged.
FAST = gpu_fast_options("tf32")


def train_and_evaluate(seed: int, device, steps: int = STEPS, config: GPTConfig = MODEL_CONFIG,
                       task: HMMTask = TASK, eval_ks=EVAL_KS, eval_size: int = EVAL_SIZE) -> dict:
    """Train the state-head GPT for ``steps`` and grade it at each K (also callable on a CPU with a
    tiny config, to smoke-test this code path)."""
    model = seeded_model(lambda: StateHeadGPT(config, task.S), seed).to(device)
    on_gpu = torch.device(device).type == "cuda"
    batches = (device_batches(lambda g: task.sample_torch(BATCH, g, device), device, as_dict=True) if on_gpu
               else batch_fn(task, BATCH))
    run = train(model, batches, TrainConfig(steps=steps, seed=seed, track_update_ratio=False, **TRAIN,
                                            **(FAST if on_gpu else {})), loss_fn=hmm_state_loss)
    if run.diverged:
        raise RuntimeError(f"training {run.message}")
    out = {"steps_per_second": run.steps_per_second, "train_seconds": run.seconds,
           "final_loss": float(np.mean(run.metrics["loss"][-50:])), "n_params": model.num_params(),
           "loss_curve": run.metrics["loss"], "per_k": {}, "tokens": steps * BATCH * task.seq_len(),
           "flops": steps * train_flops_per_step(model, BATCH, task.seq_len())}
    model.eval()
    for K in eval_ks:
        ev = task.sample(eval_size, torch.Generator().manual_seed(EVAL_SEED_BASE + 97 * K + seed), K=K)
        with torch.no_grad():
            logits = torch.cat([model(chunk.to(device))[:, ev.obs_positions.to(device)].float().cpu()
                                for chunk in ev.tokens.split(256)])
        rep = evaluate_hmm(logits, ev.posterior)
        uniform = evaluate_hmm(torch.zeros_like(ev.posterior), ev.posterior)
        out["per_k"][K] = {"kl_bits": rep.kl_bits, "entropy_mae_bits": rep.entropy_mae_bits,
                           "per_position_kl": rep.per_position_kl, "uniform_kl_bits": uniform.kl_bits}
    return out


def test_full_hmm_filtering(lab):
    res = train_and_evaluate(lab.seed, lab.device)
    lab.throughput(tokens=res["tokens"], seconds=res["train_seconds"], flops=res["flops"], precision=FAST["precision"])
    per_k = res["per_k"]
    lab.record(
        steps=STEPS, batch=BATCH, n_params=res["n_params"], steps_per_second=res["steps_per_second"],
        train_seconds=res["train_seconds"], final_train_loss_nats=res["final_loss"],
        **{f"kl_bits_K{K}": v["kl_bits"] for K, v in per_k.items()},
        **{f"entropy_mae_bits_K{K}": v["entropy_mae_bits"] for K, v in per_k.items()},
        **{f"uniform_kl_bits_K{K}": v["uniform_kl_bits"] for K, v in per_k.items()},
        **{f"per_position_kl_K{K}": v["per_position_kl"] for K, v in per_k.items()},
        ratio_K50_K20=per_k[50]["kl_bits"] / per_k[20]["kl_bits"],
    )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for K, v in per_k.items():
        ax1.semilogy(np.arange(1, K + 1), np.maximum(v["per_position_kl"], 1e-9), label=f"eval K={K}")
    ax1.axvline(TASK.K, color="gray", ls=":", label="training length")
    ax1.axhline(TOL_KL_K20, color="C3", ls="--", lw=0.8, label="KL bound 1e-2 bits")
    ax1.set(xlabel="observation t", ylabel="KL(α_t ‖ q_t) (bits)", title="per-position KL")
    ax1.legend(fontsize=8)
    ax2.semilogy(res["loss_curve"])
    ax2.set(xlabel="step", ylabel="soft-label CE (nats)", title=f"training, {STEPS} steps")
    fig.tight_layout()
    lab.savefig(fig, "length_generalisation")

    kl20, uni20 = per_k[20]["kl_bits"], per_k[20]["uniform_kl_bits"]
    assert math.isfinite(kl20)
    assert uni20 >= CONTROL_RATIO * kl20, f"control: uniform KL {uni20:.3g} < {CONTROL_RATIO}× model KL {kl20:.3g}"
    mae20 = per_k[20]["entropy_mae_bits"]
    assert mae20 <= TOL_K20, (
        f"entropy MAE at K=20 is {mae20:.2e} bits > {TOL_K20:.0e} (K=30 {per_k[30]['entropy_mae_bits']:.2e}, "
        f"K=50 {per_k[50]['entropy_mae_bits']:.2e}; {res['steps_per_second']:.1f} steps/s)"
    )
    assert kl20 <= TOL_KL_K20, f"KL at K=20 is {kl20:.2e} bits > {TOL_KL_K20:.0e} (entropy MAE {mae20:.2e})"

