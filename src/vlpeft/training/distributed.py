"""Data-parallel training without a wrapper: every process runs the same loop on its share of each batch.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment) the process group
is initialised on first use (gloo on CPU, nccl on CUDA). Each optimiser step splits the *global*
batch into ``world_size * accumulate`` micro-batches; a process backpropagates the loss of each of
its micro-batches weighted by ``len(micro) / len(batch)`` and the gradients are summed across
processes. For a loss that is a mean over samples this gives exactly the gradient of the global
batch, so a run on N processes equals a run on one with the same global batch (a test checks it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist


def init_from_env(device: str = "cpu") -> None:
    """Join the process group that torchrun/accelerate describe in the environment (no-op otherwise)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_size()[0] == 0


def local_device(device: str) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under a launcher; other devices unchanged."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def my_micro_batches(batch: Sequence[int], accumulate: int) -> list[list[int]]:
    """This process's micro-batches of a global ``batch`` (indices), in order; possibly empty ones dropped."""
    rank, size = rank_and_size()
    parts = size * max(accumulate, 1)
    chunks = [list(batch[i::parts]) for i in range(parts)]  # strided: sizes differ by at most one
    return [c for c in chunks[rank * accumulate : (rank + 1) * accumulate] if c]


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the processes (missing gradients count as zero)."""
    if rank_and_size()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if rank_and_size()[1] > 1:
        dist.barrier()
