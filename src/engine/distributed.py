"""Device choice and torchrun/DDP set-up (reads LOCAL_RANK, RANK, WORLD_SIZE)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils.errors import UserError

log = logging.getLogger(__name__)


@dataclass
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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA (the local rank's GPU) when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
        index = local_rank if name == "cuda" else int(name.split(":")[1])
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if name == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    if name != "cpu":
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N)")
    return torch.device("cpu")


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    device = resolve_device(device_name, info.local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("DDP: rank %d/%d (local %d) on %s, backend %s", info.rank, world_size, info.local_rank, device, backend)
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
