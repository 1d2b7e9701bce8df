"""X-Modal configuration: one flat dataclass with its allowed values, and the presets.

``load_config("quick", ["negatives=easy", "epochs=4"])`` is read by the loader of every command
(:mod:`tgfr.config`): presets and YAML files are mappings of changes, overrides ``key=value``
with YAML values, and every mistake a :class:`tgfr.config.ConfigError` naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import config as configs
from ..config import ConfigError, setting
from ..data.identities import ATTRIBUTE_VALUES
from ..data.readers import CELEBA_DIALOG_LEVELS
from ..data.synthetic import PHOTO_FACTS, SyntheticConfig
from ..models.tgfr import HF_MODEL_DIRECTORY
from ..ops import BACKENDS
from ..training.config import check_data_root
from .loss import GRADES, NEGATIVE_SETTINGS
from .models import FACE_ENCODERS, TEXT_HEADS

DATASETS = ("synthetic", "celeba-dialog")


@dataclass
class XModalConfig:
    """Everything an X-Modal run depends on (docs/xmodal.md explains the choices).

    Data: the embedded synthetic set and its change pairs, or CelebA-Dialog (whose attribute levels
    give the change pairs) under ``data_root``. Training: ``steps_per_epoch`` batches per epoch (0:
    one pass over the training people), the learning rate decaying along a cosine over all steps;
    ``negatives`` picks the graded negatives used, each from its fraction of training in
    ``grade_starts`` (easy, semi-hard, hard). ``threads``: torch CPU threads (0: torch's default).
    """

    presets: ClassVar[dict[str, dict]]  # PRESETS, below

    dataset: str = setting("synthetic", choices=DATASETS)
    data_root: str | None = None
    skip_bad: bool = False
    num_identities: int = setting(1000, ge=1)
    images_per_identity: int = setting(6, ge=1)
    image_size: int = setting(48, ge=16)
    captions_per_image: int = setting(2, ge=1)
    pairs_per_identity: int = setting(2, ge=1)  # change pairs per test person
    # per training person (synthetic set): with few, the fusion memorises its pairs instead of learning changes
    train_pairs_per_identity: int = setting(4, ge=1)
    # of the people: train, valid (unused), test; 910 people to learn from, 90 unseen to query
    split_fractions: list[float] = setting([0.91, 0.0, 0.09], ge=0, le=1)
    seed: int = setting(0, ge=0)
    # model
    face_encoder: str = setting("iresnet", choices=FACE_ENCODERS)
    face_width: int = setting(16, ge=1)
    dim: int = setting(256, ge=1)
    text_encoder: str = setting("minilm", choices=("minilm",), also=HF_MODEL_DIRECTORY)
    # "sentence": MLP of the mean-pooled sentence vector; "tokens": attention pooling of the token states
    text_head: str = setting("tokens", choices=TEXT_HEADS)
    max_tokens: int = setting(32, ge=1)
    # training
    epochs: int = setting(25, ge=0)
    steps_per_epoch: int = setting(0, ge=0)
    batch_size: int = setting(32, ge=1)
    text_views: int = setting(4, ge=1)  # captions of each text positive that query it per step (one face pass)
    lr: float = setting(2e-3, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    scale: float = setting(20.0, gt=0)
    negatives: str = setting("none", choices=NEGATIVE_SETTINGS)
    # composed queries: the same person's second before photo as a negative from the first step, whatever
    # ``negatives`` schedules (the one negative that only the change text can tell from the target)
    before_negative: bool = True
    grade_starts: list[float] = setting([0.0, 0.2, 0.4], ge=0, le=1)
    composed_weight: float = setting(1.0, ge=0)
    baseline_weight: float = setting(1.0, ge=0)
    # the true attributes read back from the face embedding (retrieval.loss.AttributeLoss); 0: off. Without
    # them the face space drops glasses and beards, which only the change texts speak of (XMODAL_RESULTS.md)
    attribute_weight: float = setting(10.0, ge=0)
    # the attributes read back; empty: those the change texts edit (the synthetic set's glasses, beard, hair
    # colour, hair style, bangs and age; CelebA-Dialog's five levels)
    attribute_names: list[str] = setting([])
    backend: str = setting("auto", choices=("auto", *BACKENDS))
    threads: int = setting(0, ge=0)
    progress: bool = True
    log_interval: int = setting(50, ge=1)

    def validate(self) -> None:
        check_data_root(self.dataset, self.data_root)
        if len(self.grade_starts) != len(GRADES):
            raise ConfigError(f"must give {len(GRADES)} fractions, one per grade ({', '.join(GRADES)}); "
                              f"got {self.grade_starts}", "grade_starts")
        known = CELEBA_DIALOG_LEVELS if self.dataset == "celeba-dialog" else (*ATTRIBUTE_VALUES, *PHOTO_FACTS)
        unknown = [name for name in self.attribute_names if name not in known]
        if unknown:
            raise ConfigError(f"names attributes the {self.dataset} photos do not have: {unknown}; they have "
                              f"{', '.join(known)}", "attribute_names")
        if self.image_size % 16:
            raise ConfigError(f"must be divisible by 16; got {self.image_size}", "image_size")
        self.synthetic()  # the synthetic set's own checks (split_fractions sums to 1)

    def synthetic(self) -> SyntheticConfig:
        return SyntheticConfig(num_identities=self.num_identities, images_per_identity=self.images_per_identity,
                               image_size=self.image_size, captions_per_image=self.captions_per_image,
                               split_fractions=tuple(self.split_fractions), seed=self.seed)


PRESETS = {
    # seconds: tests and smoke runs; pure PyTorch ops (no compiled kernel needed)
    "tiny": {"num_identities": 16, "split_fractions": [0.6, 0.1, 0.3], "images_per_identity": 2, "image_size": 32,
             "captions_per_image": 1, "pairs_per_identity": 1, "train_pairs_per_identity": 1, "face_width": 4,
             "dim": 32, "epochs": 2, "batch_size": 4, "threads": 1, "backend": "vectorized", "progress": False},
    # the defaults: training and evaluation within 10 minutes of the 2-core machine (benchmarks/XMODAL_RESULTS.md:
    # what each default bought)
    "quick": {},
    # a longer run on more people
    "full": {"num_identities": 1000, "images_per_identity": 8, "image_size": 64, "face_width": 32, "epochs": 40,
             "batch_size": 64},
}
XModalConfig.presets = PRESETS


def load_config(source="quick", overrides=()) -> XModalConfig:
    """A checked ``XModalConfig``: a preset of :data:`PRESETS` or a YAML file, then ``key=value`` overrides."""
    return configs.load(XModalConfig, source, overrides)
