"""GPU tier: the paper's own configuration reaches the paper's calibration (V=20, ≤ 0.01 bits).

Lab notebook. The quick claims test the Bayesian wind tunnel at V=10 with a 150k-parameter model
because that is what a CPU affords. This file runs the paper's configuration as the authors'
repo has it (configs/bijection_v20.yaml; production sep-vocab format): V=20, L=19, 6 layers,
6 heads, d=192 (2.7M parameters), AdamW lr 3e-4, wd 0.1, linear warmup + cosine, clip 1.0,
batch 256 — for 20,000 steps instead of their 50k–100k. The authors' dense retrain passes 0.03
bits at 2,500 steps and reaches 0.0008 at 50k, so 20k steps with the cosine finishing inside
the run should land below 0.01; that expectation is *not yet measured here* (no GPU in the
session that wrote this file).

Budget: ~2.7M parameters × 256 × 37 tokens per step. Through the default trainer an H200 ran
39.8 steps/s (> 470 s for 20k steps: Python, launches and host syncs); this file now trains
through the fast path (FAST below), target ≥ 400 steps/s, i.e. ≤ 60 s — not yet measured.
Skipped without CUDA (tag ``gpu``).

Asserted: per-sample entropy MAE ≤ 0.01 bits, KL ≤ 0.01 bits, eliminated mass ≤ 0.005, and the
architectural separation against the analytic per-position-MLP plateau (1.107 bits) ≥ 100×.
"""

import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from labcore import GPT, GPTConfig
from labcore.measures.posterior import evaluate_bijection, mlp_plateau_mae_bits
from labcore.notebook.claims import Claim, Source
from labcore.notebook.hardware import needs
from labcore.tasks.bijection import BijectionTask, device_batches
from labcore.training.flops import train_flops_per_step
from labcore.training.trainer import Every, TrainConfig, gpu_fast_options, seeded_model, train

CLAIM = Claim(
    id="bayes_full_bijection",
    paper="bayes",
    statement=(
        "“In these settings, small transformers reproduce Bayesian posteriors with 10⁻³–10⁻⁴ bit "
        "accuracy, while capacity-matched MLPs fail by orders of magnitude …” (abstract)"
    ),
    source=Source(title="The Bayesian Geometry of Transformer Attention", arxiv="2512.22471", version="v1",
                  where="abstract; Table 1 (V=20: MAE 3×10⁻³ bits); repo configs/bijection_v20.yaml"),
    paper_value="MAE 0.003 bits (v1) / 0.007 (v3, README); checklist < 0.01; MLP plateau 1.107 bits",
    prediction="V=20, L=19, 6L/6H/d192, 20k steps at batch 256: MAE ≤ 0.01 bits, ≥ 100× below the MLP plateau.",
    metric="per-sample entropy MAE, KL(Bayes‖model), eliminated mass on 2,048 fixed evaluation sequences",
    tolerance="MAE ≤ 0.01, KL ≤ 0.01, eliminated mass ≤ 0.005; plateau / MAE ≥ 100",
    tolerance_why=(
        "0.01 is the authors' REPRODUCE checklist bound (paper 0.003–0.007, their retrain 0.0008 at "
        "50k steps); ≥ 100× is the research note's GPU-tier ratio (BWT-2). Not yet calibrated: no "
        "GPU run has been made — the first runs should be read as the calibration."
    ),
    tier="full",
    tags=("gpu",),
    needs=needs("bayes_full_bijection"),  # estimate from the formulas in labcore/notebook/hardware.py
)

V, L = 20, 19
STEPS, WARMUP, BATCH = 20_000, 1_000, 256
MAE_MAX, KL_MAX, EM_MAX, SEPARATION_MIN = 0.01, 0.01, 0.005, 100.0
# the fast path (docs/performance.md): SDPA attention (attn_impl "auto" on CUDA), batches drawn on the
# GPU, metrics read back every 500 steps, bf16 autocast (the bound, 0.01 bits, is ~10× the paper's
# value; evaluation runs in fp32), torch.compile unless LAB_COMPILE=0. Under torchrun each rank
# trains on BATCH / WORLD_SIZE sequences per step, so the global batch stays the paper's.
FAST = gpu_fast_options("bf16")
RANK_BATCH = BATCH // int(os.environ.get("WORLD_SIZE", "1"))


def test_paper_configuration_reaches_paper_calibration(lab):
    task = BijectionTask(V=V, L=L)
    cfg = GPTConfig(vocab_size=task.vocab_size, n_ctx=task.seq_len, d_model=192, n_layers=6, n_heads=6,
                    norm="rmsnorm")
    model = seeded_model(lambda: GPT(cfg), lab.seed).to(lab.device)
    ev = task.sample(2048, torch.Generator().manual_seed(3_000_017 + lab.seed)).to(lab.device)

    def grade(step, m):
        r = evaluate_bijection(m(ev.tokens), ev, task)
        return {"mae": r.entropy_mae_bits, "kl": r.kl_bits, "eliminated_mass": r.eliminated_mass}

    start = time.perf_counter()
    result = train(model, device_batches(lambda g: task.sample_torch(RANK_BATCH, g, lab.device), lab.device),
                   TrainConfig(steps=STEPS, lr=3e-4, betas=(0.9, 0.999), weight_decay=0.1, schedule="warmup_cosine",
                               warmup_steps=WARMUP, grad_clip=1.0, seed=lab.seed, track_update_ratio=False,
                               device=str(lab.device), **FAST),
                   callbacks=[Every(1000, grade, "calibration")])
    seconds = time.perf_counter() - start
    assert not result.diverged, result.message
    with torch.no_grad():
        rep = evaluate_bijection(model(ev.tokens), ev, task)
    plateau = mlp_plateau_mae_bits(V, L)
    curve = result.evals["calibration"]
    lab.record(entropy_mae_bits=rep.entropy_mae_bits, mean_curve_mae_bits=rep.mean_curve_mae_bits,
               kl_bits=rep.kl_bits, eliminated_mass=rep.eliminated_mass, params=model.num_params(),
               separation=plateau / rep.entropy_mae_bits, seconds=seconds, steps=STEPS,
               steps_per_second=result.steps_per_second, train_seconds=result.seconds, fast_path=FAST,
               curve=[[s, v["mae"], v["kl"], v["eliminated_mass"]] for s, v in curve],
               device=str(lab.device))
    # per-GPU throughput and MFU (flops of this rank's batch; peak from labcore.notebook.hardware)
    lab.throughput(tokens=STEPS * RANK_BATCH * task.seq_len, seconds=result.seconds,
                   flops=STEPS * train_flops_per_step(model, RANK_BATCH, task.seq_len), precision=FAST["precision"])

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    t = np.arange(L)
    ax.plot(t, rep.entropy_bayes_curve, "k-", lw=2, label="Bayes")
    ax.plot(t, rep.entropy_model_curve, "C0o--", ms=3, label=f"transformer ({rep.entropy_mae_bits:.4f})")
    ax.set(xlabel="query t", ylabel="entropy (bits)", title=f"V={V}, L={L}, {STEPS} steps")
    ax.legend(fontsize=7)
    steps = [s for s, _ in curve]
    for key in ("mae", "kl", "eliminated_mass"):
        ax2.semilogy(steps, [v[key] for _, v in curve], label=key)
    ax2.axhline(MAE_MAX, color="gray", ls=":")
    ax2.set(xlabel="step", title="calibration during training")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    lab.savefig(fig, "full_calibration")

    assert rep.entropy_mae_bits <= MAE_MAX, f"MAE {rep.entropy_mae_bits:.4f} bits > {MAE_MAX}"
    assert rep.kl_bits <= KL_MAX, f"KL {rep.kl_bits:.4f} bits > {KL_MAX}"
    assert rep.eliminated_mass <= EM_MAX, f"eliminated mass {rep.eliminated_mass:.4f} > {EM_MAX}"
    assert plateau / rep.entropy_mae_bits >= SEPARATION_MIN, f"separation {plateau / rep.entropy_mae_bits:.0f}× < {SEPARATION_MIN}"
