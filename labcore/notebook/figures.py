"""Figures without a display.

The lab runs headless under pytest (CI, SSH, xdist workers): the pytest plugin sets
``MPLBACKEND=Agg`` before any claim imports matplotlib. Importing this module (or any labcore
module) never switches the backend, so inline plots keep working in Jupyter; without a display
matplotlib falls back to Agg by itself. ``atomic_savefig`` writes through ``labcore.files`` (a
temp file moved into place), so a run killed mid-save never leaves a truncated PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from labcore.files import write_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def atomic_savefig(fig: "Figure", path: Path | str, **savefig_kwargs: Any) -> Path:
    """Save ``fig`` to ``path`` atomically and close it (figures left open leak memory over a
    long pytest session). The format follows the file suffix, PNG if there is none."""
    import matplotlib.pyplot as plt

    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    savefig_kwargs.setdefault("bbox_inches", "tight")
    try:
        return write_atomically(path, lambda handle: fig.savefig(handle, **savefig_kwargs))
    finally:
        plt.close(fig)
