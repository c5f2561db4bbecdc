"""Data-parallel training (labcore.training.distributed): two CPU processes on the gloo backend,
each with half of every batch, follow the loss curve of one process with the whole batch."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labcore import GPT, GPTConfig
from labcore.training import distributed
from labcore.training.trainer import TrainConfig, seeded_model, train

CFG = GPTConfig(vocab_size=12, n_ctx=12, d_model=32, n_layers=2, n_heads=2)
STEPS, HALF = 25, 8


def _data():
    """Fixed batches (STEPS, 2·HALF, 12): a copy task, every row with the same supervised count."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 12, (STEPS, 2 * HALF, 12), generator=g)
    y = x.roll(1, dims=2)
    y[:, :, 0] = -100
    return x, y


def _run(rows: slice):
    x, y = _data()
    model = seeded_model(lambda: GPT(CFG), 0)
    cfg = TrainConfig(steps=STEPS, lr=3e-3, seed=0, sync_every=10, schedule="warmup_cosine", warmup_steps=5)
    result = train(model, lambda step, g: (x[step, rows], y[step, rows]), cfg)
    return model, result


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert distributed.rank_and_world() == (rank, world)
        model, result = _run(slice(rank * HALF, (rank + 1) * HALF))
        if rank == 0:
            torch.save({"loss": torch.from_numpy(result.metrics["loss"]),
                        "grad_norm": torch.from_numpy(result.metrics["grad_norm"]),
                        "state": model.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    ddp = torch.load(out)
    model, single = _run(slice(0, 2 * HALF))
    np.testing.assert_allclose(ddp["loss"].numpy(), single.metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(ddp["grad_norm"].numpy(), single.metrics["grad_norm"], rtol=1e-4)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp["state"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    assert single.metrics["loss"][-1] < single.metrics["loss"][0]


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.setup_from_env() and distributed.rank_and_world() == (0, 1)
    assert distributed.data_seed(7) == 7
    model = GPT(CFG)
    assert distributed.wrap(model, torch.device("cpu")) is model
    t = torch.tensor(2.5)
    assert distributed.mean_over_ranks(t) is t


@pytest.mark.parametrize("n", [1])
def test_setup_from_env_ignores_a_world_of_one(monkeypatch, n):
    monkeypatch.setenv("WORLD_SIZE", str(n))
    assert not distributed.setup_from_env()
