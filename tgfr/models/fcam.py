"""The FCAM loss: ``WRCL + l1 * ID + l2 * CICL + l3 * IMCL`` (paper eq. 9, l = 100, 2, 1).

* WRCL: word-region contrastive loss (DAMSM words loss) between the projected
  words and the IMIM regions, through ``tgfr.ops.word_region_loss``.
* ID: additive-angular-margin softmax (ArcFace) on both modalities, the caption
  vector and the projected image global vector against one shared set of identity
  centres, so that both land near the same centre.
* CICL: caption-image contrastive loss, InfoNCE between the caption vector and
  the projected image global vector.
* IMCL: intra-modal (local-global) contrastive loss, InfoNCE between the mean of
  the IMIM regions and the projected image global vector, so that the refined
  regions carry the identity the global feature carries (our reading of the paper's
  local-global image term).

Both InfoNCE terms have their own learnable temperature; identity labels are passed
as ``class_ids`` so that other samples of the same identity are not negatives.
Any term can be switched off (weight 0) for the paper's Table 3 ablation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import InfoNCELoss, WordRegionLoss
from .heads import ArcFaceHead


@dataclass
class FCAMWeights:
    wrcl: float = 1.0
    id: float = 100.0
    cicl: float = 2.0
    imcl: float = 1.0


class FCAMLoss(nn.Module):
    """FCAM training objective on the outputs of ``TGFRModel.encode_image`` / ``encode_text``."""

    def __init__(self, dim: int, num_classes: int, weights: FCAMWeights | None = None, temperature: float = 0.07,
                 arcface_scale: float = 64.0, arcface_margin: float = 0.5, backend: str = "auto"):
        super().__init__()
        self.weights = weights or FCAMWeights()
        self.wrcl = WordRegionLoss(backend=backend)
        self.cicl = InfoNCELoss(temperature, backend=backend)
        self.imcl = InfoNCELoss(temperature, backend=backend)
        self.identity = ArcFaceHead(dim, num_classes, arcface_scale, arcface_margin)

    def forward(self, image: dict, text: dict, labels: torch.Tensor) -> dict:
        """Weighted total under ``"loss"`` and each enabled unweighted term under its name."""
        w = self.weights
        terms = {}
        if w.wrcl:
            terms["wrcl"] = self.wrcl(text["words"], image["regions"], text["mask"], labels)
        if w.id:
            terms["id"] = 0.5 * (self.identity(text["caption"], labels) + self.identity(image["global"], labels))
        if w.cicl:
            terms["cicl"] = self.cicl(text["caption"], image["global"], labels)
        if w.imcl:
            local = F.normalize(image["regions"].mean(1), dim=-1)
            terms["imcl"] = self.imcl(local, image["global"], labels)
        if not terms:
            raise ValueError("FCAM needs at least one loss term with a non-zero weight")
        terms["loss"] = sum(getattr(w, name) * value for name, value in terms.items())
        return terms
