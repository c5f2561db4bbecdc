"""The paper registry: which papers the lab has claims for, read from the ``claims/`` folders.

A folder ``claims/<paper>/`` makes ``<paper>`` a paper and a pytest marker (``pytest -m
<paper>``); no Python edit is needed to add one (``lab new <paper>/<claim_id> --arxiv ID``
creates the folder). Its title and arXiv ids come from an optional ``claims/<paper>/paper.toml``:

    title = "Attention Is All You Need"   # shown in reports and `pytest --markers`
    arxiv = ["1706.03762"]                # a claim's source must cite one of these (if listed)
    note = "docs/papers/attention-is-all-you-need.md"   # optional; default docs/papers/<paper>.md
    order = 1                             # optional; reports list papers by order, then by name

A folder without ``paper.toml`` is still a paper: its title is the folder name and any arXiv id
is accepted. TOML, not Python, so that the registry is data — editing it never changes the model
cache key and never imports anything.

Where the folders are looked for: the ``claims/`` of the checkout this ``labcore`` came from,
the ``claims/`` of the project the command runs in (:func:`project_root`), and any folder the
pytest plugin adds for its rootdir (:func:`add_claims_dir`).
"""

from __future__ import annotations

import keyword
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labcore.files import atomic_write_text, repo_root

REGISTRY_FILE = "paper.toml"


class PaperRegistryError(ValueError):
    """A ``paper.toml`` that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Paper:
    """One paper: its marker (the folder name), title, arXiv ids and where its note lives."""

    name: str
    title: str
    arxiv: tuple[str, ...] = ()
    note: str | None = None
    order: int | None = None
    folder: Path | None = None
    registered: bool = False  # read from a paper.toml (not just a bare folder)

    def marker_description(self) -> str:
        arxiv = f" (arXiv {', '.join(self.arxiv)})" if self.arxiv else ""
        return f"claims from {self.title}{arxiv}"


def is_paper_folder(path: Path) -> bool:
    """A folder under ``claims/`` whose name can be a marker (not ``__pycache__``, ``.x``)."""
    name = path.name
    return (
        path.is_dir() and name.isidentifier() and not keyword.iskeyword(name)
        and not name.startswith("_")
    )


def project_root(start: Path | None = None) -> Path:
    """The checkout a command works on: the nearest folder at or above ``start`` (default the
    current directory) holding both ``claims/`` and ``pyproject.toml``; else labcore's own."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / "claims").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return repo_root()


_EXTRA_DIRS: list[Path] = []


def add_claims_dir(claims_dir: Path) -> bool:
    """Also look for papers under ``claims_dir`` (the pytest plugin adds its rootdir's for the
    session). True if it was not looked at before (then :func:`remove_claims_dir` undoes it)."""
    claims_dir = claims_dir.absolute()
    if claims_dir in _EXTRA_DIRS:
        return False
    _EXTRA_DIRS.append(claims_dir)
    return True


def remove_claims_dir(claims_dir: Path) -> None:
    claims_dir = claims_dir.absolute()
    if claims_dir in _EXTRA_DIRS:
        _EXTRA_DIRS.remove(claims_dir)


def claims_dirs() -> list[Path]:
    """Every ``claims/`` folder papers are read from, first wins for a paper's metadata."""
    found: list[Path] = []
    for folder in (project_root() / "claims", *_EXTRA_DIRS, repo_root() / "claims"):
        folder = folder.absolute()
        if folder not in found:
            found.append(folder)
    return found


def read_registry_file(path: Path, name: str) -> Paper:
    """The ``paper.toml`` at ``path`` as a :class:`Paper` named ``name``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PaperRegistryError(f"{path}: cannot read it ({error}); fix the TOML") from None
    title = data.get("title", name)
    arxiv = data.get("arxiv", [])
    if isinstance(arxiv, str):
        arxiv = [arxiv]
    if not isinstance(title, str) or not title.strip():
        raise PaperRegistryError(f"{path}: title must be text, e.g. title = \"Attention Is All You Need\"")
    if not isinstance(arxiv, list) or not all(isinstance(a, str) for a in arxiv):
        raise PaperRegistryError(f"{path}: arxiv must be a list of ids, e.g. arxiv = [\"1706.03762\"]")
    note, order = data.get("note"), data.get("order")
    if note is not None and not isinstance(note, str):
        raise PaperRegistryError(f"{path}: note must be a path such as \"docs/papers/{name}.md\"")
    if order is not None and (not isinstance(order, int) or isinstance(order, bool)):
        raise PaperRegistryError(f"{path}: order must be a whole number")
    return Paper(name, title.strip(), tuple(arxiv), note, order, path.parent, registered=True)


def papers_in(claims_dir: Path) -> dict[str, Paper]:
    """The papers whose folders are under ``claims_dir`` (folders without ``paper.toml`` too)."""
    found: dict[str, Paper] = {}
    if not claims_dir.is_dir():
        return found
    for folder in sorted(claims_dir.iterdir()):
        if not is_paper_folder(folder):
            continue
        registry = folder / REGISTRY_FILE
        if registry.is_file():
            found[folder.name] = read_registry_file(registry, folder.name)
        else:
            found[folder.name] = Paper(folder.name, folder.name, folder=folder)
    return found


_PENDING: dict[str, Paper] = {}


@contextmanager
def pending_paper(paper: Paper) -> Iterator[Paper]:
    """Treat ``paper`` as known inside the block: ``lab new`` checks a claim of a paper whose
    folder it is about to create, and writes nothing if the check fails."""
    previous = _PENDING.get(paper.name)
    _PENDING[paper.name] = paper
    try:
        yield paper
    finally:
        if previous is None:
            del _PENDING[paper.name]
        else:
            _PENDING[paper.name] = previous


def known_papers() -> dict[str, Paper]:
    """All papers, ordered by their ``order`` then name. A paper with a ``paper.toml`` in one
    checkout and a bare folder in another keeps the registry's title and ids."""
    merged: dict[str, Paper] = dict(_PENDING)
    for folder in claims_dirs():
        for name, paper in papers_in(folder).items():
            current = merged.get(name)
            if current is None or (paper.registered and not current.registered):
                merged[name] = paper
    ordered = sorted(merged.values(), key=lambda p: (p.order is None, p.order or 0, p.name))
    return {paper.name: paper for paper in ordered}


def paper_titles() -> dict[str, str]:
    """``{marker: title}`` for every known paper."""
    return {name: paper.title for name, paper in known_papers().items()}


def paper_arxiv() -> dict[str, tuple[str, ...]]:
    """``{marker: arXiv ids}`` for every known paper (empty: any id is accepted)."""
    return {name: paper.arxiv for name, paper in known_papers().items()}


def registry_text(title: str, arxiv: tuple[str, ...], note: str | None = None) -> str:
    """The text of a new ``paper.toml``."""
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "# The paper behind the claims in this folder (read by labcore.notebook.papers).",
        f"title = {quote(title)}",
        "arxiv = [" + ", ".join(quote(a) for a in arxiv) + "]",
    ]
    if note:
        lines.append(f"note = {quote(note)}")
    return "\n".join(lines) + "\n"


# --- lab new: a claim of a new paper ------------------------------------------------------------

NOTE_TEMPLATE = """\
# {title} — arXiv {arxiv}

Claims: `claims/{paper}/` (run them with `pytest -m {paper}`; one claim: `pytest -m <claim_id>`).

## What the paper says, in our words

Write here what the paper claims and why it matters, in a few sentences.

## Side by side

| claim | the paper | we measured | verdict |
|---|---|---|---|
| `{claim_id}` | write the paper's number | `lab log --claim {claim_id}` | not yet run |
"""


def paper_for_new_claim(claims_dir: Path, paper: str, arxiv: str | None, title: str | None) -> tuple[Paper, bool]:
    """The paper a new claim cites, and whether its ``paper.toml`` is still to be written
    (a new paper, or a bare folder); refuses a mismatched or missing arXiv id."""
    here = papers_in(claims_dir).get(paper)
    known = here if here is not None and here.registered else known_papers().get(paper, here)
    if known is None or not known.arxiv:
        if arxiv is None:
            state = "is new" if known is None else "has no arXiv id yet"
            raise PaperRegistryError(
                f"paper {paper!r} {state} (known: {', '.join(known_papers())}): give its arXiv id, "
                f"e.g. lab new {paper}/<claim_id> --arxiv 2301.00001 --title \"...\""
            )
        return Paper(paper, title or (known.title if known else paper), (arxiv,)), True
    if arxiv is not None and arxiv not in known.arxiv:
        raise PaperRegistryError(
            f"paper {paper!r} is arXiv {', '.join(known.arxiv)}, not {arxiv}: add the id to "
            f"claims/{paper}/paper.toml, or use another paper name"
        )
    return known, False


def write_paper_files(claims_dir: Path, paper: str, claim_id: str, title: str, arxiv: str) -> None:
    """``claims/<paper>/paper.toml`` and the note stub ``docs/papers/<paper>.md`` (if missing)."""
    note = claims_dir.parent / "docs" / "papers" / f"{paper}.md"
    registry = claims_dir / paper / "paper.toml"
    if not registry.exists():
        atomic_write_text(registry, registry_text(title, (arxiv,), f"docs/papers/{paper}.md"))
        print(f"wrote {registry}")
    if not note.exists():
        atomic_write_text(note, NOTE_TEMPLATE.format(title=title, arxiv=arxiv, paper=paper, claim_id=claim_id))
        print(f"wrote {note}")
