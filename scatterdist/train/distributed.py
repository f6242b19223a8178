"""Process-group set-up for one process or ``torchrun`` (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process runs: ``rank`` of ``world_size``, ``local_rank`` on its node, torch ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else run alone.

    ``device``: ``"cpu"``, ``"cuda"`` or None (CUDA when available). Backend: nccl on CUDA,
    gloo on CPU. The rendezvous comes from the torchrun environment (``env://``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistContext(rank, world, local_rank, dev)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed (else ``model``).

    Buffers (the dense SHT matrices, Gaunt tables) are identical on every rank by construction
    and never change, so they are not re-broadcast before every forward.
    """
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    kwargs = {"device_ids": [ctx.device.index]} if ctx.device.type == "cuda" else {}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:  # torch < 2.13
        kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(model, **kwargs)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op in a single process); returns the summed tensor."""
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def broadcast_tensor(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Rank 0's ``value`` on every rank (same shape and dtype everywhere)."""
    if ctx.distributed:
        value = value.to(ctx.device)
        dist.broadcast(value, src=0)
    return value.cpu()


def broadcast_object(value: object, ctx: DistContext) -> object:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if ctx.distributed:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (call once at the end)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
