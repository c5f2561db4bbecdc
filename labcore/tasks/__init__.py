"""Synthetic "wind tunnel" tasks whose exact Bayesian answer is known.

Each task samples a batch from an explicit ``torch.Generator`` (same seed -> identical batch) and
returns the exact posterior beside the tokens, so a model can be graded against the optimum
rather than against a noisy label:

* :mod:`labcore.tasks.bijection`: bijection elimination (belief accumulation), sep-vocab format.
* :mod:`labcore.tasks.hmm`: HMM filtering (belief transport), forward-algorithm posteriors.
* :mod:`labcore.tasks.recall`: associative recall (random-access binding).
"""

from labcore.tasks.bijection import (
    BijectionBatch,
    BijectionTask,
    analytic_entropy_bits,
)
from labcore.tasks.hmm import HMMBatch, HMMTask, forward_filter, soft_label_ce
from labcore.tasks.recall import RecallBatch, RecallTask

__all__ = [
    "BijectionBatch",
    "BijectionTask",
    "analytic_entropy_bits",
    "HMMBatch",
    "HMMTask",
    "forward_filter",
    "soft_label_ce",
    "RecallBatch",
    "RecallTask",
]
