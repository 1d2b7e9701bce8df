"""TGFR training: configuration, the three steps on the training engine, checkpoints and ``load_model``."""
from .checkpoint import load_model, read_checkpoint
from .config import (
    PRESETS,
    AlignStepConfig,
    FusionStepConfig,
    ImageStepConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from .data import FeatureViews, TrainingViews, build_splits, make_batch_sampler, synthetic_config
from .run import TGFRTraining, train
from .sampler import SubjectPairBatchSampler
from .steps import STEPS, AlignStep, FusionStep, ImageStep

__all__ = [
    "PRESETS",
    "STEPS",
    "AlignStep",
    "AlignStepConfig",
    "FeatureViews",
    "FusionStep",
    "FusionStepConfig",
    "ImageStep",
    "ImageStepConfig",
    "SubjectPairBatchSampler",
    "TGFRTraining",
    "TrainConfig",
    "TrainingViews",
    "build_splits",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_model",
    "make_batch_sampler",
    "read_checkpoint",
    "save_config",
    "synthetic_config",
    "train",
]
