"""Test helper: run a function on W CPU processes forked from the test, as torchrun would
start them (its environment variables; gloo)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def fork_processes(fn, world: int, *args) -> None:
    """``fn(rank, *args)`` on ``world`` forked processes (they inherit everything built
    and imported: spawn would re-import for seconds); ``fn`` joins the group itself
    (e.g. `xtimage.distributed.init_distributed`). Raises if one of them fails."""
    mp.start_processes(
        _entry, args=(world, free_port(), fn, args), nprocs=world, start_method="fork"
    )
