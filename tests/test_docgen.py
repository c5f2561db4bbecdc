"""Generated number blocks (``lab docs``): stale blocks fail the check, regenerated ones pass,
and the real docs/ folder is up to date with fixtures/calibration/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labcore.notebook.cli import main
from labcore.notebook.docgen import (
    DocgenError, fmt_stats, headline_keys, newer_history, parse_args, regenerate, update_docs,
)
from labcore.notebook.history import append_record
from labcore.notebook.papers import project_root

ROOT = project_root()


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "median": ordered[len(values) // 2], "min": ordered[0], "max": ordered[-1]}


def _table(date: str = "2026-11-30T00:00:00+00:00", mae: list[float] | None = None) -> dict:
    return {
        "claim": "toy_claim", "paper": "toy", "date": date, "seeds": [0, 1, 2, 3, 4],
        "tests": {
            "claims/toy/test_toy.py::test_small": {
                "params": {}, "runs": 5, "outcomes": {"passed": 4, "failed": 1}, "pass_rate": 0.8,
                "measured": {"mae_bits": _stats(mae or [0.02, 0.03, 0.025, 0.021, 0.04]),
                             "kl_bits": _stats([0.005] * 5), "steps": _stats([1000] * 5), "extra": _stats([1.0] * 5)},
            },
            "claims/toy/test_toy.py::test_xfail": {
                "params": {}, "runs": 5, "outcomes": {"xfailed": 5}, "pass_rate": 1.0,
                "measured": {"ratio": _stats([1.6, 1.7, 2.1, 1.8, 1.9])},
            },
        },
    }


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "fixtures" / "calibration").mkdir(parents=True)
    (tmp_path / "fixtures" / "calibration" / "toy_claim.json").write_text(json.dumps(_table()))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\nprose stays\n\n<!-- lab:numbers claims=toy_claim,missing_claim -->\nold 0.5 bits\n"
        "<!-- /lab:numbers -->\n\nmore prose\n"
    )
    return tmp_path


def test_block_is_regenerated_from_the_table(repo: Path) -> None:
    page = repo / "docs" / "page.md"
    assert update_docs([repo / "docs"], repo, check=True).stale == [page]   # stale: fails the check
    assert "old 0.5 bits" in page.read_text()                               # --check writes nothing
    assert update_docs([repo / "docs"], repo).written == [page]
    text = page.read_text()
    assert update_docs([repo / "docs"], repo, check=True).stale == []       # regenerated: passes
    assert "old 0.5 bits" not in text and text.startswith("# Page\n\nprose stays") and text.endswith("more prose\n")
    assert "mae_bits 0.025 [0.02–0.04]; kl_bits 0.005; steps 1000" in text  # first 3 keys by default
    assert "4/5 passed, 1/5 failed (80%)" in text and "5/5 xfailed (100%; strict xfail" in text
    assert "seeds 0–4, table of 2026-11-30" in text and "(../fixtures/calibration/toy_claim.json)" in text
    assert "`missing_claim`** — no calibration table yet" in text


def test_a_changed_table_makes_the_page_stale(repo: Path) -> None:
    update_docs([repo / "docs"], repo)
    table = repo / "fixtures" / "calibration" / "toy_claim.json"
    table.write_text(json.dumps(_table(mae=[0.01] * 5)))
    assert update_docs([repo / "docs"], repo, check=True).stale == [repo / "docs" / "page.md"]


def test_a_fresh_seed_table_adds_its_line(repo: Path) -> None:
    fresh = {**_table(date="2026-12-04T00:00:00+00:00"), "seeds": [100, 101, 102, 103, 104]}
    (repo / "fixtures" / "calibration" / "toy_claim.fresh.json").write_text(json.dumps(fresh))
    update_docs([repo / "docs"], repo)
    text = (repo / "docs" / "page.md").read_text()
    assert "Fresh seeds (never used to choose a bound): seeds 100–104, table of 2026-12-04" in text
    assert "(../fixtures/calibration/toy_claim.fresh.json)) — 1/2 tests held on every seed: `test_small` 4/5 passed" in text


def test_keys_hint_and_argument_errors() -> None:
    assert parse_args(" claims=a,b keys=x,y ").keys == ("x", "y")
    assert headline_keys({"a": 1, "x": 2, "y": 3, "z": 4}, ("y", "q")) == ["y"]
    assert headline_keys({"a": 1, "b": 2, "c": 3, "d": 4}, ("q",)) == ["a", "b", "c"]
    assert headline_keys({"s[0]": 1, "s[1]": 2, "c": 3}, ()) == ["c"]
    assert headline_keys({"s[0]": 1, "s[1]": 2}, ()) == ["s[0]", "s[1]"]
    assert fmt_stats({"median": 0.123456, "min": 0.1, "max": 0.2}) == "0.123 [0.1–0.2]"
    for bad in ("", "keys=x", "claim=a", "claims=a bogus"):
        with pytest.raises(DocgenError):
            parse_args(bad)
    with pytest.raises(DocgenError):
        regenerate("<!-- lab:numbers claims=a nope=1 --><!-- /lab:numbers -->", Path("x.md"), Path("."))


def test_newer_history_is_reported(repo: Path) -> None:
    records = [{"claim": "toy_claim", "time": "2026-12-01T00:00:00+00:00"},
               {"claim": "other", "time": "2027-01-01T00:00:00+00:00"}]
    notes = newer_history(["toy_claim", "missing_claim"], records, repo)
    assert len(notes) == 1 and notes[0].startswith("toy_claim: the history has a newer record (2026-12-01")
    assert newer_history(["toy_claim"], records[:0], repo) == []


def test_lab_docs_command_check_and_write(repo: Path, capsys: pytest.CaptureFixture[str],
                                          isolated_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labcore.notebook.learning_cli.project_root", lambda: repo)
    page = repo / "docs" / "page.md"
    append_record(isolated_results / "history.jsonl", {"claim": "toy_claim", "time": "2027-01-01T00:00:00+00:00"})
    assert main(["docs", "--check", str(page)]) == 1
    assert f"stale: {page}" in capsys.readouterr().out
    assert main(["docs", str(page)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {page}" in out and "note: toy_claim: the history has a newer record" in out
    assert main(["docs", "--check", str(page)]) == 0


def test_the_real_docs_are_up_to_date() -> None:
    """A page whose generated numbers differ from fixtures/calibration/ fails here: run `lab docs`."""
    result = update_docs([ROOT / "docs"], ROOT, check=True)
    assert result.claims, "no lab:numbers block found under docs/"
    assert not result.stale, f"stale generated blocks (run `lab docs`): {[str(p) for p in result.stale]}"
    shown = set(result.claims)
    missing = [c for c in shown if not (ROOT / "fixtures" / "calibration" / f"{c}.json").exists()]
    assert not missing, f"blocks name claims without a calibration table: {missing}"
