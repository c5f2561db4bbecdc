"""The questions log: lab ask / lab answer / lab questions, and the report's Questions section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labcore.notebook.cli import main
from labcore.notebook.claims import DeclaredClaim
from labcore.notebook.history import read_history
from labcore.notebook.questions import QUESTIONS_ENV, load_questions, select
from labcore.notebook.report import build_report_blocks, questions_blocks


@pytest.fixture
def questions_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary questions file: the tests never write the tracked questions.jsonl."""
    path = tmp_path / "questions.jsonl"
    monkeypatch.setenv(QUESTIONS_ENV, str(path))
    return path


def test_ask_answer_list_round_trip(questions_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "why does Adam  need warmup?"]) == 0
    assert main(["ask", "does attention need the 1/sqrt(d_k)?", "--paper", "attention"]) == 0
    assert capsys.readouterr().out.startswith("Q1: why does Adam need warmup?")
    lines = questions_file.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["id"] == "Q2"  # one line per question: diff-friendly
    assert main(["answer", "q2", "--by", "aiayn_softmax_saturation", "--note", "the softmax saturates"]) == 0
    assert json.loads(questions_file.read_text().splitlines()[1])["answers"][0]["claim"] == "aiayn_softmax_saturation"
    capsys.readouterr()
    assert main(["questions", "--open"]) == 0
    out = capsys.readouterr().out
    assert "Q1" in out and "Q2" not in out
    assert main(["questions", "--answered"]) == 0
    out = capsys.readouterr().out
    assert "Q2" in out and "aiayn_softmax_saturation" in out and "the softmax saturates" in out and "Q1 " not in out
    assert main(["ask", "another"]) == 0 and "Q3:" in capsys.readouterr().out


def test_mistakes_are_one_line_errors(questions_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["ask", "q?"])
    capsys.readouterr()
    assert main(["answer", "Q9", "--by", "aiayn_qk_variance"]) == 2
    assert "no question Q9" in capsys.readouterr().err
    assert main(["answer", "Q1", "--by", "aiayn_qk_varianse"]) == 2
    assert "did you mean 'aiayn_qk_variance'" in capsys.readouterr().err
    assert main(["answer", "seven", "--by", "aiayn_qk_variance"]) == 2
    assert main(["ask", "q?", "--paper", "atention"]) == 2
    assert "did you mean 'attention'" in capsys.readouterr().err


def test_a_claim_can_declare_the_questions_it_answers(questions_file: Path, tmp_path: Path) -> None:
    main(["ask", "first"])
    main(["ask", "second"])
    declared = [DeclaredClaim("c", "attention", tmp_path / "test_c.py", answers=("Q2",))]
    chosen = select(load_questions(questions_file), declared)
    assert [(q["id"], claims) for q, claims in chosen] == [("Q1", []), ("Q2", ["c"])]
    blocks = questions_blocks(declared)
    assert blocks[0] == ("h2", "Questions")
    assert blocks[1][1][1] == [["Q1", "open", "first"], ["Q2", "answered by c", "second"]]


def test_the_report_shows_the_questions(questions_file: Path, isolated_results: Path) -> None:
    main(["ask", "why warmup?"])
    history = read_history(isolated_results / "history.jsonl")
    blocks = build_report_blocks(history, results_root=isolated_results, out_dir=isolated_results)
    assert ("h2", "Questions") in blocks


def test_no_questions_file_means_no_section(questions_file: Path) -> None:
    assert not questions_file.exists() and questions_blocks() == []
