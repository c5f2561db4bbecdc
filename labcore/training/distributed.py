"""Data-parallel training through torch.distributed (DDP): the full tier on several GPUs.

No launcher of our own: start the job with ``torchrun`` (or ``torch.multiprocessing.spawn`` and
``init_process_group`` yourself), and ``labcore.training.trainer.train`` does the rest::

    torchrun --nproc_per_node 8 -m pytest -m full claims/bayes/test_full_bijection.py

What train() does inside a job with world size W > 1 (``setup_from_env`` returns True):
  * the process group is initialised from torchrun's environment if nobody did it yet
    (NCCL on CUDA, gloo on CPU), and on CUDA each rank uses ``cuda:LOCAL_RANK``;
  * the model is wrapped in ``DistributedDataParallel`` for the training forward/backward, so
    gradients are averaged over ranks before clipping and the optimiser step (DDP broadcasts
    rank 0's initial weights, so every rank starts from the same model);
  * rank r draws its data from a generator seeded ``seed + r·RANK_SEED_STRIDE`` (rank 0 sees
    exactly the data of a one-process run); ``batch_fn`` returns the *per-rank* batch, so the
    global batch is W × that batch;
  * the logged loss is the mean over ranks (the doubled batch's loss when the per-rank losses
    are means over equally many supervised positions).
"""

from __future__ import annotations

import os

import torch
from torch import nn

RANK_SEED_STRIDE = 1_000_003


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def is_active() -> bool:
    """A process group with more than one rank is initialised."""
    dist = _dist()
    return bool(dist and dist.is_initialized() and dist.get_world_size() > 1)


def setup_from_env() -> bool:
    """Initialise the process group from torchrun's variables when they ask for > 1 rank and
    none exists yet; True when this process is one rank of a data-parallel job."""
    if is_active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _dist() is None:
        return False
    dist = _dist()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return is_active()


def rank_and_world() -> tuple[int, int]:
    if not is_active():
        return 0, 1
    dist = _dist()
    return dist.get_rank(), dist.get_world_size()


def data_seed(seed: int) -> int:
    """The seed of this rank's data generator (rank 0: ``seed`` itself)."""
    return seed + RANK_SEED_STRIDE * rank_and_world()[0]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when a multi-rank job is running, else ``model``."""
    if not is_active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (a copy; the input is left alone). Identity in one process."""
    if not is_active():
        return value
    dist = _dist()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
