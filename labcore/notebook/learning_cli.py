"""The learning sub-commands of ``lab``: scoreboard, predictions, ask, answer, questions, docs,
and the ``lab log --diff`` handler.

``labcore.notebook.cli.build_parser`` calls :func:`add_learning_commands`; the logic lives in
``scoreboard`` (predictions and their ledger), ``questions`` (the questions log), ``docgen``
(generated number blocks in the docs) and ``log_diff`` (two runs compared).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from labcore.files import RESULTS_ENV, history_path, results_dir
from labcore.notebook.claims import scan_claim_files
from labcore.notebook.docgen import DocgenError, newer_history, update_docs
from labcore.notebook.history import read_history
from labcore.notebook.log_diff import diff_runs, render_diff
from labcore.notebook.papers import project_root
from labcore.notebook.predictions import describe
from labcore.notebook.questions import QuestionError, answer, ask, load_questions, questions_path, render_questions, select
from labcore.notebook.scoreboard import EXPORT_PATH, export_ledger, first_versions, ledger_path, read_ledger, scoreboard_text

SCOREBOARD_EPILOG = """\
examples:
  lab scoreboard                   hits and misses per paper, Brier score, reliability, surprises
  lab scoreboard --paper bayes

A claim's structured predictions (Claim(predictions=(Prediction("rel_err", "<=", 0.05,
confidence=0.8),))) are scored against the latest result of each of its tests. The version
scored is the one recorded at the claim's first result: later edits are flagged, never counted."""

PREDICTIONS_EPILOG = """\
examples:
  lab predictions                  the first-recorded predictions of every claim
  lab predictions --export         merge them into predictions/ledger.jsonl (commit that file)"""

ASK_EPILOG = """\
examples:
  lab ask "why does Adam need warmup?"
  lab ask "does attention need the 1/sqrt(d_k)?" --paper attention"""

ANSWER_EPILOG = """\
examples:
  lab answer Q7 --by aiayn_softmax_saturation --note "without the scale the softmax saturates"
(or declare it in the claim: Claim(..., answers=("Q7",)))"""

DOCS_EPILOG = """\
examples:
  lab docs                         rewrite every lab:numbers block under docs/
  lab docs --check                 exit 1 if a block differs from its calibration tables (CI)
  lab docs docs/concepts/attention.md

A block in a Markdown page:
  <!-- lab:numbers claims=bayes_calibration,bayes_hmm_filtering keys=entropy_mae_bits,kl_bits -->
  <!-- /lab:numbers -->
is filled from fixtures/calibration/<claim>.json: seeds, date, and per test its outcomes, pass rate
and headline values, median [min-max] over the seeds. Headline values: the keys= named (those a
test recorded), else each test's first 3 measured keys."""

QUESTIONS_EPILOG = """\
examples:
  lab questions                    every question
  lab questions --open             those no claim answers yet"""


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _friendly(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A :class:`QuestionError` becomes one line on stderr and exit code 2, like the other errors."""
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except QuestionError as error:
            print(f"lab {args.command}: error: {error}", file=sys.stderr)
            return 2
    return wrapped


def _parser(commands: argparse._SubParsersAction, name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, formatter_class=_formatter,
                               description=textwrap.fill(summary[0].upper() + summary[1:] + ".", 90), epilog=epilog)


def add_learning_commands(commands: argparse._SubParsersAction) -> None:
    board = _parser(commands, "scoreboard", "score your predictions: hits, Brier score, reliability, surprises",
                    SCOREBOARD_EPILOG)
    board.add_argument("--paper", metavar="PAPER", help="only this paper's claims")
    board.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    board.set_defaults(handler=scoreboard_command)
    ledger = _parser(commands, "predictions", "show the prediction ledger, or export it to a tracked file",
                     PREDICTIONS_EPILOG)
    ledger.add_argument("--export", action="store_true", help=f"merge the results ledger into {EXPORT_PATH}")
    ledger.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    ledger.set_defaults(handler=predictions_command)
    asking = _parser(commands, "ask", "write down a question (it gets an id Q<n>)", ASK_EPILOG)
    asking.add_argument("question", help="the question, in quotes")
    asking.add_argument("--paper", metavar="PAPER", help="the paper it is about")
    asking.set_defaults(handler=_friendly(ask_command))
    answering = _parser(commands, "answer", "record which claim answers a question", ANSWER_EPILOG)
    answering.add_argument("question_id", metavar="QID", help="e.g. Q7")
    answering.add_argument("--by", required=True, metavar="CLAIM_ID", help="the claim whose result answers it")
    answering.add_argument("--note", default="", help="the answer in a sentence")
    answering.set_defaults(handler=_friendly(answer_command))
    listing = _parser(commands, "questions", "list the questions log", QUESTIONS_EPILOG)
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--open", dest="state", action="store_const", const="open", help="only unanswered ones")
    state.add_argument("--answered", dest="state", action="store_const", const="answered", help="only answered ones")
    listing.add_argument("--paper", metavar="PAPER", help="only questions about this paper")
    listing.set_defaults(handler=_friendly(questions_command))
    docs = _parser(commands, "docs", "regenerate the measured-number blocks in the docs from the calibration tables",
                   DOCS_EPILOG)
    docs.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="Markdown files or folders (default: docs/)")
    docs.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is stale")
    docs.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    docs.set_defaults(handler=docs_command)


def _use_results(folder: Path | None) -> None:
    if folder is not None:
        os.environ[RESULTS_ENV] = str(folder.expanduser().absolute())


def _ledgers() -> tuple[list[dict], list[dict]]:
    return read_ledger(project_root() / EXPORT_PATH), read_ledger(ledger_path())


def scoreboard_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    print(scoreboard_text(read_history(history_path()), _ledgers(), paper=args.paper))
    return 0


def predictions_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    if args.export:
        path, added = export_ledger(project_root(), ledger_path())
        print(f"wrote {path} ({added} new claim(s)); commit it to keep your predictions' first versions")
        return 0
    firsts = first_versions(read_history(history_path()).records, *_ledgers())
    if not firsts:
        print(f"The ledger is empty: it fills when a claim first produces a result ({results_dir() / 'predictions.jsonl'}).")
    for claim in sorted(firsts):
        entry = firsts[claim]
        shown = "; ".join(describe(p) for p in entry.get("predictions") or []) or "(no structured predictions)"
        print(f"{claim}  [{str(entry.get('time'))[:16]}]  {shown}")
    return 0


def ask_command(args: argparse.Namespace) -> int:
    question_id = ask(questions_path(), args.question, args.paper)
    print(f"{question_id}: {' '.join(args.question.split())}  (answer it with: lab answer {question_id} --by <claim_id>)")
    return 0


def _known_claims() -> list[str]:
    declared = [d.id for d in scan_claim_files(project_root() / "claims")]
    try:
        recorded = [str(r.get("claim")) for r in read_history(history_path()).records]
    except Exception:  # an unusable results folder must not block answering
        recorded = []
    return list(dict.fromkeys(declared + recorded))


def answer_command(args: argparse.Namespace) -> int:
    question = answer(questions_path(), args.question_id, args.by, args.note, known_claims=_known_claims())
    print(f"{question['id']}: answered by {args.by}  ({question.get('question')})")
    return 0


def questions_command(args: argparse.Namespace) -> int:
    declared = scan_claim_files(project_root() / "claims")
    print(render_questions(select(load_questions(questions_path()), declared, args.state, args.paper)))
    return 0


def docs_command(args: argparse.Namespace) -> int:
    """``lab docs [--check]``: rewrite (or check) every ``lab:numbers`` block."""
    _use_results(args.results)
    root = project_root()
    try:
        result = update_docs(args.paths or [root / "docs"], root, check=args.check)
    except (DocgenError, OSError) as error:
        print(f"lab docs: error: {error}", file=sys.stderr)
        return 2
    try:
        records = read_history(history_path()).records
    except Exception:  # an unusable results folder must not block the docs
        records = []
    for note in newer_history(result.claims, records, root):
        print(f"note: {note}")
    shown = len(result.claims)
    if args.check:
        for path in result.stale:
            print(f"stale: {path} (run `lab docs` to regenerate it)")
        print(f"lab docs --check: {len(result.stale)} stale page(s); {shown} claim(s) shown in generated blocks")
        return 1 if result.stale else 0
    for path in result.written:
        print(f"wrote {path}")
    print(f"lab docs: {len(result.written)} page(s) rewritten; {shown} claim(s) shown in generated blocks")
    return 0


def log_diff_command(args: argparse.Namespace, records: list[dict]) -> int:
    """``lab log --diff RUN_A RUN_B`` (called from ``cli.log_command``)."""
    run_a, run_b = args.diff
    print(render_diff(diff_runs(records, run_a, run_b, claim=args.claim, marker=args.marker)))
    return 0
