"""``lab report``: the learning log as a Markdown/HTML page per paper and claim, with plots.

Reads only ``history.jsonl`` (through the summaries of ``labcore.notebook.log``): every record
carries the claim's statement, source, prediction and tolerance, so reports work without
importing claim files and still describe claims whose files have since changed or moved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labcore.files import atomic_write_text
from labcore.notebook.claims import PAPER_ARXIV, PAPERS, DeclaredClaim
from labcore.notebook.history import HistoryRead, utc_now_iso
# The HTML format (one self-contained file: embedded plots, contents, attention viewer) lives in
# html_report; its rich cells (measured, messages, images) print their short text in Markdown.
from labcore.notebook.html_report import (
    VERDICT_COLOURS, attention_block, image_ref, measured_cell, message_cell, paper_table, render_html,
)
from labcore.notebook.log import (
    claim_status,
    VERDICT_LEGEND,
    ClaimSummary,
    short_test,
    short_time,
    summarise_claims,
    outcome_of,
    verdicts_by_run,
)

__all__ = ["VERDICT_COLOURS", "render_html", "render_markdown", "build_report_blocks", "write_report"]


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
            ("Status", claim_status(meta) + " (confirmed: passed on fresh seeds ≥ 100; exploratory: not yet)"),
            ("Tier and tags", ", ".join([str(meta.get("tier", "")), *(meta.get("tags") or [])])),
        ]),
        ("para", "Latest result of each test:"),
        ("table", (
            ["test", "outcome", "measured", "seed", "when", "message"],
            [
                [short_test(r), outcome_of(r), measured_cell([r.get("measured") or {}]),
                 r.get("seed", ""), short_time(r.get("time")), message_cell(r)]
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
            (Path(plot).stem, image_ref(Path(os.path.relpath(results_root / plot, out_dir)).as_posix(),
                                        results_root / plot)) for plot in plots
        ]))
    attention = attention_block(summary, results_root)
    return blocks + ([attention] if attention else [])


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
            ["claim", "paper", "verdict", "status", "last run"],
            [[s.claim, s.paper, s.verdict, claim_status(s.metadata), short_time(s.last_time)] for s in summaries],
        )))
        blocks.append(("para", VERDICT_LEGEND[0].upper() + VERDICT_LEGEND[1:] + "."))
    titles, arxiv_ids = dict(PAPERS), dict(PAPER_ARXIV)
    for paper in dict.fromkeys(s.paper for s in summaries):
        arxiv = ", ".join(arxiv_ids.get(paper, ()))
        title = titles.get(paper, paper)
        blocks.append(("h2", f"{title} ({paper}{', arXiv ' + arxiv if arxiv else ''})"))
        blocks.append(paper_table([s for s in summaries if s.paper == paper]))
        for summary in summaries:
            if summary.paper == paper:
                blocks += _claim_blocks(summary, results_root, out_dir)
    seen = {s.claim for s in summaries}
    never_run = sorted(d.id for d in declared if d.id not in seen)
    if never_run:
        blocks += [("h2", "Not yet run: written but never run"), ("para", ", ".join(never_run))]
    blocks += questions_blocks(declared)
    bad = history.describe_bad_lines(history_name)
    if bad:
        blocks += [("h2", "Unreadable log lines"), ("list", bad)]
    return blocks


def questions_blocks(declared: Sequence[DeclaredClaim] = ()) -> list[Block]:
    """The questions log (``lab ask``/``lab answer``): open ones first, then the answered."""
    from labcore.notebook.questions import QuestionError, load_questions, questions_path, select

    try:
        chosen = select(load_questions(questions_path()), declared)
    except QuestionError as error:
        return [("h2", "Questions"), ("para", str(error))]
    if not chosen:
        return []
    rows = [[q.get("id"), "answered by " + ", ".join(claims) if claims else "open", q.get("question")]
            for q, claims in sorted(chosen, key=lambda pair: bool(pair[1]))]
    return [("h2", "Questions"), ("table", (["id", "state", "question"], rows))]


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
        elif kind == "attention":  # the interactive viewer is in report.html
            out.append("Attention patterns (viewer in report.html): " + ", ".join(p.stem for p in content[1]))
    return "\n\n".join(out) + "\n"


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
