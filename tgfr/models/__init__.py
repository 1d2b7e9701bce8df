"""TGFR models: iResNet face encoders, caption encoders, FCAM/FCFM heads and the full model."""
from .baselines import CaptionIdentityLoss, CGFRLoss, CMPCLoss, CrossModalFusion
from .fcam import FCAMLoss, FCAMWeights
from .heads import FCFM, IMIM, ArcFaceHead, FeatureLevelFusion, GlobalProjection, WordProjection
from .iresnet import IResNet, iresnet18, load_adaface_iresnet, load_arcface_iresnet
from .text import BiLSTMTextEncoder, HFTextEncoder, Vocabulary, tokenize
from .tgfr import EMBED_MODES, FUSION_MODES, ModelConfig, TGFRModel

__all__ = [
    "EMBED_MODES",
    "FUSION_MODES",
    "CGFRLoss",
    "CMPCLoss",
    "CaptionIdentityLoss",
    "CrossModalFusion",
    "FCAMLoss",
    "FCAMWeights",
    "FCFM",
    "IMIM",
    "ArcFaceHead",
    "BiLSTMTextEncoder",
    "FeatureLevelFusion",
    "GlobalProjection",
    "HFTextEncoder",
    "IResNet",
    "ModelConfig",
    "TGFRModel",
    "Vocabulary",
    "WordProjection",
    "iresnet18",
    "load_adaface_iresnet",
    "load_arcface_iresnet",
    "tokenize",
]
