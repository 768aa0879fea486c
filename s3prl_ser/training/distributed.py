"""The process group of a torchrun launch (a single process otherwise)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup_distributed", "all_gather"]


def all_gather(value: Any) -> list[Any]:
    """Every process's picklable ``value``, in rank order (the process group must exist)."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


@dataclass(frozen=True)
class Distributed:
    """This process's place in the launch; ``world_size == 1`` without torchrun."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_leader(self) -> bool:
        """Rank 0: the only process that evaluates, saves and exports."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (``[value]`` in one process)."""
        return all_gather(value) if self.enabled else [value]

    def close(self) -> None:
        """Leave the process group (torchrun launches only)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: str) -> tuple[Distributed, str]:
    """Join torchrun's process group (NCCL on CUDA, Gloo on CPU) if launched by it.

    Returns:
        This process's :class:`Distributed` and its device (``cuda:<local rank>`` under torchrun).
    """
    if "LOCAL_RANK" not in os.environ:
        return Distributed(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size()), device
