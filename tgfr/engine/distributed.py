"""Data-parallel training under ``torchrun``: the process group, each rank's device and its share of the data.

``torchrun --nproc_per_node=N -m tgfr train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in their environment;
``Distributed.from_environment`` joins them into one process group (``nccl`` for CUDA
devices, ``gloo`` for the CPU). The engine (:mod:`tgfr.engine.loop`) then trains each stage
inside ``DistributedDataParallel``, hands the process group to the stage's contrastive losses,
and lets rank 0 alone write the run directory; a stage reads its part of every epoch through
:meth:`Distributed.batch_sampler` or :meth:`Distributed.pair_batches`. Without torchrun
(``WORLD_SIZE`` unset or 1) all of this is a no-op and training is one process.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DistributedSampler

from ..config import setting


@dataclass
class DistributedConfig:
    """Data-parallel training under torchrun (ignored in one process).

    ``backend``: ``"auto"`` (nccl on CUDA, gloo on the CPU), ``"gloo"`` or ``"nccl"``.
    ``sync_batchnorm`` turns the BatchNorm layers of the trained modules into
    ``SyncBatchNorm`` (statistics of the global batch; CUDA only). ``timeout_s`` bounds
    every collective: a rank that stops ends the run with an error, not a hang.
    """

    backend: str = setting("auto", choices=("auto", "gloo", "nccl"))
    sync_batchnorm: bool = False
    timeout_s: float = setting(600.0, gt=0)


class _RankBatches(BatchSampler):
    """A rank's batches without a one-sample last batch (too small for BatchNorm and contrastive losses).
    Every rank holds the same number of samples, so such a batch is dropped on every rank alike."""

    def __iter__(self):
        return (b for b in super().__iter__() if len(b) > 1)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size + (len(self.sampler) % self.batch_size > 1)


class Distributed:
    """The process group of a training run (world size 1 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owns_group: bool = False,
                 config: DistributedConfig | None = None):
        self.rank, self.world, self.local_rank, self.owns_group = rank, world, local_rank, owns_group
        self.config = config or DistributedConfig()

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def group(self):
        return dist.group.WORLD if self.enabled else None

    @classmethod
    def from_environment(cls, config: DistributedConfig | None, device: torch.device) -> Distributed:
        """The process group torchrun set up, joined; one process without torchrun. ``config`` None:
        the command trains in one process only."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(config=config)
        if config is None:
            raise ValueError("this command trains in one process: start it without torchrun")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("distributed.backend='nccl' needs CUDA devices; use 'gloo' (or 'auto') on the CPU")
        if config.sync_batchnorm and device.type != "cuda":
            raise ValueError("distributed.sync_batchnorm needs CUDA devices: SyncBatchNorm has no CPU implementation")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank, config=config)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout_s))
        return cls(rank, world, local_rank, owns_group=True, config=config)

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU (``LOCAL_RANK``) when training on CUDA."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def batch_sampler(self, count: int, batch_size: int, seed: int) -> _RankBatches:
        """This rank's batches of an epoch (a ``DataLoader`` ``batch_sampler``); the ranks' batches together
        form the global batches of ``batch_size`` (rounded up to a multiple of the world size)."""
        sampler = DistributedSampler(range(count), num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed)
        return _RankBatches(sampler, math.ceil(batch_size / self.world), drop_last=False)

    def pair_batches(self, batches) -> list[list[int]]:
        """This rank's part of each two-views-per-subject batch ``[a_1 .. a_K, b_1 .. b_K]``: subjects
        ``rank, rank + world, ...`` in the same layout, so the gathered views still pair row for row.
        Every rank draws the same global batches (same generator); one with fewer subjects than ranks
        is dropped on every rank alike."""
        local = []
        for batch in batches:
            subjects = len(batch) // 2
            if subjects < self.world:
                continue
            mine = range(self.rank, subjects, self.world)
            local.append([batch[s] for s in mine] + [batch[subjects + s] for s in mine])
        return local

    def main_first(self, work):
        """``work()`` on rank 0, then on the other ranks once it is done (a shared on-disk cache)."""
        if self.is_main:
            work()
        if self.enabled:
            dist.barrier()
        if not self.is_main:
            work()

    def average_gradients(self, parameters) -> None:
        """What DDP does after a backward, for a backward that bypassed it (gradient caching)."""
        if not self.enabled:
            return
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``values`` over the ranks (itself in one process)."""
        if not self.enabled:
            return values
        on_device = values.cuda() if dist.get_backend() == "nccl" else values.cpu()
        dist.all_reduce(on_device)
        return on_device

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
