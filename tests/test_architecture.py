"""The house rules of labcore's layout (docs/architecture.md), checked rather than hoped for.

* the notebook half never imports torch, so ``lab`` and pytest's collection start fast;
* the science half never imports the notebook half (one direction: notebook ← claims → science);
* the model-cache key hashes the science packages only: a notebook edit retrains nothing, a
  model edit retrains;
* rooms stay small: only the named rooms at the top of labcore (8, plus the planned dynamics and
  interp), no module over 450 lines, no function over 60 lines.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labcore.files import repo_root
from labcore.training.cache import SCIENCE_PACKAGES, hash_packages

LABCORE = repo_root() / "labcore"
NOTEBOOK_MODULES = sorted(f"labcore.notebook.{p.stem}" for p in (LABCORE / "notebook").glob("*.py")
                          if p.stem != "__init__")


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_notebook_half_never_imports_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in NOTEBOOK_MODULES) + "import labcore.files\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root())
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stdout.split(","), f"a notebook module imports torch ({NOTEBOOK_MODULES})"


def test_the_notebook_package_is_what_the_check_imports():
    assert "labcore.notebook.plugin" in NOTEBOOK_MODULES and "labcore.notebook.cli" in NOTEBOOK_MODULES


@pytest.mark.parametrize("package", SCIENCE_PACKAGES)
def test_science_never_imports_the_notebook(package):
    offenders = {str(p.relative_to(LABCORE)): sorted(m for m in _imported_modules(p) if m.startswith("labcore.notebook"))
                 for p in _python_files(LABCORE / package)}
    assert not {k: v for k, v in offenders.items() if v}, "science imports notebook (see docs/architecture.md)"


def test_the_cache_key_ignores_the_notebook_and_follows_the_model(tmp_path):
    copy = tmp_path / "labcore"
    shutil.copytree(LABCORE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = hash_packages(copy)
    with (copy / "notebook" / "report.py").open("a") as f:
        f.write("\n# a notebook edit\n")
    with (copy / "files.py").open("a") as f:
        f.write("\n# where results go\n")
    assert hash_packages(copy) == before, "editing the notebook half must not retrain cached models"
    with (copy / "glassbox" / "model.py").open("a") as f:
        f.write("\n# a model edit\n")
    assert hash_packages(copy) != before, "editing the model must change the cache key"


#: The rooms docs/architecture.md names: the eight of the regrouping, and the two it planned for
#: the training-dynamics and interpretability instruments.
ROOMS = {"files.py", "glassbox", "training", "tasks", "measures", "finetuning", "pretrained", "notebook"}
PLANNED_ROOMS = {"dynamics", "interp"}


def test_labcore_top_level_holds_only_the_named_rooms():
    entries = {p.name for p in LABCORE.iterdir() if p.name not in ("__init__.py", "__pycache__")}
    assert entries <= ROOMS | PLANNED_ROOMS, f"not a room of docs/architecture.md: {sorted(entries - ROOMS - PLANNED_ROOMS)}"
    assert len(ROOMS) == 8


def test_no_module_over_450_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for path in _python_files(LABCORE):
        text = path.read_text()
        if len(text.splitlines()) > 450:
            long_modules.append(str(path.relative_to(LABCORE)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(LABCORE)}:{node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)
