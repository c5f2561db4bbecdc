"""The ``lab`` command: run claims, start a new one, read the learning log, calibrate.

Every subcommand is a thin layer over a library module (``report``, ``calibrate``) or over
pytest itself, so what ``lab`` does can always be done, and debugged, with plain pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from labcore.calibrate import CalibrationError, calibrate
from labcore.claims import PAPER_ARXIV, PAPERS, Claim, ClaimError, Source, scan_claim_files
from labcore.history import read_history
from labcore.paths import RESULTS_ENV, ResultsDirError, history_path, repo_root, results_dir
from labcore.plots import atomic_write_text
from labcore.report import REPORT_FORMATS, render_durations, render_log, write_report

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

Everything after `run` goes to pytest unchanged (except --no-report). Markers: tiers quick/full,
tags gpu/real_model, papers (attention, bayes, lora, qlora, forgetting) and every claim id."""

NEW_EPILOG = """\
examples:
  lab new attention/qk_variance
  lab new lora/rank_one_enough --prediction "rank 1 reaches 95% of rank 8's accuracy"

The file gets a CLAIM record with placeholders saying what to write, and a test that fails with
"not yet run" until you write the experiment. Run it with: pytest -m <claim_id>"""

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

    run = commands.add_parser(
        "run", help="run claims with pytest, then write the report", formatter_class=_formatter,
        description=_wrap("Run claims with pytest (default: the quick tier), then write the report."),
        epilog=RUN_EPILOG,
    )
    run.add_argument("pytest_args", nargs="*", metavar="PYTEST_ARGS", help="arguments for pytest")
    run.add_argument("--no-report", action="store_true", help="don't write the report afterwards")

    new = commands.add_parser(
        "new", help="write a new claim file from the template", formatter_class=_formatter,
        description=_wrap("Write claims/<paper>/test_<claim_id>.py with a CLAIM record to fill in."),
        epilog=NEW_EPILOG,
    )
    new.add_argument("spec", metavar="PAPER/CLAIM_ID", help=f"paper ({', '.join(PAPERS)}) and a new claim id")
    new.add_argument("--statement", help="the sentence from the paper, quoted")
    new.add_argument("--prediction", help="what you expect to measure, written before running it")
    new.add_argument("--tier", choices=("quick", "full"), default="quick", help="quick (default) or full")
    new.add_argument("--claims-dir", type=Path, default=None, help="claims folder (default: <repo>/claims)")
    new.set_defaults(handler=new_command)

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
    log.add_argument("--results", type=Path, metavar="DIR", help=f"results folder (default ${RESULTS_ENV} or results/)")
    log.set_defaults(handler=log_command)

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

    calib = commands.add_parser(
        "calibrate", help="run claims over many seeds; write measured spreads and pass rates",
        formatter_class=_formatter,
        usage="lab calibrate [-h] CLAIM_OR_MARKER --seeds N [--start S] [--out DIR] [--flaky] [-- PYTEST_ARGS]",
        description=_wrap("Run the claims selected by a marker once per seed and summarise each measured "
                          "value (mean, std, median, p5, p95, suggested thresholds) and each test's pass "
                          "rate."),
        epilog=CALIBRATE_EPILOG,
    )
    calib.add_argument("marker", metavar="CLAIM_OR_MARKER", help="a claim id or any marker (paper, tier, tag)")
    calib.add_argument("--seeds", type=int, required=True, metavar="N", help="how many seeds to run")
    calib.add_argument("--start", type=int, default=0, metavar="S", help="first seed (default 0)")
    calib.add_argument("--out", type=Path, metavar="DIR",
                       help="folder for <claim>.json (default: <repo>/fixtures/calibration)")
    calib.add_argument("--flaky", action="store_true",
                       help="only print the pass-rate table (exit 1 if a test passes < 95%% of seeds)")
    # Arguments after "--" are split off in main() (argparse cannot put them after a positional).
    calib.set_defaults(handler=calibrate_command, pytest_args=[])
    return parser


# --- lab run -------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo_root()), env.get("PYTHONPATH", "")) if p)
    return env


def run_command(arguments: Sequence[str]) -> int:
    """``lab run``: pytest with the given arguments (default ``-m quick claims``), then the
    report. Returns pytest's exit code; "no tests collected" (5) becomes a failure (1) with a
    message, because a claim run that ran nothing is never what the user meant."""
    arguments = list(arguments)
    write_after = "--no-report" not in arguments
    arguments = [a for a in arguments if a != "--no-report"]
    if not arguments:
        claims = repo_root() / "claims"
        try:
            claims = claims.relative_to(Path.cwd())
        except ValueError:
            pass
        arguments = ["-m", "quick", str(claims)]
    command = [sys.executable, "-m", "pytest", *arguments]
    print(f"lab run: {shlex.join(['pytest', *arguments])}", flush=True)
    exit_code = subprocess.call(command, env=_child_env())
    if exit_code == 5:
        print(
            "lab run: pytest collected no tests (exit code 5): check the -m expression and the paths",
            file=sys.stderr,
        )
        exit_code = 1
    if write_after and exit_code in (0, 1):
        for path in _write_report_files(None, "md"):
            print(f"lab run: report written to {path}")
    return exit_code


# --- lab new -------------------------------------------------------------------------------------

CLAIM_TEMPLATE = '''\
"""{title}: {claim_id}.

Write here, in a few sentences, what the claim means and how this file tests it.
"""

import pytest  # noqa: F401  (parametrize, approx, ... when you write the experiment)

from labcore.claims import Claim, Source

CLAIM = Claim(
    id={claim_id_literal},
    paper={paper_literal},
    statement={statement},
    source=Source(
        title={title_literal},
        arxiv={arxiv},
        version="v1",  # the arXiv version you read
        where="write the section, table or figure, e.g. §3.2.1",
    ),
    paper_value="write the number or relation the paper reports",
    prediction={prediction},
    metric="write what is measured, over how many samples or seeds",
    tolerance="write the pass threshold, e.g. ≤ 0.05",
    tolerance_why="write why this threshold: a noise estimate, or lab calibrate {claim_id} --seeds 20",
    tier={tier},
    tags=(),  # ("gpu",) and/or ("real_model",) if the experiment needs them
    calibration=None,  # or "fixtures/calibration/{claim_id}.json" after lab calibrate
)


def test_{claim_id}(lab):
    # lab.seed, lab.device, lab.record(name=value), lab.savefig(fig, "name"), then assert the
    # tolerance. Replace this line with the experiment:
    lab.not_yet_run("measure the metric, lab.record(...) it, then assert the tolerance")
'''

DEFAULT_STATEMENT = "write the sentence from the paper, quoted"
DEFAULT_PREDICTION = "write what you expect to measure, before running it"


def _literal(text: str) -> str:
    """A Python string literal for ``text`` (JSON string syntax is valid Python)."""
    return json.dumps(text, ensure_ascii=False)


def new_claim_file(
    spec: str,
    *,
    statement: str | None = None,
    prediction: str | None = None,
    tier: str = "quick",
    claims_dir: Path | None = None,
) -> Path:
    """Write ``<claims_dir>/<paper>/test_<claim_id>.py`` from the template and return its path."""
    paper, slash, claim_id = spec.partition("/")
    if not slash or not paper or not claim_id or "/" in claim_id:
        raise UserError(f"{spec!r} is not <paper>/<claim_id>; write it like attention/qk_variance")
    if paper not in PAPERS:
        raise UserError(f"paper {paper!r} is unknown; use one of {', '.join(PAPERS)}")
    statement = statement or DEFAULT_STATEMENT
    prediction = prediction or DEFAULT_PREDICTION
    title = PAPERS[paper]
    arxiv = PAPER_ARXIV[paper][0]
    # Build the record the file will contain: whatever would fail at collection fails here.
    Claim(
        id=claim_id, paper=paper, statement=statement,
        source=Source(title=title, arxiv=arxiv, version="v1", where="write the section"),
        paper_value="write", prediction=prediction, metric="write", tolerance="write",
        tolerance_why="write", tier=tier,
    )
    claims_dir = claims_dir or repo_root() / "claims"
    for declared in scan_claim_files(claims_dir):
        if declared.id == claim_id:
            raise UserError(f"claim id {claim_id!r} is already used by {declared.path}; choose another id")
    path = claims_dir / paper / f"test_{claim_id}.py"
    if path.exists():
        raise UserError(f"{path} already exists; not overwriting it")
    text = CLAIM_TEMPLATE.format(
        title=title, claim_id=claim_id, claim_id_literal=_literal(claim_id), paper_literal=_literal(paper),
        statement=_literal(statement), title_literal=_literal(title), arxiv=_literal(arxiv),
        prediction=_literal(prediction), tier=_literal(tier),
    )
    return atomic_write_text(path, text)


def new_command(args: argparse.Namespace) -> int:
    path = new_claim_file(
        args.spec, statement=args.statement, prediction=args.prediction, tier=args.tier,
        claims_dir=args.claims_dir,
    )
    claim_id = args.spec.partition("/")[2]
    print(f"wrote {path}")
    print("next: fill in the CLAIM fields that say 'write ...', then replace lab.not_yet_run() with the")
    print(f"experiment, and run it with: pytest -m {claim_id}")
    return 0


# --- lab log / lab report ------------------------------------------------------------------------


def _use_results(folder: Path | None) -> None:
    if folder is not None:
        os.environ[RESULTS_ENV] = str(folder.expanduser().absolute())


def log_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    path = history_path()
    if args.durations:
        print(render_durations(read_history(path), marker=args.marker))
        return 0
    text = render_log(
        read_history(path), claim=args.claim, marker=args.marker, show_all=args.show_all,
        changes=args.changes, declared=scan_claim_files(repo_root() / "claims"), history_name=path.name,
    )
    print(text)
    return 0


def _write_report_files(out: Path | None, report_format: str) -> list[Path]:
    path = history_path()
    return write_report(
        read_history(path), out or results_dir(), results_root=results_dir(), report_format=report_format,
        declared=scan_claim_files(repo_root() / "claims"), history_name=path.name,
    )


def report_command(args: argparse.Namespace) -> int:
    _use_results(args.results)
    for path in _write_report_files(args.out, args.report_format):
        print(f"wrote {path}")
    return 0


# --- lab calibrate -------------------------------------------------------------------------------


def calibrate_command(args: argparse.Namespace) -> int:
    command = shlex.join(["lab", "calibrate", args.marker, "--seeds", str(args.seeds), "--start", str(args.start),
                          *(["--flaky"] if args.flaky else []), *(["--", *args.pytest_args] if args.pytest_args else [])])
    return calibrate(
        args.marker, seeds=args.seeds, start=args.start, out_dir=args.out, flaky_only=args.flaky,
        extra_args=args.pytest_args, command=command,
    )


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
    except (UserError, ClaimError, ResultsDirError, CalibrationError) as error:
        print(f"lab {command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `lab log | head` closed the pipe: not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
