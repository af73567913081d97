"""Many processes (`torchrun --nproc_per_node N -m bertmath pretrain ...`): the only module that reads
RANK / WORLD_SIZE / LOCAL_RANK. The model stays single-device code; `wrap` parallelises it from outside:

    ddp:   every process holds all weights; backward all-reduces the gradients (mean over processes).
    fsdp:  FSDP2 `fully_shard` on each EncoderLayer and on the whole model: every process holds 1/P of each
           weight, gradient and AdamW moment; a layer's weights are all-gathered just before its forward and
           backward, and its gradients reduce-scattered after (Zhao+23, "PyTorch FSDP").

A micro-batch of `train.batch_size` sequences is split in P equal shares, rank r taking rows
[r·B/P, (r+1)·B/P): the same YAML trains the same model whatever P (see trainer). Backend NCCL on GPUs,
Gloo on CPUs; only rank 0 prints progress and writes files.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError

# Rank 0 downloads, trains the tokenizer and tokenises the corpus while the others wait: for Wikipedia that
# takes hours, so that one wait runs on a side group with this timeout; every other collective has
# train.timeout_minutes, after which a stuck or lost process aborts the job instead of hanging it.
PREPARATION_TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: str = "none"  # none | ddp | fsdp
    slow_group: Any = field(default=None, compare=False, repr=False)  # for the data-preparation wait

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.parallel != "none"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Whether this process reports: rank 0 of a torchrun job, or a process on its own."""
    return os.environ.get("RANK", "0") == "0"


def process_label() -> str:
    """' [rank r/P]' inside a torchrun job (for one-line error messages), '' otherwise."""
    return f" [rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']}]" if launched_by_torchrun() else ""


def setup(device_type: str, parallel: str, batch_size: int, timeout_minutes: float) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, Gloo on CPUs); DistInfo() in one process.

    parallel (train.parallel): auto = DDP under torchrun with several processes, plain training otherwise;
    ddp / fsdp = that, and a ConfigError when not launched by torchrun."""
    if not launched_by_torchrun():
        if parallel != "auto":
            raise ConfigError(f"train.parallel: '{parallel}' needs processes launched by torchrun, e.g. torchrun "
                              f"--nproc_per_node 2 -m bertmath pretrain CONFIG (or train.parallel: auto for one process)")
        return DistInfo()
    world_size = int(os.environ["WORLD_SIZE"])
    if batch_size % world_size:
        raise ConfigError(f"train.batch_size: {batch_size} sequences cannot be split evenly over {world_size} "
                          f"processes; use a multiple of {world_size} (it is the batch of all processes together)")
    if world_size == 1 and parallel == "auto":
        return DistInfo()
    return join(device_type, "ddp" if parallel == "auto" else parallel, timeout_minutes)


def join(device_type: str, mode: str, timeout_minutes: float) -> DistInfo:
    """Join torchrun's process group (NCCL on GPUs, Gloo on CPUs) with a side Gloo group for the slow waits;
    `mode` as DistInfo.parallel says (a job that shares work but trains nothing, `bertmath prepare`: "ddp")."""
    rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # device_id binds NCCL to this process's GPU (else every barrier warns that it guesses the device)
        bound = {"device_id": torch.device("cuda", local_rank)} if device_type == "cuda" else {}
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes), **bound)
    slow_group = dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)
    return DistInfo(rank, world_size, local_rank, mode, slow_group)


def wrap(model: nn.Module, info: DistInfo, device: torch.device, layer_type: type[nn.Module]) -> nn.Module:
    """The module to train: `model` itself in one process, DistributedDataParallel(model) for ddp, and for
    fsdp `model` sharded in place (fully_shard per `layer_type` module, e.g. EncoderLayer, then the rest:
    embeddings, tied decoder). The caller names the layer type, so this module imports no model."""
    if info.parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank] if device.type == "cuda" else None)
    if info.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (info.world_size,))
        for layer in [m for m in model.modules() if isinstance(m, layer_type)]:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s weights are FSDP2 DTensors (each process holding a shard)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gradient_sync(model: nn.Module, info: DistInfo, enabled: bool):
    """Context for one micro-batch's backward: with `enabled` False, gradients accumulate locally and are
    not communicated (DDP no_sync; FSDP keeps unsharded gradients) until the last micro-batch of the step."""
    if info.parallel == "ddp" and not enabled:
        return model.no_sync()
    if info.parallel == "fsdp":
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def barrier(info: DistInfo, slow: bool = False) -> None:
    """Wait for every process; `slow` for the data-preparation wait (hours allowed, not train.timeout_minutes)."""
    if info.enabled:
        dist.barrier(group=info.slow_group if slow else None)


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, on every rank (e.g. 'stop now')."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=_collective_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def total(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Σ_p x_p over the P processes (`value` itself in one process), e.g. masked-token counts."""
    if not info.enabled:
        return value
    out = value.detach().clone().to(_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)  # Gloo has no AVG
    return out.to(value.device)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP DTensor (e.g. the gradient norm); a plain tensor as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in one process), e.g. RNG states to save."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def peer_failure(error: BaseException, info: DistInfo) -> bool:
    """Whether `error` is this process noticing that another one failed: a collective that broke
    (the peer died or closed its connection) or timed out (it hangs)."""
    text = str(error)
    return info.enabled and isinstance(error, RuntimeError) and (
        isinstance(error, dist.DistError) or any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed")))


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"
