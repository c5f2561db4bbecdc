"""``lab log --diff RUN_A RUN_B``: verdict flips and measured deltas between two runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from labcore.notebook.cli import main
from labcore.notebook.history import append_record
from labcore.notebook.log import UnknownFilterError
from labcore.notebook.log_diff import diff_runs, render_diff, resolve_run, runs_in_order


def _record(run: str, time: str, claim: str, test: str, outcome: str, **measured: object) -> dict:
    return {"schema": 2, "run_id": run, "time": time, "claim": claim, "paper": "attention", "tier": "quick",
            "test": f"claims/attention/test_{claim}.py::{test}", "outcome": outcome, "measured": measured,
            "message": "AssertionError" if outcome == "failed" else ""}


RECORDS = [
    _record("20260101T090000Z-aaaa", "2026-01-01T09:00:00+00:00", "claim_a", "test_one", "failed", rel_err=0.2),
    _record("20260101T090000Z-aaaa", "2026-01-01T09:00:01+00:00", "claim_a", "test_two", "passed", rel_err=0.01),
    _record("20260101T090000Z-aaaa", "2026-01-01T09:00:02+00:00", "claim_b", "test_b", "passed", loss=1.5, d=4),
    _record("20260102T090000Z-bbbb", "2026-01-02T09:00:00+00:00", "claim_a", "test_one", "passed", rel_err=0.03),
    _record("20260102T090000Z-bbbb", "2026-01-02T09:00:01+00:00", "claim_a", "test_two", "passed", rel_err=0.01),
    _record("20260102T090000Z-bbbb", "2026-01-02T09:00:02+00:00", "claim_c", "test_c", "xfailed", ratio=1.7),
]


def test_runs_resolve_by_id_prefix_and_alias() -> None:
    assert runs_in_order(RECORDS) == ["20260101T090000Z-aaaa", "20260102T090000Z-bbbb"]
    assert resolve_run(RECORDS, "last") == "20260102T090000Z-bbbb"
    assert resolve_run(RECORDS, "previous") == "20260101T090000Z-aaaa"
    assert resolve_run(RECORDS, "20260101") == "20260101T090000Z-aaaa"
    with pytest.raises(UnknownFilterError, match="ambiguous"):
        resolve_run(RECORDS, "2026")
    with pytest.raises(UnknownFilterError, match="not in the history.*last / previous"):
        resolve_run(RECORDS, "nope")
    with pytest.raises(UnknownFilterError, match="1 run"):
        resolve_run(RECORDS[:1], "previous")


def test_diff_finds_verdict_flips_and_deltas() -> None:
    diff = diff_runs(RECORDS, "previous", "last")
    assert diff.verdicts == [("claim_a", "partly held", "held"), ("claim_b", "held", "not in run"),
                             ("claim_c", "not in run", "did not hold")]
    flips = {t.test.split("::")[1]: (t.outcome_a, t.outcome_b) for t in diff.tests if t.flipped}
    assert flips == {"test_one": ("failed", "passed"), "test_b": ("passed", "not in run"),
                     "test_c": ("not in run", "xfailed")}
    one = next(t for t in diff.tests if t.test.endswith("test_one"))
    assert one.deltas == [("rel_err", 0.2, 0.03)]
    text = render_diff(diff)
    assert "partly held  held          FLIP" in text and text.count("FLIP") == 1  # absent is not a flip
    assert "-0.17 (-85.0%)" in text
    assert "test_two" not in text.split("measured")[1]  # an unchanged value is not listed...
    assert "loss" not in text  # ...nor a value only one run recorded...
    assert "test_two" in render_diff(diff, all_values=True).split("measured")[1]  # ...unless asked


def test_diff_can_be_limited_to_a_claim() -> None:
    diff = diff_runs(RECORDS, "previous", "last", claim="claim_a")
    assert [v[0] for v in diff.verdicts] == ["claim_a"]


def test_lab_log_diff_command(isolated_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for record in RECORDS:
        append_record(isolated_results / "history.jsonl", record)
    assert main(["log", "--all"]) == 0
    assert "20260102T090000Z-bbbb" in capsys.readouterr().out  # --all shows the run ids
    assert main(["log", "--diff", "20260101T090000Z-aaaa", "last"]) == 0
    out = capsys.readouterr().out
    assert "run a: 20260101T090000Z-aaaa (2026-01-01 09:00)" in out and "FLIP" in out
    assert main(["log", "--diff", "previous", "last", "--claim", "claim_c"]) == 0
    assert "claim_a" not in capsys.readouterr().out
    assert main(["log", "--diff", "nope", "last"]) == 2
    assert "run 'nope' is not in the history" in capsys.readouterr().err
