"""Trust in the learning log: records survive concurrency and kills, verdicts are reproducible,
and nothing ever unpickles code.

Counts are explicit everywhere: N records written = N records read.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from labcore.notebook.history import append_record, read_history

REPO = Path(__file__).resolve().parents[1]

CLAIM_FILE = '''
import pytest
from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id="trust_demo", paper="attention", statement="“demo”",
    source=Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3"),
    paper_value="1", prediction="1", metric="m", tolerance="t", tolerance_why="w", tier="quick",
)

@pytest.mark.parametrize("i", range({n}))
def test_many(lab, i):
    lab.record(i=i)
'''


def _project(tmp_path: Path, n: int) -> Path:
    (tmp_path / "claims" / "attention").mkdir(parents=True)
    (tmp_path / "claims" / "attention" / "test_trust_demo.py").write_text(CLAIM_FILE.format(n=n))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("labcore.notebook.plugin",)\n')
    return tmp_path


def _pytest(cwd: Path, results: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"LAB_RESULTS_DIR": str(results), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_xdist_workers_and_a_second_process_lose_nothing(tmp_path: Path) -> None:
    """Two xdist workers and another pytest process append to one history at the same time."""
    pytest.importorskip("xdist")
    project = _project(tmp_path / "project", n=40)
    results = tmp_path / "results"
    runs = [_pytest(project, results, "-n", "2"), _pytest(project, results)]
    for run in runs:
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out
    read = read_history(results / "history.jsonl")
    assert read.bad_lines == []
    assert len(read.records) == 2 * 40
    by_run: dict[str, list[int]] = {}
    for record in read.records:
        by_run.setdefault(record["run_id"], []).append(record["measured"]["i"])
    assert sorted(sorted(v) for v in by_run.values()) == [list(range(40))] * 2


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from labcore.notebook.history import append_record
    path = Path(sys.argv[1])
    i = 0
    while True:
        append_record(path, {"claim": "killed", "i": i, "padding": "x" * 20000})
        i += 1
    """
)


def test_a_writer_killed_mid_write_leaves_every_complete_record_readable(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log)],
                              env=os.environ | {"PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while (not log.exists() or log.stat().st_size < 2_000_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    # If the kill happened to land between records, tear the last one by hand: the case must be exercised.
    data = log.read_bytes()
    if data.endswith(b"\n"):
        log.write_bytes(data + b'{"claim": "killed", "i": -1, "padd')
    read = read_history(log)
    complete = log.read_bytes().count(b"\n")
    assert len(read.records) == complete  # every complete line is a record
    assert [r["i"] for r in read.records] == list(range(complete))
    assert len(read.bad_lines) == 1 and "truncated" in read.describe_bad_lines()[0]
    # The next run appends after the torn line without gluing onto it.
    append_record(log, {"claim": "after", "i": 0})
    again = read_history(log)
    assert len(again.records) == complete + 1 and again.records[-1]["claim"] == "after"
    assert len(again.bad_lines) == 1


def test_the_same_seed_gives_bitwise_identical_measured_values(tmp_path: Path) -> None:
    """A claim run twice with one seed records the same numbers, to the last bit (CPU)."""
    claim = "claims/attention/test_qk_variance.py"
    measured = []
    for attempt in range(2):
        results = tmp_path / f"r{attempt}"
        run = _pytest(REPO, results, claim, "--lab-seed=11")
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out
        (record,) = read_history(results / "history.jsonl").records
        measured.append(json.dumps(record["measured"], sort_keys=True))
    assert measured[0] == measured[1]
    other = tmp_path / "r-other"
    run = _pytest(REPO, other, claim, "--lab-seed=12")
    run.communicate(timeout=300)
    (record,) = read_history(other / "history.jsonl").records
    assert json.dumps(record["measured"], sort_keys=True) != measured[0]  # the seed does matter


def test_no_pickle_is_ever_loaded() -> None:
    """Checkpoints are safetensors; torch.load only with weights_only=True; no pickle/joblib."""
    offenders = []
    for folder in ("labcore", "claims", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in match.group(1):
                    offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
            if re.search(r"^\s*(import pickle|from pickle|import joblib|import dill)", text, re.M):
                offenders.append(f"{path.relative_to(REPO)}: imports a pickle library")
    assert offenders == []
