"""``lab scoreboard``: how good were your predictions? And the ledger that keeps them honest.

**The ledger.** The first time a claim produces a result (a test passed, failed, xfailed or
xpassed — not "not yet run", not skipped), the recorder appends the claim's predictions, as they
were declared in that run, to ``<results>/predictions.jsonl`` — one JSON line per claim, never
rewritten. The results folder is untracked, so CI and the tests never write into the checkout;
``lab predictions --export`` merges it into the tracked ``predictions/ledger.jsonl`` (sorted by
claim, one line each: a diff-friendly file a learner commits). The first-recorded version of a
claim's predictions is the earliest of: the tracked ledger, the results ledger, and the first
history record with a result.

**The scoreboard** scores the first-recorded predictions against the latest result of each test
(:func:`labcore.notebook.predictions.score`), so editing a prediction after the result cannot
improve the score: the edit is flagged "edited after the result", a prediction added after the
result is shown but not counted ("post-hoc"), a removed one still counts.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcore.files import atomic_write_text, results_dir
from labcore.notebook.history import HistoryRead, utc_now_iso
from labcore.notebook.log import format_table, outcome_of, short_time, summarise_claims
from labcore.notebook.predictions import HIT, MISS, UNSCORABLE, describe, score

Record = dict[str, Any]

LEDGER_NAME = "predictions.jsonl"
EXPORT_PATH = Path("predictions") / "ledger.jsonl"
NOT_YET_RUN = "not yet run"
#: Outcomes that mean an experiment ran and produced a result.
RESULT_OUTCOMES = frozenset({"passed", "failed", "xfailed", "xpassed"})
#: Confidence bins of the reliability table (lower edges; the last bin includes 1.0).
BIN_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
SURPRISE_CONFIDENCE = 0.7


def ledger_path() -> Path:
    """The results folder's ledger (written by the recorder during runs)."""
    return results_dir() / LEDGER_NAME


def has_result(record: Record) -> bool:
    return outcome_of(record) in RESULT_OUTCOMES


def ledger_entry(record: Record) -> Record:
    return {"claim": record.get("claim"), "paper": record.get("paper"), "time": record.get("time") or utc_now_iso(),
            "run_id": record.get("run_id"), "commit": record.get("commit"),
            "prediction": record.get("prediction"), "predictions": record.get("predictions") or []}


def note_first_result(path: Path, record: Record) -> bool:
    """Append the claim's predictions to the ledger at ``path`` if this record is the claim's
    first result there. Locked (xdist workers append at once). Returns whether it wrote."""
    if not has_result(record):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as handle:
            if any(entry.get("claim") == record.get("claim") for entry in _parse_lines(handle.read())):
                return False
        line = json.dumps(ledger_entry(record), ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(fd, line.encode("utf-8"))
        return True
    finally:
        os.close(fd)  # closing releases the lock


def _parse_lines(text: str) -> list[Record]:
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn line: the next run of that claim writes it again
        if isinstance(entry, dict) and entry.get("claim"):
            entries.append(entry)
    return entries


def read_ledger(path: Path) -> list[Record]:
    try:
        return _parse_lines(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []


def first_versions(records: list[Record], *ledgers: list[Record]) -> dict[str, Record]:
    """Per claim, the earliest recorded predictions: from the ledgers or the first history record
    with a result (records written before predictions existed count as "no predictions")."""
    first: dict[str, Record] = {}
    candidates = [entry for ledger in ledgers for entry in ledger]
    candidates += [ledger_entry(r) for r in records if has_result(r)]
    for entry in candidates:
        claim = str(entry.get("claim"))
        if claim not in first or str(entry.get("time")) < str(first[claim].get("time")):
            first[claim] = entry
    return first


def export_ledger(root: Path, results_ledger: Path) -> tuple[Path, int]:
    """Merge the results ledger into ``<root>/predictions/ledger.jsonl`` (the earliest entry per
    claim wins; sorted by claim). Returns the path and how many claims were added."""
    target = root / EXPORT_PATH
    tracked = read_ledger(target)
    merged = first_versions([], tracked, read_ledger(results_ledger))
    added = len(set(merged) - {str(e.get("claim")) for e in tracked})
    lines = [json.dumps(merged[claim], ensure_ascii=False, separators=(",", ":")) for claim in sorted(merged)]
    atomic_write_text(target, "".join(line + "\n" for line in lines))
    return target, added


# --- scoring ---------------------------------------------------------------------------------------


def _key(prediction: Record) -> tuple[str, str]:
    return str(prediction.get("measured_key")), str(prediction.get("comparator"))


@dataclass
class Scored:
    """One prediction of one claim, scored against the claim's latest results."""

    claim: str
    paper: str
    prediction: Record
    outcome: str                      # hit | miss | unscorable | not yet run
    values: list[float] = field(default_factory=list)
    counted: bool = True              # False: added after the result (post-hoc)


@dataclass
class Board:
    scored: list[Scored]
    flags: list[tuple[str, str, str]]  # (claim, what changed, first recorded at)


def _edits(claim: str, first: Record, current: Record) -> list[tuple[str, str, str]]:
    when = short_time(first.get("time"))
    before = {_key(p): p for p in first.get("predictions") or []}
    after = {_key(p): p for p in current.get("predictions") or []}
    flags = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key), after.get(key)
        if old is None and new is not None:
            flags.append((claim, f"added after the result: {describe(new)} (not counted)", when))
        elif new is None and old is not None:
            flags.append((claim, f"removed after the result: {describe(old)} (still counted)", when))
        elif old != new and old is not None and new is not None:
            flags.append((claim, f"edited after the result: {describe(old)} -> {describe(new)} (first version counted)", when))
    if (first.get("prediction") or "") != (current.get("prediction") or ""):
        flags.append((claim, "prediction text edited after the result", when))
    return flags


def build_board(records: list[Record], ledgers: tuple[list[Record], ...] = (), paper: str | None = None) -> Board:
    """Score every claim's predictions (first-recorded version) against its latest results."""
    firsts = first_versions(records, *ledgers)
    scored: list[Scored] = []
    flags: list[tuple[str, str, str]] = []
    for summary in summarise_claims(records):
        if paper is not None and summary.paper != paper:
            continue
        current = summary.metadata
        first = firsts.get(summary.claim)
        counted = list(first.get("predictions") or []) if first else list(current.get("predictions") or [])
        post_hoc = [p for p in current.get("predictions") or [] if first and _key(p) not in {_key(c) for c in counted}]
        if first:
            flags += _edits(summary.claim, first, current)
        results = [r.get("measured") or {} for r in summary.latest if has_result(r)]
        for prediction, is_counted in [(p, True) for p in counted] + [(p, False) for p in post_hoc]:
            outcome, values = score(prediction, results) if results else (NOT_YET_RUN, [])
            scored.append(Scored(summary.claim, summary.paper, prediction, outcome, values, is_counted))
    return Board(scored, flags)


def brier(scored: list[Scored]) -> float | None:
    """Mean squared gap between confidence and outcome (1 hit, 0 miss); 0 is perfect, 0.25 is
    what "50 % on everything" scores."""
    judged = [s for s in scored if s.counted and s.outcome in (HIT, MISS)]
    if not judged:
        return None
    return sum((float(s.prediction.get("confidence", 0.5)) - (s.outcome == HIT)) ** 2 for s in judged) / len(judged)


def reliability(scored: list[Scored]) -> list[tuple[str, int, float, float]]:
    """(bin, n, mean confidence, hit rate) for the bins that hold a judged prediction."""
    judged = [s for s in scored if s.counted and s.outcome in (HIT, MISS)]
    rows = []
    for index, low in enumerate(BIN_EDGES):
        high = BIN_EDGES[index + 1] if index + 1 < len(BIN_EDGES) else 1.0
        last = index + 1 == len(BIN_EDGES)
        inside = [s for s in judged if low <= float(s.prediction.get("confidence", 0)) < high
                  or (last and float(s.prediction.get("confidence", 0)) == 1.0)]
        if inside:
            confidence = sum(float(s.prediction.get("confidence", 0)) for s in inside) / len(inside)
            hit_rate = sum(s.outcome == HIT for s in inside) / len(inside)
            rows.append((f"{low:.0%}–{high:.0%}{']' if last else ')'}", len(inside), confidence, hit_rate))
    return rows


def _values(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:4])
    return shown + (", ..." if len(values) > 4 else "")


def _paper_rows(scored: list[Scored]) -> list[list[object]]:
    rows = []
    for paper in dict.fromkeys(s.paper for s in scored):
        mine = [s for s in scored if s.paper == paper and s.counted]
        hits, misses = sum(s.outcome == HIT for s in mine), sum(s.outcome == MISS for s in mine)
        rows.append([paper, len({s.claim for s in mine}), len(mine), hits, misses,
                     sum(s.outcome == UNSCORABLE for s in mine), sum(s.outcome == NOT_YET_RUN for s in mine),
                     f"{hits / (hits + misses):.0%}" if hits + misses else "—"])
    return rows


def render_scoreboard(board: Board) -> str:
    """The text ``lab scoreboard`` prints."""
    if not board.scored and not board.flags:
        return ("No structured predictions in the history yet: add predictions=(Prediction(key, '<=', value, "
                "confidence=0.7),) to a claim, run it, then lab scoreboard.")
    blocks = [format_table(["paper", "claims", "predictions", "hits", "misses", "unscorable", "not yet run", "hit rate"],
                           _paper_rows(board.scored))]
    score_value = brier(board.scored)
    blocks.append("Brier score: " + (f"{score_value:.3f} (0 is perfect; 0.25 = saying 50% on everything)"
                                     if score_value is not None else "— (no prediction judged yet)"))
    table = reliability(board.scored)
    if table:
        blocks.append("Reliability (a calibrated forecaster's hit rate matches the confidence):\n" + format_table(
            ["confidence", "n", "mean confidence", "hit rate"], [[b, n, f"{c:.0%}", f"{h:.0%}"] for b, n, c, h in table]))
    blocks.append(format_table(
        ["claim", "prediction", "outcome", "measured"],
        [[s.claim, describe(s.prediction), s.outcome + ("" if s.counted else " (post-hoc, not counted)"),
          _values(s.values) if s.values else ("no test recorded it" if s.outcome == UNSCORABLE else "")]
         for s in board.scored]))
    surprises = sorted((s for s in board.scored if s.counted and s.outcome == MISS
                        and float(s.prediction.get("confidence", 0)) >= SURPRISE_CONFIDENCE),
                       key=lambda s: -float(s.prediction.get("confidence", 0)))[:5]
    if surprises:
        blocks.append("Biggest surprises (confident predictions that missed):\n" + "\n".join(
            f"  {s.claim}: {describe(s.prediction)}, measured {_values(s.values)}" for s in surprises))
    if board.flags:
        blocks.append("Edited after the result (first recorded version is the one scored):\n" + format_table(
            ["claim", "change", "first recorded"], [list(flag) for flag in board.flags]))
    return "\n\n".join(blocks)


def scoreboard_text(history: HistoryRead, ledgers: tuple[list[Record], ...], paper: str | None = None) -> str:
    return render_scoreboard(build_board(history.records, ledgers, paper))
