"""One training engine for every command that trains (TGFR's steps, X-Modal): epochs, checkpoints,
resume, the log, progress and torchrun. See :mod:`tgfr.engine.loop`."""
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, checkpoint_path, read_checkpoint
from .distributed import Distributed, DistributedConfig
from .loop import (
    Engine,
    EngineSettings,
    Epoch,
    ResumeError,
    Stage,
    StageRunner,
    Training,
    epoch_seed,
    resolve_device,
)

__all__ = [
    "CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME", "Distributed", "DistributedConfig", "Engine", "EngineSettings",
    "Epoch", "ResumeError", "Stage", "StageRunner", "Training", "checkpoint_path", "epoch_seed", "read_checkpoint",
    "resolve_device",
]
