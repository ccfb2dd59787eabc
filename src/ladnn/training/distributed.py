"""Data-parallel training across processes: the process group that `torchrun` describes.

`torchrun --nproc-per-node N` starts N copies of a command with `RANK`, `LOCAL_RANK`,
`WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` set. `setup_distributed` joins that group with NCCL
on GPUs and gloo on the CPU. Without `WORLD_SIZE` above 1 every function here is a no-op, so one
process trains exactly as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "setup_distributed",
    "current_context",
    "shutdown_distributed",
    "wait_for_rank_zero",
    "release_other_ranks",
    "broadcast_object",
    "gather_rows",
    "sum_across",
]


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Whether this process logs, writes checkpoints and evaluates (rank 0)."""
        return self.rank == 0


def _world_size_from_environment() -> int:
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid WORLD_SIZE {text!r}: expected an integer") from None


def setup_distributed(
    device_choice: str, timeout_seconds: float = 1800
) -> DistributedContext | None:
    """Join the process group described by torchrun's environment variables; return None when
    the process runs alone (`WORLD_SIZE` unset or 1).

    The backend is NCCL when this process trains on a GPU (`device_choice` "cuda", or "auto" with
    CUDA available), else gloo. Each GPU process uses the device `cuda:LOCAL_RANK`.
    """
    if _world_size_from_environment() <= 1:
        return None
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_seconds)
        )
    return current_context()


def current_context() -> DistributedContext | None:
    """Return the process group this process has joined, or None when it trains alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        backend=dist.get_backend(),
    )


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_rank_zero(context: DistributedContext | None) -> None:
    """On ranks other than 0, block until rank 0 calls `release_other_ranks`.

    The two calls around a step run it on rank 0 first and on the others after it, e.g. to fill a
    shared cache file once instead of writing it from every process.
    """
    if context is not None and not context.is_main:
        dist.barrier()


def release_other_ranks(context: DistributedContext | None) -> None:
    """On rank 0, let the ranks waiting in `wait_for_rank_zero` go on."""
    if context is not None and context.is_main:
        dist.barrier()


def broadcast_object(value: Any, context: DistributedContext | None) -> Any:
    """Return rank 0's `value` on every rank (pickled, so keep it small or on the CPU)."""
    if context is None:
        return value
    box = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(rows: np.ndarray, context: DistributedContext | None) -> list[np.ndarray]:
    """Return every rank's `rows`, in rank order, on every rank."""
    if context is None:
        return [rows]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, rows)
    return gathered


def sum_across(values: list[float], context: DistributedContext | None) -> list[float]:
    """Sum each value over all ranks (float64, on the CPU with gloo and on the GPU with NCCL)."""
    if context is None:
        return list(values)
    device = (
        torch.device("cuda", torch.cuda.current_device()) if context.backend == "nccl" else None
    )
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()
