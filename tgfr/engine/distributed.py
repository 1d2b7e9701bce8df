"""Data-parallel training under ``torchrun``: process group, devices, DDP, data shards.

``torchrun --nproc_per_node=N -m tgfr train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in their environment;
``Distributed.from_environment`` joins them into one process group (``nccl`` for
CUDA devices, ``gloo`` for the CPU). Each step then

* trains its modules and loss heads inside one ``DistributedDataParallel`` (the
  averaged gradients are those of the global batch),
* hands the process group to the contrastive losses (CICL, IMCL, WRCL), whose
  negatives are the whole global batch,
* reads its shard of every epoch through ``DistributedSampler``: a global batch of
  ``batch_size`` samples is ``ceil(batch_size / world)`` samples per rank,

and only rank 0 writes the log, the config and the checkpoints. Without torchrun
(``WORLD_SIZE`` unset or 1) all of this is a no-op and training is one process.
"""
from __future__ import annotations

import datetime
import math
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DistributedSampler

from ..losses import InfoNCELoss, WordRegionLoss
from .config import DistributedConfig


class _StepModule(nn.Module):
    """What DDP wraps: a step's trained modules and loss heads; ``forward`` is the step's batch loss."""

    def __init__(self, step, loss):
        super().__init__()
        self.trained = nn.ModuleList(step._trained_modules())
        self.heads = step.heads
        self._loss = loss

    def forward(self, *args, **kwargs):
        return self._loss(*args, **kwargs)


class _RankBatches(BatchSampler):
    """A rank's batches without a one-sample last batch (too small for BatchNorm and contrastive losses).
    Every rank holds the same number of samples, so such a batch is dropped on every rank alike."""

    def __iter__(self):
        return (b for b in super().__iter__() if len(b) > 1)

    def __len__(self):
        return len(self.sampler) // self.batch_size + (len(self.sampler) % self.batch_size > 1)


class Distributed:
    """The process group of a training run (world size 1 without torchrun)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owns_group: bool = False):
        self.rank, self.world, self.local_rank, self.owns_group = rank, world, local_rank, owns_group

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
    def from_environment(cls, config: DistributedConfig, device: torch.device) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = config.backend if config.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"distributed.backend must be 'auto', 'gloo' or 'nccl', got {config.backend!r}")
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("distributed.backend='nccl' needs CUDA devices; use 'gloo' (or 'auto') on the CPU")
        if config.sync_batchnorm and device.type != "cuda":
            raise ValueError("distributed.sync_batchnorm needs CUDA devices: SyncBatchNorm has no CPU implementation")
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=config.timeout_s))
        return cls(rank, world, local_rank, owns_group=True)

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU (``LOCAL_RANK``) when training on CUDA."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def prepare_step(self, step, config: DistributedConfig) -> None:
        """Global-batch losses, SyncBatchNorm and DDP for one training step (nothing on one process)."""
        step.distributed = self
        if not self.enabled:
            return
        for module in step.heads.modules():
            if isinstance(module, (InfoNCELoss, WordRegionLoss)):
                module.group = self.group
        if config.sync_batchnorm:
            # the parameters stay the same objects, so the step's optimizer still holds them
            for module in step._trained_modules():
                nn.SyncBatchNorm.convert_sync_batchnorm(module)
        wrapped = _StepModule(step, step.loss)
        device_ids = [step.device.index] if step.device.type == "cuda" else None
        # unused parameters: loss terms switched off, the unused pooler of a Hugging Face text model
        step.ddp = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids,
                                                       find_unused_parameters=True)
        step.loss = step.ddp  # every batch loss goes through DDP's forward

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

    def sum_over_ranks(self, totals: dict[str, float], samples: int) -> tuple[dict[str, float], int]:
        """Epoch totals of all ranks (the log shows the global batch's averages)."""
        if not self.enabled:
            return totals, samples
        keys = sorted(totals)
        t = torch.tensor([totals[k] for k in keys] + [samples], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        values = t.tolist()
        return dict(zip(keys, values[:-1])), int(values[-1])

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
