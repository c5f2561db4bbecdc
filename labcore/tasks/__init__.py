"""Every data source of the lab whose exact answer is known.

Each task samples a batch from an explicit ``torch.Generator`` (same seed -> identical batch) and
returns the exact answer beside the tokens (a posterior, a true next-token distribution, an
entropy floor), so a model can be graded against the optimum rather than against a noisy label:

* :mod:`labcore.tasks.bijection`: bijection elimination (belief accumulation), sep-vocab format.
* :mod:`labcore.tasks.bijection_paired`: the paper's paired shared-vocabulary bijection format with
  an explicit final query.
* :mod:`labcore.tasks.hmm`: HMM filtering (belief transport), forward-algorithm posteriors.
* :mod:`labcore.tasks.recall`: associative recall (random-access binding).
* :mod:`labcore.tasks.pair_recall`: one-head key–value pair recall (the scaled-attention claim).
* :mod:`labcore.tasks.markov_domains`: two tagged Markov-chain domains, a shifted one and a far
  one — pretraining vs fine-tuning text with the true next-token distribution everywhere.
* :mod:`labcore.tasks.sticky_chain`: Paper II's sticky Markov chain with noisy continuous inputs.

(The real text corpus of the SmolLM2 claims has no exact answer; it is in ``labcore.pretrained``.)
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
