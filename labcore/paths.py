"""Where the lab keeps things: the repository root and the results folder.

Everything a run produces (the history log, plots, cached trained models) lives under one
results folder so that tests and CI can point it at a temporary directory with one setting,
``LAB_RESULTS_DIR``, and never touch the user's own learning log.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "LAB_RESULTS_DIR"
CACHE_ENV = "LAB_CACHE_DIR"

_REPO_ROOT = Path(__file__).resolve().parent.parent


class ResultsDirError(RuntimeError):
    """The results folder cannot be created or written; the message says how to fix it."""


def repo_root() -> Path:
    """The checkout this ``labcore`` was imported from (the folder holding ``claims/``)."""
    return _REPO_ROOT


def _ensure_writable_dir(path: Path, what: str, env: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise ResultsDirError(
            f"{what} {path} is not writable: set {env} to a writable folder"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ResultsDirError(f"{what} {path} is not writable: set {env} to a writable folder")
    return path


def results_dir() -> Path:
    """The results folder, created on demand.

    ``LAB_RESULTS_DIR`` if set (relative paths are taken from the current directory),
    otherwise ``<repo>/results``. Raises :class:`ResultsDirError` with a one-line fix if the
    folder cannot be written, because a run that trains for minutes and then cannot save its
    record is worse than one that refuses to start.
    """
    configured = os.environ.get(RESULTS_ENV)
    path = Path(configured).expanduser().absolute() if configured else repo_root() / "results"
    return _ensure_writable_dir(path, "results folder", RESULTS_ENV)


def cache_dir() -> Path:
    """Where trained models are cached: ``<results>/cache``.

    ``LAB_CACHE_DIR`` overrides it; ``lab calibrate`` uses that to let its throw-away results
    folders reuse the models the user has already trained.
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return _ensure_writable_dir(Path(configured).expanduser().absolute(), "cache folder", CACHE_ENV)
    return _ensure_writable_dir(results_dir() / "cache", "results folder", RESULTS_ENV)


def history_path() -> Path:
    """The append-only learning log, ``<results>/history.jsonl``."""
    return results_dir() / "history.jsonl"
