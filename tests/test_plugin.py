"""The pytest plugin, driven through real inner pytest runs (pytester)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import labcore.notebook.plugin
from labcore.notebook.cli import new_claim_file
from labcore.notebook.history import read_history
from labcore.files import repo_root
from labcore.notebook.plugin import GPU_SKIP_REASON, REAL_MODEL_SKIP_REASON, marker_names_in
from labcore.notebook.recorder import LabRecorder

CLAIM_HEADER = """\
import pytest
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id={claim_id!r}, paper="attention", statement="Var(q·k) = d_k",
    source=Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3.2.1"),
    paper_value="d_k", prediction="within 5 %", metric="relative error", tolerance="≤ 0.05",
    tolerance_why="sampling error", tier={tier!r}, tags={tags!r},
)
"""


def write_claim(
    pytester: pytest.Pytester, body: str, *, claim_id: str = "demo_claim", tier: str = "quick",
    tags: tuple[str, ...] = (), file_name: str | None = None,
) -> Path:
    path = pytester.path / "claims" / "attention" / f"{file_name or 'test_' + claim_id}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CLAIM_HEADER.format(claim_id=claim_id, tier=tier, tags=tags) + textwrap.dedent(body))
    return path


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "labcore.notebook.plugin", "-p", "no:randomly", *args)


@pytest.fixture
def results(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = pytester.path / "results"
    monkeypatch.setenv("LAB_RESULTS_DIR", str(folder))
    return folder


def records_by_test(results: Path) -> dict[str, dict]:
    read = read_history(results / "history.jsonl")
    assert read.bad_lines == []
    return {record["test"].split("::", 1)[1]: record for record in read.records}


OUTCOMES_BODY = """
import numpy as np

def test_passes(lab):
    lab.record(value=0.5, count=np.int64(3))

def test_fails(lab):
    lab.record(value=2.0)
    assert 2.0 <= 1.0, "value 2.0 above tolerance 1.0"

def test_skips():
    pytest.skip("no data today")

@pytest.mark.xfail(reason="known gap")
def test_xfails():
    assert False

@pytest.mark.xfail(reason="might hold")
def test_xpasses():
    pass

@pytest.mark.xfail(reason="must fail", strict=True)
def test_strict_xpass():
    pass

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")

def test_setup_error(broken_setup):
    pass

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

def test_teardown_error(broken_teardown):
    pass

@pytest.mark.parametrize("d_k", [4, 64])
def test_param(lab, d_k):
    lab.record(d_k=d_k)
"""


def test_one_record_per_test_with_its_outcome(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, OUTCOMES_BODY)
    result = run(pytester)
    result.assert_outcomes(passed=4, failed=2, skipped=1, xfailed=1, xpassed=1, errors=2)
    result.stdout.fnmatch_lines(["lab: 10 records appended to *history.jsonl"])
    records = records_by_test(results)
    assert len(read_history(results / "history.jsonl").records) == 10
    expected = {
        "test_passes": ("passed", ""),
        "test_fails": ("failed", "AssertionError: value 2.0 above tolerance 1.0"),
        "test_skips": ("skipped", "no data today"),
        "test_xfails": ("xfailed", "known gap"),
        "test_xpasses": ("xpassed", "might hold"),
        "test_strict_xpass": ("failed", "[XPASS(strict)] must fail"),
        "test_setup_error": ("error", "RuntimeError: setup broke"),
        "test_teardown_error": ("error", "RuntimeError: teardown broke"),
        "test_param[4]": ("passed", ""),
        "test_param[64]": ("passed", ""),
    }
    assert {test: (r["outcome"], r["message"]) for test, r in records.items()} == expected
    assert records["test_passes"]["measured"] == {"value": 0.5, "count": 3}
    assert records["test_fails"]["measured"] == {"value": 2.0}  # recorded before the assert failed
    assert records["test_param[64]"]["params"] == {"d_k": 64}
    assert records["test_skips"]["measured"] == {}

    record = records["test_passes"]
    assert record["claim"] == "demo_claim" and record["paper"] == "attention" and record["tier"] == "quick"
    assert record["statement"] == "Var(q·k) = d_k" and record["source"]["arxiv"] == "1706.03762"
    assert record["tolerance"] == "≤ 0.05" and record["tolerance_why"] == "sampling error"
    assert record["seed"] == 0 and record["worker"] == "main" and record["schema"] == 2
    assert record["test"] == "claims/attention/test_demo_claim.py::test_passes"
    assert set(record["versions"]) == {"python", "torch", "transformers", "peft", "bitsandbytes"}
    assert record["duration_s"] >= 0 and record["time"].endswith("+00:00")
    assert len({r["run_id"] for r in records.values()}) == 1


def test_claim_fields_become_markers(
    pytester: pytest.Pytester, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labcore.notebook.plugin, "_real_model_missing", lambda: False)
    write_claim(pytester, "def test_it(lab):\n    pass\n", tier="full", tags=("real_model",))
    run(pytester, "-m", "demo_claim and attention and full and real_model").assert_outcomes(passed=1)
    run(pytester, "-k", "demo_claim").assert_outcomes(passed=1)
    assert run(pytester, "-m", "quick").ret == pytest.ExitCode.NO_TESTS_COLLECTED
    markers = run(pytester, "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.demo_claim: claim (attention, full): Var(q·k) = d_k"])


def test_unknown_marker_in_m_is_a_usage_error(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, "def test_it(lab):\n    pass\n")
    result = run(pytester, "-m", "(demo_claim or demo_clam) and not gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "ERROR: unknown marker 'demo_clam' in -m: did you mean 'demo_claim'? "
        "(`lab log` lists the claims, `pytest --markers` every marker)"
    ])
    assert not (results / "history.jsonl").exists()
    far_off = run(pytester, "-m", "zzzz")
    assert far_off.ret == pytest.ExitCode.USAGE_ERROR
    far_off.stderr.fnmatch_lines(["ERROR: unknown marker 'zzzz' in -m: no marker is close to it. *"])


def test_marker_names_in_expressions() -> None:
    assert marker_names_in("(quick or full) and not gpu") == ["quick", "full", "gpu"]
    assert marker_names_in("lora and mark(x=1, y='a b')") == ["lora", "mark"]


def test_invalid_claim_fails_collection_with_one_line(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, "def test_it():\n    pass\n", tier="slow")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "broken claim file claims/attention/test_demo_claim.py: "
        "claim 'demo_claim': tier 'slow' is unknown; use one of quick, full"
    ])
    assert "Traceback" not in result.stdout.str()


def test_missing_claim_record_fails_collection(pytester: pytest.Pytester, results: Path) -> None:
    path = pytester.path / "claims" / "lora" / "test_nothing.py"
    path.parent.mkdir(parents=True)
    path.write_text("def test_it():\n    pass\n")
    (path.parent / "test_helpers_only.py").write_text("def helper():\n    return 1\n")  # no tests: fine
    result = run(pytester)
    result.stdout.fnmatch_lines([
        "broken claim file claims/lora/test_nothing.py has no CLAIM record: add CLAIM = Claim(...) at the top (see lab new)"
    ])
    result.assert_outcomes(errors=1)


def test_duplicate_claim_ids_are_refused(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, "def test_a():\n    pass\n", file_name="test_a")
    write_claim(pytester, "def test_b():\n    pass\n", file_name="test_b")
    result = run(pytester)
    result.stdout.fnmatch_lines([
        "*claim 'demo_claim' is already defined in claims/attention/test_a.py: claim ids must be unique, rename one"
    ])


def test_a_broken_claim_file_does_not_stop_the_other_claims(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, "def test_ok(lab):\n    lab.record(v=1.0)\n", claim_id="good_claim")
    broken = pytester.path / "claims" / "attention" / "test_half_written.py"
    broken.write_text(
        "from labcore.notebook.claims import Claim\n"
        "CLAIM = Claim(id='half_written', paper='attention', tier='quick',\n\ndef test_x(:\n    pass\n"
    )
    problem = "broken claim file claims/attention/test_half_written.py: SyntaxError: invalid syntax (line 4)"

    # Only the other claim selected: it runs, keeps its exit code, and the broken file is named.
    other = run(pytester, "-m", "good_claim")
    assert other.ret == pytest.ExitCode.OK
    other.assert_outcomes(passed=1)
    other.stdout.fnmatch_lines([f"lab: {problem} (not selected by -m, so not run)"])
    assert [r["claim"] for r in read_history(results / "history.jsonl").records] == ["good_claim"]

    # Any selection that may include it (everything, its paper, its tier, its id) reports it.
    for args in ([], ["-m", "attention"], ["-m", "quick"], ["-m", "half_written"]):
        result = run(pytester, *args)
        assert result.ret == pytest.ExitCode.TESTS_FAILED, args
        result.assert_outcomes(passed=0 if args[-1:] == ["half_written"] else 1, errors=1)
        result.stdout.fnmatch_lines([problem, f"lab: {problem} (reported above as an error)"])
        assert "Traceback" not in result.stdout.str() and "Interrupted" not in result.stdout.str()


def test_an_import_error_is_one_line_with_the_line_number(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, "import no_such_module_here\n\ndef test_it(lab):\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "broken claim file claims/attention/test_demo_claim.py: "
        "ModuleNotFoundError: No module named 'no_such_module_here' (line 10)"
    ])


def test_lab_new_file_is_collectable_and_not_yet_run(pytester: pytest.Pytester, results: Path) -> None:
    new_claim_file("attention/fresh_claim", claims_dir=pytester.path / "claims")
    result = run(pytester, "-m", "fresh_claim")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "not yet run: claim 'fresh_claim' has no experiment yet — write the measurement in "
        "claims/attention/test_fresh_claim.py*"
    ])
    record = records_by_test(results)["test_fresh_claim"]
    assert record["outcome"] == "failed" and record["message"].startswith("not yet run: claim 'fresh_claim'")


def test_tests_outside_claims_write_no_history(pytester: pytest.Pytester, results: Path) -> None:
    pytester.makepyfile(test_plain="""
        def test_uses_lab(lab):
            assert lab.claim is None
            lab.record(x=1)
            assert lab.results_dir.name == "unclaimed"
    """)
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert not (results / "history.jsonl").exists()
    assert "records appended" not in result.stdout.str()


def test_gpu_claims_skip_without_cuda_before_their_fixtures(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, """
        @pytest.fixture(scope="session")
        def trained_model():
            raise RuntimeError("would train for an hour")

        def test_on_gpu(lab, trained_model):
            pass
    """, tags=("gpu",))
    import torch  # before the inner run: pytester drops modules first imported inside it, and torch
    # cannot be imported twice in one process ("SystemError: bad call flags", then a segfault)

    result = run(pytester)

    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        result.assert_outcomes(errors=1)
        return
    result.assert_outcomes(skipped=1)
    record = records_by_test(results)["test_on_gpu"]
    assert (record["outcome"], record["message"]) == ("skipped", GPU_SKIP_REASON)


def test_real_model_claims_skip_without_the_wheel(
    pytester: pytest.Pytester, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labcore.notebook.plugin, "_real_model_missing", lambda: True)
    write_claim(pytester, "def test_on_smollm(lab):\n    pass\n", tags=("real_model",))
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"*{REAL_MODEL_SKIP_REASON}*"])


def test_seed_and_results_options(pytester: pytest.Pytester, results: Path) -> None:
    write_claim(pytester, """
        import os

        def test_seed(lab, lab_seed, results_root):
            assert lab.seed == lab_seed == 7
            assert results_root == lab.results_root
            assert lab.results_dir == results_root / "demo_claim"
            assert str(lab.device) in ("cpu", "cuda")
    """)
    elsewhere = pytester.path / "elsewhere"
    run(pytester, "--lab-seed", "7", "--lab-results", str(elsewhere)).assert_outcomes(passed=1)
    assert records_by_test(elsewhere)["test_seed"]["seed"] == 7
    assert not (results / "history.jsonl").exists()
    assert Path(__import__("os").environ["LAB_RESULTS_DIR"]) == results  # restored after the run


def test_unwritable_results_folder_stops_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = pytester.path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("LAB_RESULTS_DIR", str(blocker / "results"))
    write_claim(pytester, "def test_it(lab):\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*is not writable: set LAB_RESULTS_DIR to a writable folder"])


def test_a_torn_history_line_does_not_hide_new_records(pytester: pytest.Pytester, results: Path) -> None:
    results.mkdir()
    (results / "history.jsonl").write_text('{"schema": 2, "claim": "killed", "meas')
    write_claim(pytester, "def test_it(lab):\n    pass\n")
    run(pytester).assert_outcomes(passed=1)
    read = read_history(results / "history.jsonl")
    assert [r["claim"] for r in read.records] == ["demo_claim"]
    assert [bad.lineno for bad in read.bad_lines] == [1]


XDIST_BODY = """
@pytest.mark.parametrize("index", range(6))
def test_many(lab, index):
    lab.record(index=index)
    assert index != 3
"""


def test_xdist_workers_each_append_one_record_per_test(
    pytester: pytest.Pytester, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(repo_root()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_claim(pytester, XDIST_BODY)
    result = pytester.runpytest_subprocess("-p", "labcore.notebook.plugin", "-n", "2")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["lab: 6 records appended to *history.jsonl"])
    records = read_history(results / "history.jsonl").records
    assert sorted(r["measured"]["index"] for r in records) == list(range(6))
    assert len({r["run_id"] for r in records}) == 1
    assert {r["worker"] for r in records} <= {"gw0", "gw1"}


def test_xdist_unknown_marker_is_a_usage_error(
    pytester: pytest.Pytester, results: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(repo_root()))
    write_claim(pytester, XDIST_BODY)
    result = pytester.runpytest_subprocess("-p", "labcore.notebook.plugin", "-n", "2", "-m", "demo_clam")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown marker 'demo_clam' in -m: did you mean 'demo_claim'? *"])


# --- the recorder on its own ----------------------------------------------------------------------


def test_recorder_converts_and_refuses_values(tmp_path: Path) -> None:
    import numpy as np

    recorder = LabRecorder(claim=None, seed=0, results_root=tmp_path, test_file=tmp_path / "test_x.py")
    recorder.record(a=np.float64(1.5), b=[1, 2])
    recorder.record(a=2.0)
    assert recorder.measured == {"a": 2.0, "b": [1, 2]}
    with pytest.raises(TypeError, match=r"lab.record\(model=...\): a object is not a number"):
        recorder.record(model=object())


def test_recorder_saves_plots_atomically(tmp_path: Path) -> None:
    recorder = LabRecorder(claim=None, seed=0, results_root=tmp_path, test_file=tmp_path / "test_x.py")
    figure = plt.figure()
    plt.plot([0, 1], [1, 0])
    path = recorder.savefig(figure, "curve")
    assert path == tmp_path / "unclaimed" / "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert recorder.plots == ["unclaimed/curve.png"]
    assert not plt.fignum_exists(figure.number)  # closed
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]  # no temp files left
    with pytest.raises(ValueError, match="plain file name"):
        recorder.savefig(plt.figure(), "../escape")


def test_atomic_writes_replace_whole_files(tmp_path: Path) -> None:
    from labcore.files import atomic_write_bytes, atomic_write_text

    target = tmp_path / "sub" / "table.json"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.json"]


def test_conftests_in_paper_folders_work(pytester: pytest.Pytester, results: Path) -> None:
    """Paper folders keep their shared fixtures in a conftest.py; pluggy then needs the plugin's
    session object to be hashable (a regression: a dataclass with eq=True is not)."""
    write_claim(pytester, "def test_it(lab, shared):\n    lab.record(v=shared)\n")
    (pytester.path / "claims" / "attention" / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='session')\ndef shared():\n    return 3\n"
    )
    (pytester.path / "conftest.py").write_text('pytest_plugins = ("labcore.notebook.plugin",)\n')  # as in the repo
    # A conftest in a sibling paper folder: pytest then calls hooks on a *subset* of plugins.
    (pytester.path / "claims" / "bayes").mkdir()
    (pytester.path / "claims" / "bayes" / "conftest.py").write_text("")
    pytester.runpytest_subprocess("-m", "attention").assert_outcomes(passed=1)
    assert records_by_test(results)["test_it"]["measured"] == {"v": 3}


def test_under_torchrun_only_rank_0_writes_the_history(pytester: pytest.Pytester, results: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_claim(pytester, "def test_it(lab):\n    lab.record(v=1.0)\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run(pytester).assert_outcomes(passed=1)
    assert not (results / "history.jsonl").exists()  # rank 1 ran the test and wrote nothing
    monkeypatch.setenv("RANK", "0")
    run(pytester).assert_outcomes(passed=1)
    (record,) = read_history(results / "history.jsonl").records
    assert record["world_size"] == 2 and record["measured"] == {"v": 1.0}
