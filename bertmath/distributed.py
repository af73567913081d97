"""Many processes (`torchrun --nproc_per_node N -m bertmath pretrain ...`): the only module that reads
RANK / WORLD_SIZE / LOCAL_RANK. The model stays single-device code; DDP wraps it from outside.

Each process takes its own micro-batches of the same deterministic stream (see trainer), gradients are
averaged by DDP, and only rank 0 writes checkpoints, metrics and progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

# How long a collective may wait for the slowest process. Rank 0 downloads, trains the tokenizer and
# tokenises the corpus while the others wait at a barrier: for Wikipedia that takes far longer than the
# defaults (10 min with NCCL, 30 with Gloo), after which every process would be aborted.
TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, Gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", timeout=TIMEOUT)
    return info


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the model when there is more than one process."""
    if not info.enabled:
        return model
    device_ids = [info.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, on every rank (e.g. 'stop now')."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """x̄ = (1/P) Σ_p x_p over the P processes (`value` itself in one process), e.g. the step's loss."""
    if not info.enabled:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # Gloo has no AVG
    return total / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
