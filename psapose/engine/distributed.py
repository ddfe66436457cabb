"""torchrun / DDP helpers: one process per device, set up from the launcher's environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from psapose.runtime import resolve_device_type

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "barrier",
    "cleanup",
    "setup_distributed",
    "sum_over_ranks",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on the CPU; each process takes ``cuda:LOCAL_RANK``.
    Multi-node runs need only torchrun's usual ``--nnodes/--node-rank/--rdzv-*`` flags.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device_type(device)  # auto: CUDA when there is one
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is available (use device=cpu)")
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, local, world), dev


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (a list of one element without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(values: list[int | bool], device: torch.device) -> list[int]:
    """Sums of ``values`` over all ranks, in one all-reduce (the values themselves without
    a process group): how every rank takes the same decision at the same step."""
    if not (dist.is_available() and dist.is_initialized()):
        return [int(v) for v in values]
    tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
