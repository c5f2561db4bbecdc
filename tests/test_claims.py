"""Claim and Source validation: every mistake gives one line naming the field and the fix."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import pytest

from labcore.notebook.claims import (
    PAPERS,
    TAGS,
    TIERS,
    Claim,
    ClaimError,
    Source,
    load_claim_from_module,
    scan_claim_files,
)

SOURCE = Source(title="Attention Is All You Need", arxiv="1706.03762", version="v7", where="§3.2.1")


def make_claim(**overrides: Any) -> Claim:
    fields: dict[str, Any] = dict(
        id="aiayn_qk_variance",
        paper="attention",
        statement="their dot product has mean 0 and variance d_k",
        source=SOURCE,
        paper_value="Var(q·k) = d_k",
        prediction="within a few % of d_k",
        metric="relative error over 20k pairs",
        tolerance="≤ 0.05",
        tolerance_why="s.e. ≈ 1.4 %",
        tier="quick",
    )
    fields.update(overrides)
    return Claim(**fields)


def test_papers_tiers_and_tags_are_the_documented_ones() -> None:
    assert {"attention", "bayes", "lora", "qlora", "forgetting"} <= set(PAPERS)  # + any claims/<paper>/
    assert TIERS == ("quick", "full")
    assert TAGS == ("gpu", "real_model")


def test_a_valid_claim_round_trips_to_a_plain_dict() -> None:
    claim = make_claim(tags=["gpu"])
    assert claim.tags == ("gpu",)  # lists are normalised to tuples
    data = claim.to_dict()
    assert data["id"] == "aiayn_qk_variance"
    assert data["source"] == {"title": SOURCE.title, "arxiv": "1706.03762", "version": "v7", "where": "§3.2.1"}
    assert data["tags"] == ["gpu"]
    assert data["calibration"] is None


def test_claims_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_claim().tier = "full"  # type: ignore[misc]


def test_claim_error_is_a_value_error() -> None:
    assert issubclass(ClaimError, ValueError)


def test_unknown_tier_message_names_the_field_and_the_choices() -> None:
    with pytest.raises(ClaimError) as error:
        make_claim(id="x", tier="slow")
    assert str(error.value) == "claim 'x': tier 'slow' is unknown; use one of quick, full"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"id": "not an id"}, "id must be a Python identifier"),
        ({"id": "class"}, "id must be a Python identifier"),
        ({"id": "lora"}, "id is already a marker"),
        ({"id": "skip"}, "id is already a marker"),
        ({"paper": "gpt5"}, "paper 'gpt5' is unknown; use one of attention, bayes, lora, qlora, forgetting"),
        ({"statement": "  "}, "statement is empty"),
        ({"source": "AIAYN §3"}, "source must be a Source("),
        ({"paper": "lora"}, "source arxiv 1706.03762 is not the paper 'lora' (2106.09685)"),
        ({"paper_value": None}, "paper_value must be text"),
        ({"prediction": ""}, "prediction is empty"),
        ({"metric": ""}, "metric is empty"),
        ({"tolerance": ""}, "tolerance is empty"),
        ({"tolerance_why": ""}, "tolerance_why is empty"),
        ({"tags": "gpu"}, "tags must be a tuple such as ('gpu',)"),
        ({"tags": ("tpu",)}, "tag 'tpu' is unknown; use any of gpu, real_model"),
        ({"calibration": "fixtures/calibration/nope.json"}, "calibration file fixtures/calibration/nope.json does not exist"),
    ],
)
def test_invalid_fields_give_one_line_errors(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ClaimError) as error:
        make_claim(**overrides)
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def test_calibration_path_is_relative_to_the_repository() -> None:
    assert make_claim(calibration="pyproject.toml").calibration == "pyproject.toml"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"arxiv": "1706-03762"}, "arxiv '1706-03762' is not an arXiv id"),
        ({"version": "7"}, "version '7' is not an arXiv version"),
        ({"where": ""}, "where is empty"),
        ({"title": ""}, "title is empty"),
    ],
)
def test_invalid_sources(overrides: dict[str, Any], expected: str) -> None:
    fields = dict(title="T", arxiv="1706.03762", version="v1", where="§1") | overrides
    with pytest.raises(ClaimError, match=expected):
        Source(**fields)


def test_source_cites_itself_on_one_line() -> None:
    assert SOURCE.cite() == "Attention Is All You Need, arXiv:1706.03762v7, §3.2.1"


def test_bayes_claims_may_cite_either_paper() -> None:
    for arxiv in ("2512.22471", "2512.22473"):
        source = Source(title="The Bayesian Geometry of Transformer Attention", arxiv=arxiv, version="v1", where="§4")
        assert make_claim(paper="bayes", source=source).paper == "bayes"


def _module(path: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType("claim_module")
    module.__file__ = path
    module.__dict__.update(attributes)
    return module


def test_load_claim_from_module_returns_the_record() -> None:
    claim = make_claim()
    assert load_claim_from_module(_module("/x/claims/attention/test_y.py", CLAIM=claim)) is claim


def test_module_without_claim_says_how_to_add_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "claims" / "x").mkdir(parents=True)
    module = _module(str(tmp_path / "claims" / "x" / "test_y.py"))
    with pytest.raises(ClaimError) as error:
        load_claim_from_module(module)
    assert str(error.value) == (
        "claims/x/test_y.py has no CLAIM record: add CLAIM = Claim(...) at the top (see lab new)"
    )


def test_module_whose_claim_is_not_a_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = _module(str(tmp_path / "test_y.py"), CLAIM={"id": "x"})
    with pytest.raises(ClaimError, match="test_y.py: CLAIM is a dict, not a Claim"):
        load_claim_from_module(module)


def test_scan_reads_claim_ids_without_importing(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    (claims / "lora").mkdir(parents=True)
    (claims / "lora" / "test_rank.py").write_text(
        "import this_module_does_not_exist\nCLAIM = Claim(id='lora_rank_one', paper='lora')\n"
    )
    (claims / "lora" / "test_broken.py").write_text("CLAIM = Claim(id='broken'\n")  # syntax error
    (claims / "lora" / "test_dynamic.py").write_text("CLAIM = Claim(id=make_id())\n")
    (claims / "lora" / "helpers.py").write_text("CLAIM = Claim(id='not_a_test_file')\n")
    found = scan_claim_files(claims)
    assert [(c.id, c.paper, c.path.name) for c in found] == [("lora_rank_one", "lora", "test_rank.py")]
    assert scan_claim_files(tmp_path / "missing") == []


# --- the paper registry (claims/<paper>/ folders and paper.toml) --------------------------------


def test_builtin_papers_keep_their_titles_and_order() -> None:
    from labcore.notebook.claims import PAPER_ARXIV

    assert list(PAPERS)[:5] == ["attention", "bayes", "lora", "qlora", "forgetting"]
    assert PAPERS["attention"] == "Attention Is All You Need"
    assert PAPER_ARXIV["bayes"] == ("2512.22471", "2512.22473")


def test_a_folder_under_claims_is_a_paper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labcore.notebook.papers import known_papers, project_root

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "claims" / "grokking").mkdir(parents=True)
    (tmp_path / "claims" / "__pycache__").mkdir()
    (tmp_path / "claims" / "registered").mkdir()
    (tmp_path / "claims" / "registered" / "paper.toml").write_text('title = "Reg"\narxiv = ["2201.02177"]\n')
    monkeypatch.chdir(tmp_path / "claims" / "grokking")
    assert project_root() == tmp_path
    papers = known_papers()
    assert papers["grokking"].title == "grokking" and papers["grokking"].arxiv == ()
    assert papers["registered"].arxiv == ("2201.02177",) and "__pycache__" not in papers
    any_id = Source(title="Grokking", arxiv="2201.02177", version="v1", where="§1")
    assert make_claim(paper="grokking", source=any_id).paper == "grokking"  # no ids listed: any
    with pytest.raises(ClaimError, match="is not the paper 'registered'"):
        make_claim(paper="registered")
    with pytest.raises(ClaimError, match="id is already a marker"):
        make_claim(id="grokking")


def test_a_broken_paper_toml_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labcore.notebook.papers import PaperRegistryError, known_papers

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "claims" / "bad").mkdir(parents=True)
    (tmp_path / "claims" / "bad" / "paper.toml").write_text("title = \n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PaperRegistryError, match="paper.toml: cannot read it"):
        known_papers()
