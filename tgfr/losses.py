"""Drop-in ``nn.Module`` losses on top of the fused ops.

They take the ops' arguments and follow their contract (``tgfr.ops.word_region``,
``tgfr.ops.info_nce``); the hyperparameters are checked where they are set, by the
ops' own checks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops import info_nce, word_region_loss
from .ops.common import check_real
from .ops.info_nce import check_temperature
from .ops.word_region import check_scalars


class WordRegionLoss(nn.Module):
    """WRCL: DAMSM words loss of a paired batch, ``image_to_caption + caption_to_image``."""

    def __init__(self, gamma1=4.0, gamma2=5.0, gamma3=10.0, eps=1e-8, backend="auto", group=None):
        super().__init__()
        self.gamma1, self.gamma2, self.eps, self.gamma3 = check_scalars(gamma1, gamma2, eps, gamma3)
        self.backend = backend
        self.group = group  # a torch.distributed process group: the batch is this rank's shard

    def forward(self, words, regions, word_mask=None, class_ids=None):
        i2t, t2i = word_region_loss(
            words,
            regions,
            word_mask,
            class_ids,
            self.gamma1,
            self.gamma2,
            self.gamma3,
            self.eps,
            self.backend,
            group=self.group,
        )
        return i2t + t2i

    def extra_repr(self):
        return f"gamma1={self.gamma1}, gamma2={self.gamma2}, gamma3={self.gamma3}, backend={self.backend!r}"


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature.

    The temperature (a positive number, or a one-element tensor) is stored as ``log τ``
    so that it stays positive under any optimiser step; ``learnable=False`` keeps it fixed.
    """

    def __init__(self, temperature=0.07, learnable=True, backend="auto", group=None):
        super().__init__()
        temperature = check_temperature(temperature)
        if isinstance(temperature, torch.Tensor):
            temperature = check_real("temperature", temperature.item(), positive=True)
        log_t = torch.tensor(math.log(temperature))
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.backend = backend
        self.group = group  # a torch.distributed process group: the batch is this rank's shard

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, a, b, class_ids=None):
        return info_nce(a, b, self.temperature, class_ids, self.backend, group=self.group)

    def extra_repr(self):
        return f"temperature={self.temperature.item():.4g}, backend={self.backend!r}"
