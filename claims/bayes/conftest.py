"""Fixtures of the Bayesian wind-tunnel claims: hand-offs to ``labcore.training.wind_tunnel``.

``bijection_run`` is the shared V=10, L=9 transformer of this session's seed (``--lab-seed``),
trained once (about a minute) or loaded from the model cache, with its snapshots and calibration
curve; ``init_model`` is the same architecture at its initialisation. The recipe and why it was
chosen are in the labcore module.
"""

import pytest

from labcore.glassbox.model import GPT
from labcore.training.wind_tunnel import BijectionRun, init_model as _init_model, train_bijection


@pytest.fixture(scope="session")
def bijection_run(lab_seed: int) -> BijectionRun:
    """The shared V=10, L=9 transformer of this session's seed (trained once, or loaded)."""
    return train_bijection(lab_seed)


@pytest.fixture(scope="session")
def init_model(lab_seed: int) -> GPT:
    """The same architecture at its initialisation for this seed (= the run's step-0 snapshot)."""
    return _init_model(lab_seed)
