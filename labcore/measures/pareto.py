"""The learning–forgetting trade-off as a Pareto frontier (Biderman et al. 2024, §4.3, Fig. 4).

"LoRA Learns Less and Forgets Less" (arXiv 2405.09673) plots, for every checkpoint of every run,
how much of the target domain was learned against how much of the source domain was forgotten,
and asks whether LoRA and full fine-tuning "occupy the same Pareto curve". A method that merely
learns less will forget less too; the question is what it forgets *at matched learning*.

A point is (learned, forgot): learned = drop of the target-domain loss, forgot = rise of the
source-domain loss (both in nats; more learned is better, less forgotten is better). The
frontier of a set of points is the subset that no other point dominates (learned ≥ and
forgot ≤, one of them strictly), sorted by learned; between its vertices it is interpolated
linearly. ``excess_forgetting`` of a point is its forgetting minus the frontier's at the same
learning: > 0 above the reference curve (forgets more for that much learning), < 0 below it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front", "front_forgetting_at", "excess_forgetting"]


def _as_points(points: Sequence[tuple[float, float]] | np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"need a non-empty list of (learned, forgot) pairs, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("a (learned, forgot) point is NaN or infinite: did a run diverge?")
    return pts


def pareto_front(points: Sequence[tuple[float, float]] | np.ndarray) -> np.ndarray:
    """The non-dominated (learned, forgot) points, sorted by learned ascending. (k, 2)."""
    pts = _as_points(points)
    # sweep from most learned to least: keep a point if it forgets less than every point that learned more
    order = np.lexsort((pts[:, 1], -pts[:, 0]))  # learned descending, ties: least forgetting first
    front, best_forgot = [], np.inf
    for learned, forgot in pts[order]:
        if forgot < best_forgot:
            front.append((learned, forgot))
            best_forgot = forgot
    return np.array(front[::-1])


def front_forgetting_at(front: np.ndarray, learned: float) -> float:
    """Forgetting of the frontier at ``learned``: linear between vertices; left of the first
    vertex, that vertex's forgetting (it learned more for that forgetting, so it dominates);
    NaN right of the last vertex (no reference point learned that much)."""
    if learned > front[-1, 0]:
        return float("nan")
    if learned <= front[0, 0]:
        return float(front[0, 1])
    return float(np.interp(learned, front[:, 0], front[:, 1]))


def excess_forgetting(points: Sequence[tuple[float, float]] | np.ndarray, reference: np.ndarray) -> np.ndarray:
    """forgot − frontier(reference)'s forgetting at the same learned, per point (NaN outside its range)."""
    pts = _as_points(points)
    front = pareto_front(reference)
    return np.array([forgot - front_forgetting_at(front, learned) for learned, forgot in pts])
