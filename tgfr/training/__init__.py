"""TGFR training: configuration, the two-step training loop, checkpoints and ``load_model``."""
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
from .loop import STEPS, train
from .sampler import SubjectPairBatchSampler

__all__ = [
    "PRESETS",
    "STEPS",
    "SubjectPairBatchSampler",
    "AlignStepConfig",
    "FusionStepConfig",
    "ImageStepConfig",
    "TrainConfig",
    "FeatureViews",
    "TrainingViews",
    "build_splits",
    "make_batch_sampler",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_model",
    "read_checkpoint",
    "save_config",
    "synthetic_config",
    "train",
]
