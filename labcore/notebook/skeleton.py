"""The claim file `lab new` writes: a skeleton that fails with "not yet run" until filled in.

It imports what a claim needs, carries a CLAIM record whose "write ..." fields say what to fill
in, records a value with ``lab.record`` and has the assertion to complete — so the prediction is
on record before the experiment exists.
"""

from __future__ import annotations

import json

CLAIM_TEMPLATE = '''\
"""{title}: {claim_id}.

Write here, in a few sentences, what the claim means and how this file tests it.
"""

import pytest  # noqa: F401  (parametrize, approx, ... when you write the experiment)

from labcore.notebook.claims import Claim, Source

CLAIM = Claim(
    id={claim_id_literal},
    paper={paper_literal},
    statement={statement},
    source=Source(
        title={title_literal},
        arxiv={arxiv},
        version="v1",  # the arXiv version you read
        where="write the section, table or figure, e.g. §3.2.1",
    ),
    paper_value="write the number or relation the paper reports",
    prediction={prediction},
    metric="write what is measured, over how many samples or seeds",
    tolerance="write the pass threshold, e.g. ≤ 0.05",
    tolerance_why="write why this threshold: a noise estimate, or lab calibrate {claim_id} --seeds 20",
    tier={tier},
    tags=(),  # ("gpu",) and/or ("real_model",) if the experiment needs them
    calibration=None,  # or "fixtures/calibration/{claim_id}.json" after lab calibrate
)


def test_{claim_id}(lab):
    # 1. The experiment: train or probe a model with lab.seed (and lab.device), e.g.
    #    value = measure_something(seed=lab.seed)       # from labcore, never copied in here
    value = None
    if value is None:  # delete these two lines once `value` is measured
        lab.not_yet_run("measure the metric, lab.record(...) it, then assert the tolerance")
    # 2. Record what was measured: it goes to the learning log (lab log, lab report).
    lab.record(value=value)
    # lab.savefig(fig, "curve")                        # plots go to results/{claim_id}/
    # 3. The pass rule written in CLAIM above, with the numbers in the message:
    # assert value <= 0.05, f"value {{value:.3g}} is above the tolerance 0.05"
'''

DEFAULT_STATEMENT = "write the sentence from the paper, quoted"
DEFAULT_PREDICTION = "write what you expect to measure, before running it"


def _literal(text: str) -> str:
    """A Python string literal for ``text`` (JSON string syntax is valid Python)."""
    return json.dumps(text, ensure_ascii=False)


def render_skeleton(*, claim_id: str, paper: str, statement: str, title: str, arxiv: str, prediction: str,
                    tier: str) -> str:
    """The text of ``claims/<paper>/test_<claim_id>.py``."""
    return CLAIM_TEMPLATE.format(
        title=title, claim_id=claim_id, claim_id_literal=_literal(claim_id), paper_literal=_literal(paper),
        statement=_literal(statement), title_literal=_literal(title), arxiv=_literal(arxiv),
        prediction=_literal(prediction), tier=_literal(tier),
    )
