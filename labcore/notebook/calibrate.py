"""``lab calibrate``: run claims over many seeds to see how much their measurements wobble.

A tolerance such as "rel. error ≤ 0.05" is only honest if it was set from the spread of the
measurement, not from the one run that happened to pass. Calibration runs the selected
claims once per seed (each in a fresh ``pytest`` process writing to a throw-away results
folder), collects every numeric measured value per test, and writes
``fixtures/calibration/<claim>.json`` with the distribution, suggested thresholds and each
test's pass rate over seeds (a test that passes 17 times out of 20 is flaky, whatever its
tolerance says). Claim files point at these tables with ``calibration=...``.

A test that fails on every seed "does not hold": no threshold is suggested for it (a bound
fitted to a wrong prediction's values would turn it into a pass). Each table stores a hash of
the claim's code, which ``lab calibrate --check`` compares (``labcore.notebook.calibration_check``).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labcore.notebook.history import package_versions, read_history, utc_now_iso
from labcore.files import CACHE_ENV, ResultsDirError, cache_dir, repo_root
from labcore.files import atomic_write_text
from labcore.notebook.log import format_table, is_number
from labcore.notebook.calibration_check import (HASH_DEFINITION, HASH_FIELD, check_command, claim_file_of,
                                                claim_source_sha256, fresh_table_name)
from labcore.notebook.claims import FRESH_SEED_START

__all__ = ["calibrate", "check_command", "CalibrationError"]

#: A test should pass at least this often over seeds; below it, its tolerance is too tight or
#: the experiment too noisy.
PASS_RATE_TARGET = 0.95

#: pytest exit codes that still mean "the tests ran" (0 all passed, 1 some failed).
_RAN_EXIT_CODES = (0, 1)

Echo = Callable[[str], None]


class CalibrationError(RuntimeError):
    """Calibration could not run (no matching tests, pytest usage error, ...)."""


def pytest_command(marker: str, seed: int, results: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """The pytest invocation for one seed. ``-p no:randomly`` keeps test order fixed, so that
    the only thing that changes between runs is the seed."""
    # "--opt=value" in one token: pytest picks its rootdir and conftests from the positional
    # arguments before it knows the lab's options, and would take a separate value for a path.
    return [
        sys.executable, "-m", "pytest", "-m", marker, f"--lab-seed={seed}",
        f"--lab-results={results}", "-q", "-p", "no:randomly", *extra_args,
    ]


def portable_command(command: Sequence[str], seed: int) -> str:
    """The command as anyone can rerun it: ``python -m pytest ...`` instead of this machine's
    interpreter path, the seed as ``<seed>``."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    return shlex.join(words).replace(f"--lab-seed={seed}", "--lab-seed=<seed>")


def child_env() -> dict[str, str]:
    """The environment of a child pytest: it must import the same labcore as this process,
    wherever it runs from."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root()), env.get("PYTHONPATH", "")) if p)
    return env


def _calibration_env() -> dict[str, str]:
    env = child_env()
    if CACHE_ENV not in env:
        try:
            # Reuse the user's trained-model cache: models are keyed by seed, so this changes
            # nothing but the time a calibration takes.
            env[CACHE_ENV] = str(cache_dir())
        except ResultsDirError:
            pass
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_seeds(
    marker: str,
    seeds: Sequence[int],
    results: Path,
    *,
    cwd: Path,
    extra_args: Sequence[str] = (),
    echo: Echo = print,
) -> None:
    """Run the selected tests once per seed, appending to ``results/history.jsonl``."""
    env = _calibration_env()
    for index, seed in enumerate(seeds, start=1):
        command = pytest_command(marker, seed, results, extra_args)
        started = time.monotonic()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        output = done.stdout + done.stderr
        if done.returncode == 5:
            raise CalibrationError(f"no test matches -m {marker!r} (pytest collected nothing)")
        if done.returncode not in _RAN_EXIT_CODES:
            tail = "\n".join(output.strip().splitlines()[-15:])
            raise CalibrationError(
                f"pytest stopped with exit code {done.returncode} at seed {seed}:\n{tail}"
            )
        echo(f"seed {seed} ({index}/{len(seeds)}): {_last_line(done.stdout)} [{elapsed:.1f}s]")


def numeric_stats(values: Sequence[float]) -> dict[str, float | int]:
    """Distribution summary and suggested thresholds for one measured key over seeds.

    ``suggested_upper = max(2·median, p95)`` and ``suggested_lower = min(median/2, p5)``:
    for error-like metrics (≥ 0) a factor of two around the typical value, widened to cover
    95 % of seeds. For negative medians the factor is applied to |median| so that "upper"
    stays above the median.
    """
    data = np.asarray(values, dtype=float)
    median = float(np.median(data))
    p5, p95 = (float(x) for x in np.percentile(data, [5, 95]))
    return {
        "n": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "median": median,
        "p5": p5,
        "p95": p95,
        "min": float(data.min()),
        "max": float(data.max()),
        "suggested_upper": max(median + abs(median), p95),
        "suggested_lower": min(median - abs(median) / 2, p5),
    }


def flatten_numeric(measured: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric measured values by key; lists and dicts are flattened to ``key[i]`` and
    ``key.sub`` so that a per-d_k list is calibrated entry by entry. Text and bools are left out."""
    flat: dict[str, float] = {}
    for key, value in measured.items():
        name = f"{prefix}{key}"
        if is_number(value):
            flat[name] = float(value)
        elif isinstance(value, list):
            flat.update(flatten_numeric({f"[{i}]": item for i, item in enumerate(value)}, name))
        elif isinstance(value, dict):
            flat.update(flatten_numeric(value, name + "."))
    return flat


def calibration_tables(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per claim, per test node id: outcomes, pass rate and stats of every numeric measured key."""
    tables: dict[str, dict[str, Any]] = {}
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in records:
        grouped.setdefault(str(record.get("claim")), {}).setdefault(str(record.get("test")), []).append(record)
    for claim, tests in grouped.items():
        test_tables = {}
        for test, test_records in tests.items():
            outcomes = Counter(str(r.get("outcome")) for r in test_records)
            considered = len(test_records) - outcomes.get("skipped", 0)
            ok = outcomes.get("passed", 0) + outcomes.get("xfailed", 0)
            values: dict[str, list[float]] = {}
            for record in test_records:
                for key, value in flatten_numeric(record.get("measured") or {}).items():
                    values.setdefault(key, []).append(value)
            rate = (ok / considered) if considered else None
            stats = {key: numeric_stats(vals) for key, vals in values.items()}
            if rate == 0:  # never passed: the claim does not hold; suggest no bound that would make it pass
                stats = {key: {**s, "suggested_upper": None, "suggested_lower": None} for key, s in stats.items()}
            test_tables[test] = {
                "params": test_records[-1].get("params", {}),
                "runs": len(test_records),
                "outcomes": dict(outcomes),
                "pass_rate": rate,
                "measured": stats,
            }
        first = next(iter(tests.values()))[0]
        tables[claim] = {
            "paper": first.get("paper"),
            "tolerance": first.get("tolerance"),
            "devices": sorted({str(r.get("device")) for rs in tests.values() for r in rs}),
            "tests": test_tables,
        }
    return tables


def machine_description() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def write_calibration_files(
    tables: dict[str, dict[str, Any]], out_dir: Path, *, seeds: Sequence[int], command: str, pytest_cmd: str,
    source_root: Path | None = None,
) -> list[Path]:
    """One ``<claim>.json`` per claim in ``out_dir`` (atomic writes), with the hash of the claim
    file's code (test node ids are relative to ``source_root``, where pytest ran). A run over fresh
    seeds only (all >= 100) writes ``<claim>.fresh.json`` instead, beside the exploration table it
    confirms: the seeds that chose the tolerance and the seeds that test it stay apart."""
    written = []
    for claim, table in tables.items():
        claim_file = claim_file_of(table["tests"], source_root) if source_root else None
        document = {
            "claim": claim,
            "paper": table["paper"],
            "date": utc_now_iso(),
            "machine": {**machine_description(), "devices": table["devices"]},
            "versions": package_versions(),
            "command": command,
            "pytest_command": pytest_cmd,
            "seeds": list(seeds),
            "tolerance": table["tolerance"],
            "pass_rate_target": PASS_RATE_TARGET,
            "tests": table["tests"],
            HASH_FIELD: claim_source_sha256(claim_file) if claim_file else None,
            "claim_source_hash": HASH_DEFINITION,
        }
        name = fresh_table_name(claim) if seeds and min(seeds) >= FRESH_SEED_START else f"{claim}.json"
        written.append(atomic_write_text(out_dir / name, json.dumps(document, indent=2) + "\n"))
    return written


def _short_test(test: str) -> str:
    return test.split("::", 1)[-1]


def render_pass_rates(tables: dict[str, dict[str, Any]]) -> str:
    rows = []
    for claim, table in tables.items():
        for test, stats in table["tests"].items():
            rate = stats["pass_rate"]
            verdict = ("all skipped" if rate is None else "does not hold (no bound suggested)" if rate == 0
                       else "ok" if rate >= PASS_RATE_TARGET else "FLAKY")
            outcomes = ", ".join(f"{n} {o}" for o, n in sorted(stats["outcomes"].items()))
            rows.append([claim, _short_test(test), stats["runs"], outcomes,
                         "—" if rate is None else f"{rate:.0%}", verdict])
    return format_table(["claim", "test", "runs", "outcomes", "pass rate", f"(target ≥ {PASS_RATE_TARGET:.0%})"], rows)


def _bound(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def render_stats(tables: dict[str, dict[str, Any]]) -> str:
    rows = []
    for claim, table in tables.items():
        for test, stats in table["tests"].items():
            for key, s in stats["measured"].items():
                rows.append([claim, _short_test(test), key, s["n"], f"{s['mean']:.4g}", f"{s['std']:.3g}",
                             f"{s['median']:.4g}", f"{s['p5']:.4g}", f"{s['p95']:.4g}",
                             _bound(s["suggested_upper"]), _bound(s["suggested_lower"])])
    if not rows:
        return "No numeric measured values (use lab.record(name=value) in the tests)."
    return format_table(
        ["claim", "test", "key", "n", "mean", "std", "median", "p5", "p95", "suggest ≤", "suggest ≥"], rows
    )


def calibrate(
    marker: str,
    *,
    seeds: int,
    start: int = 0,
    out_dir: Path | None = None,
    flaky_only: bool = False,
    extra_args: Sequence[str] = (),
    cwd: Path | None = None,
    command: str = "",
    echo: Echo = print,
) -> int:
    """Run the sweep, print the tables, write the calibration files. Returns an exit code:
    0, or 1 in ``flaky_only`` mode when a test passes less often than the target."""
    if seeds < 1:
        raise CalibrationError("--seeds must be at least 1")
    seed_list = list(range(start, start + seeds))
    cwd = cwd or repo_root()
    out_dir = out_dir or repo_root() / "fixtures" / "calibration"
    with tempfile.TemporaryDirectory(prefix="lab-calibrate-") as scratch:
        results = Path(scratch)
        echo(f"calibrating -m {marker} over seeds {seed_list[0]}..{seed_list[-1]} (results in {results})")
        run_seeds(marker, seed_list, results, cwd=cwd, extra_args=extra_args, echo=echo)
        history = read_history(results / "history.jsonl")
    tables = calibration_tables(history.records)
    if not tables:
        raise CalibrationError(f"the tests selected by -m {marker!r} wrote no history records (are they claims?)")
    echo("")
    echo(render_pass_rates(tables))
    if flaky_only:
        rates = [t["pass_rate"] for table in tables.values() for t in table["tests"].values()]
        return 0 if all(rate is None or rate >= PASS_RATE_TARGET for rate in rates) else 1
    echo("")
    echo(render_stats(tables))
    pytest_cmd = portable_command(pytest_command(marker, seed_list[0], Path("<tmp>"), extra_args), seed_list[0])
    written = write_calibration_files(tables, out_dir, seeds=seed_list, command=command, pytest_cmd=pytest_cmd,
                                      source_root=cwd)
    echo("")
    for path in written:
        echo(f"wrote {path}")
    return 0
