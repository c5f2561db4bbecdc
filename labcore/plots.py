"""Figures without a display, and files that are either complete or absent.

The lab runs headless (CI, SSH, xdist workers), so matplotlib is switched to the Agg backend
on import. Plots, checkpoints and calibration tables are written through a temporary file in
the same folder and ``os.replace``d into place: a run killed mid-save, or two workers saving
the same name, never leaves a truncated PNG or JSON that a later reader would choke on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _write_atomically(path: Path, write: Any) -> Path:
    """Call ``write(file_object)`` on a temp file beside ``path``, then move it into place."""
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
    return _write_atomically(Path(path), lambda handle: handle.write(data))


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """Text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_savefig(fig: "Figure", path: Path | str, **savefig_kwargs: Any) -> Path:
    """Save ``fig`` to ``path`` atomically and close it (figures left open leak memory over a
    long pytest session). The format follows the file suffix, PNG if there is none."""
    import matplotlib.pyplot as plt

    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    savefig_kwargs.setdefault("bbox_inches", "tight")
    try:
        return _write_atomically(path, lambda handle: fig.savefig(handle, **savefig_kwargs))
    finally:
        plt.close(fig)
