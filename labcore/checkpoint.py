"""Checkpoints: safetensors only (no pickle is ever loaded), with the model config inside.

`save_model` writes the weights and the config as safetensors metadata, atomically (temp file +
rename), so a crash never leaves a half-written file under the final name. `load_model` rebuilds
the model from that config and refuses a file whose tensors do not fit it, with a message that
names the problem.

`cached(...)` lets a session fixture reuse a trained model between runs. The cache key covers the
model config, the training recipe, the seed *and a hash of labcore's own source*, so a change to
the model or the trainer code can never be hidden by an old cached model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from labcore.model import GPT, GPTConfig

FORMAT = "labcore-gpt-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


def save_model(model: GPT, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.cfg.to_json(), "labcore_source": labcore_source_hash()}
    metadata.update(extra or {})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e}); delete it and retrain") from e


def load_model(path: str | os.PathLike, config: GPTConfig | None = None, device: str = "cpu") -> GPT:
    """Load a checkpoint written by `save_model`. With `config`, refuse a file saved for another config."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: not a labcore GPT checkpoint (format={meta.get('format')!r})")
    saved = GPTConfig.from_json(meta["config"])
    if config is not None and saved != config:
        diff = {k: (v, getattr(config, k)) for k, v in vars(saved).items() if getattr(config, k) != v}
        raise CheckpointError(f"{path}: saved for another config; differing fields (saved, wanted): {diff}")
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({e}); delete it and retrain") from e
    model = GPT(saved).to(device)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not fit the config (missing {missing}, unexpected {unexpected})")
    return model.eval()


@lru_cache(maxsize=1)
def labcore_source_hash() -> str:
    """SHA-256 (first 16 hex) over labcore's Python sources: the 'code version' of a cached model."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        h.update(str(file.relative_to(root)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()[:16]


def cache_key(config: GPTConfig, seed: int, recipe: dict) -> str:
    """Key of a trained model: its config, the training recipe, the seed and labcore's source hash."""
    blob = json.dumps(
        {"config": config.to_json(), "seed": seed, "recipe": recipe, "source": labcore_source_hash()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached(
    name: str,
    config: GPTConfig,
    seed: int,
    recipe: dict,
    train_fn: Callable[[], GPT],
    cache_dir: str | os.PathLike | None = None,
) -> tuple[GPT, bool]:
    """Return (model, loaded_from_cache). Trains with `train_fn()` and saves when not cached.

    The cache folder is `cache_dir`, else `labcore.paths.cache_dir()/models` (under the results
    folder, or LAB_CACHE_DIR). LAB_MODEL_CACHE=0 turns caching off: CI trains every model afresh.
    """
    if cache_dir is None:
        if os.environ.get("LAB_MODEL_CACHE") == "0":
            return train_fn(), False
        from labcore.paths import cache_dir as lab_cache_dir

        cache_dir = lab_cache_dir() / "models"
    path = Path(cache_dir) / f"{name}-{cache_key(config, seed, recipe)}.safetensors"
    if path.exists():
        try:
            return load_model(path, config), True
        except CheckpointError:
            path.unlink(missing_ok=True)  # a torn or stale file: retrain rather than fail
    model = train_fn()
    save_model(model, path, extra={"seed": str(seed), "recipe": json.dumps(recipe, default=str)})
    return model, False
