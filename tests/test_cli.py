"""The ``lab`` command: help, new, log, report, run and calibrate."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from labcore.notebook.calibrate import CalibrationError, calibrate, calibration_tables, numeric_stats, render_pass_rates
from labcore.notebook.claims import load_claim_from_module
from labcore.notebook.cli import main
from labcore.notebook.history import append_record, read_history

# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["new"], ["log"], ["report"], ["calibrate"], ["scoreboard"],
                                     ["predictions"], ["ask"], ["answer"], ["questions"]])
def test_every_command_has_help_with_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lab" in out
    assert ("start here:" if not command else "examples:") in out


# --- lab new -----------------------------------------------------------------------------------


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"generated_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_new_writes_a_valid_claim_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = tmp_path / "claims"
    rc = main(["new", "lora/rank_one_enough", "--claims-dir", str(claims),
               "--statement", 'a "very low" rank suffices', "--prediction", "rank 1 ≈ rank 8", "--tier", "full"])
    assert rc == 0
    path = claims / "lora" / "test_rank_one_enough.py"
    assert f"wrote {path}" in capsys.readouterr().out
    claim = load_claim_from_module(_import(path))
    assert (claim.id, claim.paper, claim.tier) == ("rank_one_enough", "lora", "full")
    assert claim.statement == 'a "very low" rank suffices'
    assert claim.prediction == "rank 1 ≈ rank 8"
    assert claim.source.arxiv == "2106.09685"
    assert "TODO" not in path.read_text()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt5/some_claim", "paper 'gpt5' is new (known: attention, bayes, lora, qlora, forgetting"),
        ("quick/some_claim", "paper 'quick' cannot be a marker"),
        ("lora/some_claim --arxiv 2301.00001", "paper 'lora' is arXiv 2106.09685, not 2301.00001"),
        ("attention/1bad", "id must be a Python identifier"),
        ("attention", "'attention' is not <paper>/<claim_id>"),
        ("attention/lora", "id is already a marker"),
    ],
)
def test_new_refuses_bad_names(spec: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", *spec.split(), "--claims-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab new: error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_new_never_overwrites_or_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = ["--claims-dir", str(tmp_path)]
    assert main(["new", "attention/qk_variance", *claims]) == 0
    assert main(["new", "attention/qk_variance", *claims]) == 2
    assert "already used by" in capsys.readouterr().err
    assert main(["new", "bayes/qk_variance", *claims]) == 2  # same id, other paper
    assert "claim id 'qk_variance' is already used by" in capsys.readouterr().err


# --- lab log / lab report ----------------------------------------------------------------------


def make_record(claim: str, test: str, outcome: str, time: str, run_id: str, **extra: Any) -> dict[str, Any]:
    paper = extra.pop("paper", "attention")
    return {
        "time": time, "claim": claim, "paper": paper, "statement": f"statement of {claim}",
        "source": {"title": "Attention Is All You Need", "arxiv": "1706.03762", "version": "v7", "where": "§3"},
        "paper_value": "d_k", "prediction": f"prediction of {claim}", "metric": "rel. error",
        "tolerance": "≤ 0.05", "tolerance_why": f"why {claim}", "tier": "quick", "tags": [],
        "test": f"claims/{paper}/test_{claim}.py::{test}", "params": {}, "outcome": outcome, "message": "",
        "measured": {}, "seed": 0, "run_id": run_id, "plots": [], **extra,
    }


@pytest.fixture
def history(isolated_results: Path) -> Path:
    """Two runs of claim_a (failed, then passed), one skipped run of a LoRA claim, a torn line."""
    log = isolated_results / "history.jsonl"
    (isolated_results / "claim_a").mkdir()
    (isolated_results / "claim_a" / "curve.png").write_bytes(b"\x89PNG")
    append_record(log, make_record("claim_a", "test_x[4]", "failed", "2026-01-01T10:00:00+00:00", "r1",
                                   measured={"rel_err": 0.2}, message="AssertionError: 0.2 > 0.05"))
    append_record(log, make_record("claim_a", "test_x[64]", "passed", "2026-01-01T10:00:01+00:00", "r1",
                                   measured={"rel_err": 0.01}))
    with open(log, "a") as handle:
        handle.write('{"schema": 2, "claim": "cla')  # killed mid-write
    append_record(log, make_record("claim_a", "test_x[4]", "passed", "2026-01-02T09:00:00+00:00", "r2",
                                   measured={"rel_err": 0.03}, plots=["claim_a/curve.png"]))
    append_record(log, make_record("lora_claim", "test_y", "skipped", "2026-01-02T09:00:01+00:00", "r2",
                                   paper="lora", message="needs a CUDA GPU"))
    return log


def test_log_shows_the_latest_verdict_per_claim(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["claim", "paper", "verdict", "status", "tests", "last", "run", "measured"]
    claim_a = next(line for line in lines if line.startswith("claim_a"))
    assert "passed" in claim_a and "2 passed" in claim_a and "2026-01-02 09:00" in claim_a
    assert "rel_err=0.01..0.03" in claim_a
    assert next(line for line in lines if line.startswith("lora_claim")).split()[2] == "skipped"
    assert "history.jsonl line 3 is truncated or malformed (skipped)" in out


def test_log_filters_and_modes(history: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["log", "--paper", "lora"])
    out = capsys.readouterr().out
    assert "lora_claim" in out and "claim_a" not in out

    main(["log", "--claim", "claim_a", "--all"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("2026-")]
    assert len(rows) == 3
    assert "AssertionError: 0.2 > 0.05" not in rows[0] and "rel_err=0.2" in rows[0]

    main(["log", "--changes"])
    out = capsys.readouterr().out
    assert "claim_a" in out and "partly held -> held" in out and "r2" in out
    assert "lora_claim" not in out  # a skipped run is not a verdict


def test_log_rejects_unknown_claims_and_markers_with_a_suggestion(
    history: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["log", "--claim", "claim_b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab log: error: claim 'claim_b' is unknown") and "did you mean 'claim_a'?" in err
    assert main(["log", "--paper", "lorra"]) == 2
    assert "marker 'lorra' is unknown; did you mean 'lora'" in capsys.readouterr().err
    assert main(["log", "--claim", "zzzzzz"]) == 2
    assert "lab log lists the claims" in capsys.readouterr().err


def test_log_on_an_empty_history_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log"]) == 0
    assert "No records in history.jsonl yet: run `lab run`" in capsys.readouterr().out


def test_report_writes_markdown_with_plots_and_history(history: Path, isolated_results: Path) -> None:
    assert main(["report"]) == 0
    text = (isolated_results / "report.md").read_text()
    assert "## Attention Is All You Need (attention, arXiv 1706.03762)" in text
    assert "## LoRA: Low-Rank Adaptation of Large Language Models (lora, arXiv 2106.09685)" in text
    assert text.index("claim_a") < text.index("lora_claim")
    assert "### claim_a — held" in text
    assert "> statement of claim_a" in text
    assert "- **Prediction:** prediction of claim_a" in text
    assert "- **Why this tolerance:** why claim_a" in text
    assert "Verdict history: 2026-01-01 10:00 partly held · 2026-01-02 09:00 held" in text
    assert "![curve](claim_a/curve.png)" in text
    assert "history.jsonl line 3 is truncated or malformed (skipped)" in text


def test_report_elsewhere_links_plots_relatively_in_markdown_and_embeds_them_in_html(
    history: Path, isolated_results: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    assert main(["report", "--out", str(out), "--format", "both"]) == 0
    html = (out / "report.html").read_text()
    relative = Path(__import__("os").path.relpath(isolated_results / "claim_a" / "curve.png", out)).as_posix()
    assert f"![curve]({relative})" in (out / "report.md").read_text()
    assert "src='data:image/png;base64,iVBORw==" in html and relative not in html  # one self-contained file
    assert "<h3>claim_a — <span class='verdict' style='color:#1a7f37'>held</span></h3>" in html


# --- lab run -----------------------------------------------------------------------------------

CLAIM_FILE = """\
import pytest
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id={claim_id!r}, paper="attention", statement="s",
    source=Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3"),
    paper_value="v", prediction="p", metric="m", tolerance="t", tolerance_why="w", tier="quick",
)
"""


def make_project(root: Path, claim_id: str, body: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "conftest.py").write_text('pytest_plugins = ("labcore.notebook.plugin",)\n')
    path = root / "claims" / "attention" / f"test_{claim_id}.py"
    path.parent.mkdir(parents=True)
    path.write_text(CLAIM_FILE.format(claim_id=claim_id) + textwrap.dedent(body))
    return root


def test_run_runs_pytest_then_writes_the_report(
    tmp_path: Path, isolated_results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(make_project(tmp_path, "run_claim", "def test_ok(lab):\n    lab.record(x=1.0)\n"))
    assert main(["run", "-q", "-p", "no:randomly", "claims"]) == 0
    out = capsys.readouterr().out
    assert "lab run: report written to" in out
    assert re.search(r"^run_claim\s+attention\s+held$", out, re.MULTILINE)  # the verdict summary
    assert "1 claims: 1 held" in out and "verdicts: held = every test that ran passed" in out
    assert [r["claim"] for r in read_history(isolated_results / "history.jsonl").records] == ["run_claim"]
    assert "### run_claim — held" in (isolated_results / "report.md").read_text()

    assert main(["run", "-q", "--no-report", "-m", "full", "claims"]) == 1
    assert "pytest collected no tests (exit code 5)" in capsys.readouterr().err


# --- lab calibrate -----------------------------------------------------------------------------

CALIBRATED_BODY = """
def test_value(lab):
    lab.record(err=0.01 * (lab.seed + 1), label="text is ignored")

def test_flaky(lab):
    assert lab.seed != 1, "seed 1 is unlucky"
"""


def test_calibrate_sweeps_seeds_and_writes_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project = make_project(tmp_path / "project", "cal_claim", CALIBRATED_BODY)
    out = tmp_path / "calibration"
    printed: list[str] = []
    rc = calibrate("cal_claim", seeds=3, out_dir=out, cwd=project, command="lab calibrate cal_claim --seeds 3",
                   echo=printed.append)
    assert rc == 0
    table = json.loads((out / "cal_claim.json").read_text())
    assert table["claim"] == "cal_claim" and table["seeds"] == [0, 1, 2]
    assert table["command"] == "lab calibrate cal_claim --seeds 3"
    assert set(table["machine"]) >= {"platform", "cpu_count", "devices"}
    assert set(table["versions"]) == {"python", "torch", "transformers", "peft", "bitsandbytes"}
    value = table["tests"]["claims/attention/test_cal_claim.py::test_value"]
    assert value["pass_rate"] == 1.0 and value["runs"] == 3
    stats = value["measured"]["err"]
    assert stats["n"] == 3 and stats["median"] == pytest.approx(0.02)
    assert stats["suggested_upper"] == pytest.approx(0.04) and stats["suggested_lower"] == pytest.approx(0.01)  # median/2 < p5
    assert "label" not in value["measured"]
    flaky = table["tests"]["claims/attention/test_cal_claim.py::test_flaky"]
    assert flaky["pass_rate"] == pytest.approx(2 / 3) and flaky["outcomes"] == {"passed": 2, "failed": 1}
    text = "\n".join(printed)
    assert "FLAKY" in text and "seed 2 (3/3)" in text

    printed.clear()
    flaky_only = calibrate("cal_claim", seeds=1, start=1, out_dir=tmp_path / "unused", cwd=project,
                           flaky_only=True, echo=printed.append)
    assert flaky_only == 1
    assert not (tmp_path / "unused").exists()

    with pytest.raises(CalibrationError, match="exit code 4"):
        calibrate("cal_clam", seeds=1, out_dir=out, cwd=project, echo=printed.append)


def test_numeric_stats_and_suggested_thresholds() -> None:
    stats = numeric_stats([1.0, 2.0, 3.0, 4.0])
    assert stats["median"] == 2.5 and stats["min"] == 1.0 and stats["max"] == 4.0
    assert stats["suggested_upper"] == 5.0  # 2 × median beats p95 = 3.85
    assert stats["suggested_lower"] == pytest.approx(1.15)  # p5 is below median / 2
    negative = numeric_stats([-2.0, -2.0, -2.0])
    assert negative["suggested_upper"] >= negative["median"] >= negative["suggested_lower"]
    assert numeric_stats([5.0])["std"] == 0.0


def test_pass_rate_ignores_skips_and_counts_xfail_as_expected() -> None:
    records = [
        {"claim": "c", "test": "t", "outcome": outcome, "measured": {}} for outcome in
        ("passed", "xfailed", "skipped", "failed")
    ]
    tables = calibration_tables(records)
    assert tables["c"]["tests"]["t"]["pass_rate"] == pytest.approx(2 / 3)
    assert "FLAKY" in render_pass_rates(tables)


def test_lists_and_dicts_are_calibrated_entry_by_entry() -> None:
    from labcore.notebook.calibrate import flatten_numeric

    measured = {"a": 1, "per_dk": [1.0, 2.0], "nested": {"x": 2, "label": "s"}, "flag": True}
    assert flatten_numeric(measured) == {"a": 1.0, "per_dk[0]": 1.0, "per_dk[1]": 2.0, "nested.x": 2.0}


def test_calibrate_command_passes_arguments_after_double_dash_to_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    import labcore.notebook.cli

    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(labcore.notebook.cli, "calibrate", lambda marker, **kwargs: calls.append((marker, kwargs)) or 0)
    assert main(["calibrate", "lora", "--seeds", "5", "--start", "2", "--", "-n", "2"]) == 0
    marker, kwargs = calls[0]
    assert marker == "lora" and kwargs["seeds"] == 5 and kwargs["start"] == 2
    assert kwargs["extra_args"] == ["-n", "2"] and kwargs["flaky_only"] is False
    assert kwargs["command"] == "lab calibrate lora --seeds 5 --start 2 -- -n 2"


def test_log_durations_sums_latest_records_per_paper(isolated_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labcore.notebook.history import append_record

    log = isolated_results / "history.jsonl"
    for test, paper, seconds in [("a::t1", "attention", 5.0), ("a::t1", "attention", 7.0),
                                 ("b::t2", "bayes", 30.0), ("b::t3", "bayes", 1.5)]:
        append_record(log, {"claim": test[0], "paper": paper, "test": test, "outcome": "passed",
                            "duration_s": seconds, "time": "2026-11-29T00:00:00+00:00"})
    assert main(["log", "--durations"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"attention\s+7\.0", out)  # the latest record of a test replaces the older one
    assert re.search(r"bayes\s+31\.5", out) and re.search(r"total\s+38\.5", out)
    slowest = out.split("Slowest", 1)[1]
    assert slowest.index("30.0") < slowest.index("7.0") < slowest.index("1.5")  # slowest first


# --- any paper, no code edits --------------------------------------------------------------------


def _fresh_copy(root: Path) -> Path:
    """A checkout as a learner has it: pyproject.toml, the root conftest, claims/ with a paper."""
    from labcore.files import repo_root

    root.mkdir()
    (root / "pyproject.toml").write_text((repo_root() / "pyproject.toml").read_text())
    (root / "conftest.py").write_text('pytest_plugins = ("labcore.notebook.plugin",)\n')
    (root / "claims" / "attention").mkdir(parents=True)
    (root / "claims" / "attention" / "paper.toml").write_text(
        (repo_root() / "claims" / "attention" / "paper.toml").read_text()
    )
    return root


def _pytest_in(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    from labcore.files import repo_root

    env = {**os.environ, "PYTHONPATH": str(repo_root()), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_new_paper_on_a_fresh_copy_needs_no_code_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = _fresh_copy(tmp_path / "copy")
    monkeypatch.chdir(project / "claims")  # any folder inside the checkout
    assert main(["new", "newpaper/first_claim", "--arxiv", "2301.00001"]) == 0
    out = capsys.readouterr().out
    claim_file = project / "claims" / "newpaper" / "test_first_claim.py"
    assert f"wrote {claim_file}" in out  # into the checkout it runs in, not labcore's own
    registry = (project / "claims" / "newpaper" / "paper.toml").read_text()
    assert 'arxiv = ["2301.00001"]' in registry and 'title = "newpaper"' in registry
    assert "pytest -m newpaper" in (project / "docs" / "papers" / "newpaper.md").read_text()
    text = claim_file.read_text()
    assert "lab.record(value=value)" in text and "# assert value <= 0.05" in text
    assert "lab.not_yet_run(" in text

    selected = _pytest_in(project, "-m", "newpaper")
    assert selected.returncode == 1, selected.stdout + selected.stderr
    assert "1 failed" in selected.stdout
    assert "not yet run: claim 'first_claim' has no experiment yet" in selected.stdout

    misspelt = _pytest_in(project, "-m", "newpapr")
    assert misspelt.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown marker 'newpapr' in -m: did you mean 'newpaper'?" in misspelt.stderr
    assert len(misspelt.stderr.strip().splitlines()[-1]) < 200  # one short line, not every marker

    # The second claim of the now known paper needs no --arxiv; a bad id is refused.
    assert main(["new", "newpaper/second_claim", "--title", "ignored"]) == 0
    assert main(["new", "newpaper/third_claim", "--arxiv", "2301.99999"]) == 2
    assert "paper 'newpaper' is arXiv 2301.00001, not 2301.99999" in capsys.readouterr().err


# --- honest calibration: "does not hold", the code hash, lab calibrate --check -------------------

WRONG_BODY = """
def test_wrong(lab):
    lab.record(err=0.1 + 0.01 * lab.seed)
    assert 0.1 + 0.01 * lab.seed <= 0.05, "the prediction was wrong"
"""


def test_a_claim_that_never_passes_does_not_hold_and_gets_no_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labcore.notebook.calibration_check import HASH_FIELD, claim_source_sha256

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project = make_project(tmp_path / "project", "wrong_claim", WRONG_BODY)
    printed: list[str] = []
    assert calibrate("wrong_claim", seeds=2, out_dir=tmp_path / "cal", cwd=project, echo=printed.append) == 0
    text = "\n".join(printed)
    assert "does not hold (no bound suggested)" in text and "FLAKY" not in text
    table = json.loads((tmp_path / "cal" / "wrong_claim.json").read_text())
    stats = table["tests"]["claims/attention/test_wrong_claim.py::test_wrong"]["measured"]["err"]
    assert stats["suggested_upper"] is None and stats["suggested_lower"] is None and stats["median"] > 0.1
    assert table[HASH_FIELD] == claim_source_sha256(project / "claims" / "attention" / "test_wrong_claim.py")


def _checked_project(tmp_path: Path, table: dict[str, Any] | None, body: str = "def test_a(lab):\n    pass\n",
                     **claim: str) -> Path:
    root = tmp_path / "checked"
    (root / "claims" / "attention").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    extra = "".join(f"    {k}={v!r},\n" for k, v in claim.items())
    (root / "claims" / "attention" / "test_c.py").write_text(
        'from labcore.notebook.claims import Claim\nCLAIM = Claim(\n    id="c",\n' + extra + ")\n" + body)
    if table is not None:
        (root / "fixtures").mkdir()
        (root / "fixtures" / "c.json").write_text(json.dumps(table))
    return root


def test_calibrate_check_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from labcore.notebook.calibration_check import HASH_FIELD, check_calibrations, claim_source_sha256

    root = _checked_project(tmp_path, {"date": "2026-01-01", "seeds": [0, 1]}, calibration="fixtures/c.json")
    monkeypatch.chdir(root)
    assert main(["calibrate", "--check"]) == 0
    assert "1 unverified" in capsys.readouterr().out  # written before tables stored a hash: listed, not failed
    path = root / "claims" / "attention" / "test_c.py"
    table = {"date": "2026-01-01", "seeds": [0], HASH_FIELD: claim_source_sha256(path)}
    (root / "fixtures" / "c.json").write_text(json.dumps(table))
    assert check_calibrations(root)[0] == 0
    # prose, comments and the CLAIM record may change; the code may not
    path.write_text(path.read_text().replace('id="c",', 'id="c",  # a comment\n    statement="edited",') + "# note\n")
    assert check_calibrations(root) == (0, "calibration tables: 1 ok")
    path.write_text(path.read_text().replace("pass", "assert True"))
    assert main(["calibrate", "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    (root / "fixtures" / "c.json").unlink()
    code, text = check_calibrations(root)
    assert code == 1 and "missing" in text


def test_a_confirmed_claim_needs_fresh_seeds_all_passing(tmp_path: Path) -> None:
    from labcore.notebook.calibration_check import HASH_FIELD, check_calibrations, claim_source_sha256

    table = {"seeds": [0, 1, 2], "tests": {"t": {"pass_rate": 1.0}}}
    root = _checked_project(tmp_path, table, calibration="fixtures/c.json", status="confirmed")
    code, text = check_calibrations(root)
    assert code == 1 and "no fresh-seed table" in text
    code_hash = claim_source_sha256(root / "claims" / "attention" / "test_c.py")
    (root / "fixtures" / "c.json").write_text(  # a claim calibrated on fresh seeds only
        json.dumps({"seeds": [100, 101], "tests": {"t": {"pass_rate": 0.5}}, HASH_FIELD: code_hash}))
    assert "did not pass on every fresh seed" in check_calibrations(root)[1]


def test_fresh_seeds_live_in_their_own_table_beside_the_exploration_table(tmp_path: Path) -> None:
    from labcore.notebook.calibration_check import HASH_FIELD, check_calibrations, claim_source_sha256

    root = _checked_project(tmp_path, {"seeds": [0, 1]}, calibration="fixtures/c.json", status="confirmed")
    code, text = check_calibrations(root)
    assert code == 1 and "no fresh-seed table" in text
    code_hash = claim_source_sha256(root / "claims" / "attention" / "test_c.py")
    fresh = {"seeds": [100, 101], "tests": {"t": {"pass_rate": 1.0}}, HASH_FIELD: code_hash}
    (root / "fixtures" / "c.fresh.json").write_text(json.dumps(fresh))
    assert check_calibrations(root) == (0, "calibration tables: 1 ok")  # the fresh table verifies an old one
    (root / "fixtures" / "c.fresh.json").write_text(json.dumps({**fresh, HASH_FIELD: "old"}))
    code, text = check_calibrations(root)
    assert code == 1 and "fresh-seed table" in text and "stale" in text
    path = root / "claims" / "attention" / "test_c.py"
    path.write_text(path.read_text().replace('status=\'confirmed\',', ""))
    (root / "fixtures" / "c.fresh.json").write_text(json.dumps(fresh))
    code, text = check_calibrations(root)
    assert code == 0 and "confirmable" in text and "set status='confirmed'" in text


def test_a_fresh_seed_run_writes_the_fresh_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project = make_project(tmp_path / "project", "wrong_claim", WRONG_BODY)
    assert calibrate("wrong_claim", seeds=1, start=100, out_dir=tmp_path / "cal", cwd=project, echo=lambda _: None) == 0
    assert sorted(p.name for p in (tmp_path / "cal").iterdir()) == ["wrong_claim.fresh.json"]


def test_calibrate_without_a_marker_or_seeds_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "quick"]) == 2
    assert "give a CLAIM_OR_MARKER and --seeds N" in capsys.readouterr().err


def test_lab_log_shows_each_claims_status(isolated_results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append_record(isolated_results / "history.jsonl",
                  make_record("c_conf", "t", "passed", "2026-01-01T10:00:00+00:00", "r1", status="confirmed"))
    append_record(isolated_results / "history.jsonl", make_record("c_old", "t", "passed", "2026-01-01T10:00:00+00:00", "r1"))
    assert main(["log"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^c_conf\s+attention\s+held\s+confirmed", out, re.MULTILINE)
    assert re.search(r"^c_old\s+attention\s+held\s+exploratory", out, re.MULTILINE)  # records before the field
