"""Claim and Source records: what a paper says, and how this lab decides whether it holds.

Every claim file under ``claims/<paper>/`` starts with ``CLAIM = Claim(...)``. The record is
validated when the file is imported, so a typo (an unknown tier, a missing tolerance rationale)
fails loudly at collection time with a one-line message that names the field and the fix,
instead of silently producing a test that reports nothing useful.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

from labcore.files import repo_root
from labcore.notebook.papers import paper_arxiv, paper_titles
from labcore.notebook.predictions import Prediction

class _PaperView(Mapping[str, Any]):
    """A read-only, always-current view of the paper registry (``labcore.notebook.papers``):
    the folders under ``claims/`` and their optional ``paper.toml``."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def __getitem__(self, key: str) -> Any:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return repr(self._read())


#: Paper markers and the titles they stand for: one per folder ``claims/<paper>/``, titles from
#: its ``paper.toml``. A claim's ``paper`` must be one of these keys; each is a pytest marker.
PAPERS: Mapping[str, str] = _PaperView(paper_titles)

#: The arXiv identifiers behind each paper marker (a claim's source must cite one of them; a
#: paper without listed ids accepts any).
PAPER_ARXIV: Mapping[str, tuple[str, ...]] = _PaperView(paper_arxiv)

#: How long a claim takes: ``quick`` runs on a laptop CPU in seconds to a minute, ``full``
#: needs longer training or bigger models.
TIERS: tuple[str, ...] = ("quick", "full")

#: What a claim needs beyond the CPU venv: ``gpu`` (CUDA), ``real_model`` (the SmolLM2 wheel).
TAGS: tuple[str, ...] = ("gpu", "real_model")

#: How far a claim is established. ``exploratory`` (the default): its tolerance or prediction may
#: have been chosen after seeing data (seeds 0–99 are the exploration seeds). ``confirmed``: it
#: passed on fresh seeds never used to choose anything — a calibration table over seeds >= 100
#: (``lab calibrate <claim> --seeds 5 --start 100``) with every test passing; ``lab calibrate
#: --check`` verifies that.
STATUSES: tuple[str, ...] = ("exploratory", "confirmed")
FRESH_SEED_START = 100

_QUESTION_ID = re.compile(r"^Q[1-9]\d*$")

#: Marker names a claim id may not take, because pytest or the lab already gives them a meaning.
RESERVED_MARKERS: frozenset[str] = frozenset(
    {"skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings", "benchmark",
     "tryfirst", "trylast", "hypothesis"}
    | set(TIERS) | set(TAGS)
)  # and every paper name (PAPERS), checked when a claim is built: papers can be added any time

_ARXIV_ID = re.compile(r"^\d{4}\.\d{4,5}$")
_ARXIV_VERSION = re.compile(r"^v\d+$")


class ClaimError(ValueError):
    """A claim record or claim file is not valid; the message is one line that says the fix."""


def _one_of(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` did you mean 'x'?`` with difflib's closest names, or "" when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    return f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _require_text(owner: str, name: str, value: object, hint: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ClaimError(f"{owner}: {name} is empty; {hint}")


@dataclass(frozen=True)
class Source:
    """Where in the paper the claim is made, precise enough for a reader to find the sentence."""

    title: str
    arxiv: str
    version: str
    where: str

    def __post_init__(self) -> None:
        owner = f"source {self.title!r}" if isinstance(self.title, str) else "source"
        _require_text(owner, "title", self.title, "write the paper's title")
        if not isinstance(self.arxiv, str) or not _ARXIV_ID.match(self.arxiv):
            raise ClaimError(
                f"{owner}: arxiv {self.arxiv!r} is not an arXiv id; write it like '1706.03762' "
                "(the version goes in version=)"
            )
        if not isinstance(self.version, str) or not _ARXIV_VERSION.match(self.version):
            raise ClaimError(
                f"{owner}: version {self.version!r} is not an arXiv version; write it like 'v7' "
                "(the version you read)"
            )
        _require_text(owner, "where", self.where, "write the section, table or figure, e.g. '§3.2.1'")

    def cite(self) -> str:
        """A one-line citation: ``Title, arXiv:1706.03762v7, §3.2.1``."""
        return f"{self.title}, arXiv:{self.arxiv}{self.version}, {self.where}"


@dataclass(frozen=True)
class Claim:
    """One testable claim from a paper, with the prediction and the pass rule written down
    *before* the measurement, so that a passing test means the claim held, not that the
    threshold was tuned until it did."""

    id: str
    paper: str
    statement: str
    source: Source
    paper_value: str
    prediction: str
    metric: str
    tolerance: str
    tolerance_why: str
    tier: str
    tags: tuple[str, ...] = field(default=())
    calibration: str | None = None
    #: what a ``full`` claim needs, shown in its skip message, e.g. "~6 GB, ~3 min on an RTX 5060 Ti"
    needs: str = ""
    predictions: tuple[Prediction, ...] = field(default=())
    status: str = "exploratory"
    answers: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.isidentifier() or keyword.iskeyword(self.id):
            raise ClaimError(
                f"claim {self.id!r}: id must be a Python identifier (letters, digits, underscores), "
                "e.g. 'aiayn_qk_variance'; it becomes a pytest marker"
            )
        owner = f"claim {self.id!r}"
        papers = dict(PAPERS)
        if self.id in RESERVED_MARKERS or self.id in papers:
            raise ClaimError(
                f"{owner}: id is already a marker with another meaning; prefix it with the paper, "
                f"e.g. '{self.paper}_{self.id}'"
            )
        if self.paper in RESERVED_MARKERS:
            raise ClaimError(f"{owner}: paper {self.paper!r} is a tier, tag or pytest marker, not a paper folder name")
        if self.paper not in papers:
            raise ClaimError(
                f"{owner}: paper {self.paper!r} is unknown; use one of {_one_of(list(papers))}, or add the "
                f"paper with: lab new {self.paper}/{self.id} --arxiv ID (it creates claims/{self.paper}/)"
            )
        _require_text(owner, "statement", self.statement, "quote the sentence from the paper")
        if not isinstance(self.source, Source):
            raise ClaimError(
                f"{owner}: source must be a Source(title=..., arxiv=..., version=..., where=...), "
                f"not {type(self.source).__name__}"
            )
        arxiv_ids = PAPER_ARXIV[self.paper]
        if arxiv_ids and self.source.arxiv not in arxiv_ids:
            raise ClaimError(
                f"{owner}: source arxiv {self.source.arxiv} is not the paper {self.paper!r} "
                f"({_one_of(arxiv_ids)}); fix source.arxiv or paper, or add the id to claims/{self.paper}/paper.toml"
            )
        if not isinstance(self.paper_value, str):
            raise ClaimError(f"{owner}: paper_value must be text, e.g. 'Var(q·k) = d_k'")
        _require_text(owner, "prediction", self.prediction, "write what you expect to measure")
        _require_text(owner, "metric", self.metric, "write what is measured and over how many samples")
        _require_text(owner, "tolerance", self.tolerance, "write the pass threshold, e.g. '≤ 0.05'")
        _require_text(
            owner, "tolerance_why", self.tolerance_why,
            "write why the threshold is what it is (a noise estimate, or lab calibrate)",
        )
        if self.tier not in TIERS:
            raise ClaimError(f"{owner}: tier {self.tier!r} is unknown; use one of {_one_of(TIERS)}")
        self._validate_tags(owner)
        self._validate_calibration(owner)
        self._validate_learning(owner)
        if not isinstance(self.needs, str):
            raise ClaimError(f"{owner}: needs must be text such as '~6 GB, ~3 min on an RTX 5060 Ti 16 GB'")

    def _validate_tags(self, owner: str) -> None:
        if isinstance(self.tags, str) or not isinstance(self.tags, (tuple, list)):
            raise ClaimError(f"{owner}: tags must be a tuple such as ('gpu',), not {self.tags!r}")
        for tag in self.tags:
            if tag not in TAGS:
                raise ClaimError(f"{owner}: tag {tag!r} is unknown; use any of {_one_of(TAGS)}")
        # A frozen dataclass keeps whatever it is given; store tags as a tuple so the record
        # stays hashable and compares equal however it was written.
        object.__setattr__(self, "tags", tuple(self.tags))

    def _validate_calibration(self, owner: str) -> None:
        if self.calibration is None:
            return
        if not isinstance(self.calibration, str) or not self.calibration.strip():
            raise ClaimError(f"{owner}: calibration must be a path like 'fixtures/calibration/{self.id}.json' or None")
        if not (repo_root() / self.calibration).is_file():
            raise ClaimError(
                f"{owner}: calibration file {self.calibration} does not exist; run "
                f"'lab calibrate {self.id} --seeds 20' or set calibration=None"
            )

    def _validate_learning(self, owner: str) -> None:
        """predictions, status and answers (the learning fields, see ``lab scoreboard``)."""
        if isinstance(self.predictions, Prediction) or not isinstance(self.predictions, (tuple, list)):
            raise ClaimError(f"{owner}: predictions must be a tuple of Prediction(...), e.g. (Prediction('rel_err', '<=', 0.05, confidence=0.8),)")
        for prediction in self.predictions:
            if not isinstance(prediction, Prediction):
                raise ClaimError(f"{owner}: predictions holds a {type(prediction).__name__}; write Prediction(key, '<=', value, confidence=0.7)")
        keys = [(p.measured_key, p.comparator) for p in self.predictions]
        if len(set(keys)) != len(keys):
            raise ClaimError(f"{owner}: two predictions compare the same measured_key the same way; keep one")
        object.__setattr__(self, "predictions", tuple(self.predictions))
        if self.status not in STATUSES:
            raise ClaimError(f"{owner}: status {self.status!r} is unknown; use one of {_one_of(STATUSES)}")
        if self.status == "confirmed" and self.calibration is None:
            raise ClaimError(f"{owner}: status 'confirmed' needs a calibration table over fresh seeds "
                             f"(lab calibrate {self.id} --seeds 5 --start {FRESH_SEED_START}); else status='exploratory'")
        if isinstance(self.answers, str) or not isinstance(self.answers, (tuple, list)):
            raise ClaimError(f"{owner}: answers must be a tuple of question ids such as ('Q7',), not {self.answers!r}")
        for question in self.answers:
            if not isinstance(question, str) or not _QUESTION_ID.match(question):
                raise ClaimError(f"{owner}: answers holds {question!r}; question ids look like 'Q7' (lab questions lists them)")
        object.__setattr__(self, "answers", tuple(self.answers))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (source as a nested dict, tags, answers and predictions as lists)."""
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["predictions"] = [prediction.to_dict() for prediction in self.predictions]
        data["answers"] = list(self.answers)
        return data


def _display_path(path: str | Path | None) -> str:
    if path is None:
        return "<unknown file>"
    path = Path(path)
    for base in (Path.cwd(), repo_root()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def load_claim_from_module(module: ModuleType) -> Claim:
    """The module's ``CLAIM`` record, or a :class:`ClaimError` saying how to add one."""
    where = _display_path(getattr(module, "__file__", None))
    claim = getattr(module, "CLAIM", None)
    if claim is None:
        raise ClaimError(f"{where} has no CLAIM record: add CLAIM = Claim(...) at the top (see lab new)")
    if not isinstance(claim, Claim):
        raise ClaimError(
            f"{where}: CLAIM is a {type(claim).__name__}, not a Claim: build it with "
            "labcore.notebook.claims.Claim(...) (see lab new)"
        )
    return claim


@dataclass(frozen=True)
class DeclaredClaim:
    """A claim id found by reading a claim file's source text, without importing it."""

    id: str
    paper: str | None
    path: Path
    tier: str | None = None
    statement: str | None = None
    calibration: str | None = None
    status: str | None = None
    answers: tuple[str, ...] = ()


def _literal_keyword(call: ast.Call, name: str) -> str | None:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
            return kw.value.value
    return None


def _literal_tuple(call: ast.Call, name: str) -> tuple[str, ...]:
    for kw in call.keywords:
        if kw.arg == name:
            try:
                value = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError):
                return ()
            return tuple(str(v) for v in value) if isinstance(value, (tuple, list)) else ()
    return ()


def scan_claim_files(claims_dir: Path) -> list[DeclaredClaim]:
    """Claim ids declared under ``claims_dir``, read from the source text.

    Importing a claim file may pull in torch and take seconds; reading ``CLAIM = Claim(id=...)``
    with :mod:`ast` is instant. The lab uses this where it must know every claim id before
    (or without) collecting tests: ``-m`` checks on the xdist controller, ``lab new``'s
    duplicate check, and the "never run" list in reports. Files that do not parse, or whose id
    is not a string literal, are simply not listed here; collection reports them.
    """
    found: list[DeclaredClaim] = []
    if not claims_dir.is_dir():
        return found
    for path in sorted(claims_dir.rglob("test_*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
                continue
            if not any(isinstance(t, ast.Name) and t.id == "CLAIM" for t in node.targets):
                continue
            claim_id = _literal_keyword(node.value, "id")
            if claim_id is not None:
                found.append(DeclaredClaim(
                    claim_id, _literal_keyword(node.value, "paper"), path,
                    tier=_literal_keyword(node.value, "tier"),
                    statement=_literal_keyword(node.value, "statement"),
                    calibration=_literal_keyword(node.value, "calibration"),
                    status=_literal_keyword(node.value, "status") or "exploratory",
                    answers=_literal_tuple(node.value, "answers"),
                ))
    return found
