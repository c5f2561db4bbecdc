"""The questions log: what you wanted to know, and which claim answered it.

``lab ask "why does Adam need warmup?" --paper aiayn`` appends question ``Q<n>``;
``lab answer Q7 --by <claim_id> --note "..."`` links it to the claim whose run answered it (a
claim may also declare ``answers=("Q7",)`` in its record); ``lab questions [--open|--answered]``
lists them, and ``lab report`` shows them.

Stored in ``questions.jsonl`` at the checkout's root — tracked, one JSON line per question with
its answers, so a new question is one added line and an answer changes one line in a diff.
``LAB_QUESTIONS_FILE`` points elsewhere (the tests use a temporary file; nothing writes into the
tree unless you run ``lab ask``/``lab answer`` yourself).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labcore.files import atomic_write_text
from labcore.notebook.claims import PAPERS, DeclaredClaim, did_you_mean
from labcore.notebook.history import utc_now_iso
from labcore.notebook.log import format_table, short_time

QUESTIONS_ENV = "LAB_QUESTIONS_FILE"
QUESTIONS_NAME = "questions.jsonl"
_QUESTION_ID = re.compile(r"^[Qq]([1-9]\d*)$")

Question = dict[str, Any]  # id, asked, paper, question, answers: [{claim, note, time}]


class QuestionError(ValueError):
    """A question id, paper or claim that does not exist; one line that says the fix."""


def questions_path() -> Path:
    """``$LAB_QUESTIONS_FILE``, else ``questions.jsonl`` at the root of the checkout in use."""
    override = os.environ.get(QUESTIONS_ENV)
    if override:
        return Path(override).expanduser().absolute()
    from labcore.notebook.papers import project_root

    return project_root() / QUESTIONS_NAME


def load_questions(path: Path) -> list[Question]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    questions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            question = json.loads(line)
        except ValueError:
            raise QuestionError(f"{path}:{number} is not a JSON line; fix or delete it (a merge conflict?)") from None
        questions.append(question)
    return questions


def _save(path: Path, questions: Sequence[Question]) -> None:
    lines = [json.dumps(q, ensure_ascii=False, separators=(", ", ": ")) for q in questions]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def ask(path: Path, text: str, paper: str | None = None) -> str:
    """Append a new question and return its id (``Q<n>``, one more than the largest)."""
    if not text.strip():
        raise QuestionError("the question is empty; write it in quotes: lab ask \"why ...?\"")
    if paper is not None and paper not in PAPERS:
        raise QuestionError(f"paper {paper!r} is unknown;{did_you_mean(paper, PAPERS) or ' use one of ' + ', '.join(PAPERS)}")
    questions = load_questions(path)
    number = 1 + max((int(q["id"][1:]) for q in questions if _QUESTION_ID.match(str(q.get("id")))), default=0)
    questions.append({"id": f"Q{number}", "asked": utc_now_iso(), "paper": paper, "question": " ".join(text.split()),
                      "answers": []})
    _save(path, questions)
    return f"Q{number}"


def normalise_id(question_id: str) -> str:
    match = _QUESTION_ID.match(question_id.strip())
    if not match:
        raise QuestionError(f"{question_id!r} is not a question id; write it like Q7 (lab questions lists them)")
    return f"Q{match.group(1)}"


def answer(path: Path, question_id: str, claim: str, note: str = "", known_claims: Sequence[str] = ()) -> Question:
    """Record that ``claim`` answers ``question_id`` (with a note); returns the question."""
    question_id = normalise_id(question_id)
    if known_claims and claim not in known_claims:
        raise QuestionError(f"claim {claim!r} is unknown;{did_you_mean(claim, known_claims) or ' lab log lists the claims'}")
    questions = load_questions(path)
    for question in questions:
        if question.get("id") == question_id:
            question.setdefault("answers", []).append({"claim": claim, "note": note, "time": utc_now_iso()})
            _save(path, questions)
            return question
    raise QuestionError(f"no question {question_id} in {path.name}; lab questions lists them")


def answered_by(question: Question, declared: Sequence[DeclaredClaim] = ()) -> list[str]:
    """Claims that answer the question: via ``lab answer`` or a claim's ``answers=(...)``."""
    claims = [str(a.get("claim")) for a in question.get("answers") or []]
    claims += [d.id for d in declared if question.get("id") in d.answers]
    return list(dict.fromkeys(claims))


def select(questions: Sequence[Question], declared: Sequence[DeclaredClaim] = (), state: str | None = None,
           paper: str | None = None) -> list[tuple[Question, list[str]]]:
    """(question, answering claims) pairs; ``state`` "open" or "answered" filters."""
    chosen = []
    for question in questions:
        claims = answered_by(question, declared)
        if state == "open" and claims or state == "answered" and not claims:
            continue
        if paper is not None and question.get("paper") != paper:
            continue
        chosen.append((question, claims))
    return chosen


def render_questions(chosen: Sequence[tuple[Question, list[str]]]) -> str:
    if not chosen:
        return "No questions here yet: lab ask \"why does Adam need warmup?\" writes one down."
    rows = []
    for question, claims in chosen:
        notes = [a.get("note") for a in question.get("answers") or [] if a.get("note")]
        rows.append([question.get("id"), "answered" if claims else "open", question.get("paper") or "",
                     question.get("question"), ", ".join(claims), "; ".join(notes), short_time(question.get("asked"))])
    return format_table(["id", "state", "paper", "question", "answered by", "note", "asked"], rows)
