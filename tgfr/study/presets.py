"""What sizes of study exist: the study's config and its presets (data: a base training preset and changes)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from .. import config as configs
from ..config import ConfigError, setting
from ..models.text import MINILM_INSTALL, minilm_installed
from ..models.tgfr import HF_MODEL_DIRECTORY
from ..training.config import CPU_STEPS, TrainConfig
from .runs import BILSTM, RUN_NAMES

# Every study trains from the paper preset; the caption encoder is the study's choice per run
# (text_model, or the BiLSTM), so the base config names the one that needs no optional package.
PAPER_TRAINING = {"preset": "paper", "model": {"text_encoder": BILSTM}}


def default_text_model() -> str | None:
    """``"minilm"`` when the optional MiniLM package is installed, else None (the BiLSTM is the main encoder)."""
    return "minilm" if minilm_installed() else None


@dataclass
class StudyConfig:
    """A study: its seeds, the training config every run starts from, and its caption encoder.

    ``training`` is a training config (by default the ``paper`` preset); each run changes it
    (:mod:`tgfr.study.runs`). ``text_model`` is the transformer caption encoder that TGFR (paper),
    BERT-FLF, CGFR-style and the loss ablation share: ``"auto"`` (MiniLM when its optional package
    is installed), ``"minilm"``, a local Hugging Face model directory, or ``"none"`` (they share the
    BiLSTM instead). Those runs train it at ``transformer_text_lr`` (None: the training config's rate
    for a transformer; 0 freezes it). ``runs`` names the runs to train (empty: all of
    :data:`~tgfr.study.runs.RUN_NAMES` that the caption encoders allow; ``tgfr`` always, since the
    image-only and TGFR rows come from it), so that a study short of time trains what decides most first
    and adds the others later, reusing what finished. ``deviations`` from the paper's training are stated
    in ``study.md``. ``jobs`` seeds train at once, each in a process of its own (0: one per CPU core);
    a run's training uses ``training.num_threads`` threads.
    """

    presets: ClassVar[dict[str, dict]]  # PRESETS, below

    seeds: list[int] = setting([0, 1, 2], ge=0)
    jobs: int = setting(1, ge=0)
    text_model: str = setting("auto", choices=("auto", "minilm", "none"), also=HF_MODEL_DIRECTORY)
    transformer_text_lr: float | None = setting(None, ge=0)
    runs: list[str] = setting([], choices=RUN_NAMES)
    deviations: str = ""
    training: TrainConfig = field(default_factory=lambda: configs.load(TrainConfig, PAPER_TRAINING))

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("must name at least one seed; got []", "seeds")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"must name each seed once; got {self.seeds}", "seeds")
        if self.runs and "tgfr" not in self.runs:
            raise ConfigError(f"must include 'tgfr' (the image-only and TGFR rows); got {self.runs}", "runs")
        if self.text_model == "minilm" and not minilm_installed():
            raise ConfigError(f"is 'minilm', whose package is not installed: {MINILM_INSTALL}", "text_model")
        if self.training.model.text_encoder != BILSTM:
            raise ConfigError(f"is chosen per run by the study (text_model, or the BiLSTM); set text_model "
                              f"instead; got {self.training.model.text_encoder!r}", "training.model.text_encoder")

    def resolved_jobs(self) -> int:
        """How many seeds train at once: ``jobs``, or with 0 one per CPU core this process may use."""
        if self.jobs:
            return self.jobs
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def resolved_text_model(self) -> str | None:
        """The transformer the main runs share, or None when they share the BiLSTM."""
        if self.text_model == "auto":
            return default_text_model()
        return None if self.text_model == "none" else self.text_model


PRESETS = {
    # the paper's hyper-parameters and sizes (a GPU job), each caption encoder at its own rate
    "paper": {"seeds": [0, 1, 2], "training": PAPER_TRAINING},
    # minutes on a CPU, one thread (small tensors gain little from a second one and lose much on
    # busy cores): the demo's kind of model, narrower, on synthetic identities, few epochs. Ten seeds
    # (six left TGFR - image only at normal probes an interval of +-3.2 points) and 190 unseen test
    # identities (1,520 photos, 1.1 M impostor pairs) beside the 60 it trains on: the test set costs
    # only evaluation, and with it the per-seed differences vary less. The
    # transformer is frozen (its token features are computed once per caption) where the paper
    # fine-tunes it, which a CPU cannot do in minutes
    "quick": {
        "seeds": list(range(10)),
        "jobs": 0,
        "training": configs.merge(PAPER_TRAINING, CPU_STEPS, {
            "num_threads": 1, "progress": False,
            "data": {"num_identities": 250, "split_fractions": [0.24, 0.0, 0.76], "images_per_identity": 8,
                     "captions_per_image": 2},
            "model": {"image_size": 32, "image_width": 16, "text_embedding_dim": 48, "text_hidden": 48, "dim": 64,
                      "embedding_size": 128, "fusion_heads": 2},
            "fusion": {"epochs": 16, "lr_milestones": [12, 15]},
        }),
        "transformer_text_lr": 0.0,
        "deviations": "sizes and epochs far below the paper's (synthetic faces, 32 pixels, a narrow face encoder, "
                      "10/4/16 epochs, a softer ArcFace margin); the transformer caption encoder (MiniLM) is frozen, "
                      "the paper fine-tunes it",
    },
    # seconds: proves the pipeline (tests)
    "tiny": {
        "seeds": [0, 1],
        "training": configs.merge(PAPER_TRAINING, {
            "num_threads": 1, "progress": False,
            "data": {"num_identities": 20, "images_per_identity": 3, "captions_per_image": 2},
            "model": {"image_size": 32, "image_width": 8, "text_embedding_dim": 16, "text_hidden": 16, "dim": 32,
                      "embedding_size": 32, "max_words": 16, "fusion_heads": 2},
            "image": {"epochs": 1, "batch_size": 16, "lr_milestones": []},
            "align": {"epochs": 1, "batch_size": 8},
            "fusion": {"epochs": 1, "batch_size": 16, "lr_milestones": []},
        }),
        "transformer_text_lr": 0.0,
    },
}
StudyConfig.presets = PRESETS


def load_study_config(source="quick", overrides=()) -> StudyConfig:
    """A checked ``StudyConfig``: a preset of :data:`PRESETS` or a YAML file, then ``key=value`` overrides."""
    return configs.load(StudyConfig, source, overrides)
