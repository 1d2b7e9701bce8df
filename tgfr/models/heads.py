"""TGFR's trainable heads: projections into the shared space, IMIM, FCFM, FLF and the ArcFace margin.

Shapes: ``B`` batch, ``T`` tokens, ``N = h*w`` image regions, ``D`` the shared
width (256 in the paper).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .precision import float32_island

CNN_KERNEL_SIZES = (2, 3, 4, 5)


class WordProjection(nn.Module):
    """1-D CNN over token features -> L2-normalised ``D``-d words, and their max-pool as the caption vector.

    One convolution per kernel size ('same' padding so each token keeps its
    position; 2, 3, 4, 5 by default as in the paper's text, the authors' code
    uses 2, 3, 4); the outputs are stacked and max-pooled over the kernel axis.
    Padded tokens are zeroed before the convolutions and left out of the caption max-pool.
    """

    def __init__(self, in_features: int, dim: int = 256, kernel_sizes=CNN_KERNEL_SIZES):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_features, dim, k) for k in kernel_sizes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (tokens * mask.unsqueeze(-1)).transpose(1, 2)  # [B, C, T]
        # 'same' padding, the extra zero of even kernels on the right
        outputs = [conv(F.pad(x, ((conv.kernel_size[0] - 1) // 2, conv.kernel_size[0] // 2))) for conv in self.convs]
        words = torch.stack(outputs).amax(0).transpose(1, 2)  # [B, T, D]
        words = F.normalize(words, dim=-1)
        caption = words.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return words, F.normalize(caption, dim=-1)


class GlobalProjection(nn.Module):
    """MLP from the image encoder's global feature to the shared space (L2-normalised)."""

    def __init__(self, in_features: int, dim: int = 256, hidden: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(feature), dim=-1)


IMIM_NORMS = ("batch", "group")


class IMIM(nn.Module):
    """Image-modality interaction on regional features: normalisation + 1x1-conv self-attention.

    A 1x1 convolution first maps the encoder's region channels to ``D`` (identity
    when they already match, as for iResNet-18 at 112x112); then a normalisation and a
    SAGAN-style self-attention whose query/key/value are 1x1 convolutions, added back
    to the normalised regions. ``norm="batch"`` with ``gate=False`` is the paper's
    module (BatchNorm, plain residual); ``norm="group"`` with ``gate=True`` is our
    variant: GroupNorm (no batch statistics, so small and identity-paired batches do
    not shift it) and a learnable residual gate that starts at 0. Returns ``[B, N, D]`` regions.
    """

    def __init__(self, in_channels: int, dim: int = 256, key_dim: int | None = None, groups: int = 32,
                 norm: str = "group", gate: bool = True):
        super().__init__()
        if norm not in IMIM_NORMS:
            raise ValueError(f"IMIM norm must be one of {IMIM_NORMS}, got {norm!r}")
        self.input = nn.Identity() if in_channels == dim else nn.Conv2d(in_channels, dim, 1)
        self.norm = nn.GroupNorm(math.gcd(groups, dim), dim) if norm == "group" else nn.BatchNorm2d(dim)
        key_dim = key_dim or max(dim // 8, 1)
        self.query = nn.Conv2d(dim, key_dim, 1)
        self.key = nn.Conv2d(dim, key_dim, 1)
        self.value = nn.Conv2d(dim, dim, 1)
        self.gate = nn.Parameter(torch.zeros(())) if gate else None

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.input(regions))
        q = self.query(x).flatten(2).transpose(1, 2)  # [B, N, k]
        k = self.key(x).flatten(2)  # [B, k, N]
        v = self.value(x).flatten(2).transpose(1, 2)  # [B, N, D]
        attended = torch.softmax(q @ k / math.sqrt(k.shape[1]), dim=-1) @ v
        if self.gate is not None:
            attended = self.gate * attended
        return x.flatten(2).transpose(1, 2) + attended


FCFM_COARSE_KEYS = ("global", "global_regions")
FCFM_FACE_FEATURES = ("none", "concat", "gated")


class FCFM(nn.Module):
    """Face-caption fusion module (paper §3.5).

    Fine-grained branch: every word attends over the regions (cross-attention,
    words as queries), two self-attention blocks over the attended words,
    max-pool over valid words, linear. Coarse-grained branch: the caption vector
    attends over the projected global image feature (cross-attention) and a
    residual LayerNorm. The branches are concatenated and a final linear gives the
    fused embedding. ``coarse_keys="global", face_feature="none"`` is the paper's module.

    Our variants (named options): ``coarse_keys="global_regions"`` lets the coarse
    branch attend over the regions too; ``face_feature="concat"`` also concatenates the
    frozen encoder's own feature (``image_features`` wide), so that the fusion starts
    from what the image-only baseline knows; ``"gated"`` first scales that feature by a
    learned sigmoid gate computed from it and the coarse branch, so that for a degraded
    face it can shrink and the embedding leans on the caption.
    """

    def __init__(self, dim: int = 256, image_features: int = 512, heads: int = 4, embedding_size: int = 512,
                 dropout: float = 0.1, coarse_keys: str = "global_regions", face_feature: str = "gated"):
        super().__init__()
        if coarse_keys not in FCFM_COARSE_KEYS:
            raise ValueError(f"FCFM coarse_keys must be one of {FCFM_COARSE_KEYS}, got {coarse_keys!r}")
        if face_feature not in FCFM_FACE_FEATURES:
            raise ValueError(f"FCFM face_feature must be one of {FCFM_FACE_FEATURES}, got {face_feature!r}")
        self.coarse_keys, self.face_feature = coarse_keys, face_feature
        self.word_cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.word_norm = nn.LayerNorm(dim)
        self.self_blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
            for _ in range(2)
        )
        self.fine_out = nn.Linear(dim, dim)
        self.global_cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.global_norm = nn.LayerNorm(dim)
        self.image_gate = nn.Linear(image_features + dim, 1) if face_feature == "gated" else None
        face_width = 0 if face_feature == "none" else image_features
        self.out = nn.Linear(2 * dim + face_width, embedding_size)

    def forward(self, words, word_mask, caption, regions, image_global, image_feature=None) -> torch.Tensor:
        attended, _ = self.word_cross(words, regions, regions, need_weights=False)
        x = self.word_norm(words + attended)
        padding = ~word_mask
        for block in self.self_blocks:
            x = block(x, src_key_padding_mask=padding)
        fine = self.fine_out(x.masked_fill(padding.unsqueeze(-1), float("-inf")).amax(1))
        image_tokens = image_global.unsqueeze(1)
        if self.coarse_keys == "global_regions":
            image_tokens = torch.cat([image_tokens, regions], dim=1)
        coarse, _ = self.global_cross(caption.unsqueeze(1), image_tokens, image_tokens, need_weights=False)
        coarse = self.global_norm(caption + coarse.squeeze(1))
        parts = [fine, coarse]
        if self.face_feature == "gated":
            parts.append(torch.sigmoid(self.image_gate(torch.cat([image_feature, coarse], dim=-1))) * image_feature)
        elif self.face_feature == "concat":
            parts.append(image_feature)
        return self.out(torch.cat(parts, dim=-1))


class FeatureLevelFusion(nn.Module):
    """FLF baseline: concatenate the image encoder's global feature and the caption vector, one linear layer."""

    def __init__(self, dim: int = 256, image_features: int = 512, embedding_size: int = 512):
        super().__init__()
        self.out = nn.Linear(dim + image_features, embedding_size)

    def forward(self, caption, image_feature) -> torch.Tensor:
        return self.out(torch.cat([image_feature, caption], dim=-1))


class ArcFaceHead(nn.Module):
    """Additive angular margin softmax (ArcFace): ``CE(s * cos(theta_y + m))`` over class centres.

    A float32 island: the clamp just inside [-1, 1] that keeps ``acos``'s slope finite, the margin
    and the scale need float32 (in bfloat16 ``1 - 1e-7`` is 1).
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 64.0, margin: float = 0.5):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale, self.margin = scale, margin

    @float32_island
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings, dim=-1), F.normalize(self.weight, dim=-1)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        # past pi - m the margin would make the logit grow again: fall back to CosFace-style (insightface)
        with_margin = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                  target - self.margin * math.sin(self.margin))
        logits = cos.scatter(1, labels[:, None], with_margin) * self.scale
        return F.cross_entropy(logits, labels)
