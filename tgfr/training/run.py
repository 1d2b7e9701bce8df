"""Two-step TGFR training (plus the face encoder when no pretrained one is given) on the engine.

The data are read and split before anything trains (bad input stops the run there); the split
is written to ``out_dir/split.json``. The steps (:mod:`tgfr.training.steps`) then train in
turn, on the engine (:mod:`tgfr.engine`): ``out_dir`` holds ``config.yaml``, ``log.jsonl`` and
``checkpoint.pt`` (model, vocabulary, the unfinished step's optimizer and loss heads, progress),
and ``train(config, out_dir, resume=True)`` restarts a killed run at the first unfinished epoch
of the unfinished step, with the weights an uninterrupted run would have had.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from .. import config as configs
from ..engine import Engine, EngineSettings, Training
from ..models.text import Vocabulary
from ..models.tgfr import TGFRModel
from .checkpoint import COMMAND, KIND, model_from_checkpoint
from .config import TrainConfig, config_from_dict
from .data import build_splits, check_same_split, write_split
from .steps import STEPS

# architecture fields written into the config from a pretrained face-encoder checkpoint
_IMAGE_FIELDS_FROM_WEIGHTS = ("image_layers", "image_width", "image_embedding", "image_variant")
# what a resumed run may change: how it is shown, where it reads from and with which threads, workers
# and backend (the backends compute the same function), never what it trains
RUN_SETTINGS = ("device", "progress", "log_interval", "num_threads", "num_workers", "ops_backend",
                "cache_frozen_features", "feature_cache_dir", "data_root", "skip_bad", "distributed.backend",
                "distributed.timeout_s")


class TGFRTraining(Training):
    """TGFR's run on the engine: the split, the model and its steps."""

    kind, command, stages = KIND, COMMAND, tuple(STEPS)
    run_settings = RUN_SETTINGS

    def __init__(self, config: TrainConfig):
        # a private copy: resuming and pretrained weights fill in fields of the model config
        self.config = copy.deepcopy(config)
        c = self.config
        self.settings = EngineSettings(seed=c.seed, device=c.device, amp=c.amp, progress=c.progress,
                                       log_interval=c.log_interval, distributed=c.distributed)

    def first_stage(self) -> str:
        return self.stages[1] if self.config.model.image_weights else self.stages[0]

    def section(self, stage: str) -> str:
        return stage  # image., align., fusion.

    def epochs(self, stage: str) -> int:
        return getattr(self.config, stage).epochs

    def comparable(self, values: dict) -> dict:
        if not values["model"]["image_weights"]:
            return values
        model = {k: v for k, v in values["model"].items() if k not in _IMAGE_FIELDS_FROM_WEIGHTS}
        return {**values, "model": model}

    def prepare(self, saved, device, ranks, out_dir: Path) -> None:
        config = self.config
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.seed)
        splits = build_splits(config, progress=config.progress)  # bad input stops here, before any training
        if saved is not None:
            check_same_split(splits.info, out_dir)  # a resumed run trains on the photos it started with
        if ranks.is_main:  # every rank built the same split; one writes it, as with the config and checkpoints
            write_split(splits.info, out_dir)
        self.split, self.device = splits.train, device
        cache_dir = Path(config.feature_cache_dir).expanduser() if config.feature_cache_dir else out_dir / "features"
        dataset_key = {"data": configs.dump(config.data)} if config.dataset == "synthetic" else {}
        self.feature_cache = (cache_dir, dataset_key) if config.cache_frozen_features else None
        if saved is not None:
            config.model = config_from_dict(saved["config"]).model  # with the face-encoder architecture of its weights
            self.model = model_from_checkpoint(saved, out_dir)
            self.vocabulary = self.model.vocabulary
        else:
            self.vocabulary = Vocabulary.from_captions(c for record in self.split.records for c in record.captions) \
                if config.model.text_encoder == "bilstm" else None
            self.model = TGFRModel(config.model, self.vocabulary)
        self.model.to(device)
        if config.align.text_lr == 0:
            # a frozen caption encoder (eval mode, so that its token features can be cached), in every step
            self.model.text_encoder.requires_grad_(False)

    def build_stage(self, name: str):
        return STEPS[name](self.model, self.config, self.split, self.device, self.feature_cache)

    def state(self) -> dict:
        return {"vocabulary": self.vocabulary.words[2:] if self.vocabulary is not None else None,
                "num_classes": self.split.num_identities, "model": self.model.state_dict()}


def train(config: TrainConfig, out_dir, resume: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Train (or resume training) a TGFR model into ``out_dir``; returns the checkpoint path.

    ``resume=True`` continues the run in ``out_dir`` and starts a new one if there is none; without
    it an existing checkpoint in ``out_dir`` is an error rather than being overwritten. A resumed
    run may change only what has not trained yet: the settings of the steps it has not started,
    the epochs of the step it is in (more epochs train them, fewer than it has done are an error),
    and :data:`RUN_SETTINGS`; anything else is a :class:`tgfr.engine.ResumeError` naming the keys.
    ``log`` gets a line when the run has nothing left to train.
    """
    config = config_from_dict(config) if isinstance(config, dict) else config
    return Engine(TGFRTraining(config), out_dir, resume, log=log).run()
