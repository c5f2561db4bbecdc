"""Structured predictions, the prediction ledger and ``lab scoreboard``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from labcore.notebook.claims import ClaimError
from labcore.notebook.cli import main
from labcore.notebook.history import append_record, read_history
from labcore.notebook.predictions import Prediction, describe, lookup, score
from labcore.notebook.scoreboard import (
    EXPORT_PATH, LEDGER_NAME, brier, build_board, export_ledger, note_first_result, read_ledger, reliability,
)

from test_claims import make_claim


def test_a_prediction_validates_with_one_line_errors() -> None:
    assert Prediction("rel_err", "in", [0, 0.1], confidence=0.5).value == (0.0, 0.1)
    for args, message in [
        (("", "<=", 1.0, 0.5), "measured_key"),
        (("x", "==", 1.0, 0.5), "comparator '==' is unknown"),
        (("x", "<=", "small", 0.5), "must be a finite number"),
        (("x", "in", (2, 1), 0.5), "lo <= hi"),
        (("x", "<=", 1.0, 1.5), "confidence 1.5 must be a probability"),
    ]:
        with pytest.raises(ClaimError, match=message) as error:
            Prediction(*args)
        assert "\n" not in str(error.value)


def test_a_claim_carries_predictions_status_and_answers_into_its_record() -> None:
    claim = make_claim(predictions=[Prediction("rel_err", "<=", 0.05, confidence=0.8)], answers=["Q3"])
    data = claim.to_dict()
    assert data["predictions"] == [{"measured_key": "rel_err", "comparator": "<=", "value": 0.05, "confidence": 0.8}]
    assert data["status"] == "exploratory" and data["answers"] == ["Q3"]
    json.dumps(data)  # the history stores it as JSON
    for overrides, message in [
        ({"predictions": Prediction("a", "<", 1, confidence=0.5)}, "must be a tuple of Prediction"),
        ({"predictions": ("a < 1",)}, "predictions holds a str"),
        ({"status": "final"}, "status 'final' is unknown"),
        ({"status": "confirmed"}, "needs a calibration table over fresh seeds"),
        ({"answers": ("7",)}, "question ids look like 'Q7'"),
    ]:
        with pytest.raises(ClaimError, match=message):
            make_claim(**overrides)


def test_scoring_hit_miss_unscorable_and_nested_keys() -> None:
    le = Prediction("err", "<=", 0.05, confidence=0.9).to_dict()
    assert score(le, [{"err": 0.01}, {"err": 0.04}]) == ("hit", [0.01, 0.04])
    assert score(le, [{"err": 0.01}, {"err": 0.2}])[0] == "miss"  # every test must satisfy it
    assert score(le, [{"loss": 1.0}]) == ("unscorable", [])
    assert score(le, [{"err": "nan"}])[0] == "miss"  # a diverged run misses
    assert lookup({"per_dk": [1.0, {"x": 2}]}, "per_dk[1].x") == 2.0 and lookup({"a": "text"}, "a") is None
    inside = Prediction("acc", "in", (0.9, 1.0), confidence=0.6).to_dict()
    assert score(inside, [{"acc": 0.95}])[0] == "hit" and describe(inside) == "acc in [0.9, 1] (60%)"


def _record(claim: str, outcome: str, time: str, measured: dict[str, Any], predictions: list[Prediction],
            run: str, prediction: str = "text", message: str = "") -> dict[str, Any]:
    return {"time": time, "claim": claim, "paper": "attention", "prediction": prediction, "tier": "quick",
            "test": f"claims/attention/test_{claim}.py::test", "outcome": outcome, "message": message,
            "measured": measured, "run_id": run, "predictions": [p.to_dict() for p in predictions]}


FIRST = [Prediction("err", "<=", 0.05, confidence=0.9), Prediction("steps", "<", 100, confidence=0.6)]
EDITED = [Prediction("err", "<=", 0.5, confidence=0.9), Prediction("loss", ">", 0.0, confidence=0.99)]


def _history(folder: Path) -> Path:
    log = folder / "history.jsonl"
    append_record(log, _record("c_edit", "failed", "2026-01-01T10:00:00+00:00", {}, FIRST, "r0",
                               message="not yet run: claim 'c_edit' has no experiment yet"))  # no result: no ledger
    append_record(log, _record("c_edit", "failed", "2026-01-02T10:00:00+00:00", {"err": 0.2, "steps": 50}, FIRST, "r1"))
    append_record(log, _record("c_edit", "passed", "2026-01-03T10:00:00+00:00", {"err": 0.2, "steps": 50, "loss": 1.0},
                               EDITED, "r2", prediction="edited text"))
    append_record(log, _record("c_ok", "passed", "2026-01-02T10:00:00+00:00", {"acc": 0.97},
                               [Prediction("acc", ">=", 0.9, confidence=0.7)], "r1"))
    return log


def test_ledger_keeps_the_first_result_only(tmp_path: Path) -> None:
    ledger = tmp_path / LEDGER_NAME
    records = read_history(_history(tmp_path)).records
    written = [note_first_result(ledger, record) for record in records]
    assert written == [False, True, False, True]  # not-yet-run: no result; later runs: already there
    entries = read_ledger(ledger)
    assert [e["claim"] for e in entries] == ["c_edit", "c_ok"]
    assert entries[0]["predictions"] == [p.to_dict() for p in FIRST] and entries[0]["time"].startswith("2026-01-02")


def test_scoreboard_scores_the_first_version_and_flags_edits(tmp_path: Path) -> None:
    board = build_board(read_history(_history(tmp_path)).records)
    by_key = {(s.claim, s.prediction["measured_key"]): s for s in board.scored}
    assert by_key[("c_edit", "err")].outcome == "miss"          # scored as first written (≤ 0.05), not ≤ 0.5
    assert by_key[("c_edit", "steps")].outcome == "hit" and by_key[("c_ok", "acc")].outcome == "hit"
    assert by_key[("c_edit", "loss")].counted is False          # added after the result: shown, not counted
    changes = " | ".join(change for _, change, _ in board.flags)
    assert "edited after the result: err <= 0.05 (90%) -> err <= 0.5 (90%)" in changes
    assert "removed after the result: steps < 100" in changes and "added after the result: loss > 0" in changes
    assert "prediction text edited" in changes
    assert brier(board.scored) == pytest.approx((0.9 ** 2 + 0.4 ** 2 + 0.3 ** 2) / 3)
    assert [(row[0], row[1]) for row in reliability(board.scored)] == [("60%–70%)", 1), ("70%–80%)", 1), ("90%–100%]", 1)]


def test_lab_scoreboard_and_predictions_export(
    isolated_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for record in read_history(_history(isolated_results)).records:
        note_first_result(isolated_results / LEDGER_NAME, record)
    project = tmp_path / "project"
    (project / "claims").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    monkeypatch.chdir(project)
    assert main(["scoreboard"]) == 0
    out = capsys.readouterr().out
    assert "Brier score: 0.353" in out and "Biggest surprises" in out and "c_edit: err <= 0.05 (90%), measured 0.2" in out
    assert "edited after the result" in out and "post-hoc, not counted" in out
    assert main(["predictions", "--export"]) == 0
    exported = read_ledger(project / EXPORT_PATH)
    assert [e["claim"] for e in exported] == ["c_edit", "c_ok"]
    path, added = export_ledger(project, isolated_results / LEDGER_NAME)
    assert added == 0 and path.read_text() == (project / EXPORT_PATH).read_text()  # idempotent
    assert main(["predictions"]) == 0 and "c_ok  [2026-01-02T10:00]  acc >= 0.9 (70%)" in capsys.readouterr().out


def test_a_run_writes_the_ledger_beside_the_history(tmp_path: Path, isolated_results: Path) -> None:
    project = tmp_path / "p"
    (project / "claims" / "attention").mkdir(parents=True)
    (project / "conftest.py").write_text('pytest_plugins = ("labcore.notebook.plugin",)\n')
    (project / "claims" / "attention" / "test_pred_claim.py").write_text(textwrap.dedent("""\
        from labcore.notebook.claims import Claim, Source
        from labcore.notebook.predictions import Prediction
        CLAIM = Claim(
            id="pred_claim", paper="attention", statement="s",
            source=Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3"),
            paper_value="v", prediction="p", metric="m", tolerance="t", tolerance_why="w", tier="quick",
            predictions=(Prediction("x", "<=", 0.5, confidence=0.8),),
        )
        def test_x(lab):
            lab.record(x=0.25)
        """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "claims"], cwd=project,
                          capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    record = read_history(isolated_results / "history.jsonl").records[0]
    assert record["predictions"] == [{"measured_key": "x", "comparator": "<=", "value": 0.5, "confidence": 0.8}]
    assert record["status"] == "exploratory"
    assert [e["claim"] for e in read_ledger(isolated_results / LEDGER_NAME)] == ["pred_claim"]
    assert build_board([record]).scored[0].outcome == "hit"
