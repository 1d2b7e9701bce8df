"""One training engine for every command that trains (TGFR's steps, X-Modal): epochs, checkpoints,
resume, the log, progress and torchrun. See :mod:`tgfr.engine.loop`."""
from .checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOG_NAME,
    CheckpointError,
    checkpoint_path,
    load_weights,
    read_checkpoint,
)
from .distributed import Distributed, DistributedConfig
from .loop import (
    Engine,
    EngineSettings,
    Epoch,
    Optimizers,
    ResumeError,
    RunExistsError,
    Stage,
    StageRunner,
    Training,
    TrainingInterrupted,
    epoch_seed,
    resolve_device,
)

__all__ = [
    "CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME", "CheckpointError", "Distributed", "DistributedConfig", "Engine",
    "EngineSettings", "Epoch", "Optimizers", "ResumeError", "RunExistsError", "Stage", "StageRunner", "Training",
    "TrainingInterrupted", "checkpoint_path", "epoch_seed", "load_weights", "read_checkpoint", "resolve_device",
]
