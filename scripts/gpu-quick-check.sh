#!/usr/bin/env bash
# The CUDA quick tier, twice (issue 12 item 5: >= 2x the 2-core CPU, bitwise-reproducible per seed):
#   scripts/gpu-quick-check.sh OUT_DIR [MARK]
# Runs `pytest -m "quick and (MARK)"` (default: attention or bayes, the claims measured at 234 s on an
# H200 before the fast path; 159 s of claim time on the 2-core CPU in CI) on CUDA with seed 0, then
# the same again, and compares every record's measured numbers between the two runs: identical
# JSON (wall-clock numbers left out) = bitwise-reproducible. Prints both wall times; run it after scripts/gpu-check.sh.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-quick-check.sh OUT_DIR [MARK]}
MARK=${2:-attention or bayes}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
[ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA torch')" || exit 2  # =1: dry run on a CPU
for run in 1 2; do
  start=$(date +%s)
  timeout 260 "$PY" -m pytest -q -p no:cacheprovider -m "quick and ($MARK)" --lab-results "$OUT/run$run" claims \
      >"$OUT/run$run.txt" 2>&1; rc=$?
  echo "run $run: exit $rc, $(( $(date +%s) - start )) s wall; $(tail -n 1 "$OUT/run$run.txt")"
done
"$PY" -m labcore.notebook.cli log --durations --results "$OUT/run1" | head -n 12
"$PY" - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def measured(run):
    path = out / run / "history.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    clock = ("second", "per_s", "time", "duration", "memory")  # wall-clock numbers differ by nature
    keep = lambda m: {k: v for k, v in (m or {}).items() if not any(c in k for c in clock)}  # noqa: E731
    return {(r["claim"], r["test"]): json.dumps(keep(r.get("measured")), sort_keys=True) for r in rows}
a, b = measured("run1"), measured("run2")
same = [k for k in a if k in b and a[k] == b[k]]
differ = [k for k in a if k in b and a[k] != b[k]]
print(f"bitwise-reproducible: {len(same)} of {len(set(a) & set(b))} records identical between the two runs")
for claim, test in differ:
    print(f"  differs: {claim} {test}")
PY
