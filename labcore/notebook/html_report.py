"""``lab report --format html``: one self-contained HTML file.

Everything the page shows travels inside it, so it can be moved, mailed or opened from any
``--out`` folder: plots as base64 ``data:`` URIs, the attention viewer's script, style and data
inline (``labcore.notebook.viewer``), no network references (plain ``<a>`` citation links to
arxiv.org aside). On top of the blocks ``labcore.notebook.report`` builds for both formats, the
HTML adds a table of contents, collapsible full measured values and full explanations.

Cells may be the ``str`` subclasses below: Markdown prints their short text, HTML their detail.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labcore.notebook.log import (
    ERROR,
    HELD,
    NOT_HELD,
    NOT_YET_RUN,
    PARTLY_HELD,
    SKIPPED,
    ClaimSummary,
    summarise_measured,
)
from labcore.notebook.viewer import load_snapshots, viewer_assets, viewer_div

Block = tuple[str, Any]

#: HTML colours of the verdicts (green held, amber partly, red did not hold, grey otherwise).
VERDICT_COLOURS = {
    HELD: "#1a7f37", PARTLY_HELD: "#b35900", NOT_HELD: "#c62828",
    NOT_YET_RUN: "#6a6a6a", SKIPPED: "#6a6a6a", ERROR: "#8e24aa",
}

#: How many measured values the "ours" / "measured" cells show before the collapsible rest.
HEADLINE_VALUES = 3
#: Explanations longer than this are shown folded (first part as the summary, all of it inside).
SHORT_MESSAGE = 160

_IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".gif": "image/gif", ".webp": "image/webp"}


# --- rich cells: short text for Markdown, detail for HTML --------------------------------------


class Measured(str):
    """The headline of measured values (the first few); ``.values``: every test's full values."""

    values: list[dict[str, Any]]


class Explanation(str):
    """A test's message as shown in tables; ``.full``: the whole text, never cut."""

    full: str


class ImageRef(str):
    """A plot's path relative to the report (Markdown links it); ``.path``: the file to embed."""

    path: Path


def measured_cell(measured_dicts: Sequence[dict[str, Any]]) -> Measured:
    """``kl=0.005, mae=0.01..0.03 (+5 more)``: the first few keys, ranges over the tests."""
    keys = list(dict.fromkeys(key for measured in measured_dicts for key in (measured or {})))
    head = [{k: v for k, v in (m or {}).items() if k in keys[:HEADLINE_VALUES]} for m in measured_dicts]
    text = summarise_measured(head, None)
    if len(keys) > HEADLINE_VALUES:
        text += f" (+{len(keys) - HEADLINE_VALUES} more)"
    cell = Measured(text)
    cell.values = [dict(m or {}) for m in measured_dicts]
    return cell


def message_cell(record: dict[str, Any]) -> Explanation:
    """A record's message; its full explanation (``explanation`` field, else the message)."""
    message = str(record.get("message") or "")
    cell = Explanation(message)
    cell.full = str(record.get("explanation") or message)
    return cell


def image_ref(relative: str, path: Path) -> ImageRef:
    ref = ImageRef(relative)
    ref.path = path
    return ref


def paper_table(summaries: Sequence[ClaimSummary]) -> Block:
    """Per paper: claim, paper value, ours (headline), tolerance, verdict."""
    rows = [[s.claim, s.metadata.get("paper_value", "") or "—",
             measured_cell([r.get("measured") or {} for r in s.latest]),
             s.metadata.get("tolerance", ""), s.verdict] for s in summaries]
    return ("table", (["claim", "paper value", "ours", "tolerance", "verdict"], rows))


def attention_block(summary: ClaimSummary, results_root: Path) -> Block | None:
    """The claim's attention snapshots (files listed in its latest records), if any."""
    paths = list(dict.fromkeys(p for r in summary.latest for p in (r.get("attention") or [])))
    files = [results_root / p for p in paths if (results_root / p).is_file()]
    return ("attention", (summary.claim, files)) if files else None


# --- rendering -----------------------------------------------------------------------------------

STYLE = """
body{font-family:sans-serif;max-width:72em;margin:auto;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}
blockquote{color:#444;border-left:3px solid #ccc;padding-left:1em}img{max-width:48%;margin:2px}
details summary{cursor:pointer}pre{white-space:pre-wrap;font-size:.85em;margin:.2em 0}
nav#toc{background:#f4f4f4;padding:.3em 1em;border-radius:6px}nav#toc ul{margin:.2em 0}
.missing{color:#c62828}
"""


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "section"
    slug, n = base, 2
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _cell(value: object) -> str:
    esc = html.escape
    if isinstance(value, Measured):
        if not any(value.values):
            return f"<td>{esc(value)}</td>"
        full = "\n".join(f"{k} = {json.dumps(v)}" for m in value.values for k, v in m.items())
        return f"<td>{esc(value)}<details><summary>all values</summary><pre>{esc(full)}</pre></details></td>"
    if isinstance(value, Explanation) and (len(value.full) > SHORT_MESSAGE or value.full != str(value)):
        short = value.full[:SHORT_MESSAGE].split("\n")[0]
        return f"<td><details><summary>{esc(short)} …</summary><pre>{esc(value.full)}</pre></details></td>"
    colour = VERDICT_COLOURS.get(str(value))
    return f"<td style='color:{colour}'>{esc(str(value))}</td>" if colour else f"<td>{esc(str(value))}</td>"


def _image(alt: str, src: str) -> str:
    path = getattr(src, "path", None)
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii") if path is not None else None
    except OSError:
        data = None
    if data is None:
        return f"<p class='missing'>plot {html.escape(alt)}: file not found when the report was written</p>"
    kind = _IMAGE_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")
    return f"<img alt='{html.escape(alt)}' src='data:{kind};base64,{data}'>"


def _toc(blocks: Sequence[Block]) -> tuple[str, list[str | None]]:
    """The table of contents and the anchor of each block (None for blocks without one)."""
    used: set[str] = set()
    anchors: list[str | None] = []
    groups: list[tuple[str, list[str]]] = [("", [])]   # (paper link, claim links)
    for kind, content in blocks:
        if kind == "h2":
            anchors.append(_slug(content, used))
            groups.append((f"<a href='#{anchors[-1]}'>{html.escape(content)}</a>", []))
        elif kind == "verdict_h3":
            claim, verdict = content
            anchors.append(_slug("claim-" + claim, used))
            colour = VERDICT_COLOURS.get(verdict, "#000")
            groups[-1][1].append(f"<li><a href='#{anchors[-1]}'>{html.escape(claim)}</a> "
                                 f"<span style='color:{colour}'>{html.escape(verdict)}</span></li>")
        else:
            anchors.append(None)
    items = "".join(f"<li>{head}<ul>{''.join(claims)}</ul></li>" if head else "".join(claims)
                    for head, claims in groups)
    return (f"<nav id='toc'><b>Contents</b><ul>{items}</ul></nav>" if items else ""), anchors


def _block_html(kind: str, content: Any, anchor: str | None) -> str:
    esc = html.escape
    if kind in ("h1", "h2", "h3"):
        ident = f" id='{anchor}'" if anchor else ""
        return f"<{kind}{ident}>{esc(content)}</{kind}>"
    if kind == "verdict_h3":
        claim, verdict = content
        colour = VERDICT_COLOURS.get(verdict, "#000")
        return (f"<a id='{anchor}'></a><h3>{esc(claim)} — "
                f"<span class='verdict' style='color:{colour}'>{esc(verdict)}</span></h3>")
    if kind == "quote":
        return f"<blockquote>{esc(content)}</blockquote>"
    if kind == "fields":
        return "<ul>" + "".join(f"<li><b>{esc(l)}:</b> {esc(str(v))}</li>" for l, v in content) + "</ul>"
    if kind == "para":
        return f"<p>{esc(content)}</p>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{esc(str(item))}</li>" for item in content) + "</ul>"
    if kind == "table":
        headers, rows = content
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"
    if kind == "images":
        return "<div>" + "".join(_image(alt, src) for alt, src in content) + "</div>"
    if kind == "attention":
        claim, files = content
        snapshots = load_snapshots(files)
        return viewer_div(snapshots, claim) if snapshots else ""
    return ""


def render_html(blocks: Sequence[Block]) -> str:
    """The whole report as one HTML file (see the module docstring)."""
    toc, anchors = _toc(blocks)
    out = ["<!doctype html>", "<html><head><meta charset='utf-8'><title>LLM Learning Lab report</title>",
           f"<style>{STYLE}</style>", "</head><body>"]
    toc_done = False
    for (kind, content), anchor in zip(blocks, anchors):
        if not toc_done and kind in ("h2", "verdict_h3"):
            out.append(toc)
            toc_done = True
        out.append(_block_html(kind, content, anchor))
    if any(kind == "attention" for kind, _ in blocks):
        out.append(viewer_assets())
    out.append("</body></html>")
    return "\n".join(out) + "\n"
