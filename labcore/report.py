"""Reading the learning log back: ``lab log`` (a table in the terminal) and ``lab report``
(a Markdown/HTML page per paper and claim, with plots).

Both read only ``history.jsonl``: every record carries the claim's statement, source,
prediction and tolerance, so reports work without importing claim files (no torch, no
training) and still describe claims whose files have since changed or moved.
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from labcore.claims import PAPER_ARXIV, PAPERS, DeclaredClaim
from labcore.history import HistoryRead, utc_now_iso
from labcore.plots import atomic_write_text

Record = dict[str, Any]

#: Worst first: the verdict of a claim is the worst outcome among its tests' latest results,
#: except that skipped tests say nothing and expected failures (xfailed) count as fine.
_VERDICT_ORDER = ("error", "failed", "xpassed", "passed", "xfailed", "skipped")


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


def _is_number(value: object) -> bool:
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
        numbers = [value for value in values if _is_number(value)]
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


def claim_verdict(outcomes: Iterable[str]) -> str:
    """One verdict for a set of test outcomes (see ``_VERDICT_ORDER``)."""
    present = {outcome for outcome in outcomes if outcome}
    for verdict in _VERDICT_ORDER:
        if verdict in present:
            return verdict
    return "unknown" if present else "skipped"


def count_outcomes(outcomes: Iterable[str]) -> str:
    """``3 passed, 1 skipped``, worst outcomes first."""
    counts = Counter(outcomes)
    ordered = [o for o in _VERDICT_ORDER if o in counts] + sorted(set(counts) - set(_VERDICT_ORDER))
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
        return claim_verdict(record.get("outcome", "") for record in self.latest)

    @property
    def last_time(self) -> str:
        return max(str(record.get("time", "")) for record in self.latest)

    @property
    def metadata(self) -> Record:
        """Claim fields (statement, source, ...) as of its most recent record."""
        return self.records[-1]


def _paper_rank(paper: str) -> int:
    papers = list(PAPERS)
    return papers.index(paper) if paper in papers else len(papers)


def summarise_claims(records: Sequence[Record]) -> list[ClaimSummary]:
    """One summary per claim, ordered by paper (as in PAPERS) then claim id."""
    by_claim: dict[str, list[Record]] = {}
    for record in records:
        by_claim.setdefault(str(record.get("claim")), []).append(record)
    summaries = []
    for claim, claim_records in by_claim.items():
        latest_by_test: dict[str, Record] = {}
        for record in claim_records:  # file order is append order, so the last one wins
            latest_by_test[str(record.get("test"))] = record
        paper = str(claim_records[-1].get("paper"))
        summaries.append(ClaimSummary(claim, paper, list(latest_by_test.values()), claim_records))
    summaries.sort(key=lambda summary: (_paper_rank(summary.paper), summary.paper, summary.claim))
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
            verdict=claim_verdict(r.get("outcome", "") for r in group),
            outcomes=count_outcomes(r.get("outcome", "") for r in group),
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


def _short_test(record: Record) -> str:
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
    blocks: list[str] = []
    if not records:
        filters = " and ".join(f for f in (claim and f"claim {claim}", marker and f"marker {marker}") if f)
        blocks.append(
            f"No records{' for ' + filters if filters else ''} in {history_name} yet: "
            "run `lab run` (or `pytest -m quick claims`) first."
        )
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
        blocks.append(
            format_table(
                ["when", "claim", "test", "outcome", "seed", "measured / message"],
                [
                    [
                        short_time(r.get("time")), r.get("claim"), _short_test(r), r.get("outcome"),
                        r.get("seed", ""),
                        summarise_measured([r.get("measured") or {}], 60) or _clip(r.get("message", ""), 80),
                    ]
                    for r in records
                ],
            )
        )
    else:
        blocks.append(
            format_table(
                ["claim", "paper", "verdict", "tests", "last run", "measured"],
                [
                    [s.claim, s.paper, s.verdict, count_outcomes(r.get("outcome", "") for r in s.latest),
                     short_time(s.last_time), summarise_measured([r.get("measured") or {} for r in s.latest])]
                    for s in summarise_claims(records)
                ],
            )
        )
    if claim is None and not show_all and not changes:
        seen = {str(r.get("claim")) for r in history.records}
        never_run = [d.id for d in declared if d.id not in seen and (marker is None or marker == d.paper)]
        if never_run:
            blocks.append("Never run: " + ", ".join(sorted(never_run)))
    footer = history.describe_bad_lines(history_name)
    if footer:
        blocks.append("\n".join(footer))
    return "\n\n".join(blocks)


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
    slow_rows = [[f"{float(r.get('duration_s') or 0):.1f}", r.get("claim"), _short_test(r), short_time(r.get("time"))]
                 for r in by_time]
    return "\n\n".join([
        format_table(["paper", "seconds", "minutes"], rows),
        f"Slowest {len(slow_rows)} tests (latest run of each; shared fixtures are charged to the first test that uses them):",
        format_table(["seconds", "claim", "test", "when"], slow_rows),
    ])


# --- lab report ------------------------------------------------------------------------------------
#
# The report is built as a list of simple blocks, then rendered to Markdown or HTML, so both
# formats always say the same thing.

Block = tuple[str, Any]


def _claim_blocks(summary: ClaimSummary, results_root: Path, out_dir: Path) -> list[Block]:
    meta = summary.metadata
    source = meta.get("source") or {}
    if isinstance(source, dict):
        cite = (
            f"{source.get('title', '')}, arXiv:{source.get('arxiv', '')}{source.get('version', '')}, "
            f"{source.get('where', '')}"
        )
    else:
        cite = str(source)
    blocks: list[Block] = [
        ("h3", f"{summary.claim} — {summary.verdict}"),
        ("quote", " ".join(str(meta.get("statement", "")).split())),
        ("fields", [
            ("Source", cite),
            ("Prediction", meta.get("prediction", "")),
            ("Paper value", meta.get("paper_value", "") or "—"),
            ("Metric", meta.get("metric", "")),
            ("Tolerance", meta.get("tolerance", "")),
            ("Why this tolerance", meta.get("tolerance_why", "")),
            ("Tier and tags", ", ".join([str(meta.get("tier", "")), *(meta.get("tags") or [])])),
        ]),
        ("para", "Latest result of each test:"),
        ("table", (
            ["test", "outcome", "measured", "seed", "when", "message"],
            [
                [_short_test(r), r.get("outcome", ""), summarise_measured([r.get("measured") or {}], None),
                 r.get("seed", ""), short_time(r.get("time")), r.get("message", "")]
                for r in summary.latest
            ],
        )),
    ]
    runs = [run for run in verdicts_by_run(summary.records)]
    history_line = " · ".join(f"{short_time(run.time)} {run.verdict}" for run in runs[-20:])
    if len(runs) > 20:
        history_line = f"(last 20 of {len(runs)} runs) " + history_line
    blocks.append(("para", f"Verdict history: {history_line}"))
    plots = []
    for record in summary.latest:
        for plot in record.get("plots") or []:
            if plot not in plots and (results_root / plot).is_file():
                plots.append(plot)
    if plots:
        blocks.append(("images", [
            (Path(plot).stem, Path(os.path.relpath(results_root / plot, out_dir)).as_posix()) for plot in plots
        ]))
    return blocks


def build_report_blocks(
    history: HistoryRead,
    *,
    results_root: Path,
    out_dir: Path,
    declared: Sequence[DeclaredClaim] = (),
    history_name: str = "history.jsonl",
) -> list[Block]:
    """The whole report as blocks: per paper, per claim."""
    summaries = summarise_claims(history.records)
    blocks: list[Block] = [
        ("h1", "LLM Learning Lab — what the papers claim, and what we measured"),
        ("para", f"Generated {short_time(utc_now_iso())} UTC from {history_name}: "
                 f"{len(history.records)} records, {len(summaries)} claims."),
    ]
    if summaries:
        blocks.append(("table", (
            ["claim", "paper", "verdict", "last run"],
            [[s.claim, s.paper, s.verdict, short_time(s.last_time)] for s in summaries],
        )))
    for paper in dict.fromkeys(s.paper for s in summaries):
        arxiv = ", ".join(PAPER_ARXIV.get(paper, ()))
        title = PAPERS.get(paper, paper)
        blocks.append(("h2", f"{title} ({paper}{', arXiv ' + arxiv if arxiv else ''})"))
        for summary in summaries:
            if summary.paper == paper:
                blocks += _claim_blocks(summary, results_root, out_dir)
    seen = {s.claim for s in summaries}
    never_run = sorted(d.id for d in declared if d.id not in seen)
    if never_run:
        blocks += [("h2", "Written but never run"), ("para", ", ".join(never_run))]
    bad = history.describe_bad_lines(history_name)
    if bad:
        blocks += [("h2", "Unreadable log lines"), ("list", bad)]
    return blocks


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + content)
        elif kind == "quote":
            out.append("> " + content)
        elif kind == "fields":
            out.append("\n".join(f"- **{label}:** {value}" for label, value in content))
        elif kind == "para":
            out.append(content)
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in content))
        elif kind == "table":
            headers, rows = content
            lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "images":
            out.append("\n".join(f"![{alt}]({src})" for alt, src in content))
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block]) -> str:
    esc = html.escape
    out = [
        "<!doctype html>", "<html><head><meta charset='utf-8'><title>LLM Learning Lab report</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "blockquote{color:#444;border-left:3px solid #ccc;padding-left:1em}img{max-width:45%}</style>",
        "</head><body>",
    ]
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{esc(content)}</{kind}>")
        elif kind == "quote":
            out.append(f"<blockquote>{esc(content)}</blockquote>")
        elif kind == "fields":
            out.append("<ul>" + "".join(f"<li><b>{esc(l)}:</b> {esc(str(v))}</li>" for l, v in content) + "</ul>")
        elif kind == "para":
            out.append(f"<p>{esc(content)}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in content) + "</ul>")
        elif kind == "table":
            headers, rows = content
            head = "".join(f"<th>{esc(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "images":
            out.append("".join(f"<img alt='{esc(alt)}' src='{esc(src)}'>" for alt, src in content))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


REPORT_FORMATS = ("md", "html", "both")


def write_report(
    history: HistoryRead,
    out_dir: Path,
    *,
    results_root: Path,
    report_format: str = "md",
    declared: Sequence[DeclaredClaim] = (),
    history_name: str = "history.jsonl",
) -> list[Path]:
    """Write ``report.md`` and/or ``report.html`` into ``out_dir``; return the paths written."""
    if report_format not in REPORT_FORMATS:
        raise ValueError(f"report format {report_format!r} is unknown; use one of {', '.join(REPORT_FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = build_report_blocks(
        history, results_root=results_root, out_dir=out_dir, declared=declared, history_name=history_name
    )
    written = []
    if report_format in ("md", "both"):
        written.append(atomic_write_text(out_dir / "report.md", render_markdown(blocks)))
    if report_format in ("html", "both"):
        written.append(atomic_write_text(out_dir / "report.html", render_html(blocks)))
    return written
