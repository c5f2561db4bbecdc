"""``lab log --diff RUN_A RUN_B``: what changed between two runs, per claim and test.

A run is one pytest session: every record it wrote carries the same ``run_id`` (``lab log --all``
shows it; records from before run ids count as one run per timestamp, as in
:func:`labcore.notebook.log.verdicts_by_run`). ``last`` is the most recent run, ``previous`` the
one before it; a unique prefix of an id is enough. Only claims and tests that ran in either run are
compared: the verdict of each claim in each run, each test's outcome, and for every numeric
measured value both numbers and the change b − a.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from labcore.notebook.log import (
    Record, UnknownFilterError, format_table, is_number, outcome_of, record_matches, records_verdict, short_test, short_time,
)

ALIASES = ("last", "previous")


def run_of(record: Record) -> str:
    return str(record.get("run_id") or record.get("time"))


def runs_in_order(records: Sequence[Record]) -> list[str]:
    """Run ids, oldest first (by each run's first record)."""
    first: dict[str, str] = {}
    for record in records:
        run = run_of(record)
        first[run] = min(first.get(run, str(record.get("time") or "")), str(record.get("time") or ""))
    return sorted(first, key=lambda run: (first[run], run))


def resolve_run(records: Sequence[Record], name: str) -> str:
    """A run id from an id, a unique prefix, ``last`` or ``previous``."""
    runs = runs_in_order(records)
    if name in ALIASES:
        back = ALIASES.index(name) + 1
        if len(runs) < back:
            raise UnknownFilterError(f"run {name!r}: the history holds {len(runs)} run(s)")
        return runs[-back]
    if name in runs:
        return name
    matches = [run for run in runs if run.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    recent = ", ".join(runs[-5:]) or "none"
    what = "is ambiguous" if matches else "is not in the history"
    raise UnknownFilterError(f"run {name!r} {what} (latest runs: {recent}; or use last / previous)")


@dataclass
class TestDiff:
    claim: str
    test: str
    outcome_a: str
    outcome_b: str
    deltas: list[tuple[str, Any, Any]] = field(default_factory=list)  # key, value in a, value in b

    @property
    def flipped(self) -> bool:
        return self.outcome_a != self.outcome_b


@dataclass
class RunDiff:
    run_a: str
    run_b: str
    time_a: str
    time_b: str
    verdicts: list[tuple[str, str, str]]  # claim, verdict in a, verdict in b
    tests: list[TestDiff]


def _latest_by_test(records: Sequence[Record], run: str) -> dict[str, Record]:
    latest: dict[str, Record] = {}
    for record in records:
        if run_of(record) == run:
            latest[str(record.get("test"))] = record
    return latest


def _measured_deltas(a: Record | None, b: Record | None) -> list[tuple[str, Any, Any]]:
    measured_a, measured_b = (a or {}).get("measured") or {}, (b or {}).get("measured") or {}
    keys = list(dict.fromkeys([*measured_a, *measured_b]))
    return [(key, measured_a.get(key), measured_b.get(key)) for key in keys
            if is_number(measured_a.get(key)) or is_number(measured_b.get(key))]


def diff_runs(records: Sequence[Record], name_a: str, name_b: str, *, claim: str | None = None,
              marker: str | None = None) -> RunDiff:
    """Compare two runs (ids resolved over the whole history), limited to ``claim``/``marker``."""
    run_a, run_b = resolve_run(records, name_a), resolve_run(records, name_b)
    records = [r for r in records if record_matches(r, claim=claim, marker=marker)]
    tests_a, tests_b = _latest_by_test(records, run_a), _latest_by_test(records, run_b)
    claims: dict[str, tuple[list[Record], list[Record]]] = {}
    for records_of_run, index in ((tests_a, 0), (tests_b, 1)):
        for record in records_of_run.values():
            claims.setdefault(str(record.get("claim")), ([], []))[index].append(record)
    verdicts = [(claim, records_verdict(a) if a else "not in run", records_verdict(b) if b else "not in run")
                for claim, (a, b) in sorted(claims.items())]
    tests = []
    for test in sorted(set(tests_a) | set(tests_b)):
        a, b = tests_a.get(test), tests_b.get(test)
        claim = str((b or a or {}).get("claim"))
        tests.append(TestDiff(claim, test, outcome_of(a) if a else "not in run", outcome_of(b) if b else "not in run",
                              _measured_deltas(a, b)))

    def when(run: dict[str, Record]) -> str:
        return min((str(r.get("time") or "") for r in run.values()), default="")

    return RunDiff(run_a, run_b, when(tests_a), when(tests_b), verdicts, tests)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _delta(a: Any, b: Any) -> str:
    if not (is_number(a) and is_number(b)):
        return ""
    change = b - a
    relative = f" ({change / abs(a):+.1%})" if a else ""
    return f"{change:+.4g}{relative}"


def render_diff(diff: RunDiff, *, all_values: bool = False) -> str:
    """The text ``lab log --diff`` prints: verdicts per claim (FLIP where both runs ran it and they
    differ), tests whose outcome differs (or that ran in one run only), and measured values that
    both runs recorded and that changed (every value, even one-sided, with ``all_values``)."""
    head = (f"run a: {diff.run_a} ({short_time(diff.time_a)})\n"
            f"run b: {diff.run_b} ({short_time(diff.time_b)})")
    absent = "not in run"
    verdict_rows = [[claim, a, b, "FLIP" if a != b and absent not in (a, b) else ""] for claim, a, b in diff.verdicts]
    blocks = [head, format_table(["claim", "verdict a", "verdict b", ""], verdict_rows)]
    flips = [t for t in diff.tests if t.flipped]
    blocks.append(
        format_table(["claim", "test", "outcome a", "outcome b"],
                     [[t.claim, short_test({"test": t.test}), t.outcome_a, t.outcome_b] for t in flips])
        if flips else "No test changed its outcome."
    )
    value_rows = [
        [t.claim, short_test({"test": t.test}), key, _fmt(a), _fmt(b), _delta(a, b)]
        for t in diff.tests for key, a, b in t.deltas if all_values or (a != b and a is not None and b is not None)
    ]
    blocks.append(format_table(["claim", "test", "measured", "a", "b", "b − a"], value_rows)
                  if value_rows else "No measured value changed.")
    return "\n\n".join(blocks)
