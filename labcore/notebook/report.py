"""``lab report``: the learning log as a Markdown/HTML page per paper and claim, with plots.

Reads only ``history.jsonl`` (through the summaries of ``labcore.notebook.log``): every record
carries the claim's statement, source, prediction and tolerance, so reports work without
importing claim files and still describe claims whose files have since changed or moved.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labcore.files import atomic_write_text
from labcore.notebook.claims import PAPER_ARXIV, PAPERS, DeclaredClaim
from labcore.notebook.history import HistoryRead, utc_now_iso
from labcore.notebook.log import (
    ERROR,
    HELD,
    NOT_HELD,
    NOT_YET_RUN,
    PARTLY_HELD,
    SKIPPED,
    VERDICT_LEGEND,
    ClaimSummary,
    short_test,
    short_time,
    summarise_claims,
    summarise_measured,
    outcome_of,
    verdicts_by_run,
)

#: HTML colours of the verdicts (green held, amber partly, red did not hold, grey otherwise).
VERDICT_COLOURS = {
    HELD: "#1a7f37", PARTLY_HELD: "#b35900", NOT_HELD: "#c62828",
    NOT_YET_RUN: "#6a6a6a", SKIPPED: "#6a6a6a", ERROR: "#8e24aa",
}


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
        ("verdict_h3", (summary.claim, summary.verdict)),
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
                [short_test(r), outcome_of(r), summarise_measured([r.get("measured") or {}], None),
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
        blocks.append(("para", VERDICT_LEGEND[0].upper() + VERDICT_LEGEND[1:] + "."))
    titles, arxiv_ids = dict(PAPERS), dict(PAPER_ARXIV)
    for paper in dict.fromkeys(s.paper for s in summaries):
        arxiv = ", ".join(arxiv_ids.get(paper, ()))
        title = titles.get(paper, paper)
        blocks.append(("h2", f"{title} ({paper}{', arXiv ' + arxiv if arxiv else ''})"))
        for summary in summaries:
            if summary.paper == paper:
                blocks += _claim_blocks(summary, results_root, out_dir)
    seen = {s.claim for s in summaries}
    never_run = sorted(d.id for d in declared if d.id not in seen)
    if never_run:
        blocks += [("h2", "Not yet run: written but never run"), ("para", ", ".join(never_run))]
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
        elif kind == "verdict_h3":
            out.append(f"### {content[0]} — {content[1]}")
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


def _html_cell(value: object) -> str:
    text = html.escape(str(value))
    colour = VERDICT_COLOURS.get(str(value))
    return f"<td style='color:{colour}'>{text}</td>" if colour else f"<td>{text}</td>"


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
        elif kind == "verdict_h3":
            claim, verdict = content
            colour = VERDICT_COLOURS.get(verdict, "#000")
            out.append(f"<h3>{esc(claim)} — <span class='verdict' style='color:{colour}'>{esc(verdict)}</span></h3>")
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
            body = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in rows)
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
