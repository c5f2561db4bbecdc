"""The learning log: one JSON line per claim test, appended forever to ``history.jsonl``.

The log is what turns a pile of test runs into a record of what the user has learned: which
claims held, when a verdict changed, what was measured. So it must survive what real runs do
to files:

* several pytest-xdist workers (or two terminals) append at once — every append takes an
  exclusive ``flock`` and writes its line with one ``os.write`` on an ``O_APPEND`` descriptor;
* a run killed mid-write leaves half a line — the next append first ends that torn line, and
  the reader skips and reports it instead of failing;
* old logs written before a field was renamed — the reader upgrades them (schema versions).

Schema 2 record fields: schema, time (ISO 8601 UTC), claim, paper, statement, source (dict),
paper_value, prediction, metric, tolerance, tolerance_why, tier, tags, test (pytest node id),
params (parametrize values), outcome (passed/failed/xfailed/xpassed/skipped/error), message,
measured (dict), seed, device, versions (dict), commit, dirty, duration_s, plots (paths relative
to the results folder), run_id (one per pytest session), worker (xdist worker id or "main").
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

SCHEMA_VERSION = 2

#: Outcomes a schema-2 record can carry.
OUTCOMES: tuple[str, ...] = ("passed", "failed", "xfailed", "xpassed", "skipped", "error")

#: Packages whose versions decide whether two runs are comparable.
TRACKED_PACKAGES: tuple[str, ...] = ("torch", "transformers", "peft", "bitsandbytes")

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


class NotJSONableError(TypeError):
    """A value given to the log is not a number, string, bool, list or dict."""


def _float_to_json(value: float) -> float | str:
    # JSON has no NaN or infinity; keep them as strings rather than null because a diverged
    # run's NaN loss is itself a measurement worth seeing in the log.
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def to_jsonable(value: Any, *, strict: bool = False) -> JSONValue:
    """``value`` as plain JSON types.

    numpy/torch scalars become Python numbers (found by duck typing, so torch is never
    imported just for this), arrays and tensors become nested lists, tuples become lists and
    NaN/inf become the strings "nan"/"inf"/"-inf". Anything else becomes its ``repr`` — or,
    with ``strict=True``, raises :class:`NotJSONableError` (used for measured values, where a
    silently stringified model object would be a bug in the claim).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _float_to_json(value)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item, strict=strict) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, strict=strict) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    ndim = getattr(value, "ndim", None)
    if ndim is not None and hasattr(value, "tolist"):
        # numpy scalars/arrays and torch tensors; tolist() of a 0-d one is a Python scalar.
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return to_jsonable(value.tolist(), strict=strict)
    if hasattr(value, "item") and callable(value.item):
        try:
            return to_jsonable(value.item(), strict=strict)
        except (TypeError, ValueError):
            pass
    if strict:
        raise NotJSONableError(
            f"a {type(value).__name__} is not a number, string, bool, list or dict"
        )
    return repr(value)


def encode_record(record: dict[str, Any]) -> bytes:
    """One newline-terminated line of JSON, schema field first."""
    data = {"schema": SCHEMA_VERSION, **{k: v for k, v in record.items() if k != "schema"}}
    line = json.dumps(to_jsonable(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (line + "\n").encode("utf-8")


def append_record(path: Path | str, record: dict[str, Any]) -> None:
    """Append ``record`` (plus ``"schema"``) to the log at ``path`` as one line.

    Safe against concurrent writers (exclusive ``flock`` around the write) and against a
    previous writer that died mid-line (a torn last line is closed with a newline first, so
    only that line is lost, never the one written now). ``fsync`` before unlocking so a record
    that was reported as appended survives a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = encode_record(record)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            while written < len(line):  # regular files write fully; this is belt and braces
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class BadLine(NamedTuple):
    """A line of the log that could not be read (1-based line number)."""

    lineno: int
    reason: str


@dataclasses.dataclass
class HistoryRead:
    """What :func:`read_history` found: the readable records and the lines it skipped."""

    records: list[dict[str, Any]]
    bad_lines: list[BadLine]

    def describe_bad_lines(self, filename: str = "history.jsonl") -> list[str]:
        """Human lines such as ``history.jsonl line 17 is truncated or malformed (skipped)``."""
        return [f"{filename} line {bad.lineno} {bad.reason} (skipped)" for bad in self.bad_lines]


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """Bring an older record up to schema 2.

    Schema 1 (no ``schema`` field) called the measured values ``metrics`` and the outcome
    ``status``. Records from a *newer* schema are kept as they are, marked with
    ``"newer_schema": True`` so readers know fields may have moved.
    """
    schema = record.get("schema", 1)
    if not isinstance(schema, int):
        schema = 1
    if schema == 1:
        record = dict(record)
        if "measured" not in record:
            record["measured"] = record.pop("metrics", {})
        if "outcome" not in record:
            record["outcome"] = record.pop("status", None)
        record["schema"] = SCHEMA_VERSION
        record["upgraded_from"] = 1
    elif schema > SCHEMA_VERSION:
        record = {**record, "newer_schema": True}
    return record


def read_history(path: Path | str) -> HistoryRead:
    """Every readable record of the log, oldest first; unreadable lines are reported, not fatal.

    A missing log is an empty history (nothing has run yet).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return HistoryRead([], [])
    records: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            bad.append(BadLine(lineno, "is truncated or malformed"))
            continue
        if not isinstance(record, dict):
            bad.append(BadLine(lineno, "is not a JSON object"))
            continue
        records.append(upgrade_record(record))
    return HistoryRead(records, bad)


# --- provenance: facts about the run that every record carries ------------------------------


def utc_now_iso() -> str:
    """Current time as ISO 8601 in UTC, to the second: ``2026-05-09T07:35:25+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """An id shared by every record of one pytest session (time-sortable, then random)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def package_versions() -> dict[str, str | None]:
    """Python and tracked package versions, from installed metadata (nothing is imported)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repo: Path) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout at ``repo``; ``(None, None)`` without git.

    ``dirty`` ignores untracked files: a new plot or scratch file does not make the code that
    produced a measurement different from the commit.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return (commit.strip() if commit else None), (None if status is None else bool(status.strip()))
