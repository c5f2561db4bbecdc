"""The starter notebooks in notebooks/ run top to bottom, offline, on a CPU.

Each notebook is executed with nbclient in a fresh kernel (this interpreter, through a kernelspec
written to a temporary JUPYTER_PATH, so the kernel is the venv's python whatever `python` on PATH
is), from a temporary working folder, with LAB_RESULTS_DIR pointing at this test's temporary results
folder (tests/conftest.py) and LAB_MODEL_CACHE=0, so nothing is written into the user's results/
and no model is cached on disk. The kernel inherits this process's environment. Costs on one busy CPU core, cold model cache: the wind-tunnel model
trains once (~60–90 s), the fine-tuning base pretrains (~35 s), SmolLM2 de-quantises (15–50 s).

Skips with the reason when the `notebook` extra (nbclient, nbformat, ipykernel) is missing, and the
SmolLM2 notebook skips when the SmolLM2 wheel (the `real-model` extra) is missing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "labcore-test-python"
CELL_TIMEOUT_S = 300  # one cell: the wind-tunnel model training from a cold cache is the longest


def _require_notebook_extra():
    for module in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[notebook]'")


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernelspec running this interpreter; returns the notebook's working folder."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    repo = str(NOTEBOOKS.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAB_MODEL_CACHE", "0")  # the models live in the kernel only: no 540 MB SmolLM2 copy on disk
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    work = tmp_path / "work"
    work.mkdir()
    return work


def execute(name: str, workdir: Path):
    """Run notebooks/<name> in a fresh kernel; returns the executed notebook (raises on a failing cell)."""
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(book, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return book


def outputs(book, mime: str) -> list[str]:
    return [str(out.get("data", {}).get(mime)) for cell in book.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if mime in out.get("data", {})]


def text(book) -> str:
    return "".join(str(out.get("text", "")) for cell in book.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))


def test_notebooks_are_listed():
    """Every notebook here is executed below (a new one needs a test)."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
        "01_wind_tunnel_attention.ipynb", "02_lora_updates.ipynb", "03_smollm2_induction_heads.ipynb"]


def test_wind_tunnel_attention(kernel_env: Path):
    _require_notebook_extra()
    book = execute("01_wind_tunnel_attention.ipynb", kernel_env)
    html = outputs(book, "text/html")
    assert any("attn-viewer" in h and "before (step 0)" in h and "after training" in h for h in html)
    assert outputs(book, "image/png"), "the entropy MAE curve was not drawn"
    assert "final entropy MAE" in text(book)


def test_lora_updates(kernel_env: Path):
    _require_notebook_extra()
    book = execute("02_lora_updates.ipynb", kernel_env)
    assert outputs(book, "image/png"), "the singular-value plot was not drawn"
    assert "LoRA:  8 singular values above" in text(book), "a rank-8 update has exactly 8 non-zero singular values"


def test_smollm2_induction_heads(kernel_env: Path):
    _require_notebook_extra()
    from labcore.pretrained.smollm2 import MissingModelError, smollm2_dir

    try:
        smollm2_dir()
    except MissingModelError as e:
        pytest.skip(str(e))
    book = execute("03_smollm2_induction_heads.ipynb", kernel_env)
    assert len(outputs(book, "image/png")) >= 2, "heat map and top-head pattern"
    assert any("attn-viewer" in h for h in outputs(book, "text/html"))
    assert "top head: layer" in text(book)
