"""Same seed, same GPU, same bits: the switches a CUDA run needs to repeat itself exactly.

On a CPU, torch's kernels are deterministic already. On CUDA three things are not by default:
  * cuBLAS may split a matmul's reduction differently from call to call unless it is given a fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, read when cuBLAS starts, so set it first);
  * some kernels (scatter/index_add with atomics, a few backward passes) use atomic adds, whose
    order varies: ``torch.use_deterministic_algorithms(True)`` swaps in deterministic versions
    (``warn_only``: where none exists, torch warns instead of failing the claim);
  * cuDNN's autotuner may pick different algorithms per run (``benchmark = False``).
The lab fixture calls :func:`deterministic_cuda` when it picks a CUDA device, before any model
exists, so the CUDA quick tier is bitwise-reproducible per seed on one GPU (not across GPUs or
torch versions: their kernels differ).
"""

from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def deterministic_cuda() -> None:
    """Make this process's CUDA work deterministic (call before the first CUDA matmul)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
