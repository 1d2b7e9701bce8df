"""What the caption-alignment step optimises, and how its batches are drawn.

``align.objective`` picks the loss: ``"fcam"`` (TGFR), ``"id"`` (the FLF baselines'
caption identity loss) or ``"cgfr"`` (the CGFR-style DAMSM + CMPC loss). Each loss
names the model parts it trains in ``.trained``. With ``align.imcl="views"`` batches
hold two views per subject (:class:`SubjectPairBatchSampler`); the second view of a
subject with a single sample is its horizontal flip with, where there is one, another caption.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.baselines import CaptionIdentityLoss, CGFRLoss
from ..models.fcam import FCAMLoss
from .config import ALIGN_OBJECTIVES


def build_align_loss(settings, dim: int, num_classes: int, backend: str = "auto") -> nn.Module:
    """The loss module of an ``AlignStepConfig``."""
    s = settings
    if s.objective == "fcam":
        return FCAMLoss(dim, num_classes, s.weights, s.temperature, s.arcface_scale, s.arcface_margin, backend,
                        imcl=s.imcl, scaling=s.scaling, mask_same_identity=s.mask_same_identity,
                        wrcl_exponent=s.wrcl_exponent)
    if s.objective == "id":
        return CaptionIdentityLoss(dim, num_classes, s.arcface_scale, s.arcface_margin)
    if s.objective == "cgfr":
        return CGFRLoss(dim, num_classes, backend=backend)
    raise ValueError(f"align.objective must be one of {ALIGN_OBJECTIVES}, got {s.objective!r}")


def second_view_captions(captions: list, index: torch.Tensor, generator: torch.Generator) -> list[str]:
    """One caption per row of a two-view batch (``captions[row]``: the captions of the row's sample); a
    subject seen twice through one sample gets two different captions of it when it has them."""
    draws = torch.rand(len(index), generator=generator).tolist()
    chosen = [int(u * len(texts)) for texts, u in zip(captions, draws)]
    count = len(index) // 2
    for row in range(count):
        choices = len(captions[row])
        if int(index[row]) == int(index[count + row]) and choices > 1 and chosen[count + row] == chosen[row]:
            chosen[count + row] = (chosen[row] + 1 + int(draws[count + row] * (choices - 1))) % choices
    return [texts[c] for texts, c in zip(captions, chosen)]


def flipped_rows(index: torch.Tensor) -> torch.Tensor:
    """Rows of a two-view batch whose second view is the anchor itself (to be flipped)."""
    count = len(index) // 2
    repeated = torch.zeros(len(index), dtype=torch.bool)
    repeated[count:] = index[count:] == index[:count]
    return repeated
