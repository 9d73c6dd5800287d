"""Rank handling in one place: the same recipe runs as one process or under `torchrun`."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def print0(*args, info: DistInfo | None = None, **kw) -> None:
    if info is None or info.is_main:
        print(*args, **kw, flush=True)


def all_reduce_sum(x: float | int, info: DistInfo) -> float:
    if not info.distributed:
        return x
    t = torch.tensor(float(x), dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.item()


def all_reduce_max(x: float | int, info: DistInfo) -> float:
    if not info.distributed:
        return x
    t = torch.tensor(float(x), dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


_keep_group = False


@contextlib.contextmanager
def keep_process_group():
    """Recipes run inside leave the process group up when they finish, and the next one reuses
    it: gloo cannot be initialised again in the same processes (the store still holds the first
    group's addresses). The group is destroyed when the block ends (`posttrain run`)."""
    global _keep_group
    _keep_group = True
    try:
        yield
    finally:
        _keep_group = False
        if dist.is_initialized():
            dist.destroy_process_group()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized() and not _keep_group:
        dist.destroy_process_group()
