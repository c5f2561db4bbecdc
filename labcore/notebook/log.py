"""Reading the learning log back: verdicts per claim and run, and ``lab log`` (a table in the
terminal). ``lab report`` (``labcore.notebook.report``) builds on the summaries here.

Both read only ``history.jsonl``: every record carries the claim's statement, source,
prediction and tolerance, so reports work without importing claim files (no torch, no
training) and still describe claims whose files have since changed or moved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from labcore.notebook.claims import PAPERS, TAGS, TIERS, DeclaredClaim, did_you_mean
from labcore.notebook.history import HistoryRead

Record = dict[str, Any]

#: A claim's verdict, from the latest record of each of its tests (:func:`claim_verdict`).
#: Honest on purpose: a strict xfail in this lab means "the paper's claim does not hold at our
#: scale", so it counts against the claim, never as fine.
HELD = "held"                  # every test that ran passed
PARTLY_HELD = "partly held"    # some passed, some failed or xfailed
NOT_HELD = "did not hold"      # every test that ran failed or xfailed
NOT_YET_RUN = "not yet run"    # an experiment still to write (lab.not_yet_run), or never run
SKIPPED = "skipped"            # nothing ran on this machine (no GPU, no model wheel)
ERROR = "error"                # a test crashed (setup/teardown error): no verdict can be trusted

VERDICTS = (HELD, PARTLY_HELD, NOT_HELD, NOT_YET_RUN, SKIPPED, ERROR)

VERDICT_LEGEND = (
    "verdicts: held = every test that ran passed · partly held = some passed, some failed or xfailed · "
    "did not hold = all failed or xfailed (an xfail: the claim does not hold at our scale) · "
    "not yet run = no experiment yet, or never run · skipped = could not run here · error = a test crashed"
)

#: Test outcomes, worst first (for "1 failed, 2 passed").
_OUTCOME_ORDER = ("error", NOT_YET_RUN, "failed", "xfailed", "xpassed", "passed", "skipped")
_GOOD_OUTCOMES = frozenset({"passed", "xpassed"})  # xpassed: a non-strict xfail that held after all


# --- small formatting helpers -------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain fixed-width text table (no dependencies, copy-pastes into issues)."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in text_rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]
    lines = [
        "  ".join(header.ljust(width) for header, width in zip(headers, widths)).rstrip(),
        "  ".join("-" * width for width in widths),
    ]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in text_rows]
    return "\n".join(lines)


def short_time(iso: object) -> str:
    """``2026-05-09T07:35:25+00:00`` -> ``2026-05-09 07:35`` (UTC)."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_format_value(item) for item in value[:4])
        return f"[{shown}{', ...' if len(value) > 4 else ''}]"
    return str(value)


def _clip(text: object, max_chars: int) -> str:
    text = str(text)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def summarise_measured(measured_dicts: Sequence[dict[str, Any]], max_chars: int | None = 70) -> str:
    """``rel_err=0.003..0.012, d_k=4..1024`` — one range or value per measured key."""
    values_by_key: dict[str, list[Any]] = {}
    for measured in measured_dicts:
        for key, value in (measured or {}).items():
            values_by_key.setdefault(key, []).append(value)
    parts = []
    for key, values in values_by_key.items():
        numbers = [value for value in values if is_number(value)]
        if numbers and len(numbers) == len(values):
            low, high = min(numbers), max(numbers)
            shown = _format_value(low) if low == high else f"{_format_value(low)}..{_format_value(high)}"
        else:
            distinct = list(dict.fromkeys(_format_value(value) for value in values))
            shown = "/".join(distinct[:3]) + ("/..." if len(distinct) > 3 else "")
        parts.append(f"{key}={shown}")
    text = ", ".join(parts)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return text


# --- selecting and summarising records ----------------------------------------------------------


def record_matches(record: Record, *, claim: str | None = None, marker: str | None = None) -> bool:
    """Does the record belong to claim ``claim`` and carry marker ``marker`` (claim id, paper,
    tier or tag)?"""
    if claim is not None and record.get("claim") != claim:
        return False
    if marker is not None:
        markers = {record.get("claim"), record.get("paper"), record.get("tier"), *(record.get("tags") or ())}
        if marker not in markers:
            return False
    return True


def outcome_of(record: Record) -> str:
    """A record's outcome, with a ``lab.not_yet_run()`` failure told apart as "not yet run"."""
    outcome = str(record.get("outcome") or "")
    if outcome == "failed" and str(record.get("message") or "").startswith("not yet run"):
        return NOT_YET_RUN
    return outcome


def claim_status(record: Record) -> str:
    """A record's claim status (``Claim.status``); records written before the field existed come
    from claims that were all exploratory."""
    return str(record.get("status") or "exploratory")


def claim_verdict(outcomes: Iterable[str]) -> str:
    """The honest verdict of a claim from its tests' outcomes (as :func:`outcome_of` gives):
    held, partly held, did not hold, not yet run, skipped or error. No outcomes: not yet run."""
    present = [outcome for outcome in outcomes if outcome]
    if not present or NOT_YET_RUN in present:
        return NOT_YET_RUN
    if "error" in present:
        return ERROR
    ran = [outcome for outcome in present if outcome != "skipped"]
    if not ran:
        return SKIPPED
    good = sum(outcome in _GOOD_OUTCOMES for outcome in ran)
    if good == len(ran):
        return HELD
    return NOT_HELD if good == 0 else PARTLY_HELD


def records_verdict(records: Iterable[Record]) -> str:
    """:func:`claim_verdict` of the records (one per test: pass the latest of each)."""
    return claim_verdict(outcome_of(record) for record in records)


def count_outcomes(outcomes: Iterable[str]) -> str:
    """``3 passed, 1 skipped``, worst outcomes first."""
    counts = Counter(outcomes)
    ordered = [o for o in _OUTCOME_ORDER if o in counts] + sorted(set(counts) - set(_OUTCOME_ORDER))
    return ", ".join(f"{counts[o]} {o}" for o in ordered)


@dataclass
class ClaimSummary:
    """The current state of one claim: the latest record of each of its tests."""

    claim: str
    paper: str
    latest: list[Record]            # latest record per test node id
    records: list[Record]           # every record of the claim, oldest first

    @property
    def verdict(self) -> str:
        return records_verdict(self.latest)

    @property
    def last_time(self) -> str:
        return max(str(record.get("time", "")) for record in self.latest)

    @property
    def metadata(self) -> Record:
        """Claim fields (statement, source, ...) as of its most recent record."""
        return self.records[-1]



def _latest_per_test(records: Iterable[Record]) -> list[Record]:
    latest: dict[str, Record] = {}
    for record in records:  # file order is append order, so the last one wins
        latest[str(record.get("test"))] = record
    return list(latest.values())


def summarise_claims(records: Sequence[Record]) -> list[ClaimSummary]:
    """One summary per claim, ordered by paper (as in PAPERS) then claim id."""
    by_claim: dict[str, list[Record]] = {}
    for record in records:
        by_claim.setdefault(str(record.get("claim")), []).append(record)
    summaries = []
    for claim, claim_records in by_claim.items():
        paper = str(claim_records[-1].get("paper"))
        summaries.append(ClaimSummary(claim, paper, _latest_per_test(claim_records), claim_records))
    papers = list(PAPERS)  # read the registry once, not once per claim

    def paper_rank(paper: str) -> int:
        return papers.index(paper) if paper in papers else len(papers)

    summaries.sort(key=lambda summary: (paper_rank(summary.paper), summary.paper, summary.claim))
    return summaries


@dataclass(frozen=True)
class RunVerdict:
    """A claim's verdict in one pytest session (run)."""

    claim: str
    run_id: str
    time: str
    verdict: str
    outcomes: str


def verdicts_by_run(records: Sequence[Record]) -> list[RunVerdict]:
    """Per claim and run, oldest first. Records without a run id (schema 1) count as one run
    per timestamp."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        run = str(record.get("run_id") or record.get("time"))
        groups.setdefault((str(record.get("claim")), run), []).append(record)
    verdicts = [
        RunVerdict(
            claim=claim,
            run_id=run,
            time=min(str(r.get("time", "")) for r in group),
            verdict=records_verdict(_latest_per_test(group)),
            outcomes=count_outcomes(outcome_of(r) for r in group),
        )
        for (claim, run), group in groups.items()
    ]
    verdicts.sort(key=lambda verdict: verdict.time)
    return verdicts


@dataclass(frozen=True)
class VerdictChange:
    """A claim whose verdict differs from its previous run's (skipped runs are ignored:
    a machine without a GPU says nothing about the claim)."""

    claim: str
    time: str
    before: str
    after: str
    run_id: str


def verdict_changes(records: Sequence[Record]) -> list[VerdictChange]:
    changes = []
    previous: dict[str, str] = {}
    for run in verdicts_by_run(records):
        if run.verdict == "skipped":
            continue
        before = previous.get(run.claim)
        if before is not None and before != run.verdict:
            changes.append(VerdictChange(run.claim, run.time, before, run.verdict, run.run_id))
        previous[run.claim] = run.verdict
    return changes


# --- lab log ---------------------------------------------------------------------------------------


def short_test(record: Record) -> str:
    return str(record.get("test", "")).split("::", 1)[-1]


def render_log(
    history: HistoryRead,
    *,
    claim: str | None = None,
    marker: str | None = None,
    show_all: bool = False,
    changes: bool = False,
    declared: Sequence[DeclaredClaim] = (),
    history_name: str = "history.jsonl",
) -> str:
    """The text ``lab log`` prints: latest verdict per claim (default), every record
    (``show_all``) or verdict changes (``changes``); bad log lines in a footer."""
    records = [r for r in history.records if record_matches(r, claim=claim, marker=marker)]
    seen = {str(r.get("claim")) for r in history.records}
    never_run = [
        d for d in declared
        if d.id not in seen and (claim is None or claim == d.id) and (marker is None or marker in (d.paper, d.tier, d.id))
    ]
    blocks: list[str] = []
    if not records:
        filters = " and ".join(f for f in (claim and f"claim {claim}", marker and f"marker {marker}") if f)
        blocks.append(
            f"No records{' for ' + filters if filters else ''} in {history_name} yet: "
            "run `lab run` (or `pytest -m quick claims`) first."
        )
    if not records and (show_all or changes or not never_run):
        pass
    elif changes:
        found = verdict_changes(records)
        blocks.append(
            format_table(
                ["when", "claim", "change", "run"],
                [[short_time(c.time), c.claim, f"{c.before} -> {c.after}", c.run_id] for c in found],
            )
            if found
            else "No verdict changes: every claim kept the verdict of its first run."
        )
    elif show_all:
        blocks.append(_records_table(records))
    else:
        blocks += [_verdicts_table(records, never_run), VERDICT_LEGEND]
    footer = history.describe_bad_lines(history_name)
    if footer:
        blocks.append("\n".join(footer))
    return "\n\n".join(blocks)


class UnknownFilterError(ValueError):
    """``lab log --claim``/``--paper`` names nothing the lab knows (a typo, most likely)."""


def check_log_filters(claim: str | None, marker: str | None, records: Sequence[dict], declared: Sequence[DeclaredClaim]) -> None:
    """An unknown ``--claim`` or ``--paper`` is a typo, not "no records yet": say so."""
    claim_ids = {str(r.get("claim")) for r in records} | {d.id for d in declared}
    if claim is not None and claim not in claim_ids:
        raise UnknownFilterError(
            f"claim {claim!r} is unknown (not in the history, no claim file declares it);"
            f"{did_you_mean(claim, list(claim_ids)) or ' lab log lists the claims'}"
        )
    if marker is not None:
        markers = claim_ids | set(PAPERS) | set(TIERS) | set(TAGS) | {str(r.get("paper")) for r in records}
        if marker not in markers:
            raise UnknownFilterError(
                f"marker {marker!r} is unknown;{did_you_mean(marker, list(markers)) or ' lab log lists the claims'}"
                f" (papers: {', '.join(PAPERS)}; tiers: {', '.join(TIERS)}; tags: {', '.join(TAGS)})"
            )


def _records_table(records: Sequence[Record]) -> str:
    """``lab log --all``: every record, oldest first, with its run id (for ``lab log --diff``)."""
    return format_table(
        ["when", "claim", "test", "outcome", "seed", "run", "measured / message"],
        [
            [
                short_time(r.get("time")), r.get("claim"), short_test(r), r.get("outcome"), r.get("seed", ""),
                r.get("run_id") or "",
                summarise_measured([r.get("measured") or {}], 60) or _clip(r.get("message", ""), 80),
            ]
            for r in records
        ],
    )


def _verdicts_table(records: Sequence[Record], never_run: Sequence[DeclaredClaim] = ()) -> str:
    """``lab log``: the latest verdict of each claim; claims written but never run last."""
    rows = [
        [s.claim, s.paper, s.verdict, claim_status(s.metadata), count_outcomes(outcome_of(r) for r in s.latest),
         short_time(s.last_time), summarise_measured([r.get("measured") or {} for r in s.latest])]
        for s in summarise_claims(records)
    ]
    rows += [[d.id, d.paper or "?", NOT_YET_RUN, d.status or "exploratory", "never run", "", ""]
             for d in sorted(never_run, key=lambda d: d.id)]
    return format_table(["claim", "paper", "verdict", "status", "tests", "last run", "measured"], rows)


def render_run_summary(records: Sequence[Record]) -> str:
    """What ``lab run`` prints at the end: claim, paper and verdict of each claim this run
    touched (from this run's records only), a count per verdict, and the legend."""
    summaries = summarise_claims(records)
    if not summaries:
        return "lab run: no claim records were written by this run."
    counts = Counter(s.verdict for s in summaries)
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
    return "\n".join([
        format_table(["claim", "paper", "verdict"], [[s.claim, s.paper, s.verdict] for s in summaries]),
        "",
        f"{len(summaries)} claims: {tally}",
        VERDICT_LEGEND,
    ])


def render_durations(history: HistoryRead, *, marker: str | None = None, slowest: int = 10) -> str:
    """Wall time of the latest record of every test: per paper, in total, and the slowest tests.

    This is how the quick tier's budget (≤ 90 s per claim test, minutes per paper) is checked:
    from what the runs measured, never with a timed assertion.
    """
    latest: dict[str, Record] = {}
    for record in history.records:
        if record_matches(record, marker=marker) and record.get("outcome") != "skipped":
            latest[str(record.get("test"))] = record  # later records replace earlier ones
    if not latest:
        return "No timed records yet: run `lab run` first."
    per_paper: dict[str, float] = {}
    for record in latest.values():
        paper = str(record.get("paper"))
        per_paper[paper] = per_paper.get(paper, 0.0) + float(record.get("duration_s") or 0.0)
    rows = [[paper, f"{seconds:.1f}", f"{seconds / 60:.2f}"] for paper, seconds in sorted(per_paper.items())]
    rows.append(["total", f"{sum(per_paper.values()):.1f}", f"{sum(per_paper.values()) / 60:.2f}"])
    by_time = sorted(latest.values(), key=lambda r: -float(r.get("duration_s") or 0.0))[:slowest]
    slow_rows = [[f"{float(r.get('duration_s') or 0):.1f}", r.get("claim"), short_test(r), short_time(r.get("time"))]
                 for r in by_time]
    return "\n\n".join([
        format_table(["paper", "seconds", "minutes"], rows),
        f"Slowest {len(slow_rows)} tests (latest run of each; shared fixtures are charged to the first test that uses them):",
        format_table(["seconds", "claim", "test", "when"], slow_rows),
    ])
