"""Shared test setup for labcore's own tests.

* ``pytester`` drives inner pytest runs for the plugin tests.
* Every test gets its own results folder (and questions log), so no test ever reads or writes
  the user's ``results/`` or ``questions.jsonl``.
"""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def isolated_results(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LAB_RESULTS_DIR for each test (and no inherited cache override), and an empty
    questions log instead of the repository's questions.jsonl."""
    folder = tmp_path_factory.mktemp("results")
    monkeypatch.setenv("LAB_RESULTS_DIR", str(folder))
    monkeypatch.setenv("LAB_QUESTIONS_FILE", str(folder / "questions.jsonl"))
    monkeypatch.delenv("LAB_CACHE_DIR", raising=False)
    return folder
