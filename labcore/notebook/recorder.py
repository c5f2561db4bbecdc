"""The ``lab`` fixture and the history record each claim test leaves behind.

A pytest plugin module of its own, loaded by ``labcore.notebook.plugin``:

* **the ``lab`` fixture** — seed, device, results folder, ``record(...)`` for measured values,
  ``savefig(...)`` for plots, ``not_yet_run()`` for claims still waiting for an experiment.
* **the history** — exactly one JSON line per claim test and run in ``history.jsonl``, with the
  verdict, the measured values and enough provenance (versions, commit, seed, device) to
  compare runs later. Safe under pytest-xdist: each worker appends with a file lock.

How a value travels: ``lab.record(x=1.0)`` → ``LabRecorder.measured`` → ``build_record`` at
teardown → ``append_record`` (``labcore.notebook.history``) → read back by ``lab log`` /
``lab report``.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from labcore.files import ResultsDirError, history_path, results_dir
from labcore.notebook.claims import Claim
from labcore.notebook.history import NotJSONableError, append_record, to_jsonable, utc_now_iso
from labcore.notebook.scoreboard import LEDGER_NAME, note_first_result

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

MESSAGE_MAX_CHARS = 300


# --- per-session state ------------------------------------------------------------------------


@dataclass(eq=False)  # registered as a pluggy plugin, so it must stay hashable (by identity)
class LabSession:
    """What the plugin remembers for one pytest session (one per process under xdist)."""

    config: pytest.Config
    seed: int
    run_id: str
    versions: dict[str, str | None]
    commit: str | None
    dirty: bool | None
    worker: str
    claim_files: dict[str, Path] = field(default_factory=dict)  # claim id -> file that defines it
    previous_results_env: str | None = None
    records_appended: int = 0
    history_file: str | None = None

    def provenance(self) -> dict[str, Any]:
        """What xdist workers inherit so that all of a session's records agree."""
        return {"run_id": self.run_id, "versions": self.versions, "commit": self.commit, "dirty": self.dirty}

    # These two hooks run on the process that reports results: the only process without xdist,
    # the controller with it (worker reports arrive there carrying ``lab_history``).
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        history_file = getattr(report, "lab_history", None)
        if history_file:
            self.records_appended += 1
            self.history_file = history_file

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.records_appended and not hasattr(self.config, "workerinput"):
            plural = "record" if self.records_appended == 1 else "records"
            terminalreporter.write_line(
                f"lab: {self.records_appended} {plural} appended to {self.history_file}"
            )


SESSION_KEY = pytest.StashKey[LabSession]()
RECORDER_KEY = pytest.StashKey["LabRecorder"]()
PHASES_KEY = pytest.StashKey[dict[str, "PhaseResult"]]()


def session_of(config: pytest.Config) -> LabSession:
    return config.stash[SESSION_KEY]


def claim_of(node: pytest.Item) -> Claim | None:
    """The claim an item belongs to (its claim module's record), or None outside claim files."""
    module = node.getparent(pytest.Module)
    return getattr(module, "claim", None)


@functools.cache
def default_device() -> "torch.device":
    """CUDA if this machine has it, else CPU (imports torch on first use only). On CUDA the
    process is made deterministic first (labcore.training.reproducible): same seed, same bits."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    from labcore.training.reproducible import deterministic_cuda

    deterministic_cuda()
    return torch.device("cuda")


# --- the lab fixture ----------------------------------------------------------------------------


class LabRecorder:
    """The ``lab`` fixture: what a claim test needs from the lab, and what it gives back.

    ``claim``        the module's :class:`Claim` (None outside ``claims/``)
    ``seed``         from ``--lab-seed`` (default 0); use it for every random generator
    ``device``       ``torch.device`` — CUDA if available, else CPU
    ``results_dir``  ``<results>/<claim id>/`` for plots and artefacts (created on first use)
    ``record(**values)``  measured numbers, stored as ``measured`` in the history record
    ``savefig(fig, name)`` saves ``<results_dir>/<name>.png`` and lists it in the record
    ``not_yet_run(what)``  fail with "not yet run" for a claim with no experiment yet
    ``save_attention(tokens, pattern, name)``  attention (layers, heads, T, T) for the report's viewer
    ``throughput(tokens=, seconds=, flops=)``  records tokens_per_s (and flops, flops_per_s)
    """

    def __init__(self, claim: Claim | None, seed: int, results_root: Path, test_file: Path) -> None:
        self.claim = claim
        self.seed = seed
        self.results_root = results_root
        self.test_file = test_file
        self.measured: dict[str, Any] = {}
        self.plots: list[str] = []
        self.attention: list[str] = []

    @property
    def device(self) -> "torch.device":
        return default_device()

    @property
    def results_dir(self) -> Path:
        folder = self.results_root / (self.claim.id if self.claim else "unclaimed")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def record(self, **measured: Any) -> None:
        """Add measured values (numbers, strings, bools, lists, dicts; numpy/torch scalars and
        small tensors are converted). Later calls add keys or overwrite earlier ones."""
        for key, value in measured.items():
            try:
                self.measured[key] = to_jsonable(value, strict=True)
            except NotJSONableError as error:
                raise TypeError(
                    f"lab.record({key}=...): {error}; record a number, e.g. float(value)"
                ) from None

    def throughput(self, *, tokens: float, seconds: float, flops: float | None = None,
                   precision: str = "bf16") -> dict[str, float]:
        """Record ``tokens_per_s`` = tokens / seconds and, when the work in FLOPs is known (e.g.
        labcore.training.flops.train_flops_per_step × steps), ``flops`` and achieved ``flops_per_s``;
        on a GPU also ``mfu`` = flops_per_s / its peak for ``precision`` (hardware.peak_flops; NaN
        for a GPU missing from the table); returns them. ``lab hardware`` compares cards with it."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"lab.throughput: seconds must be a positive time, not {seconds!r}")
        if not (math.isfinite(tokens) and tokens >= 0):
            raise ValueError(f"lab.throughput: tokens must be a count ≥ 0, not {tokens!r}")
        values = {"tokens_per_s": float(tokens) / seconds}
        if flops is not None:
            if not (math.isfinite(flops) and flops >= 0):
                raise ValueError(f"lab.throughput: flops must be ≥ 0, not {flops!r}")
            values.update(flops=float(flops), flops_per_s=float(flops) / seconds)
            gpu = _gpu_name()
            if gpu:
                from labcore.notebook.hardware import peak_flops

                values["mfu"] = values["flops_per_s"] / peak_flops(gpu, precision)
                self.record(gpu=gpu, mfu_precision=precision)
        self.record(**values)
        return values

    def savefig(self, fig: "Figure", name: str) -> Path:
        """Save ``fig`` atomically as ``<results_dir>/<name>.png``, close it, list it in the
        record, and return the path."""
        from labcore.notebook.figures import atomic_savefig

        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"lab.savefig: name {name!r} must be a plain file name such as 'loss_curve'")
        path = atomic_savefig(fig, self.results_dir / f"{name}.png")
        relative = path.relative_to(self.results_root).as_posix()
        if relative not in self.plots:
            self.plots.append(relative)
        return path

    def save_attention(self, tokens: list[str], pattern: Any, name: str, layers: list | None = None,
                       heads: list | None = None) -> Path:
        """Save an attention pattern (layers, heads, T, T) — nested list, numpy array or torch
        tensor — with its T tokens as ``<results_dir>/attention_<name>.json``, list it in the
        record (``attention``) for the report's viewer, and return the path. Two names on one
        claim (e.g. ``before`` / ``after``) are compared side by side. ``layers=`` / ``heads=``
        label a subset (``layers=[1, 14, 22]``) so the viewer shows the model's own indices."""
        from labcore.notebook.viewer import write_snapshot

        path = write_snapshot(self.results_dir, tokens, pattern, name, layers, heads)
        relative = path.relative_to(self.results_root).as_posix()
        if relative not in self.attention:
            self.attention.append(relative)
        return path

    def not_yet_run(self, what: str = "") -> NoReturn:
        """Fail the test as "not yet run": the claim is written down, the experiment is not."""
        claim_id = self.claim.id if self.claim else "?"
        where = _display(self.test_file)
        detail = f" ({what})" if what else ""
        pytest.fail(
            f"not yet run: claim '{claim_id}' has no experiment yet — write the measurement in {where}{detail}",
            pytrace=False,
        )


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@pytest.fixture(scope="session")
def lab_seed(pytestconfig: pytest.Config) -> int:
    """The seed for this run (``--lab-seed``, default 0)."""
    return int(pytestconfig.getoption("lab_seed"))


@pytest.fixture(scope="session")
def lab_device() -> "torch.device":
    """``torch.device('cuda')`` if available, else CPU."""
    return default_device()


@pytest.fixture(scope="session")
def results_root() -> Path:
    """The results folder (``--lab-results`` / ``LAB_RESULTS_DIR`` / ``<repo>/results``)."""
    try:
        return results_dir()
    except ResultsDirError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def lab(request: pytest.FixtureRequest, lab_seed: int, results_root: Path) -> LabRecorder:
    """Seed, device, results folder and the measured-value recorder for one claim test."""
    recorder = LabRecorder(claim_of(request.node), lab_seed, results_root, request.node.path)
    request.node.stash[RECORDER_KEY] = recorder
    return recorder


# --- history: one record per claim test ---------------------------------------------------------


@dataclass(frozen=True)
class PhaseResult:
    """The part of a setup/call/teardown report the history needs."""

    outcome: str           # passed | failed | skipped (pytest's report outcome)
    wasxfail: str | None   # the xfail reason when the test was marked/raised xfail
    message: str
    duration: float
    full: str = ""         # the message uncut (all lines), for the report's explanations


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= MESSAGE_MAX_CHARS else line[: MESSAGE_MAX_CHARS - 3] + "..."
    return ""


def _phase_message(report: pytest.TestReport, call: pytest.CallInfo[None], clip: bool = True) -> str:
    """The phase's message: its first line, clipped (``clip=False``: the whole text, uncut)."""
    line = _first_line if clip else str.strip
    excinfo = call.excinfo
    exception_line = ""
    if excinfo is not None:
        if excinfo.errisinstance((pytest.fail.Exception, pytest.skip.Exception, pytest.xfail.Exception)):
            exception_line = line(str(excinfo.value))
        else:
            exception_line = line(excinfo.exconly())
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        return line(wasxfail) or exception_line
    if report.skipped and isinstance(report.longrepr, tuple):
        return line(report.longrepr[2].removeprefix("Skipped: "))
    if report.failed:
        return exception_line or _first_line(report.longreprtext)
    return ""


def _item_outcome(phases: dict[str, PhaseResult]) -> tuple[str, str]:
    """(outcome, message) for the item from its phases, in history vocabulary."""
    setup = phases.get("setup")
    call = phases.get("call")
    teardown = phases.get("teardown")
    if setup is not None and setup.outcome == "failed":
        return "error", setup.message
    if setup is not None and setup.outcome == "skipped":
        return ("xfailed" if setup.wasxfail is not None else "skipped"), setup.message
    outcome, message = "passed", ""
    if call is not None:
        message = call.message
        if call.wasxfail is not None:
            outcome = {"skipped": "xfailed", "passed": "xpassed"}.get(call.outcome, "failed")
        else:
            outcome = call.outcome
    if teardown is not None and teardown.outcome == "failed":
        if outcome == "passed":
            return "error", teardown.message
        message = f"{message}; teardown: {teardown.message}" if message else teardown.message
    return outcome, message


def _gpu_name() -> str:
    """The CUDA device's name when this process uses one, else ''."""
    if not _device_name().startswith("cuda"):
        return ""
    import torch

    return str(torch.cuda.get_device_name())


def _device_name() -> str:
    # Tests that never imported torch ran on the CPU; don't import it just to say so.
    return str(default_device()) if "torch" in sys.modules else "cpu"


def _peak_memory() -> tuple[int | None, str]:
    """(bytes, what they are). On CUDA: ``torch.cuda.max_memory_allocated()``, reset before each
    claim test (``pytest_runtest_setup`` below). On the CPU: the process's resident-set high-water
    mark (``ru_maxrss``), which is process-wide and never resets — a test's number includes what
    earlier tests in the same process (and session fixtures) held. None where unavailable."""
    if _device_name().startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return None, "unavailable"
    kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024), "process_rss_high_water"


def _explanation(phases: dict[str, PhaseResult], message: str) -> str:
    """The uncut text behind ``message`` ("" when the message already says it all)."""
    return "\n".join(p.full for p in phases.values() if p.message and p.message in message and p.full != p.message)


def launcher_rank() -> int:
    """This process's rank under ``torchrun`` / ``accelerate launch`` (their ``RANK`` variable; 0
    outside a launcher). Every rank runs the whole pytest session; only rank 0 writes the history
    record and the prediction ledger, so a data-parallel run leaves one record per test, not one
    per rank. (Read from the environment: the notebook never imports torch.)"""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def build_record(item: pytest.Item, claim: Claim, phases: dict[str, PhaseResult]) -> dict[str, Any]:
    """The schema-2 history record for one finished claim test."""
    state = session_of(item.config)
    recorder = item.stash.get(RECORDER_KEY, None)
    outcome, message = _item_outcome(phases)
    callspec = getattr(item, "callspec", None)
    params = {name: to_jsonable(value) for name, value in callspec.params.items()} if callspec else {}
    claim_fields = claim.to_dict()
    peak_bytes, peak_kind = _peak_memory()
    return {
        "time": utc_now_iso(),
        "claim": claim_fields.pop("id"),
        **claim_fields,
        "test": item.nodeid,
        "params": params,
        "outcome": outcome,
        "message": message,
        "measured": dict(recorder.measured) if recorder else {},
        "seed": state.seed,
        "device": _device_name(),
        "versions": state.versions,
        "commit": state.commit,
        "dirty": state.dirty,
        "duration_s": round(sum(phase.duration for phase in phases.values()), 4),
        "peak_memory_bytes": peak_bytes,
        "peak_memory_kind": peak_kind,
        "plots": list(recorder.plots) if recorder else [],
        "attention": list(recorder.attention) if recorder else [],
        "explanation": _explanation(phases, message),
        "run_id": state.run_id,
        "worker": state.worker,
        "world_size": _world_size(),  # > 1: a data-parallel run (torchrun), recorded by rank 0
    }


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each claim test's CUDA peak starts from zero (only when torch is already imported)."""
    if claim_of(item) is not None and _device_name().startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report: pytest.TestReport = yield
    claim = claim_of(item)
    if claim is None:
        return report
    phases = item.stash.setdefault(PHASES_KEY, {})
    phases[report.when] = PhaseResult(
        outcome=report.outcome,
        wasxfail=getattr(report, "wasxfail", None),
        message=_phase_message(report, call),
        full=_phase_message(report, call, clip=False),
        duration=report.duration,
    )
    if report.when == "teardown" and launcher_rank() == 0:  # teardown: always the last phase
        path = None
        try:
            path = history_path()
            record = build_record(item, claim, phases)
            append_record(path, record)
            note_first_result(path.with_name(LEDGER_NAME), record)  # the prediction ledger (scoreboard.py)
        except (OSError, ResultsDirError) as error:
            report.outcome = "failed"
            report.longrepr = f"lab: could not append the history record to {path or 'the results folder'}: {error}"
        else:
            report.lab_history = str(path)  # type: ignore[attr-defined]  # survives xdist
    return report
