"""``lab calibrate --check``: is every calibration table still about the code it calibrated?

A table in ``fixtures/calibration/<claim>.json`` describes the claim's test code as it was when
the table was written. Each table written since this check exists stores
``claim_source_sha256``: the SHA-256 of the claim file's *code* — ``ast.unparse`` of the file
with docstrings and the ``CLAIM = Claim(...)`` record removed. So comments, formatting,
docstrings and the record's prose (statement, tolerance_why, ``calibration=``, ``status=`` —
what you naturally edit right after calibrating) can change without staling the table; any
change to the experiment or its assertions stales it. (Code the claim calls in ``labcore/`` is
not hashed: the model cache already retrains on such changes, and its tests pin it.)

``--check`` exits 1 when a claim's code changed after its table was written, when a claim cites a
table that does not exist, or when a ``status="confirmed"`` claim has no fresh-seed table
(``<claim>.fresh.json``, written by ``lab calibrate <claim> --seeds 5 --start 100``) with every
test passing. Tables without a hash (written before the check existed) are listed as "unverified"
and do not fail the check: recalibrate them, or confirm the claim on fresh seeds, to verify them.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from labcore.notebook.claims import FRESH_SEED_START, DeclaredClaim, scan_claim_files
from labcore.notebook.log import format_table

HASH_FIELD = "claim_source_sha256"
HASH_DEFINITION = "sha256 of ast.unparse(claim file without docstrings and without the CLAIM record)"


def _strip(tree: ast.Module) -> ast.Module:
    body = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CLAIM" for t in node.targets):
            continue
        body.append(node)
    tree.body = body
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def claim_source_sha256(path: Path) -> str:
    """The hash a calibration table stores for the claim file at ``path`` (see the module doc)."""
    tree = _strip(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return hashlib.sha256(ast.unparse(tree).encode("utf-8")).hexdigest()


def claim_file_of(tests: dict[str, Any], root: Path) -> Path | None:
    """The claim file a table's tests live in (node ids are relative to ``root``)."""
    for node_id in tests:
        path = root / node_id.split("::", 1)[0]
        if path.is_file():
            return path
    return None


def fresh_table_name(claim_id: str) -> str:
    """The file a fresh-seed run writes beside the exploration table ``<claim>.json``."""
    return f"{claim_id}.fresh.json"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _fresh_problem(table: dict[str, Any]) -> str | None:
    seeds = table.get("seeds") or []
    if not seeds or min(seeds) < FRESH_SEED_START:
        return f"status 'confirmed' but its table's seeds are not all fresh (>= {FRESH_SEED_START}): {seeds[:3]}..."
    failing = [t for t, stats in (table.get("tests") or {}).items() if stats.get("pass_rate") not in (1.0, None)]
    return f"status 'confirmed' but {len(failing)} test(s) did not pass on every fresh seed" if failing else None


def check_one(claim: DeclaredClaim, root: Path) -> tuple[str, str]:
    """(state, detail) of one claim's tables: ok, confirmable, unverified, stale, missing or unconfirmed.

    The exploration table (``calibration=``, seeds that chose the tolerance) and, when present, the
    fresh-seed table beside it (``<claim>.fresh.json``, seeds >= 100 never used to choose anything)
    must both still describe the claim's code. ``confirmed`` needs the fresh table, every test
    passing; a fresh table that passes everywhere on an exploratory claim is "confirmable"."""
    table_path = root / str(claim.calibration)
    table = _load(table_path)
    if table is None:
        return "missing", f"cites {claim.calibration}, which does not exist or is not JSON: lab calibrate {claim.id} --seeds 5"
    code_hash = claim_source_sha256(claim.path)
    fresh = _load(table_path.with_name(fresh_table_name(claim.id)))
    if fresh is None and min(table.get("seeds") or [0]) >= FRESH_SEED_START:
        fresh = table  # calibrated on fresh seeds only
    if fresh is not None and fresh.get(HASH_FIELD) != code_hash:
        return "stale", f"the claim's code changed after its fresh-seed table ({str(fresh.get('date', '?'))[:10]}): lab calibrate {claim.id} --seeds 5 --start {FRESH_SEED_START}"
    if claim.status == "confirmed":
        problem = _fresh_problem(fresh) if fresh is not None else (
            f"status 'confirmed' but no fresh-seed table: lab calibrate {claim.id} --seeds 5 --start {FRESH_SEED_START}")
        if problem:
            return "unconfirmed", problem
    stored = table.get(HASH_FIELD)
    if stored and stored != code_hash:
        return "stale", f"the claim's code changed after {str(table.get('date', '?'))[:10]}: lab calibrate {claim.id} --seeds 5"
    if fresh is not None and claim.status != "confirmed":
        problem = _fresh_problem(fresh)
        if problem is None:
            return "confirmable", f"passed on every fresh seed {fresh.get('seeds')}: set status='confirmed'"
        return "not confirmed", problem.replace("status 'confirmed' but ", "")
    if not stored and fresh is None:
        return "unverified", f"written {str(table.get('date', '?'))[:10]} before tables stored a code hash"
    return "ok", ""


FAILING_STATES = ("stale", "missing", "unconfirmed")


def check_calibrations(root: Path) -> tuple[int, str]:
    """Check every claim under ``root/claims`` that cites a table. Returns (exit code, text)."""
    rows, counts = [], {}
    for claim in scan_claim_files(root / "claims"):
        if not claim.calibration:
            continue
        state, detail = check_one(claim, root)
        counts[state] = counts.get(state, 0) + 1
        if state != "ok":
            rows.append([claim.id, state, detail])
    rows.sort(key=lambda row: (row[1] not in FAILING_STATES, row[1], row[0]))
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no claim cites a table"
    lines = [f"calibration tables: {tally}"]
    if rows:
        lines += ["", format_table(["claim", "state", "detail"], rows)]
    failing = sum(counts.get(state, 0) for state in FAILING_STATES)
    if failing:
        lines += ["", f"{failing} table(s) no longer describe their claim (stale, missing or unconfirmed): exit 1"]
    if counts.get("unverified"):
        lines += ["", "unverified tables predate the code hash; recalibrate a claim to verify its table"]
    return (1 if failing else 0), "\n".join(lines)


def check_command(args: Any) -> int:
    """``lab calibrate --check``; without --check, a missing CLAIM_OR_MARKER or --seeds is a usage error."""
    from labcore.notebook.papers import project_root

    if not getattr(args, "check", False):
        from labcore.notebook.calibrate import CalibrationError

        raise CalibrationError("give a CLAIM_OR_MARKER and --seeds N (or --check to verify the tables)")
    code, text = check_calibrations(project_root())
    print(text)
    return code
