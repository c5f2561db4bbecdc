"""The ``lab`` command: run claims, start a new one, read the learning log, calibrate.

Every subcommand is a thin layer over a library module (``report``, ``calibrate``) or over
pytest itself, so what ``lab`` does can always be done, and debugged, with plain pytest.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from labcore.notebook.calibrate import CalibrationError, calibrate, check_command, child_env
from labcore.notebook.learning_cli import add_learning_commands, log_diff_command
from labcore.notebook.skeleton import DEFAULT_PREDICTION, DEFAULT_STATEMENT, render_skeleton
from labcore.notebook.claims import PAPERS, RESERVED_MARKERS, Claim, ClaimError, Source, scan_claim_files
from labcore.notebook.hardware import add_hardware_parser, print_hardware
from labcore.notebook.history import read_history
from labcore.files import RESULTS_ENV, ResultsDirError, atomic_write_text, history_path, results_dir
from labcore.notebook.log import UnknownFilterError, check_log_filters, render_durations, render_log, render_run_summary
from labcore.notebook.papers import PaperRegistryError, paper_for_new_claim, pending_paper, project_root, write_paper_files
from labcore.notebook.report import REPORT_FORMATS, write_report

DESCRIPTION = """\
LLM Learning Lab: every claim from a paper ("Var(q·k) = d_k", "LoRA rank 1 is enough") is a
pytest test under claims/<paper>/. Run them, read what was measured, add your own."""

MAIN_EPILOG = """\
start here:
  lab run                          run the quick claims, then write results/report.md
  lab log                          latest verdict of every claim
  lab new lora/rank_one_enough     write a new claim file to fill in

every command has its own help: lab run --help, lab new --help, ..."""

RUN_EPILOG = """\
examples:
  lab run                          same as: pytest -m quick claims; lab report
  lab run -m lora                  every claim of the LoRA paper
  lab run -m "quick and not gpu" -n 2
  lab run claims/attention -x      stop at the first failure
  lab run --no-report -m aiayn_qk_variance

Everything after `run` goes to pytest unchanged (except --no-report and --no-summary). At the end
lab run prints each claim's verdict (held, partly held, did not hold, not yet run, skipped, error).
Markers: tiers quick/full, tags gpu/real_model, one per folder under claims/ (the papers) and every
claim id."""

NEW_EPILOG = """\
examples:
  lab new attention/qk_variance
  lab new lora/rank_one_enough --prediction "rank 1 reaches 95% of rank 8's accuracy"
  lab new grokking/weight_decay_needed --arxiv 2201.02177 --title "Grokking"   (a new paper)

The file gets a CLAIM record with placeholders saying what to write, and a test that fails with
"not yet run" until you write the experiment. Run it with: pytest -m <claim_id>
A new paper gets its folder claims/<paper>/ (its marker: pytest -m <paper>), a paper.toml with
the title and arXiv id, and a note stub docs/papers/<paper>.md. Works on the checkout you are in."""

LOG_EPILOG = """\
examples:
  lab log                          latest verdict per claim
  lab log --paper lora             only the LoRA paper's claims (any marker works)
  lab log --claim aiayn_qk_variance --all
  lab log --changes                when did a verdict flip (e.g. failed -> passed)?"""

REPORT_EPILOG = """\
examples:
  lab report                       results/report.md
  lab report --format both --out /tmp/lab-report"""

CALIBRATE_EPILOG = """\
examples:
  lab calibrate aiayn_qk_variance --seeds 20
  lab calibrate quick --seeds 10 --flaky        pass rate per test only (target >= 95%)
  lab calibrate lora --seeds 5 -- -n 2          arguments after -- go to pytest
  lab calibrate --check                         exit 1 if a claim's code changed after its table

Each seed runs `python -m pytest -m <marker> --lab-seed <seed>` in a fresh process with a
throw-away results folder; the statistics go to fixtures/calibration/<claim>.json. Point a claim at
its table with calibration="fixtures/calibration/<claim>.json" and explain the tolerance from it."""


class UserError(Exception):
    """A mistake in the command line; printed as one line, exit code 2."""


def _wrap(text: str) -> str:
    """Descriptions are shown raw (to keep the examples' layout), so wrap them here."""
    return textwrap.fill(text, width=90)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab", description=DESCRIPTION, epilog=MAIN_EPILOG, formatter_class=_formatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run(commands)
    _add_new(commands)
    _add_log(commands)
    _add_report(commands)
    _add_calibrate(commands)
    add_learning_commands(commands)  # scoreboard, predictions, ask, answer, questions
    _add_hardware(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run", help="run claims with pytest, then write the report", formatter_class=_formatter,
        description=_wrap("Run claims with pytest (default: the quick tier), then write the report."),
        epilog=RUN_EPILOG,
    )
    run.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARGS", help="arguments for pytest")
    run.add_argument("--no-report", action="store_true", help="don't write the report afterwards")
    run.add_argument("--no-summary", action="store_true", help="don't print the verdict per claim afterwards")


def _add_new(commands: argparse._SubParsersAction) -> None:
    new = commands.add_parser(
        "new", help="write a new claim file from the template", formatter_class=_formatter,
        description=_wrap("Write claims/<paper>/test_<claim_id>.py with a CLAIM record to fill in."),
        epilog=NEW_EPILOG,
    )
    new.add_argument("spec", metavar="PAPER/CLAIM_ID",
                     help="paper (a folder under claims/, new or existing) and a new claim id")
    new.add_argument("--arxiv", metavar="ID", help="the paper's arXiv id, e.g. 2301.00001 (needed for a new paper)")
    new.add_argument("--title", help="the paper's title (a new paper; default: the folder name)")
    new.add_argument("--statement", help="the sentence from the paper, quoted")
    new.add_argument("--prediction", help="what you expect to measure, written before running it")
    new.add_argument("--tier", choices=("quick", "full"), default="quick", help="quick (default) or full")
    new.add_argument("--claims-dir", type=Path, default=None, help="claims folder (default: <repo>/claims)")
    new.set_defaults(handler=new_command)


def _add_log(commands: argparse._SubParsersAction) -> None:
    log = commands.add_parser(
        "log", help="show the learning log: latest verdict per claim", formatter_class=_formatter,
        description=_wrap("Show what the history says: the latest verdict of each claim, every record, "
                          "or when verdicts changed."),
        epilog=LOG_EPILOG,
    )
    log.add_argument("--claim", metavar="ID", help="only this claim")
    log.add_argument("--paper", "--marker", dest="marker", metavar="MARKER",
                     help="only claims with this paper, tier, tag or id marker")
    shown = log.add_mutually_exclusive_group()
    shown.add_argument("--all", dest="show_all", action="store_true", help="every record, oldest first")
    shown.add_argument("--changes", action="store_true", help="when a claim's verdict changed")
    shown.add_argument("--durations", action="store_true",
                       help="wall time per paper and in total, and the slowest tests (latest run of each)")
    shown.add_argument("--diff", nargs=2, metavar=("RUN_A", "RUN_B"), help="verdict flips and measured deltas between two runs (ids from lab log --all, or last / previous)")
    log.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    log.set_defaults(handler=log_command)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="write report.md/html: claims, predictions, measurements, plots",
        formatter_class=_formatter,
        description=_wrap("Write a report per paper and claim: statement, source, prediction, paper value "
                          "vs latest measured values, tolerance and why, verdict history and plots."),
        epilog=REPORT_EPILOG,
    )
    report.add_argument("--out", type=Path, metavar="DIR", help="folder for the report (default: the results folder)")
    report.add_argument("--format", dest="report_format", choices=REPORT_FORMATS, default="md",
                        help="md (default), html or both")
    report.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    report.set_defaults(handler=report_command)


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
    calib = commands.add_parser(
        "calibrate", help="run claims over many seeds; write measured spreads and pass rates",
        formatter_class=_formatter,
        usage="lab calibrate [-h] CLAIM_OR_MARKER --seeds N [--start S] [--out DIR] [--flaky] [-- PYTEST_ARGS] | --check",
        description=_wrap("Run the claims selected by a marker once per seed and summarise each measured "
                          "value (mean, std, median, p5, p95, suggested thresholds) and each test's pass "
                          "rate."),
        epilog=CALIBRATE_EPILOG,
    )
    calib.add_argument("marker", nargs="?", metavar="CLAIM_OR_MARKER", help="a claim id or any marker (paper, tier, tag)")
    calib.add_argument("--seeds", type=int, metavar="N", help="how many seeds to run")
    calib.add_argument("--check", action="store_true", help="exit 1 if a table is stale (claim code changed) or missing")
    calib.add_argument("--start", type=int, default=0, metavar="S", help="first seed (default 0)")
    calib.add_argument("--out", type=Path, metavar="DIR", help="folder for <claim>.json (default: fixtures/calibration)")
    calib.add_argument("--flaky", action="store_true", help="pass rates only (exit 1 if a test passes < 95%% of seeds)")
    # Arguments after "--" are split off in main() (argparse cannot put them after a positional).
    calib.set_defaults(handler=calibrate_command, pytest_args=[])


# --- lab run -------------------------------------------------------------------------------------


def run_command(arguments: Sequence[str]) -> int:
    """``lab run``: pytest with the given arguments (default ``-m quick claims``), then each
    claim's verdict and the report. Returns pytest's exit code; "no tests collected" (5) becomes
    a failure (1) with a message, because a claim run that ran nothing is never what the user
    meant."""
    arguments = list(arguments)
    write_after = "--no-report" not in arguments
    summary_after = "--no-summary" not in arguments
    arguments = [a for a in arguments if a not in ("--no-report", "--no-summary")]
    if not arguments:
        claims = project_root() / "claims"
        try:
            claims = claims.relative_to(Path.cwd())
        except ValueError:
            pass
        arguments = ["-m", "quick", str(claims)]
    records_before = _history_length()
    command = [sys.executable, "-m", "pytest", *arguments]
    print(f"lab run: {shlex.join(['pytest', *arguments])}", flush=True)
    exit_code = subprocess.call(command, env=child_env())
    if exit_code == 5:
        print(
            "lab run: pytest collected no tests (exit code 5): check the -m expression and the paths",
            file=sys.stderr,
        )
        exit_code = 1
    if summary_after and exit_code in (0, 1):
        print()
        print(render_run_summary(read_history(history_path()).records[records_before:]))
    if write_after and exit_code in (0, 1):
        for path in _write_report_files(None, "md"):
            print(f"lab run: report written to {path}")
    return exit_code


def _history_length() -> int:
    """How many records the history holds now (the run's own records come after them)."""
    try:
        return len(read_history(history_path()).records)
    except ResultsDirError:  # pytest will say why the results folder is unusable
        return 0


# --- lab new -------------------------------------------------------------------------------------

def _split_spec(spec: str) -> tuple[str, str]:
    paper, slash, claim_id = spec.partition("/")
    if not slash or not paper or not claim_id or "/" in claim_id:
        raise UserError(f"{spec!r} is not <paper>/<claim_id>; write it like attention/qk_variance")
    if not paper.isidentifier() or paper.startswith("_") or paper in RESERVED_MARKERS:
        raise UserError(
            f"paper {paper!r} cannot be a marker: use letters, digits and underscores, not a tier, "
            f"tag or pytest marker (e.g. grokking, {', '.join(list(PAPERS)[:3])})"
        )
    return paper, claim_id


def new_claim_file(
    spec: str,
    *,
    statement: str | None = None,
    prediction: str | None = None,
    tier: str = "quick",
    claims_dir: Path | None = None,
    arxiv: str | None = None,
    title: str | None = None,
) -> Path:
    """Write ``<claims_dir>/<paper>/test_<claim_id>.py`` from the template and return its path.

    ``claims_dir`` defaults to the ``claims/`` of the checkout the command runs in. A new paper
    also gets ``<claims_dir>/<paper>/paper.toml`` and ``docs/papers/<paper>.md`` beside it."""
    paper, claim_id = _split_spec(spec)
    claims_dir = (claims_dir or project_root() / "claims").absolute()
    info, is_new = paper_for_new_claim(claims_dir, paper, arxiv, title)
    title, arxiv = info.title, arxiv or info.arxiv[0]
    statement = statement or DEFAULT_STATEMENT
    prediction = prediction or DEFAULT_PREDICTION
    # Build the record the file will contain: whatever would fail at collection fails here,
    # before anything is written.
    with pending_paper(info):
        Claim(
            id=claim_id, paper=paper, statement=statement,
            source=Source(title=title, arxiv=arxiv, version="v1", where="write the section"),
            paper_value="write", prediction=prediction, metric="write", tolerance="write",
            tolerance_why="write", tier=tier,
        )
    for declared in scan_claim_files(claims_dir):
        if declared.id == claim_id:
            raise UserError(f"claim id {claim_id!r} is already used by {declared.path}; choose another id")
    path = claims_dir / paper / f"test_{claim_id}.py"
    if path.exists():
        raise UserError(f"{path} already exists; not overwriting it")
    if is_new:
        write_paper_files(claims_dir, paper, claim_id, title, arxiv)
    text = render_skeleton(claim_id=claim_id, paper=paper, statement=statement, title=title, arxiv=arxiv,
                           prediction=prediction, tier=tier)
    return atomic_write_text(path, text)


def new_command(args: argparse.Namespace) -> int:
    path = new_claim_file(
        args.spec, statement=args.statement, prediction=args.prediction, tier=args.tier,
        claims_dir=args.claims_dir, arxiv=args.arxiv, title=args.title,
    )
    paper, _, claim_id = args.spec.partition("/")
    print(f"wrote {path}")
    print("next: fill in the CLAIM fields that say 'write ...', then replace lab.not_yet_run() with the")
    print(f"experiment, and run it with: pytest -m {claim_id} (or the whole paper: pytest -m {paper})")
    return 0


# --- lab log / lab report ------------------------------------------------------------------------


def _use_results(folder: Path | None) -> None:
    if folder is not None:
        os.environ[RESULTS_ENV] = str(folder.expanduser().absolute())


def log_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    path = history_path()
    history = read_history(path)
    declared = scan_claim_files(project_root() / "claims")
    check_log_filters(args.claim, args.marker, history.records, declared)
    if args.diff: return log_diff_command(args, history.records)  # noqa: E701 (cli.py is at its size limit)
    if args.durations:
        print(render_durations(history, marker=args.marker))
        return 0
    print(render_log(history, claim=args.claim, marker=args.marker, show_all=args.show_all,
                     changes=args.changes, declared=declared, history_name=path.name))
    return 0


def _write_report_files(out: Path | None, report_format: str) -> list[Path]:
    path = history_path()
    return write_report(
        read_history(path), out or results_dir(), results_root=results_dir(), report_format=report_format,
        declared=scan_claim_files(project_root() / "claims"), history_name=path.name,
    )


def report_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    for path in _write_report_files(args.out, args.report_format):
        print(f"wrote {path}")
    return 0


# --- lab calibrate -------------------------------------------------------------------------------


def calibrate_command(args: argparse.Namespace) -> int:
    if args.check or args.marker is None or args.seeds is None:
        return check_command(args)  # --check, or a usage error (labcore.notebook.calibration_check)
    command = shlex.join(["lab", "calibrate", args.marker, "--seeds", str(args.seeds), "--start", str(args.start),
                          *(["--flaky"] if args.flaky else []), *(["--", *args.pytest_args] if args.pytest_args else [])])
    return calibrate(args.marker, seeds=args.seeds, start=args.start, out_dir=args.out, flaky_only=args.flaky,
                     extra_args=args.pytest_args, command=command)


def _add_hardware(commands: argparse._SubParsersAction) -> None:
    add_hardware_parser(commands, _formatter).set_defaults(handler=hardware_command)


def hardware_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    return print_hardware(args)  # labcore.notebook.hardware


# --- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lab`` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["run"] and argv[1:] not in (["-h"], ["--help"]):
        # Everything after `run` belongs to pytest (-m, -x, -n ...), which argparse would try
        # to parse itself; only `lab run --help` is ours.
        command, handler = "run", lambda: run_command(argv[1:])
    else:
        passthrough: list[str] = []
        if argv[:1] == ["calibrate"] and "--" in argv:
            split = argv.index("--")
            argv, passthrough = argv[:split], argv[split + 1:]
        args = parser.parse_args(argv)
        if passthrough:
            args.pytest_args = passthrough
        command, handler = args.command, lambda: args.handler(args)
    try:
        return int(handler())
    except (UserError, ClaimError, ResultsDirError, CalibrationError, PaperRegistryError, UnknownFilterError) as error:
        print(f"lab {command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `lab log | head` closed the pipe: not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
