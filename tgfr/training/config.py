"""TGFR training configuration: nested dataclasses with their allowed values, and the presets.

``load_config("demo", ["align.epochs=3", "model.text_encoder=minilm"])`` starts from a preset
(or a YAML file, which may name the preset it starts from with ``preset:``), then applies the
overrides; values are parsed as YAML (``3`` is an int, ``[4, 6]`` a list, ``null`` None). The
loader is :mod:`tgfr.config`: unknown keys and bad values are :class:`tgfr.config.ConfigError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .. import config as configs
from ..config import ConfigError, setting
from ..data import QUALITY_LEVELS, SyntheticData
from ..data.dataset import MIXED
from ..data.sources import DATASETS
from ..engine import DistributedConfig
from ..models.fcam import IMCL_FORMS, LOSS_SCALINGS, WRCL_REDUCTIONS, FCAMWeights
from ..models.tgfr import FUSION_MODES, ModelConfig
from ..ops import BACKENDS

VIEWS = (*QUALITY_LEVELS, MIXED)
ALIGN_OBJECTIVES = ("fcam", "id", "cgfr")
FUSION_OPTIMIZERS = ("adam", "sgd")
ALIGN_OPTIMIZERS = ("adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")
# a device named with its index
CUDA_INDEX = ("'cuda:N'", lambda name: isinstance(name, str) and name.startswith("cuda:") and name[5:].isdigit())
# past pi/2 the additive angular margin leaves no angle at which the target class wins
ARCFACE_MARGIN = {"ge": 0, "lt": math.pi / 2}
# The caption encoder's learning rate where align.text_lr is not given, by kind of encoder: a
# pretrained transformer is fine-tuned at the rate of the authors' code (2e-5; the paper names none), a
# BiLSTM starts from random weights and trains at the rate the authors' code gives it (3e-4)
TEXT_LRS = {"transformer": 2e-5, "bilstm": 3e-4}


def _views(default: list[str]):
    return setting(default, choices=VIEWS)


def check_data_root(dataset: str, data_root: str | None) -> None:
    """A real dataset is read from the directory ``data_root``; the embedded synthetic set reads no files,
    so a ``data_root`` given with it is a mistake (it would be silently ignored)."""
    if dataset != "synthetic" and not data_root:
        raise ConfigError(f"must give the directory of dataset {dataset!r} (--data-root ROOT); got {data_root!r}",
                          "data_root")
    if dataset == "synthetic" and data_root is not None:
        raise ConfigError(f"is not used by the embedded synthetic set, which reads no files (name the real dataset "
                          f"with --dataset); got {data_root!r}", "data_root")


def _check_views(views: list[str]) -> None:
    if not views:
        raise ConfigError("must name at least one view (a quality level or 'mixed'); got []", "qualities")


@dataclass
class SGDStepConfig:
    """What the two SGD steps share: an ArcFace head, momentum SGD, learning rate /10 at the milestones.

    ``qualities`` lists the views of the training split a step trains on, each a full copy at a
    quality level or ``"mixed"`` (a level drawn per photo). A batch needs two samples (BatchNorm,
    and the contrastive losses' negatives): a last batch of one is dropped.
    """

    qualities: list[str] = _views(["normal"])
    epochs: int = setting(20, ge=0)
    batch_size: int = setting(128, ge=2)
    lr: float = setting(0.1, gt=0)
    momentum: float = setting(0.9, ge=0, lt=1)
    weight_decay: float = setting(5e-4, ge=0)
    lr_milestones: list[int] = setting([12, 16], ge=0)
    arcface_scale: float = setting(64.0, gt=0)
    arcface_margin: float = setting(0.5, **ARCFACE_MARGIN)

    def validate(self) -> None:
        _check_views(self.qualities)


@dataclass
class ImageStepConfig(SGDStepConfig):
    """Step 0: the face encoder with an ArcFace head (skipped when ``model.image_weights`` is given).

    The face encoder learns from normal photos, like the published ones; the caption steps see
    degraded photos too, so that the fusion learns to lean on the caption when the face is poor.
    """


@dataclass
class AlignStepConfig:
    """Step 1: caption encoder and projections with the FCAM loss (Adam), face encoder frozen.

    ``objective``: ``"fcam"`` (TGFR), ``"id"`` (the FLF baselines: ArcFace on the caption
    vector only) or ``"cgfr"`` (DAMSM words + sentence + CMPC). ``imcl``, ``scaling``,
    ``wrcl_reduction``, ``mask_same_identity``, ``wrcl_exponent``, ``learn_temperature`` and
    ``caption_arcface_scale`` are the FCAM options of ``tgfr.models.FCAMLoss``; ``imcl="views"``
    draws batches of two views per subject (``tgfr.training.sampler``).

    Two parameter groups: the caption encoder at ``text_lr`` (None: its kind's default,
    :data:`TEXT_LRS`; 0 freezes it and its token features are then computed once) with
    ``weight_decay``, and everything else (projections, IMIM, loss heads) at ``lr`` with
    ``head_weight_decay`` (None: ``weight_decay``) and Adam's ``head_betas``, multiplied by
    ``lr_gamma`` every epoch. ``optimizer``: ``"adam"`` (L2 weight decay) or ``"adamw"`` (decoupled).
    ``grad_cache_chunk`` > 0 embeds captions and regions this many samples at a time (gradient
    caching: the same gradient, less memory).
    """

    qualities: list[str] = _views(["normal", "mixed"])
    objective: str = setting("fcam", choices=ALIGN_OBJECTIVES)
    imcl: str = setting("local_global", choices=IMCL_FORMS)
    scaling: str = setting("mean", choices=LOSS_SCALINGS)
    wrcl_reduction: str = setting("mean", choices=WRCL_REDUCTIONS)
    mask_same_identity: bool = True
    wrcl_exponent: bool = False
    optimizer: str = setting("adam", choices=ALIGN_OPTIMIZERS)
    epochs: int = setting(20, ge=0)
    batch_size: int = setting(64, ge=2)
    text_lr: float | None = setting(None, ge=0)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    head_weight_decay: float | None = setting(None, ge=0)
    head_betas: tuple[float, float] = setting((0.9, 0.999), ge=0, lt=1)
    lr_gamma: float = setting(1.0, gt=0, le=1)
    weights: FCAMWeights = field(default_factory=FCAMWeights)
    temperature: float = setting(0.07, gt=0)
    learn_temperature: bool = True
    arcface_scale: float = setting(64.0, gt=0)
    caption_arcface_scale: float | None = setting(None, gt=0)
    arcface_margin: float = setting(0.5, **ARCFACE_MARGIN)
    grad_cache_chunk: int = setting(0, ge=0)

    @property
    def pairs_views(self) -> bool:
        """Whether batches must hold two views per subject (the paper's IMCL, eq. 7)."""
        return self.objective == "fcam" and self.imcl == "views" and self.weights.imcl != 0

    def validate(self) -> None:
        _check_views(self.qualities)
        if self.pairs_views and (self.batch_size < 4 or self.batch_size % 2):
            raise ConfigError(f"must be even and at least 4 with imcl='views' (two views of two subjects); "
                              f"got {self.batch_size}", "batch_size")


@dataclass
class FusionStepConfig(SGDStepConfig):
    """Step 2: the fusion heads named in ``modes`` (FCFM is ``"tgfr"``), each with its own ArcFace
    head, everything else frozen.

    The ArcFace heads train with the step's SGD (``lr``, ``momentum``, ``weight_decay``). The fusion
    heads train with ``fusion_optimizer``: ``"adam"`` (the authors' code) at ``fusion_lr`` with L2
    decay ``fusion_weight_decay``, or ``"sgd"``, the ArcFace heads' SGD. Both are divided by 10 at
    ``lr_milestones``. At SGD 0.1 with momentum 0.9 the FCFM collapses (every fused embedding
    along one direction, docs/training.md); under Adam it does not.
    """

    qualities: list[str] = _views(["normal", "mixed"])
    batch_size: int = setting(64, ge=2)
    modes: list[str] = setting(["tgfr", "flf"], choices=FUSION_MODES)
    fusion_optimizer: str = setting("adam", choices=FUSION_OPTIMIZERS)
    fusion_lr: float = setting(1e-3, gt=0)
    fusion_weight_decay: float = setting(5e-5, ge=0)

    def validate(self) -> None:
        super().validate()
        if not self.modes:
            raise ConfigError("must name at least one fusion head; got []", "modes")


@dataclass
class TrainConfig:
    """Everything ``tgfr.training.train`` needs.

    ``dataset`` is ``"synthetic"`` (the embedded set, generated as ``data`` says, at the model's
    input size from ``seed``) or a real dataset read from ``data_root`` (``mmcelebahq``,
    ``face2text``, ``celeba-dialog``; ``data`` is then unused); ``skip_bad`` skips bad images and
    identities instead of stopping; ``num_workers`` is the DataLoader's worker count.
    ``ops_backend`` picks the ``tgfr.ops`` backend of the WRCL/InfoNCE losses.
    ``cache_frozen_features`` runs the frozen face encoder once per view and keeps its outputs
    memory-mapped on disk in ``feature_cache_dir`` (default: ``features/`` in the run directory)
    instead of encoding every batch (exact: each view is a fixed set of photos). ``progress``
    shows a progress bar whose running loss the host reads every ``log_interval`` batches.
    """

    presets: ClassVar[dict[str, dict]]  # PRESETS, below

    seed: int = setting(0, ge=0)
    device: str = setting("auto", choices=DEVICES, also=CUDA_INDEX)
    amp: bool = True
    ops_backend: str = setting("auto", choices=("auto", *BACKENDS))
    num_threads: int = setting(0, ge=0)
    progress: bool = True
    log_interval: int = setting(50, ge=1)
    cache_frozen_features: bool = True
    feature_cache_dir: str | None = None
    dataset: str = setting("synthetic", choices=DATASETS)
    data_root: str | None = None
    skip_bad: bool = False
    num_workers: int = setting(0, ge=0)
    data: SyntheticData = field(default_factory=SyntheticData)
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageStepConfig = field(default_factory=ImageStepConfig)
    align: AlignStepConfig = field(default_factory=AlignStepConfig)
    fusion: FusionStepConfig = field(default_factory=FusionStepConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def embedding_modes(self) -> tuple[str, ...]:
        """The embedding modes a run of this config trains: the image-only one and the heads the fusion
        step trains, in its order (none when it trains no epoch)."""
        return ("image", *(self.fusion.modes if self.fusion.epochs > 0 else ()))

    def validate(self) -> None:
        check_data_root(self.dataset, self.data_root)
        if any(mode not in self.model.fusions for mode in self.fusion.modes):
            raise ConfigError(f"must be among the model's fusions (model.fusions={self.model.fusions}); got "
                              f"{self.fusion.modes}", "fusion.modes")

    @property
    def caption_lr(self) -> float:
        """The caption encoder's learning rate in step 1: ``align.text_lr``, or its kind's default
        (:data:`TEXT_LRS`: a BiLSTM or a pretrained transformer); 0 when it stays frozen."""
        if self.align.text_lr is not None:
            return self.align.text_lr
        return TEXT_LRS["bilstm" if self.model.text_encoder == "bilstm" else "transformer"]


# The step schedule that trains in minutes on a 2-core CPU (the demo, the quick study): few epochs,
# and a softer margin than the paper's (s=64, m=0.5), with which a hundred identities trained for
# minutes converge.
CPU_STEPS = {
    "image": {"epochs": 10, "batch_size": 32, "lr_milestones": [7, 9], "arcface_scale": 32.0, "arcface_margin": 0.3},
    "align": {"epochs": 4, "batch_size": 32, "text_lr": 2e-3, "lr": 2e-3, "arcface_scale": 32.0,
              "arcface_margin": 0.3},
    "fusion": {"batch_size": 64, "lr": 0.02, "arcface_scale": 32.0, "arcface_margin": 0.3},
}

# Presets: changes to the defaults, or (with "preset") to another preset. "demo": the whole
# pipeline (data, three steps, evaluation) in minutes on a 2-core CPU; "smoke": seconds, for CI.
# Both run one thread: their small tensors gain little from a second one, and lose much when
# cores are busy.
PRESETS = {
    "default": {},
    "demo": configs.merge(CPU_STEPS, {
        "num_threads": 1,
        "data": {"num_identities": 200, "images_per_identity": 10},
        "model": {"image_size": 48, "image_width": 16, "text_embedding_dim": 64, "text_hidden": 64, "dim": 128,
                  "embedding_size": 256, "max_words": 32},
        # extra degraded views teach the fusion to lean on the caption when the face is poor
        "fusion": {"epochs": 6, "lr_milestones": [4, 5],
                   "qualities": ["normal", "mixed", "mixed", "very_bad", "very_bad", "very_bad"]},
    }),
    # The paper's system (§3-§4.2) on the embedded data; where the paper is silent, the authors' code
    # (docs/training.md has the table). Paper: eq. 7 IMCL on two views per subject, ID/CICL summed over
    # modalities/directions and WRCL over the batch (eq. 6), eq. 5 as written, same-identity pairs kept,
    # kernels 2-5, FCFM without the raw face feature; §4.2's batch 16, weight decay 0.01 and 20 epochs
    # (step 1), SGD 0.1 / momentum 0.9 / 1e-4, 36 epochs, /10 after epochs 6 and 24 (step 2); normal
    # photos. Authors' code: a pretrained transformer caption encoder (the MiniLM here, their BERT)
    # fine-tuned at 2e-5 with L2 decay 0.01 (Adam), the heads at 1e-3 without decay, betas (0.5, 0.999),
    # x0.98 per epoch; CICL at a fixed temperature 0.1; ArcFace scale 30 (image, fusion) and 35 (caption,
    # its own centres); IMIM as their module; 24 tokens.
    "paper": {
        "model": {"text_encoder": "minilm", "max_words": 24, "imim_form": "projected", "imim_norm": "batch",
                  "imim_gate": False, "fcfm_coarse_keys": "global", "fcfm_face_feature": "none",
                  "fusions": ["tgfr", "flf"]},
        "align": {"qualities": ["normal"], "epochs": 20, "batch_size": 16, "optimizer": "adam",
                  "weight_decay": 0.01, "head_weight_decay": 0.0, "head_betas": [0.5, 0.999], "lr_gamma": 0.98,
                  "imcl": "views", "scaling": "paper", "wrcl_reduction": "sum", "mask_same_identity": False,
                  "wrcl_exponent": True, "temperature": 0.1, "learn_temperature": False, "arcface_scale": 30.0,
                  "caption_arcface_scale": 35.0},
        "fusion": {"qualities": ["normal"], "epochs": 36, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                   "lr_milestones": [6, 24], "arcface_scale": 30.0},
    },
    "smoke": {
        "num_threads": 1,
        "progress": False,
        "data": {"num_identities": 30, "images_per_identity": 4},
        "model": {"image_size": 32, "image_width": 8, "text_embedding_dim": 16, "text_hidden": 16, "dim": 32,
                  "embedding_size": 32, "max_words": 16, "fusion_heads": 2},
        "image": {"epochs": 1, "batch_size": 32, "lr_milestones": []},
        "align": {"epochs": 1, "batch_size": 32, "text_lr": 1e-3, "lr": 1e-3},
        "fusion": {"epochs": 1, "batch_size": 32, "lr_milestones": []},
    },
}
TrainConfig.presets = PRESETS


def load_config(source=None, overrides=()) -> TrainConfig:
    """A checked ``TrainConfig``: a preset of :data:`PRESETS` (default: ``"default"``) or a YAML file,
    then the ``key=value`` ``overrides``."""
    return configs.load(TrainConfig, "default" if source is None else source, overrides)


def config_from_dict(values: dict) -> TrainConfig:
    """A checked ``TrainConfig`` from a (possibly partial) nested dict."""
    return configs.from_dict(TrainConfig, values)


config_to_dict = configs.dump
save_config = configs.save
