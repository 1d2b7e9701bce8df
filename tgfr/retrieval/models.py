"""X-Modal models: face encoders, projections into one space, the composed-query fusion.

Every face encoder returns ``(global [B, C], regions [B, N, C_r])``: one vector per
face and ``N`` regional features (a feature map's cells, or a ViT's patch tokens), which
TGFR's word-region score attends over.

* ``iresnet``: the project's iResNet-18 (:class:`tgfr.models.IResNet`), the default.
* ``resnet50``: a bottleneck ResNet-50 (3, 4, 6, 3). Below 112 pixels the stem is one
  stride-1 3x3 convolution without max-pooling, so a 64-pixel face keeps a 4x4 final map.
* ``vit_s``: ViT-S, 12 pre-norm blocks of 6 heads of ``width`` channels (384 at the
  published width 64), patches of 1/8 of the side, a class token.

Text arrives as features of a frozen sentence encoder (see :mod:`tgfr.retrieval.text`):
a sentence vector (mean of the token states) and the token states themselves. The text
head (``text_head``) maps them into the shared space:

* ``sentence``: a two-layer MLP of the sentence vector;
* ``tokens``: attention pooling over the token states (:class:`TokenAttentionPooling`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.iresnet import RESNET_LAYERS, IResNet

FACE_ENCODERS = ("iresnet", "resnet50", "vit_s")
TEXT_HEADS = ("sentence", "tokens")


class _IResNetFaces(nn.Module):
    def __init__(self, input_size: int, width: int):
        super().__init__()
        self.net = IResNet(RESNET_LAYERS[18], base_width=width, input_size=input_size, embedding_size=8 * width)
        self.global_size, self.region_size = 8 * width, self.net.region_channels

    def forward(self, images):
        pooled, regions = self.net(images)
        return pooled, regions.flatten(2).transpose(1, 2)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (stride) - 1x1 with 4x expansion, post-activation (He et al., v1.5 stride placement)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        out = channels * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out else nn.Sequential(
            nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet-50 trunk returning the pooled final feature and the third stage's cells."""

    def __init__(self, input_size: int, width: int = 64, layers=(3, 4, 6, 3)):
        super().__init__()
        if input_size < 112:  # small faces: keep resolution in the stem
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, in_channels = [], width
        for index, depth in enumerate(layers):
            channels = width * 2 ** index
            blocks = [Bottleneck(in_channels, channels, 1 if index == 0 else 2)]
            in_channels = channels * Bottleneck.expansion
            blocks += [Bottleneck(in_channels, channels, 1) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.global_size = in_channels
        self.region_size = width * 4 * Bottleneck.expansion

    def forward(self, images):
        x = self.stem(images)
        x = self.stages[1](self.stages[0](x))
        regions = self.stages[2](x)
        pooled = self.stages[3](regions).mean((2, 3))
        return pooled, regions.flatten(2).transpose(1, 2)


class ViTSmall(nn.Module):
    """ViT-S: patch embedding, class token, learned positions, pre-norm transformer blocks."""

    def __init__(self, input_size: int, width: int = 64, heads: int = 6, depth: int = 12, grid: int = 8):
        super().__init__()
        if input_size % grid:
            raise ValueError(f"vit_s needs an input size divisible by {grid}, got {input_size}")
        dim = heads * width
        patch = input_size // grid
        self.patches = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.global_size = self.region_size = dim

    def forward(self, images):
        tokens = self.patches(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.positions
        tokens = self.norm(self.blocks(tokens))
        return tokens[:, 0], tokens[:, 1:]


def build_face_encoder(kind: str, input_size: int, width: int) -> nn.Module:
    if kind == "iresnet":
        return _IResNetFaces(input_size, width)
    if kind == "resnet50":
        return ResNet50(input_size, width)
    if kind == "vit_s":
        return ViTSmall(input_size, width)
    raise ValueError(f"face_encoder must be one of {FACE_ENCODERS}, got {kind!r}")


class TokenAttentionPooling(nn.Module):
    """``heads`` learned attention poolings over a caption's frozen token states, concatenated, then a
    linear layer.

    The sentence vector is the plain mean of the same states: every stated attribute is averaged with
    every other word. Here each head scores the real words and pools its own slice of their projection,
    so heads can follow different words ("blond", "glasses") and the attributes stay apart.
    """

    def __init__(self, text_size: int, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by the {heads} attention heads of the tokens head")
        self.heads = heads
        self.score = nn.Linear(text_size, heads)
        self.value = nn.Linear(text_size, dim)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.score(tokens).masked_fill(~mask[..., None], float("-inf")).softmax(1)  # [B, T, heads]
        values = self.value(tokens).unflatten(-1, (self.heads, -1))  # [B, T, heads, dim / heads]
        return self.out((weights[..., None] * values).sum(1).flatten(1))


class GatedResidualFusion(nn.Module):
    """Composed query = gate(image, text) * image + residual(image, text)  (TIRG, Vo et al. 2019).

    The gate keeps what the change leaves alone (the face's identity lives in the
    reference embedding), the residual writes what the text changes; both see the image
    and the text together, so "now has a beard" can act differently on different faces.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.residual = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.gate_weight = nn.Parameter(torch.tensor(1.0))
        self.residual_weight = nn.Parameter(torch.tensor(0.1))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        both = torch.cat([image, text], 1)
        return (self.gate_weight * torch.sigmoid(self.gate(both)) * image
                + self.residual_weight * self.residual(both))


class XModalModel(nn.Module):
    """Face encoder, text projection, composed-query fusion, and the two baseline heads.

    The main space (``dim``): ``embed_faces``, ``embed_texts`` and ``compose`` return
    L2-normalised vectors compared by cosine. The baseline heads learn from the same
    features with the encoder's gradient cut, so they never change the X-Modal model:
    a CLIP-style pair of linear maps (global caption-face cosine, symmetric InfoNCE) and
    TGFR's word and region projections (word-region score, WRCL).
    """

    def __init__(self, face_encoder: str, input_size: int, width: int, text_size: int, dim: int = 256,
                 baseline_dim: int = 128, text_head: str = "sentence"):
        super().__init__()
        self.face_encoder = build_face_encoder(face_encoder, input_size, width)
        self.input_size = input_size
        face, region = self.face_encoder.global_size, self.face_encoder.region_size
        self.face_projection = nn.Linear(face, dim)
        if text_head not in TEXT_HEADS:
            raise ValueError(f"text_head must be one of {TEXT_HEADS}, got {text_head!r}")
        self.text_head = text_head
        self.text_projection = TokenAttentionPooling(text_size, dim) if text_head == "tokens" else \
            nn.Sequential(nn.Linear(text_size, dim), nn.GELU(), nn.Linear(dim, dim))
        self.fusion = GatedResidualFusion(dim)
        self.clip_face = nn.Linear(face, baseline_dim)
        self.clip_text = nn.Linear(text_size, baseline_dim)
        self.clip_log_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.word_projection = nn.Linear(text_size, baseline_dim)
        self.region_projection = nn.Linear(region, baseline_dim)

    def encode_faces(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.face_encoder(images)

    def project_faces(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.face_projection(pooled), dim=1)

    def embed_faces(self, images: torch.Tensor) -> torch.Tensor:
        return self.project_faces(self.encode_faces(images)[0])

    def embed_texts(self, captions) -> torch.Tensor:
        """Unit embeddings of a :class:`~tgfr.retrieval.text.CaptionBatch`."""
        if self.text_head == "tokens":
            return F.normalize(self.text_projection(captions.tokens, captions.mask), dim=1)
        return F.normalize(self.text_projection(captions.sentences), dim=1)

    def compose(self, reference: torch.Tensor, captions) -> torch.Tensor:
        """Query of a reference face (unit embedding from ``embed_faces``) and a change description."""
        return F.normalize(self.fusion(reference, self.embed_texts(captions)), dim=1)

    # baselines (inputs detached by the caller's choice: see training)
    def clip_faces(self, pooled):
        return F.normalize(self.clip_face(pooled), dim=1)

    def clip_texts(self, sentences):
        return F.normalize(self.clip_text(sentences), dim=1)

    def words(self, tokens):
        return self.word_projection(tokens)

    def regions(self, regions):
        return self.region_projection(regions)
