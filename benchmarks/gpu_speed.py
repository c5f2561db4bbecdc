"""GPU speed of the full tier's two training loops: today's trainer vs the fast path.

    python benchmarks/gpu_speed.py --out speed.json [--quick]

For the bijection (V=20, 6L/6H/d192, batch 256) and the HMM (9L/8H/d256, batch 64) models of
claims/bayes/test_full_*.py: steps/s through the default loop (CPU-sampled batches, as before) and
through the fast path (SDPA, on-device batches, sync_every, bf16 / tf32, compile) and the same with
CUDA graphs (compile mode "reduce-overhead"; a mode that fails is reported and skipped), achieved
FLOP/s and MFU = achieved / peak (dense tensor-core peak of the GPU, for the
precision used, labcore.notebook.hardware.GPU_PEAKS). Prints one line per run and writes them as JSON. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labcore import GPT, GPTConfig  # noqa: E402
from labcore.glassbox.state_head import StateHeadGPT, hmm_state_loss  # noqa: E402
from labcore.tasks import bijection, hmm  # noqa: E402
from labcore.notebook.hardware import peak_flops  # noqa: E402
from labcore.training.flops import train_flops_per_step  # noqa: E402
from labcore.training.trainer import TrainConfig, gpu_fast_options, next_token_loss, seeded_model, train  # noqa: E402

def setups():
    btask = bijection.BijectionTask(V=20, L=19)
    bcfg = GPTConfig(vocab_size=btask.vocab_size, n_ctx=btask.seq_len, d_model=192, n_layers=6, n_heads=6,
                     norm="rmsnorm")
    htask = hmm.HMMTask(S=5, O=5, K=20)
    hcfg = GPTConfig(vocab_size=htask.vocab_size, n_ctx=htask.seq_len(50), d_model=256, n_layers=9, n_heads=8,
                     d_mlp=1024)
    return [
        ("bijection", lambda: GPT(bcfg), 256, btask.seq_len, next_token_loss, "bf16",
         bijection.batch_fn(btask, 256),
         bijection.device_batches(lambda g: btask.sample_torch(256, g, "cuda"), "cuda")),
        ("hmm", lambda: StateHeadGPT(hcfg, 5), 64, htask.seq_len(), hmm_state_loss, "tf32",
         hmm.batch_fn(htask, 64),
         bijection.device_batches(lambda g: htask.sample_torch(64, g, "cuda"), "cuda", as_dict=True)),
    ]


def measure(name, factory, batch, seq, loss_fn, precision, cpu_batches, gpu_batches, steps):
    rows = []
    base = dict(lr=3e-4, weight_decay=0.1, track_update_ratio=False, device="cuda")
    fast_cfg = gpu_fast_options(precision)  # compile unless LAB_COMPILE=0
    runs = [("default", cpu_batches, {}, max(steps // 10, 50)), ("fast", gpu_batches, fast_cfg, steps)]
    if fast_cfg["compile"]:  # the same with CUDA graphs (torch.compile mode="reduce-overhead"): launch cost removed
        runs.append(("graphs", gpu_batches, {**fast_cfg, "compile": "reduce-overhead"}, steps))
    for label, batches, fast, n in runs:
        model = seeded_model(factory, 0).cuda()
        try:
            if fast:  # warm-up: compile, autotune and graph capture outside the timed run
                train(model, batches, TrainConfig(steps=30, **base, **fast), loss_fn=loss_fn)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = train(model, batches, TrainConfig(steps=n, **base, **fast), loss_fn=loss_fn)
            torch.cuda.synchronize()
        except Exception as err:  # a compile mode this torch/GPU cannot run: report it, keep measuring
            print(f"{name:9s} {label:7s} failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}", flush=True)
            continue
        sps = n / (time.perf_counter() - t0)
        achieved = train_flops_per_step(model, batch, seq) * sps
        prec = precision if fast else "fp32"
        top = peak_flops(torch.cuda.get_device_name(), prec)
        rows.append(dict(model=name, path=label, precision=prec, steps=n, steps_per_second=sps,
                         tflops=achieved / 1e12, mfu=achieved / top, final_loss=float(res.metrics["loss"][-1])))
        print(f"{name:9s} {label:7s} {prec:4s} {sps:8.1f} steps/s  {achieved / 1e12:7.1f} TFLOP/s  "
              f"MFU {achieved / top:6.2%}  loss {rows[-1]['final_loss']:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_speed.py needs CUDA")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  compile={gpu_fast_options('bf16')['compile']}",
          flush=True)
    rows = [r for s in setups() for r in measure(*s, steps=args.steps)]
    with open(args.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
