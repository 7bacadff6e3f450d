"""Several processes, one run: `torchrun` set-up, gradient and metric reduction, sharding.

Launch with ``torchrun --nproc_per_node N -m xtimage.cli train ...`` (add ``--nnodes``
and a rendezvous for several machines). Each process reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from the environment and joins a process group: NCCL on GPU, gloo on CPU.

The model is not wrapped in DistributedDataParallel. The streaming engine runs several
backward passes per step (exact mode re-encodes every chunk), which DDP's one-backward
hooks do not fit; instead each process accumulates the gradient of its share, weighted by
its loss normaliser (images, or valid pixels), and `reduce_gradients` all-reduces the
weighted sums and the normalisers in one flat buffer and divides. The result equals the
one-process gradient of the same global batch, whatever the shares (tested against one
process with gloo). Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from xtimage.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0


def init_distributed(device_type: str = "cpu", timeout_minutes: float = 30.0) -> World:
    """Join the process group `torchrun` describes in the environment, once.

    Without ``WORLD_SIZE`` (or with 1) nothing is initialised and a one-process `World`
    comes back.

    Args:
        device_type: "cuda" picks NCCL, anything else gloo.
        timeout_minutes: how long a collective may wait for a slow process.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={size} but {', '.join(missing)} not set; launch with torchrun"
            )
        dist.init_process_group(
            backend, timeout=datetime.timedelta(minutes=timeout_minutes), rank=rank, world_size=size
        )
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def current_world() -> World:
    """The `World` of an initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return World(dist.get_rank(), dist.get_world_size(), local)
    return World()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (nothing to do alone).

    NCCL reduces GPU tensors only: a CPU tensor (metric counts) goes through this
    process's GPU and back.
    """
    if current_world().size > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_gpu = tensor.cuda()
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            tensor.copy_(on_gpu)
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(items: list[T]) -> list[T]:
    """Every process's ``items``, concatenated in rank order (pickled Python objects)."""
    if current_world().size == 1:
        return list(items)
    parts: list[list[T] | None] = [None] * current_world().size
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part or []]


BUCKET = 2**24  # gradient elements all-reduced at once (64 MB of float32)


def reduce_gradients(
    params: Sequence[torch.nn.Parameter], weighted_loss: float, normaliser: float
) -> tuple[float, float]:
    """Turn each process's weighted gradient sums into the global batch's mean gradient.

    On entry, ``p.grad`` holds ``sum_i n_i * grad(loss_i)`` over this process's
    micro-batches, where ``loss_i`` is normalised by ``n_i``; ``weighted_loss`` is
    ``sum_i n_i * loss_i`` and ``normaliser`` is ``sum_i n_i``. The gradients (in flat
    buckets), the losses and the normalisers are summed over processes and the gradients
    divided by the global normaliser. A parameter without a gradient on one process
    (which had no samples) counts as zero there; one without a gradient on every process
    keeps none, as it would alone.

    Returns:
        The global mean loss and the global normaliser.
    """
    if current_world().size == 1:
        if normaliser <= 0:
            raise ConfigError("no training samples in this step")
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_div_(grads, normaliser)
        return weighted_loss / normaliser, normaliser
    device = params[0].device
    counts = [float(p.grad is not None) for p in params] + [weighted_loss, normaliser]
    summed = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=device))
    loss_sum, total = float(summed[-2]), float(summed[-1])
    if total <= 0:
        raise ConfigError("no training samples reached any process in this step")
    used = [p for p, n in zip(params, summed[:-2].tolist(), strict=True) if n > 0]
    _reduce_buckets(used, total)
    return loss_sum / total, total


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum ``p.grad`` over all processes, in place (context parallelism: each process
    holds its own regions' share of one image's gradient).

    A parameter without a gradient on one process counts as zero there; one without a
    gradient on every process keeps none.
    """
    if current_world().size == 1 or not params:
        return
    counts = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    summed = all_reduce_sum(counts).tolist()
    _reduce_buckets([p for p, n in zip(params, summed, strict=True) if n > 0], 1.0)


def _reduce_buckets(used: Sequence[torch.nn.Parameter], divisor: float) -> None:
    """All-reduce the gradients of ``used`` in flat buckets of `BUCKET` elements and
    divide them by ``divisor`` (a missing gradient is zeros)."""
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    start = 0
    while start < len(used):
        bucket, size = [], 0
        while start < len(used) and (not bucket or size + used[start].numel() <= BUCKET):
            bucket.append(used[start].grad)
            size += used[start].numel()
            start += 1
        work = torch.float64 if bucket[0].dtype == torch.float64 else torch.float32
        flat = all_reduce_sum(torch.cat([g.reshape(-1).to(work) for g in bucket]))
        if divisor != 1.0:
            flat /= divisor
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def shard(items: Sequence[T], world: World) -> list[T]:
    """This process's items: every ``world.size``-th from ``world.rank``, none repeated.

    Evaluation and prediction use it so that the whole set is covered exactly once (a
    process may get one item fewer than another; nothing is padded).
    """
    return list(items[world.rank :: world.size])


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
