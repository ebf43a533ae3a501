"""Data-parallel training across processes (``torchrun``), with exact global-batch semantics.

Each rank draws its own crops (its rank joins the seed), computes the loss of its share of the
batch and averages gradients with the others after the backward pass. Terms that do not
decompose over samples are made global: the batch Dice uses sums over all ranks, and the
pseudo-label weight is the confident fraction over all ranks' voxels. So one step of W ranks
with batch b equals one step of one process with batch W*b (with instance norm, the default;
batch norm normalises each rank's share on its own, as DDP without SyncBatchNorm does). Student
weights stay identical on every rank, and batch-norm running statistics are averaged over the
ranks after each step, hence the EMA teacher (which predicts from those statistics) stays
identical too; only rank 0 writes checkpoints and logs.

We average gradients explicitly instead of wrapping the student in DistributedDataParallel,
because one MaskTwins step runs the student several times (source, twins) before one backward,
which DDP's reducer does not support without ``static_graph`` restrictions.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

_LEFT_KEY = "masktwins/ranks_left"   # rendezvous-store counter of leave()


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def from_environment(device: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda and local >= torch.cuda.device_count():
        raise ConfigError(f"{world} processes were asked for on a node with "
                          f"{torch.cuda.device_count()} visible GPU(s); use --gpus "
                          f"{torch.cuda.device_count()} or fewer, or --device cpu.")
    if not dist.is_initialized():
        # Rank 0 validates and writes checkpoints while the others wait in the next collective:
        # a long validation must not hit the default timeout (10 minutes for NCCL).
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(hours=2))
    if use_cuda:
        torch.cuda.set_device(local)
    return DistContext(rank, world, local)


def global_sum(local: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks whose gradient flows into the local part only (others are constants)."""
    if not ctx.enabled:
        return local
    total = local.detach().clone()
    dist.all_reduce(total)
    return local + (total - local.detach())


def global_histogram(values: torch.Tensor, lo: float, hi: float, bins: int,
                     ctx: DistContext) -> torch.Tensor:
    """Counts (float64) of ``values`` in ``bins`` equal bins over [lo, hi], summed over ranks,
    so that every rank derives the same thresholds from them. float64: float32 stops counting
    exactly at 2^24 voxels in one bin."""
    return global_sum(torch.histc(values, bins=bins, min=lo, max=hi).double(), ctx)


def scale_gradient(value: torch.Tensor, factor: float) -> torch.Tensor:
    """``value`` as it is, with its gradient multiplied by ``factor``: a global term (the same
    on every rank) must survive the gradient average, and its logged value must stay the one a
    single process logs."""
    return value + (factor - 1) * (value - value.detach())


def mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if not ctx.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / ctx.world_size


def average_gradients(params, ctx: DistContext) -> None:
    """Replace each gradient by its mean over ranks (one flat all-reduce)."""
    _average_in_place([p.grad for p in params if p.grad is not None], ctx)


def _average_in_place(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    """Replace each tensor by its mean over ranks, with one all-reduce of them all."""
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def average_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Replace each floating-point buffer (batch-norm running mean and variance) by its mean
    over ranks: each rank updates them from its own crops, and a teacher or checkpoint that
    differed between ranks would give each rank other pseudo-labels."""
    _average_in_place([b for b in module.buffers() if b.is_floating_point()], ctx)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def leave(ctx: DistContext, timeout: float = 60.0) -> None:
    """End a successful run: close the process group on every rank, rank 0 last.

    Left open, the backend's threads are still alive while the interpreter tears down, and a
    rank can abort there ("terminate called without an active exception") after its results
    are written, which fails the whole run. Rank 0 hosts the rendezvous store, so it closes
    last: a rank whose store vanished under it can abort the same way. The other ranks count
    themselves out in that store once closed; rank 0 waits for the count (at most ``timeout``
    seconds: a rank that died is the launcher's business, not a reason to hang)."""
    if not (ctx.enabled and dist.is_initialized()):
        return
    store = dist.distributed_c10d._get_default_store()
    dist.barrier()
    if ctx.is_main:
        deadline = time.monotonic() + timeout
        while store.add(_LEFT_KEY, 0) < ctx.world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        dist.destroy_process_group()
    else:
        dist.destroy_process_group()
        store.add(_LEFT_KEY, 1)
