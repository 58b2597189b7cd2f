"""Multi-process training under ``torchrun``: DistributedDataParallel with sharded sampling.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op and the
loop runs single-process. Only rank 0 writes files, logs and shows progress.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity when single-process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class ShardedEpochSampler(torch.utils.data.Sampler):
    """Seeded shuffle per epoch, then rank-strided shards of equal length.

    The order depends only on (seed, epoch), never on a global RNG, so a resumed run sees
    exactly the batches an unbroken run would have seen. Shards are padded by wrapping so
    every rank runs the same number of steps (DDP needs that).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 pad: bool = True):
        # pad=False for evaluation: every clip exactly once over all ranks (shards may differ
        # in length, which is fine without gradients).
        self.n, self.seed, self.rank, self.world, self.shuffle, self.pad = n, seed, rank, world, shuffle, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if not self.pad:
            return len(range(self.rank, self.n, self.world))
        return -(-self.n // self.world)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if not self.pad:
            return iter(order[self.rank :: self.world])
        total = len(self) * self.world
        order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world])
