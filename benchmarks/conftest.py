"""Benchmarks run on demand: `pytest benchmarks --benchmark-only` (not part of the test command).

Speed is reported as ratios between benchmarks of the same group measured in the same run (a
baseline and a candidate), never as a timed assertion. At the end of the session the ratios and
their goals are printed; `--benchmark-save=NAME` / `--benchmark-compare` keep a baseline so a
regression is visible (`pytest-benchmark compare`).
"""

from __future__ import annotations

import os

import pytest

# (group, candidate, baseline, goal text, goal test on candidate/baseline mean time)
RATIOS = [
    ("forward", "test_forward_cache_every_hook", "test_forward_no_hooks", "≤ 1.10×", lambda r: r <= 1.10),
    ("train_step", "test_train_step_glassbox", "test_train_step_hf_gpt2", "≤ 1/1.2 (≥ 1.2× faster)", lambda r: r <= 1 / 1.2),
    ("train_step_tl", "test_train_step_glassbox_tl_size", "test_train_step_transformer_lens", "≤ 1.0 (faster)", lambda r: r <= 1.0),
    ("trainer", "test_trainer_fast_path", "test_trainer_default_loop", "≤ 1.0 (CPU: bookkeeping only)", lambda r: r <= 1.0),
    ("trainer", "test_trainer_fast_path_with_per_step_stats", "test_trainer_default_loop", "≤ 1.05 (CPU)", lambda r: r <= 1.05),
    ("attention", "test_attention_sdpa", "test_attention_manual", "≤ 1.0 (faster)", lambda r: r <= 1.0),
]


def pytest_configure(config):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _means(session) -> dict[str, float]:
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is None:
        return {}
    out = {}
    for bench in bench_session.benchmarks:
        if bench.stats is not None:
            out[bench.name.split("[")[0]] = bench.stats.mean
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    means = _means(terminalreporter._session) if hasattr(terminalreporter, "_session") else {}
    if not means:
        return
    terminalreporter.section("lab: speed ratios (same run)")
    for group, cand, base, goal, ok in RATIOS:
        if cand in means and base in means:
            ratio = means[cand] / means[base]
            verdict = "meets goal" if ok(ratio) else "MISSES goal"
            terminalreporter.write_line(f"{group}: {cand} / {base} = {ratio:.3f}  (goal {goal}: {verdict})")


@pytest.fixture(autouse=True)
def _one_thread():
    """Benchmarks use one thread so numbers don't depend on what else the machine runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
