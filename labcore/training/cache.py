"""The one model cache: trained models (and what was kept while they trained) reused between runs.

Every claim that trains a shared model goes through this module — the wind-tunnel transformer
(``labcore.training.wind_tunnel``), the fine-tuning base (``labcore.finetuning.base``) and the
de-quantised SmolLM2 (``labcore.pretrained.smollm2``) — so there is one rule for where cached
files live, what their key covers and when they are thrown away:

* **Where**: ``<cache>/models`` (``labcore.files.cache_dir``: under the results folder, or
  ``LAB_CACHE_DIR``). ``LAB_MODEL_CACHE=0`` turns caching off (CI trains every model afresh).
* **Key**: the model config, the training recipe, the seed and :func:`source_hash` — a hash of
  the *science* packages only (glassbox, training, tasks, measures, finetuning, pretrained).
  An edit to the model, the trainer or a task retrains; an edit to the notebook half (report,
  CLI, claim registry, plugin) retrains nothing.
* **Damage**: a torn or unreadable entry is deleted and rebuilt, never an error.

Three shapes of cached thing:

    cached(name, config, seed, recipe, train_fn)          -> (model, from_cache)
    cached_run(name, config, seed, recipe, train_fn)      -> CachedRun (model, snapshots, extras)
    cached_folder(name, build, load)                      -> (value, from_cache)   any folder
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from labcore.files import ResultsDirError, atomic_write_text, cache_dir, model_cache_enabled
from labcore.glassbox.model import GPT, GPTConfig
from labcore.training.checkpoint import CheckpointError, load_model, save_model

#: The packages whose source decides what a trained model is (the cache key hashes them);
#: dynamics and interp are instruments, hashed too because a claim may train through them.
SCIENCE_PACKAGES = ("glassbox", "training", "tasks", "measures", "finetuning", "pretrained", "dynamics", "interp")

T = TypeVar("T")


@lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 (first 16 hex) over the science packages' Python sources: a cached model's
    "code version". The notebook half (``labcore/notebook``) and ``labcore/files.py`` are left
    out on purpose: they never change what a model learns."""
    return hash_packages(Path(__file__).resolve().parent.parent)


def hash_packages(root: Path, packages: tuple[str, ...] = SCIENCE_PACKAGES) -> str:
    """SHA-256 (first 16 hex) over the ``*.py`` files of ``packages`` under ``root``."""
    h = hashlib.sha256()
    for package in packages:
        for file in sorted((root / package).rglob("*.py")):
            h.update(str(file.relative_to(root)).encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]


def cache_key(config: GPTConfig, seed: int, recipe: dict) -> str:
    """Key of a trained model: its config, the training recipe, the seed and the source hash."""
    blob = json.dumps(
        {"config": config.to_json(), "seed": seed, "recipe": recipe, "source": source_hash()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def models_folder(cache_folder: str | Path | None = None) -> Path | None:
    """``cache_folder`` if given, else ``<cache>/models``; None when caching is off
    (``LAB_MODEL_CACHE=0``) or the cache folder cannot be written."""
    if cache_folder is not None:
        return Path(cache_folder)
    if not model_cache_enabled():
        return None
    try:
        return cache_dir() / "models"
    except ResultsDirError:
        return None


def cached(
    name: str,
    config: GPTConfig,
    seed: int,
    recipe: dict,
    train_fn: Callable[[], GPT],
    cache_dir: str | Path | None = None,
) -> tuple[GPT, bool]:
    """Return (model, loaded_from_cache). Trains with ``train_fn()`` and saves when not cached."""
    folder = models_folder(cache_dir)
    if folder is None:
        return train_fn(), False
    path = folder / f"{name}-{cache_key(config, seed, recipe)}.safetensors"
    if path.exists():
        try:
            return load_model(path, config), True
        except CheckpointError:
            path.unlink(missing_ok=True)  # a torn or stale file: retrain rather than fail
    model = train_fn()
    save_model(model, path, extra={"seed": str(seed), "recipe": json.dumps(recipe, default=str)})
    return model, False


@dataclass
class CachedRun:
    """A trained model with what was kept while it trained."""

    model: GPT                                          # final weights
    snapshots: dict[int, GPT] = field(default_factory=dict)   # step -> weights at that step
    extras: dict[str, Any] = field(default_factory=dict)      # JSON-able (curves, timings)
    from_cache: bool = False


def cached_run(
    name: str,
    config: GPTConfig,
    seed: int,
    recipe: dict,
    train_fn: Callable[[], CachedRun],
    cache_dir: str | Path | None = None,
) -> CachedRun:
    """Like :func:`cached` for a run with snapshots and JSON extras, stored under one key:
    ``<name>-<key>.safetensors``, ``...-step<N>.safetensors`` and ``...-extras.json``. The
    extras file is written last, so its presence marks a complete entry."""
    folder = models_folder(cache_dir)
    if folder is None:
        return train_fn()
    stem = f"{name}-{cache_key(config, seed, recipe)}"
    final, extras_path = folder / f"{stem}.safetensors", folder / f"{stem}-extras.json"
    if extras_path.exists():
        try:
            extras = json.loads(extras_path.read_text())
            snapshots = {int(s): load_model(folder / f"{stem}-step{s}.safetensors", config)
                         for s in extras.pop("_snapshot_steps")}
            return CachedRun(load_model(final, config), snapshots, extras, from_cache=True)
        except (OSError, ValueError, KeyError):
            extras_path.unlink(missing_ok=True)  # a torn entry: retrain and rewrite all of it
    run = train_fn()
    save_model(run.model, final, extra={"seed": str(seed), "recipe": json.dumps(recipe, default=str)})
    for step, model in run.snapshots.items():
        save_model(model, folder / f"{stem}-step{step}.safetensors", extra={"step": str(step), "seed": str(seed)})
    atomic_write_text(extras_path, json.dumps({**run.extras, "_snapshot_steps": sorted(run.snapshots)}))
    return run


def cached_folder(
    name: str,
    build: Callable[[Path | None], T],
    load: Callable[[Path], T],
    cache_dir: str | Path | None = None,
) -> tuple[T, bool]:
    """A cached artefact that is a folder (a transformers ``save_pretrained`` tree, say).

    Returns ``(load(folder), True)`` when ``<models>/<name>`` exists and loads. Otherwise
    ``build(tmp_folder)`` makes the value and writes it into ``tmp_folder``, which is renamed
    into place in one step (a killed build leaves no half folder); returns ``(value, False)``.
    With caching off, ``build(None)`` must just make the value. A folder that fails to load is
    deleted and rebuilt.
    """
    root = models_folder(cache_dir)
    if root is None:
        return build(None), False
    folder = root / name
    if folder.is_dir():
        try:
            return load(folder), True
        except Exception:  # noqa: BLE001 — a damaged entry of any kind is rebuilt, not fatal
            shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=root))
    try:
        value = build(tmp)
        try:
            tmp.replace(folder)
        except OSError:
            pass  # another process won the race, or the disk is full: the value is still good
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return value, False
