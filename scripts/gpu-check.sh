#!/usr/bin/env bash
# The GPU tier in one command (target: ≤ 8 minutes on one H200):
#   scripts/gpu-check.sh OUT_DIR
# 1. the fast paths' unit tests on CUDA (SDPA vs manual, on-device samplers),
# 2. benchmarks/gpu_speed.py: steps/s and MFU, today's trainer vs the fast path,
# 3. the GPU tier itself, `pytest -m full` (history, plots under OUT_DIR/results),
# 4. a summary: speed table and each claim's verdict and numbers (lab log).
# LAB_COMPILE=0 turns torch.compile off if it fails on this machine; PYTHON picks the interpreter.
# GPU_CHECK_ALLOW_CPU=1 runs the plumbing on a CPU (~1 min: unit tests, skips, summary) before a GPU session.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-.venv/bin/python}
export LAB_RESULTS_DIR="$OUT/results" HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
start=$(date +%s)
[ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA torch: see docs/performance.md')" || exit 2  # GPU_CHECK_ALLOW_CPU=1: a plumbing dry run
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== 1/3 unit tests on CUDA"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_samplers_torch.py tests/test_fast_path.py \
    -k "cuda or sdpa or bf16" >"$OUT/unit.txt" 2>&1; unit=$?
tail -n 3 "$OUT/unit.txt"

echo "== 2/3 speed (benchmarks/gpu_speed.py)"
timeout 120 "$PY" benchmarks/gpu_speed.py --out "$OUT/speed.json" --steps 1000 2>&1 | tee "$OUT/speed.txt"; speed=${PIPESTATUS[0]}

# The full claims' small models are bound by the host (Python, kernel launches), not the GPU: several
# pytest-xdist workers, one file each, share the card (GPU_CHECK_WORKERS=1 runs them one by one).
WORKERS=${GPU_CHECK_WORKERS:-3}
PAR=()
if [ "$WORKERS" -gt 1 ] && "$PY" -c "import xdist" 2>/dev/null; then PAR=(-n "$WORKERS" --dist loadfile); fi
echo "== 3/3 GPU tier: pytest -m full ${PAR[*]}"
timeout 330 "$PY" -m pytest -m full -q -p no:cacheprovider "${PAR[@]}" --lab-results "$OUT/results" claims \
    >"$OUT/full.txt" 2>&1; full=$?
tail -n 5 "$OUT/full.txt"

echo "== summary ($(( $(date +%s) - start )) s)"
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
speed = out / "speed.json"
if speed.exists():
    data = json.loads(speed.read_text())
    print(f"{data['gpu']} (torch {data['torch']})")
    for r in data["rows"]:
        print(f"  {r['model']:9s} {r['path']:7s} {r['precision']:4s} {r['steps_per_second']:8.1f} steps/s "
              f"{r['tflops']:7.1f} TFLOP/s  MFU {r['mfu']:.2%}")
hist = out / "results" / "history.jsonl"
for line in (hist.read_text().splitlines() if hist.exists() else []):
    try:
        rec = json.loads(line)
    except ValueError:
        continue
    m = rec.get("measured", {})
    keep = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    first = [k for k in ("mfu", "steps_per_second", "train_seconds") if k in keep]  # speed first
    keep = {k: keep[k] for k in first + [k for k in keep if k not in first]}
    nums = ", ".join(f"{k}={v:.4g}" for k, v in list(keep.items())[:10])
    print(f"  {rec.get('claim', rec.get('id', '?'))}: {rec.get('verdict', rec.get('outcome', '?'))}  {nums}")
PY
"$PY" -m labcore.notebook.cli log --results "$OUT/results" >"$OUT/lab-log.txt" 2>&1 && cat "$OUT/lab-log.txt"
echo "exit codes: unit=$unit speed=$speed full=$full; files in $OUT"
[ "$unit" = 0 ] && [ "$speed" = 0 ] && [ "$full" = 0 ]
