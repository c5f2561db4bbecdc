"""labcore.measures.pareto: learning–forgetting frontier and excess forgetting."""

import math

import numpy as np
import pytest

from labcore.measures.pareto import excess_forgetting, front_forgetting_at, pareto_front


def test_front_keeps_non_dominated_points_sorted_by_learning():
    pts = [(0.0, 0.0), (0.2, 0.1), (0.3, 0.3), (0.25, 0.5), (0.1, 0.2)]
    front = pareto_front(pts)
    assert front.tolist() == [[0.0, 0.0], [0.2, 0.1], [0.3, 0.3]]


def test_excess_is_signed_distance_to_the_front():
    ref = [(0.0, 0.0), (0.2, 0.1), (0.4, 0.3)]
    e = excess_forgetting([(0.1, 0.05), (0.3, 0.1), (0.3, 0.3), (0.5, 0.0)], ref)
    assert np.allclose(e[:3], [0.0, -0.1, 0.1])
    assert math.isnan(e[3])  # learned more than any reference point


def test_left_of_the_front_uses_its_first_vertex():
    front = pareto_front([(0.2, -0.01), (0.25, 0.02), (0.0, 0.0)])  # (0, 0) is dominated
    assert front_forgetting_at(front, 0.1) == pytest.approx(-0.01)


def test_bad_points_are_named():
    with pytest.raises(ValueError, match="pairs"):
        pareto_front([1.0, 2.0])
    with pytest.raises(ValueError, match="diverge"):
        pareto_front([(0.1, float("nan"))])
