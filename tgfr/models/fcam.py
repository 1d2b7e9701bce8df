"""The FCAM loss: ``WRCL + l1 * ID + l2 * CICL + l3 * IMCL`` (paper eq. 9, l = 100, 2, 1).

* WRCL: word-region contrastive loss (DAMSM words loss) between the projected
  words and the IMIM regions, through ``tgfr.ops.word_region_loss``.
* ID: additive-angular-margin softmax (ArcFace) on both modalities, the caption
  vector and the projected image global vector against one shared set of identity
  centres, so that both land near the same centre.
* CICL: caption-image contrastive loss, InfoNCE between the caption vector and
  the projected image global vector.
* IMCL: intra-modal contrastive loss. ``imcl="views"`` is the paper's eq. 7:
  half of [InfoNCE between two face images of one subject + InfoNCE between two
  captions of one subject], on a batch whose row ``K + i`` is a second view of the
  subject of row ``i`` (``tgfr.training.sampler.SubjectPairBatchSampler``).
  ``imcl="local_global"`` is our earlier reading: InfoNCE between the mean IMIM
  region and the projected global feature of the same image.

``scaling="paper"`` follows eqs. 1-2 and 8: ID is the *sum* over the two
modalities and CICL the *sum* of its two directions; ``"mean"`` averages both
(halving the effective l1 and l2). ``mask_same_identity`` leaves other samples of
the same identity out of every softmax (AttnGAN's ``class_ids``; the paper's
equations do not). ``wrcl_exponent=True`` keeps eq. 5's outer ``1 / gamma2``
exponent on the matching score, which AttnGAN's and the authors' code drop; it
equals dividing ``gamma3`` by ``gamma2``. Any term can be switched off (weight 0)
for the paper's Table 3 ablation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import setting
from ..losses import InfoNCELoss, WordRegionLoss
from .heads import ArcFaceHead
from .precision import float32_island


@dataclass
class FCAMWeights:
    wrcl: float = setting(1.0, ge=0)
    id: float = setting(100.0, ge=0)
    cicl: float = setting(2.0, ge=0)
    imcl: float = setting(1.0, ge=0)


IMCL_FORMS = ("views", "local_global")
LOSS_SCALINGS = ("paper", "mean")


class FCAMLoss(nn.Module):
    """FCAM training objective on the outputs of ``TGFRModel.encode_image`` / ``encode_text``.

    A float32 island (``tgfr.models.precision``): temperatures, margins and the weighted sum in float32.
    """

    trained = ("text_encoder", "word_projection", "global_projection", "imim")

    def __init__(self, dim: int, num_classes: int, weights: FCAMWeights | None = None, temperature: float = 0.07,
                 arcface_scale: float = 64.0, arcface_margin: float = 0.5, backend: str = "auto",
                 imcl: str = "local_global", scaling: str = "mean", mask_same_identity: bool = True,
                 wrcl_exponent: bool = False, gamma2: float = 5.0, gamma3: float = 10.0):
        super().__init__()
        if imcl not in IMCL_FORMS:
            raise ValueError(f"imcl must be one of {IMCL_FORMS}, got {imcl!r}")
        if scaling not in LOSS_SCALINGS:
            raise ValueError(f"scaling must be one of {LOSS_SCALINGS}, got {scaling!r}")
        self.weights = weights or FCAMWeights()
        self.imcl_form, self.scaling, self.mask_same_identity = imcl, scaling, mask_same_identity
        self.wrcl = WordRegionLoss(gamma2=gamma2, gamma3=gamma3 / gamma2 if wrcl_exponent else gamma3,
                                   backend=backend)
        self.cicl = InfoNCELoss(temperature, backend=backend)
        self.imcl = InfoNCELoss(temperature, backend=backend)
        self.identity = ArcFaceHead(dim, num_classes, arcface_scale, arcface_margin)

    @float32_island
    def forward(self, image: dict, text: dict, labels: torch.Tensor) -> dict:
        """Weighted total under ``"loss"`` and each enabled unweighted term under its name."""
        w = self.weights
        class_ids = labels if self.mask_same_identity else None
        # "mean" averages the two modalities of ID and the two directions of CICL; eqs. 1-2 and 8 sum them
        # (the symmetric InfoNCE op is the mean of its two directions)
        summed = self.scaling == "paper"
        terms = {}
        if w.wrcl:
            terms["wrcl"] = self.wrcl(text["words"], image["regions"], text["mask"], class_ids)
        if w.id:
            both = self.identity(text["caption"], labels) + self.identity(image["global"], labels)
            terms["id"] = both if summed else both / 2
        if w.cicl:
            cicl = self.cicl(text["caption"], image["global"], class_ids)
            terms["cicl"] = 2 * cicl if summed else cicl
        if w.imcl:
            terms["imcl"] = self.intra_modal(image, text, labels, class_ids)
        if not terms:
            raise ValueError("FCAM needs at least one loss term with a non-zero weight")
        terms["loss"] = sum(getattr(w, name) * value for name, value in terms.items())
        return terms

    def intra_modal(self, image: dict, text: dict, labels: torch.Tensor, class_ids) -> torch.Tensor:
        if self.imcl_form == "local_global":
            local = F.normalize(image["regions"].mean(1), dim=-1)
            return self.imcl(local, image["global"], class_ids)
        count = labels.shape[0] // 2
        if labels.shape[0] % 2 or not torch.equal(labels[:count], labels[count:]):
            raise ValueError("imcl='views' needs a batch of two views per subject: row K+i must have the identity "
                             "of row i (draw batches with tgfr.training.sampler.SubjectPairBatchSampler)")
        # the two views of one subject are each other's positives; other views of it would be
        # duplicates of the positive, so masking uses the first half's identities only
        ids = None if class_ids is None else class_ids[:count]
        faces, captions = image["global"], text["caption"]
        return 0.5 * (self.imcl(faces[:count], faces[count:], ids) + self.imcl(captions[:count], captions[count:], ids))
