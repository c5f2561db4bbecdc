"""``lab report --format html`` is one self-contained file; ``lab.save_attention`` feeds its viewer."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from report_demo import LONG_EXPLANATION, TOKENS, causal_pattern, write_demo_report

from labcore.notebook.recorder import LabRecorder
from labcore.notebook.viewer import (
    attention_html,
    load_snapshots,
    show_attention,
    snapshot,
)


def _references(page: str) -> list[tuple[str, str, str]]:
    """(tag, attribute, value) of every src/href in the page."""
    return re.findall(r"<(\w+)[^>]*?\s(src|href)\s*=\s*['\"]([^'\"]*)['\"]", page)


@pytest.fixture
def page(isolated_results: Path, tmp_path: Path) -> str:
    return write_demo_report(isolated_results, tmp_path / "site").read_text()


def test_the_html_report_is_self_contained(page: str, isolated_results: Path, tmp_path: Path) -> None:
    refs = _references(page)
    assert [v[:22] for t, a, v in refs if t == "img"] == ["data:image/png;base64,"]
    assert not [r for r in refs if r[0] in ("script", "link")], "external script or stylesheet"
    links = [v for t, a, v in refs if a == "href"]
    assert all(v.startswith(("#", "https://arxiv.org/")) for v in links), links
    assert "src=\"http" not in page and "src='http" not in page
    # moving the file and deleting the results folder loses nothing
    moved = tmp_path / "elsewhere" / "r.html"
    moved.parent.mkdir()
    shutil.move(tmp_path / "site" / "report.html", moved)
    shutil.rmtree(isolated_results)
    assert moved.read_text() == page


def test_contents_link_to_every_paper_and_claim(page: str) -> None:
    toc = page[page.index("<nav id='toc'>"): page.index("</nav>")]
    targets = re.findall(r"href='#([^']+)'", toc)
    assert len(targets) == 4  # two papers, two claims
    for target in targets:
        assert f"id='{target}'" in page
    assert "demo_claim</a> <span style='color:#1a7f37'>held</span>" in toc


def test_measured_values_are_a_headline_with_the_rest_folded(page: str) -> None:
    row = next(r for r in page.split("<tr>") if r.startswith("<td>demo_claim</td><td>paper value"))  # per paper
    assert "value_00=0.5, value_01=1.5, value_02=2.5 (+9 more)" in row
    assert "value_11" in row.split("<details>")[1] and "value_11" not in row.split("<details>")[0]
    assert "<td>tolerance of demo_claim</td>" in row and "color:#1a7f37'>held</td>" in row


def test_explanations_are_shown_in_full(page: str) -> None:
    assert len(LONG_EXPLANATION) > 300
    assert "THE-END-OF-THE-EXPLANATION" in page
    assert "<details><summary>ratio ≈ 4.5 instead of ≤ 0.8" in page


def test_the_viewer_is_embedded_with_both_snapshots(page: str) -> None:
    data = re.search(r"<script type='application/json' class='attn-data'>(.*?)</script>", page, re.DOTALL)
    assert data is not None
    snapshots = json.loads(data.group(1).replace("<\\/", "</"))["snapshots"]
    assert [s["name"] for s in snapshots] == ["before", "after"]
    assert snapshots[0]["tokens"] == TOKENS and snapshots[0]["shape"] == [2, 3, 7, 7]
    assert page.count("window.labAttentionSetup") >= 1 and page.count("<script>") == 1


def test_markdown_links_plots_and_names_the_snapshots(isolated_results: Path, tmp_path: Path) -> None:
    from labcore.notebook.history import read_history
    from labcore.notebook.report import write_report

    write_demo_report(isolated_results, tmp_path / "site")
    (md,) = write_report(read_history(isolated_results / "history.jsonl"), tmp_path / "site",
                         results_root=isolated_results)
    text = md.read_text()
    assert "Attention patterns (viewer in report.html): attention_before, attention_after" in text
    assert "value_00=0.5, value_01=1.5, value_02=2.5 (+9 more)" in text and "value_11" not in text


@pytest.mark.parametrize("kind", ["list", "numpy", "torch", "one_layer"])
def test_save_attention_takes_lists_arrays_and_tensors(kind: str, isolated_results: Path) -> None:
    nested = causal_pattern(2, 3, 4, 1.0)
    pattern = {"list": nested, "numpy": np.array(nested), "torch": torch.tensor(nested, dtype=torch.float16),
               "one_layer": nested[0]}[kind]
    lab = LabRecorder(None, 0, isolated_results, Path("t.py"))
    path = lab.save_attention(["a", "b", "c", "d"], pattern, "after")
    assert lab.attention == ["unclaimed/attention_after.json"] and path.is_file()
    (loaded,) = load_snapshots([path])
    assert loaded["shape"] == ([1, 3, 4, 4] if kind == "one_layer" else [2, 3, 4, 4])
    assert loaded["pattern"][0][1][3] == pytest.approx(nested[0][1][3], abs=1e-3)


def test_save_attention_refuses_a_wrong_shape_or_name(isolated_results: Path) -> None:
    lab = LabRecorder(None, 0, isolated_results, Path("t.py"))
    with pytest.raises(ValueError, match=r"does not fit 3 tokens: expected \(layers, heads, 3, 3\)"):
        lab.save_attention(["a", "b", "c"], causal_pattern(1, 1, 4, 1.0), "x")
    with pytest.raises(ValueError, match="plain name"):
        lab.save_attention(["a"], [[[[1.0]]]], "../x")


def test_save_attention_labels_a_subset_of_layers_and_heads(isolated_results: Path) -> None:
    lab = LabRecorder(None, 0, isolated_results, Path("t.py"))
    path = lab.save_attention(["a", "b", "c", "d"], causal_pattern(2, 3, 4, 1.0), "subset", layers=[1, 14],
                              heads=["h0", "h5", "h7"])
    (loaded,) = load_snapshots([path])
    assert loaded["layers"] == ["1", "14"] and loaded["heads"] == ["h0", "h5", "h7"]
    assert "layers" not in load_snapshots([lab.save_attention(["a"], [[[[1.0]]]], "plain")])[0]
    with pytest.raises(ValueError, match=r"layers= has 3 labels for 2 layers .* give one label per layer"):
        lab.save_attention(["a", "b", "c", "d"], causal_pattern(2, 3, 4, 1.0), "bad", layers=[1, 2, 3])


def test_the_viewer_shows_inline_without_ipython_too() -> None:
    fragment = attention_html([snapshot(["a", "b"], [[[[1, 0], [0.5, 0.5]]]], "after")], "demo")
    assert "attn-viewer" in fragment and "window.labAttentionSetup" in fragment
    shown = show_attention([snapshot(["a", "b"], [[[[1, 0], [0.5, 0.5]]]], "after")])
    assert isinstance(shown, str) or "attn-viewer" in shown.data


# --- the notebook kit ------------------------------------------------------------------------------


def test_importing_labcore_leaves_the_matplotlib_backend_alone(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg')\n"
            "import labcore.notebook.figures, labcore.notebook.recorder, labcore.notebook.report\n"
            "import matplotlib.pyplot as plt\n"
            "from labcore.notebook.figures import atomic_savefig\n"
            "fig, ax = plt.subplots(); ax.plot([0, 1])\n"
            f"atomic_savefig(fig, {str(tmp_path / 'f.png')!r})\n"
            "print(matplotlib.get_backend())\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_the_zoo_names_its_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from labcore.training import zoo

    with pytest.raises(KeyError, match="known: wind_tunnel, finetune_base"):
        zoo.load_trained("gpt5")
    model = torch.nn.Linear(2, 2).train()
    monkeypatch.setitem(zoo.ZOO, "wind_tunnel", ("test", lambda seed: (model, {"seed": seed})))
    assert zoo.load_trained("bijection", seed=3) is model and not model.training
    assert zoo.load_trained("wind_tunnel", seed=3, run=True) == {"seed": 3}


def test_records_keep_full_explanations_and_attention_files(pytester: pytest.Pytester,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from labcore.notebook.history import read_history

    monkeypatch.setenv("LAB_RESULTS_DIR", str(pytester.path / "results"))
    (pytester.path / "claims").mkdir()
    (pytester.path / "claims" / "test_demo.py").write_text(
        "import pytest\nfrom labcore.notebook.claims import Claim, Source\n"
        "CLAIM = Claim(id='demo_claim', paper='attention', statement='s', source=Source(title='t', "
        "arxiv='1706.03762', version='v7', where='§3'), paper_value='v', prediction='p', metric='m', "
        "tolerance='t', tolerance_why='w', tier='quick')\n\n"
        "def test_xfails(lab):\n"
        "    lab.save_attention(['a', 'b'], [[[[1.0, 0.0], [0.25, 0.75]]]], 'after')\n"
        f"    pytest.xfail({'does not hold at our scale. ' * 20 + chr(10) + 'LAST LINE'!r})\n")
    pytester.runpytest("-p", "labcore.notebook.plugin", "-p", "no:randomly").assert_outcomes(xfailed=1)
    (record,) = read_history(pytester.path / "results" / "history.jsonl").records
    assert record["message"].endswith("...") and len(record["message"]) == 300
    assert record["explanation"].startswith("does not hold") and record["explanation"].endswith("LAST LINE")
    assert record["attention"] == ["demo_claim/attention_after.json"]
