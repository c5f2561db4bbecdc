"""Figures without a display.

The lab runs headless (CI, SSH, xdist workers), so matplotlib is switched to the Agg backend
on import. ``atomic_savefig`` writes through ``labcore.files`` (a temp file moved into place),
so a run killed mid-save never leaves a truncated PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

from labcore.files import write_atomically

matplotlib.use("Agg")

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
