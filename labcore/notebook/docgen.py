"""Generated number sections in the docs: measured numbers live in one place.

A Markdown page may contain a block::

    <!-- lab:numbers claims=bayes_calibration,bayes_hmm_filtering keys=entropy_mae_bits,kl_bits -->
    ... (anything: it is rewritten) ...
    <!-- /lab:numbers -->

``lab docs`` rewrites everything between the two markers from
``fixtures/calibration/<claim>.json``: per claim the seeds and the table's date, and per test its
outcomes, pass rate and *headline* values as median [min–max] over the seeds; then, when the
claim was run on fresh seeds (``<claim>.fresh.json``), one line saying how many tests held on every one. ``lab docs --check``
writes nothing and exits 1 when a block differs from what it would write (a stale page fails CI:
``tests/test_docgen.py`` checks the real ``docs/`` folder).

Headline values: the keys named in ``keys=`` that a test recorded, in that order; a test that
recorded none of them shows its first 3 scalar measured keys (the order ``lab.record`` wrote them;
list items such as ``steps[0]`` only when there is nothing else).

The block depends on the calibration tables only (tracked files), never on the local history, so
``--check`` gives the same answer on every machine. Where the local history holds records of a
claim newer than its table, ``lab docs`` says so on the terminal (re-run ``lab calibrate``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK_RE = re.compile(
    r"(?P<open><!-- lab:numbers(?P<args>[^>]*?)-->)(?P<body>.*?)(?P<close><!-- /lab:numbers -->)", re.S
)
DEFAULT_HEADLINE = 3
CALIBRATION_DIR = Path("fixtures") / "calibration"
FRESH_SUFFIX = ".fresh.json"  # the confirmation table beside <claim>.json (calibration_check.fresh_table_name)


class DocgenError(ValueError):
    """A block whose arguments cannot be read (no ``claims=``, an unknown argument)."""


@dataclass(frozen=True)
class BlockSpec:
    claims: tuple[str, ...]
    keys: tuple[str, ...] = ()


def parse_args(args: str) -> BlockSpec:
    """``claims=a,b keys=x,y`` -> :class:`BlockSpec`."""
    values: dict[str, tuple[str, ...]] = {}
    for part in args.split():
        name, eq, value = part.partition("=")
        if not eq or name not in ("claims", "keys"):
            raise DocgenError(f"lab:numbers takes claims=ID,ID and optionally keys=KEY,KEY, not {part!r}")
        values[name] = tuple(item for item in value.split(",") if item)
    if not values.get("claims"):
        raise DocgenError("a lab:numbers block needs claims=<claim id>[,<claim id>...]")
    return BlockSpec(values["claims"], values.get("keys", ()))


def fmt_number(value: Any) -> str:
    """Short and stable: integers as integers, everything else to 3 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value == int(value) and abs(value) < 1e7:
        return str(int(value))
    return f"{value:.3g}"


def fmt_stats(stats: dict[str, Any]) -> str:
    """``0.0269 [0.0268–0.0284]`` (median [min–max]), or one value when every seed agrees."""
    median, low, high = (fmt_number(stats.get(k)) for k in ("median", "min", "max"))
    return median if low == high else f"{median} [{low}–{high}]"


def headline_keys(measured: dict[str, Any], hint: Sequence[str]) -> list[str]:
    chosen = [key for key in hint if key in measured]
    scalars = [key for key in measured if not key.endswith("]")]
    return chosen or (scalars or list(measured))[:DEFAULT_HEADLINE]


def _seeds(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(str(s) for s in seeds)


def _outcomes(test: dict[str, Any]) -> str:
    runs = test.get("runs") or 0
    parts = [f"{n}/{runs} {name}" for name, n in (test.get("outcomes") or {}).items()]
    rate = test.get("pass_rate")
    note = "; strict xfail: does not hold here" if "xfailed" in (test.get("outcomes") or {}) else ""
    return ", ".join(parts) + ("" if rate is None else f" ({rate:.0%}{note})")


def render_claim(claim: str, table: dict[str, Any] | None, hint: Sequence[str], link: str) -> list[str]:
    """The lines for one claim: a heading line, then a table with a row per test."""
    if table is None:
        return [f"**`{claim}`** — no calibration table yet (`lab calibrate {claim} --seeds 5`).", ""]
    lines = [
        f"**`{claim}`** — {_seeds(table.get('seeds') or [])}, table of {str(table.get('date'))[:10]} "
        f"([{claim}.json]({link}))",
        "",
        "| test | outcomes (pass rate) | headline: median [min–max] |",
        "|---|---|---|",
    ]
    for node_id, test in (table.get("tests") or {}).items():
        measured = test.get("measured") or {}
        values = "; ".join(f"{key} {fmt_stats(measured[key])}" for key in headline_keys(measured, hint))
        name = node_id.split("::", 1)[-1].replace("|", "\\|")
        lines.append(f"| `{name}` | {_outcomes(test)} | {values.replace('|', chr(92) + '|') or '—'} |")
    return lines + [""]


def render_fresh(claim: str, fresh: dict[str, Any] | None, link: str) -> list[str]:
    """One line on the confirmation run over fresh seeds (``<claim>.fresh.json``), if there is one:
    every test's outcomes when some test did not pass on every seed."""
    if fresh is None:
        return []
    tests = fresh.get("tests") or {}
    held = [t for t in tests.values() if t.get("pass_rate") in (1.0, None)]
    head = (f"Fresh seeds (never used to choose a bound): {_seeds(fresh.get('seeds') or [])}, table of "
            f"{str(fresh.get('date'))[:10]} ([{claim}.fresh.json]({link})) — {len(held)}/{len(tests)} tests held on every seed")
    if len(held) == len(tests):
        return [head + ".", ""]
    misses = "; ".join(f"`{node.split('::', 1)[-1]}` {_outcomes(t)}" for node, t in tests.items()
                       if t.get("pass_rate") not in (1.0, None))
    return [f"{head}: {misses}.", ""]


def load_table(root: Path, claim: str, suffix: str = ".json") -> dict[str, Any] | None:
    path = root / CALIBRATION_DIR / f"{claim}{suffix}"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def render_block(spec: BlockSpec, doc_path: Path, root: Path) -> str:
    """The text between the markers (starting and ending with a newline)."""
    lines = [
        "",
        "<!-- generated by `lab docs` from fixtures/calibration/<claim>.json: do not edit by hand -->",
        "",
    ]
    for claim in spec.claims:
        target = root / CALIBRATION_DIR / f"{claim}.json"
        link = os.path.relpath(target, doc_path.parent).replace(os.sep, "/")
        lines += render_claim(claim, load_table(root, claim), spec.keys, link)
        lines += render_fresh(claim, load_table(root, claim, FRESH_SUFFIX), link.replace(".json", FRESH_SUFFIX))
    return "\n".join(lines)


def regenerate(text: str, doc_path: Path, root: Path) -> str:
    """``text`` with every block rewritten."""
    def replace(match: re.Match[str]) -> str:
        body = render_block(parse_args(match.group("args")), doc_path, root)
        return match.group("open") + body + match.group("close")

    return BLOCK_RE.sub(replace, text)


def block_claims(text: str) -> list[str]:
    return [claim for match in BLOCK_RE.finditer(text) for claim in parse_args(match.group("args")).claims]


@dataclass
class DocsResult:
    stale: list[Path] = field(default_factory=list)       # differ from what would be written
    written: list[Path] = field(default_factory=list)
    claims: dict[str, list[Path]] = field(default_factory=dict)  # claim -> pages that show it


def markdown_files(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        found += sorted(path.rglob("*.md")) if path.is_dir() else [path]
    return found


def update_docs(paths: Iterable[Path], root: Path, *, check: bool = False) -> DocsResult:
    """Regenerate every block in the Markdown files under ``paths``; with ``check``, write
    nothing and only report the stale files."""
    result = DocsResult()
    for path in markdown_files(paths):
        text = path.read_text(encoding="utf-8")
        if "<!-- lab:numbers" not in text:
            continue
        for claim in block_claims(text):
            result.claims.setdefault(claim, []).append(path)
        new_text = regenerate(text, path.absolute(), root)
        if new_text != text:
            result.stale.append(path)
            if not check:
                path.write_text(new_text, encoding="utf-8")
                result.written.append(path)
    return result


def newer_history(claims: Iterable[str], records: Sequence[dict[str, Any]], root: Path) -> list[str]:
    """One line per claim whose history holds a record newer than its calibration table."""
    latest: dict[str, str] = {}
    for record in records:
        claim = str(record.get("claim"))
        latest[claim] = max(latest.get(claim, ""), str(record.get("time") or ""))
    notes = []
    for claim in sorted(set(claims)):
        table = load_table(root, claim)
        table_date = str((table or {}).get("date") or "")
        if claim in latest and table is not None and latest[claim] > table_date:
            notes.append(f"{claim}: the history has a newer record ({latest[claim][:16]}) than its table "
                         f"({table_date[:16]}); `lab calibrate {claim} --seeds 5` refreshes the numbers")
    return notes
