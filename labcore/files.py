"""Where the lab keeps things, and how it writes them.

Everything a run produces (the history log, plots, cached trained models) lives under one
results folder so that tests and CI can point it at a temporary directory with one setting,
``LAB_RESULTS_DIR``, and never touch the user's own learning log. The environment switches that
decide where files go are read here and nowhere else:

    LAB_RESULTS_DIR   the results folder (default <repo>/results)
    LAB_CACHE_DIR     the trained-model cache (default <results>/cache)
    LAB_MODEL_CACHE   "0" turns the model cache off (CI trains every model afresh)

Every file the lab writes — plots, reports, calibration tables, checkpoints — goes through a
temporary file in the same folder that is ``os.replace``d into place: a run killed mid-save, or
two workers saving the same name, never leaves a truncated PNG or JSON that a later reader would
choke on. This module imports neither torch nor matplotlib: both halves of the lab use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

RESULTS_ENV = "LAB_RESULTS_DIR"
CACHE_ENV = "LAB_CACHE_DIR"
MODEL_CACHE_ENV = "LAB_MODEL_CACHE"

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


def model_cache_enabled() -> bool:
    """False when ``LAB_MODEL_CACHE=0``: every trained model is trained afresh (CI)."""
    return os.environ.get(MODEL_CACHE_ENV) != "0"


def history_path() -> Path:
    """The append-only learning log, ``<results>/history.jsonl``."""
    return results_dir() / "history.jsonl"


# --------------------------------------------------------------------------------------------
# atomic writes


def write_atomically(path: Path | str, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(binary file object)`` on a temp file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; results should be readable like any file
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    return write_atomically(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_with(path: Path | str, write_to_path: Callable[[str], object]) -> Path:
    """For writers that want a file *name* (safetensors' ``save_file``): they write a temp file
    beside ``path``, which then replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_to_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
