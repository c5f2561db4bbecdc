"""A small history with everything the HTML report shows (plots, many measured values, a long
xfail explanation, before/after attention snapshots), shared by test_html_report and
test_browser. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

import math
from pathlib import Path

from labcore.notebook.history import append_record, read_history
from labcore.notebook.recorder import LabRecorder
from labcore.notebook.report import write_report

LONG_EXPLANATION = ("ratio ≈ 4.5 instead of ≤ 0.8: the claim does not hold at our scale. " * 8
                    + "\nSecond line: seeds 0-4 all agree.\nTHE-END-OF-THE-EXPLANATION")
TOKENS = ["k1", "v3", "k2", "v0", "k4", "v2", "k3"]


def causal_pattern(layers: int, heads: int, T: int, sharpness: float) -> list:
    """A made-up causal attention pattern (rows sum to 1) that differs per layer and head."""
    out = []
    for l in range(layers):
        per_head = []
        for h in range(heads):
            rows = []
            for q in range(T):
                scores = [math.exp(sharpness * math.cos(q * (h + 1) + k * (l + 2))) if k <= q else 0.0 for k in range(T)]
                total = sum(scores)
                rows.append([s / total for s in scores])
            per_head.append(rows)
        out.append(per_head)
    return out


def _record(claim: str, paper: str, test: str, outcome: str, **extra: object) -> dict:
    return {"claim": claim, "paper": paper, "test": f"claims/{paper}/test_{claim}.py::{test}", "outcome": outcome,
            "message": "", "time": "2026-01-02T09:00:00+00:00", "run_id": "r1", "measured": {}, "plots": [],
            "statement": f"statement of {claim}", "paper_value": f"paper value of {claim}",
            "tolerance": f"tolerance of {claim}", "prediction": "p", "metric": "m", **extra}


def write_demo_report(results: Path, out: Path) -> Path:
    """Write a demo history under ``results`` and its HTML report under ``out``; return the file."""
    import matplotlib.pyplot as plt

    lab = LabRecorder(None, 0, results, Path("claims/bayes/test_demo.py"))
    lab.save_attention(TOKENS, causal_pattern(2, 3, len(TOKENS), 0.2), "before")
    lab.save_attention(TOKENS, causal_pattern(2, 3, len(TOKENS), 3.0), "after")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [2, 0, 1])
    lab.savefig(fig, "curve")
    measured = {f"value_{i:02d}": 0.5 + i for i in range(12)}
    log = results / "history.jsonl"
    append_record(log, _record("demo_claim", "bayes", "test_attention", "passed", measured=measured,
                               plots=lab.plots, attention=lab.attention))
    append_record(log, _record("demo_xfail", "attention", "test_ratio", "xfailed", measured={"ratio": 4.5},
                               message=LONG_EXPLANATION[:297] + "...", explanation=LONG_EXPLANATION))
    (path,) = write_report(read_history(log), out, results_root=results, report_format="html")
    return path
