"""The learning log survives concurrent writers, killed runs and old schemas: N written = N read."""

from __future__ import annotations

import json
import math
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labcore.notebook.history import (
    SCHEMA_VERSION,
    NotJSONableError,
    append_record,
    git_state,
    package_versions,
    read_history,
    to_jsonable,
)
from labcore.files import ResultsDirError, cache_dir, history_path, results_dir


def test_records_round_trip_one_line_each(tmp_path: Path) -> None:
    log = tmp_path / "deep" / "history.jsonl"  # parent folders are created
    append_record(log, {"claim": "a", "measured": {"x": 1.5}})
    append_record(log, {"claim": "b", "message": "line one\nline two"})
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    read = read_history(log)
    assert read.bad_lines == []
    assert [r["claim"] for r in read.records] == ["a", "b"]
    assert all(r["schema"] == SCHEMA_VERSION for r in read.records)
    assert read.records[1]["message"] == "line one\nline two"


def test_missing_log_is_an_empty_history(tmp_path: Path) -> None:
    read = read_history(tmp_path / "nothing.jsonl")
    assert read.records == [] and read.bad_lines == []


def test_nan_inf_and_array_scalars_are_serialised(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    append_record(log, {"measured": {
        "nan": float("nan"), "inf": math.inf, "ninf": -math.inf,
        "np_float": np.float32(0.5), "np_int": np.int64(3), "np_bool": np.bool_(True),
        "torch_scalar": torch.tensor(2.5), "vector": np.arange(3), "tensor": torch.ones(2),
        "path": Path("/a/b"), "tuple": (1, 2),
    }})
    assert "NaN" not in log.read_text() and "Infinity" not in log.read_text()
    measured = read_history(log).records[0]["measured"]
    assert measured == {
        "nan": "nan", "inf": "inf", "ninf": "-inf", "np_float": 0.5, "np_int": 3, "np_bool": True,
        "torch_scalar": 2.5, "vector": [0, 1, 2], "tensor": [1.0, 1.0], "path": "/a/b", "tuple": [1, 2],
    }
    assert type(measured["np_int"]) is int


def test_strict_conversion_refuses_objects_lenient_uses_repr() -> None:
    class Model:
        def __repr__(self) -> str:
            return "Model()"

    with pytest.raises(NotJSONableError, match="a Model is not a number"):
        to_jsonable({"m": Model()}, strict=True)
    assert to_jsonable({"m": Model()}) == {"m": "Model()"}


def test_torn_last_line_is_closed_and_reported(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    append_record(log, {"claim": "before"})
    full_line = json.dumps({"schema": 2, "claim": "torn", "measured": {"x": 1}})
    with open(log, "a") as handle:  # a run killed mid-write
        handle.write(full_line[: len(full_line) // 2])
    append_record(log, {"claim": "after"})
    read = read_history(log)
    assert [r["claim"] for r in read.records] == ["before", "after"]
    assert [bad.lineno for bad in read.bad_lines] == [2]
    assert read.describe_bad_lines() == ["history.jsonl line 2 is truncated or malformed (skipped)"]


def test_non_object_lines_are_reported(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    log.write_bytes(b'[1, 2]\n\n\xff\xfe\n{"schema": 2, "claim": "ok"}\n')
    read = read_history(log)
    assert [r["claim"] for r in read.records] == ["ok"]
    assert read.bad_lines == [(1, "is not a JSON object"), (3, "is truncated or malformed")]


def _append_many(path: str, writer: int, count: int) -> None:
    for index in range(count):
        append_record(Path(path), {"claim": f"w{writer}", "index": index, "padding": "x" * 5000})


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    # 5 kB lines are larger than a pipe buffer, so only the lock keeps them from interleaving.
    log = tmp_path / "history.jsonl"
    count = 150
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(str(log), w, count)) for w in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    read = read_history(log)
    assert read.bad_lines == []
    assert len(read.records) == 2 * count
    for writer in range(2):
        indices = [r["index"] for r in read.records if r["claim"] == f"w{writer}"]
        assert indices == list(range(count))  # each writer's records in its own order


def test_schema_1_records_are_upgraded(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    log.write_text(json.dumps({"claim": "old", "metrics": {"x": 1.0}, "status": "passed"}) + "\n")
    record = read_history(log).records[0]
    assert record["schema"] == 2
    assert record["measured"] == {"x": 1.0}
    assert record["outcome"] == "passed"
    assert record["upgraded_from"] == 1
    assert "metrics" not in record and "status" not in record


def test_records_from_a_newer_schema_are_kept_and_marked(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    log.write_text(json.dumps({"schema": 99, "claim": "future", "verdict": "passed"}) + "\n")
    read = read_history(log)
    assert read.bad_lines == []
    assert read.records[0]["claim"] == "future"
    assert read.records[0]["newer_schema"] is True


json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(measured=st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=6))
def test_any_json_measured_dict_round_trips(measured: dict) -> None:
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "history.jsonl"
        append_record(log, {"claim": "c", "measured": measured})
        append_record(log, {"claim": "d"})
        read = read_history(log)
    assert read.bad_lines == []
    assert len(read.records) == 2
    assert read.records[0]["measured"] == measured


def test_package_versions_do_not_need_imports() -> None:
    versions = package_versions()
    assert set(versions) == {"python", "torch", "transformers", "peft", "bitsandbytes"}
    assert versions["python"].count(".") == 2


def test_git_state_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_state(tmp_path) == (None, None)


def test_results_folder_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path / "mine"))
    assert results_dir() == tmp_path / "mine" and results_dir().is_dir()
    assert history_path() == tmp_path / "mine" / "history.jsonl"
    assert cache_dir() == tmp_path / "mine" / "cache" and cache_dir().is_dir()
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "shared-cache"))
    assert cache_dir() == tmp_path / "shared-cache"


def test_unwritable_results_folder_says_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("LAB_RESULTS_DIR", str(blocker / "results"))
    with pytest.raises(ResultsDirError) as error:
        results_dir()
    assert str(error.value) == (
        f"results folder {blocker / 'results'} is not writable: set LAB_RESULTS_DIR to a writable folder"
    )
