"""Multi-process training on PyTorch's own engine (torchrun + DistributedDataParallel).

`torchrun --nproc_per_node=K -m fpncli train ...` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each process; :func:`setup` turns
them into a process group (NCCL on GPUs, gloo on CPUs). Without them, training runs in one
process and every helper here is a no-op.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fpncli.device import resolve_device
from fpncli.errors import FpnError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_groups_made = 0  # process groups this process has made (the same count on every rank)


def setup(device_spec: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device_spec))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FpnError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    initialized = False
    if not dist.is_initialized():
        global _groups_made
        _groups_made += 1
        # torchrun's store outlives a group: each group of this process gets keys of its own,
        # or a second train() in the same processes could read the first group's addresses.
        store, _, _ = next(dist.rendezvous("env://", rank, world))
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            device_id=device if device.type == "cuda" else None,
            store=dist.PrefixStore(f"fpncli/group{_groups_made}", store),
            rank=rank,
            world_size=world,
        )
        initialized = True
    return DistInfo(rank, world, local_rank, device, initialized)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group this process made, for certain, here and now.

    ``destroy_process_group`` only forgets the group: gloo's threads and connections live on
    while anything references it, and DDP's reducer does (the wrapper sits in a reference
    cycle with the trainer's hooks). Freed later by the cycle collector, possibly during
    interpreter shutdown while the other rank closes its end, they abort the process
    ("terminate called without an active exception"). Collecting first frees them with the
    group, on this thread; the caller drops its own references (a traceback's frames too).
    """
    if info.initialized_here and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over all ranks (identical on every rank afterwards)."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one (stop / skip decisions)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank
    holds its own statistics; this makes the final models identical.
    """
    if not info.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def gather_tensors(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """``t`` from every rank (same shape and dtype on all), as CPU tensors in rank order."""
    if not info.distributed:
        return [t.cpu()]
    t = t.to(info.device)
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t)
    return [p.cpu() for p in parts]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
