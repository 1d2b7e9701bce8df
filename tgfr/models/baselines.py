"""The paper's baselines (TGFR §4.1, Table 2) besides the image-only one.

* BiLSTM-FLF / BERT-FLF: a caption encoder trained with the identity loss alone
  (:class:`CaptionIdentityLoss`), then the linear feature-level fusion
  (``heads.FeatureLevelFusion``). The caption side never sees a cross-modal loss.
* CGFR-style (caption-guided face recognition): a transformer caption encoder trained
  with the DAMSM words and sentence losses plus the cross-modal projection
  classification loss (:class:`CGFRLoss`), fused by :class:`CrossModalFusion`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import WordRegionLoss
from ..ops import info_nce
from .heads import ArcFaceHead
from .precision import float32_island


class CaptionIdentityLoss(nn.Module):
    """The FLF baselines' caption objective: an ArcFace identity loss on the caption vector, nothing else."""

    trained = ("text_encoder", "word_projection")

    def __init__(self, dim: int, num_classes: int, arcface_scale: float = 64.0, arcface_margin: float = 0.5):
        super().__init__()
        self.identity = ArcFaceHead(dim, num_classes, arcface_scale, arcface_margin)

    def forward(self, image: dict | None, text: dict, labels: torch.Tensor) -> dict:
        value = self.identity(text["caption"], labels)
        return {"id": value, "loss": value}


class CMPCLoss(nn.Module):
    """Cross-modal projection classification (Zhang & Lu, ECCV 2018).

    Each modality's feature is projected on the other's unit vector, ``x~ = (x . y/|y|) y/|y|``,
    and classified by a softmax over L2-normalised, bias-free class weights; the loss is the
    sum of the image->text and text->image terms. A float32 island (``tgfr.models.precision``).
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    @float32_island
    def forward(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = F.normalize(self.weight, dim=-1)
        text_unit, image_unit = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
        image_on_text = (image * text_unit).sum(-1, keepdim=True) * text_unit
        text_on_image = (text * image_unit).sum(-1, keepdim=True) * image_unit
        return F.cross_entropy(image_on_text @ weight.t(), labels) + F.cross_entropy(text_on_image @ weight.t(), labels)


class CGFRLoss(nn.Module):
    """CGFR-style alignment: DAMSM words loss + DAMSM sentence loss + CMPC.

    The sentence loss is AttnGAN's: cross-entropy over ``gamma3 * cos(caption, image)`` in both
    directions, summed (an InfoNCE at temperature ``1 / gamma3``, twice its symmetric mean).
    Same-identity pairs leave the softmaxes of both DAMSM terms, as AttnGAN's ``class_ids`` do.
    A float32 island (``tgfr.models.precision``).
    """

    trained = ("text_encoder", "word_projection", "global_projection", "imim")

    def __init__(self, dim: int, num_classes: int, gamma3: float = 10.0, cmpc_weight: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        self.words = WordRegionLoss(gamma3=gamma3, backend=backend)
        self.cmpc = CMPCLoss(dim, num_classes)
        self.gamma3, self.cmpc_weight, self.backend = gamma3, cmpc_weight, backend

    @float32_island
    def forward(self, image: dict, text: dict, labels: torch.Tensor) -> dict:
        temperature = torch.tensor(1.0 / self.gamma3, device=labels.device)
        terms = {
            "words": self.words(text["words"], image["regions"], text["mask"], labels),
            "sentence": 2.0 * info_nce(text["caption"], image["global"], temperature, labels, self.backend),
            "cmpc": self.cmpc(image["global"], text["caption"], labels),
        }
        terms["loss"] = terms["words"] + terms["sentence"] + self.cmpc_weight * terms["cmpc"]
        return terms


class CrossModalFusion(nn.Module):
    """CGFR-style fusion: the face regions attend over the caption words, a residual LayerNorm,
    mean-pool over regions, then concatenation with the face feature and the caption vector
    and one linear layer."""

    def __init__(self, dim: int = 256, image_features: int = 512, heads: int = 4, embedding_size: int = 512,
                 dropout: float = 0.1):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(2 * dim + image_features, embedding_size)

    def forward(self, words, word_mask, caption, regions, image_feature) -> torch.Tensor:
        attended, _ = self.cross(regions, words, words, key_padding_mask=~word_mask, need_weights=False)
        guided = self.norm(regions + attended).mean(1)
        return self.out(torch.cat([guided, caption, image_feature], dim=-1))
