"""Honest verdicts: a claim whose tests include a strict xfail never reads "passed" or "held"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labcore.notebook.history import HistoryRead
from labcore.notebook.log import (
    VERDICT_LEGEND, claim_verdict, records_verdict, render_log, render_run_summary, outcome_of,
)
from labcore.notebook.report import build_report_blocks, render_html, render_markdown


def record(test: str, outcome: str, message: str = "", claim: str = "bayes_key_orthogonality", **extra: Any) -> dict:
    return {"claim": claim, "paper": "bayes", "test": f"claims/bayes/test_x.py::{test}", "outcome": outcome,
            "message": message, "time": "2026-01-01T10:00:00+00:00", "run_id": "r1", "measured": {}, **extra}


@pytest.mark.parametrize(
    ("outcomes", "verdict"),
    [
        (["passed", "passed"], "held"),
        (["passed", "xpassed", "skipped"], "held"),
        (["passed", "xfailed"], "partly held"),
        (["passed", "failed"], "partly held"),
        (["xfailed"], "did not hold"),
        (["failed", "xfailed", "skipped"], "did not hold"),
        (["not yet run"], "not yet run"),
        (["passed", "not yet run"], "not yet run"),
        ([], "not yet run"),
        (["skipped", "skipped"], "skipped"),
        (["passed", "error"], "error"),
    ],
)
def test_claim_verdicts(outcomes: list[str], verdict: str) -> None:
    assert claim_verdict(outcomes) == verdict


def test_a_strict_xfail_is_never_passed_or_held() -> None:
    xfail = record("test_ratio", "xfailed", "ratio ≈ 4.5 instead of ≤ 0.8 (does not hold at our scale)")
    assert records_verdict([record("test_control", "passed"), xfail]) == "partly held"
    assert records_verdict([xfail]) == "did not hold"
    history = HistoryRead([record("test_control", "passed"), xfail], [])
    row = next(line for line in render_log(history).splitlines() if line.startswith("bayes_key_orthogonality"))
    assert "partly held" in row and "1 xfailed, 1 passed" in row
    assert " passed " not in row.replace("1 passed", "")
    blocks = build_report_blocks(history, results_root=Path("."), out_dir=Path("."))
    markdown = render_markdown(blocks)
    assert "### bayes_key_orthogonality — partly held" in markdown
    assert "— passed" not in markdown and "— held" not in markdown
    assert "<span class='verdict' style='color:#b35900'>partly held</span>" in render_html(blocks)


def test_not_yet_run_is_told_apart_from_a_failure() -> None:
    pending = record("test_x", "failed", "not yet run: claim 'x' has no experiment yet")
    assert outcome_of(pending) == "not yet run"
    assert outcome_of(record("test_x", "failed", "AssertionError: 2 > 1")) == "failed"
    assert records_verdict([pending]) == "not yet run"


def test_log_has_a_legend_and_lists_claims_never_run() -> None:
    from labcore.notebook.claims import DeclaredClaim

    history = HistoryRead([record("test_a", "passed", claim="ran_claim")], [])
    text = render_log(history, declared=[DeclaredClaim("written_claim", "bayes", Path("claims/bayes/test_w.py"))])
    assert VERDICT_LEGEND in text
    assert any(line.split()[:4] == ["written_claim", "bayes", "not", "yet"] for line in text.splitlines())


def test_run_summary_lists_claim_paper_and_verdict() -> None:
    records = [record("test_a", "passed", claim="claim_a"), record("test_b", "xfailed", claim="claim_b"),
               record("test_c", "skipped", claim="claim_c")]
    text = render_run_summary(records)
    lines = text.splitlines()
    assert lines[0].split() == ["claim", "paper", "verdict"]
    assert "claim_a  bayes  held" in text and "claim_b  bayes  did not hold" in text
    assert "3 claims: 1 held, 1 did not hold, 1 skipped" in text
    assert render_run_summary([]) == "lab run: no claim records were written by this run."
