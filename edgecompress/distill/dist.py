"""Distributed helpers: everything degrades to a single process when torch.distributed is
not initialised, so the loop has one code path."""

from __future__ import annotations

import os

import torch
import torch.distributed as td
from torch import nn


def initialised() -> bool:
    return td.is_available() and td.is_initialized()


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, NCCL on GPU."""
    if initialised() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return initialised()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    td.init_process_group(backend=backend)
    return True


def rank() -> int:
    return td.get_rank() if initialised() else 0


def world_size() -> int:
    return td.get_world_size() if initialised() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if initialised():
        td.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if initialised():
        t = t.clone()
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    if not initialised():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
