"""Checkpoints: safetensors only (no pickle is ever loaded), with the model config inside.

`save_model` writes the weights and the config as safetensors metadata, atomically (temp file +
rename, ``labcore.files``), so a crash never leaves a half-written file under the final name.
`load_model` rebuilds the model from that config and refuses a file whose tensors do not fit it,
with a message that names the problem. The model cache (``labcore.training.cache``) stores its
models through these two functions.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from labcore.files import atomic_write_with
from labcore.glassbox.model import GPT, GPTConfig

FORMAT = "labcore-gpt-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


def save_model(model: GPT, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights and config (and ``extra`` metadata strings) to ``path``."""
    from labcore.training.cache import source_hash

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.cfg.to_json(), "labcore_source": source_hash()}
    metadata.update(extra or {})
    return atomic_write_with(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


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
