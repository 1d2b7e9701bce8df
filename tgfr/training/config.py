"""Training configuration: nested dataclasses with defaults, YAML files, ``key=value`` overrides and presets.

``load_config("demo", ["align.epochs=3", "model.text_encoder=minilm"])`` starts
from a preset (or a YAML file, which may itself name a preset), then applies the
overrides; values are parsed as YAML (``3`` is an int, ``[4, 6]`` a list, ``null`` None).
Unknown keys are errors.
"""
from __future__ import annotations

import copy
import dataclasses
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints  # noqa: UP035

import yaml

from ..models.fcam import FCAMWeights
from ..models.tgfr import ModelConfig


@dataclass
class SGDStepConfig:
    """What the two SGD steps share: an ArcFace head, momentum SGD, learning rate /10 at the milestones."""

    qualities: list = field(default_factory=lambda: ["normal"])
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list = field(default_factory=lambda: [12, 16])
    arcface_scale: float = 64.0
    arcface_margin: float = 0.5


@dataclass
class ImageStepConfig(SGDStepConfig):
    """Step 0: the face encoder with an ArcFace head (skipped when ``model.image_weights`` is given).

    ``qualities`` lists the views of the training split a step trains on, each a full
    copy at a quality level or ``"mixed"`` (a level drawn per photo). The face encoder
    learns from normal photos, like the published ones; the caption steps see degraded
    photos too, so that the fusion learns to lean on the caption when the face is poor.
    """


@dataclass
class AlignStepConfig:
    """Step 1: caption encoder and projections with the FCAM loss (Adam), face encoder frozen.

    ``objective``: ``"fcam"`` (TGFR), ``"id"`` (the FLF baselines: ArcFace on the caption
    vector only) or ``"cgfr"`` (DAMSM words + sentence + CMPC). ``imcl``, ``scaling``,
    ``mask_same_identity`` and ``wrcl_exponent`` are the FCAM options of
    ``tgfr.models.FCAMLoss``; ``imcl="views"`` draws batches of two views per subject
    (``tgfr.training.sampler``). ``optimizer``: ``"adam"`` (L2 weight decay) or ``"adamw"``.
    """

    qualities: list = field(default_factory=lambda: ["normal", "mixed"])
    objective: str = "fcam"
    imcl: str = "local_global"
    scaling: str = "mean"
    mask_same_identity: bool = True
    wrcl_exponent: bool = False
    optimizer: str = "adam"
    epochs: int = 20
    batch_size: int = 64
    text_lr: float = 2e-5
    lr: float = 1e-3
    weight_decay: float = 0.0
    weights: FCAMWeights = field(default_factory=FCAMWeights)
    temperature: float = 0.07
    arcface_scale: float = 64.0
    arcface_margin: float = 0.5
    # > 0: embed captions and regions this many samples at a time (gradient caching; same gradient, less memory)
    grad_cache_chunk: int = 0


@dataclass
class FusionStepConfig(SGDStepConfig):
    """Step 2: the fusion heads named in ``modes`` (FCFM is ``"tgfr"``), each with its own ArcFace
    head (SGD), everything else frozen."""

    qualities: list = field(default_factory=lambda: ["normal", "mixed"])
    batch_size: int = 64
    modes: list = field(default_factory=lambda: ["tgfr", "flf"])


@dataclass
class DistributedConfig:
    """Data-parallel training under torchrun (ignored in one process).

    ``backend``: ``"auto"`` (nccl on CUDA, gloo on the CPU), ``"gloo"`` or ``"nccl"``.
    ``sync_batchnorm`` turns the BatchNorm layers of the trained modules into
    ``SyncBatchNorm`` (statistics of the global batch; CUDA only). ``timeout_s`` bounds
    every collective: a rank that stops ends the run with an error, not a hang.
    """

    backend: str = "auto"
    sync_batchnorm: bool = False
    timeout_s: float = 600.0


@dataclass
class TrainConfig:
    """Everything ``tgfr.training.train`` needs.

    ``dataset`` is ``"synthetic"`` (the embedded set, whose ``data`` mapping holds the
    keyword arguments of ``tgfr.data.SyntheticConfig``) or a real dataset read from
    ``data_root`` (``mmcelebahq``, ``face2text``, ``celeba-dialog``; ``data`` is then
    unused); ``skip_bad`` skips bad images and identities instead of stopping;
    ``num_workers`` is the DataLoader's worker count. ``ops_backend`` picks the
    ``tgfr.ops`` backend of the WRCL/InfoNCE losses. ``cache_frozen_features``
    runs the frozen face encoder once per view and keeps its outputs memory-mapped on
    disk in ``feature_cache_dir`` (default: ``features/`` in the run directory) instead
    of encoding every batch (exact: each view is a fixed set of photos).
    """

    seed: int = 0
    device: str = "auto"
    amp: bool = True
    ops_backend: str = "auto"
    num_threads: int = 0
    progress: bool = True
    cache_frozen_features: bool = True
    feature_cache_dir: str | None = None
    dataset: str = "synthetic"
    data_root: str | None = None
    skip_bad: bool = False
    num_workers: int = 0
    data: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageStepConfig = field(default_factory=ImageStepConfig)
    align: AlignStepConfig = field(default_factory=AlignStepConfig)
    fusion: FusionStepConfig = field(default_factory=FusionStepConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# Presets are overrides of the defaults. "demo": the whole pipeline (data, three steps,
# evaluation) in minutes on a 2-core CPU; "smoke": seconds, for CI. Both run one thread:
# their small tensors gain little from a second one, and lose much when cores are busy.
PRESETS = {
    "default": {},
    "demo": {
        "num_threads": 1,
        "data": {"num_identities": 200, "images_per_identity": 10},
        "model": {"image_size": 48, "image_width": 16, "text_embedding_dim": 64, "text_hidden": 64, "dim": 128,
                  "embedding_size": 256, "max_words": 32},
        # a softer margin than the paper's (s=64, m=0.5): 120 identities trained for minutes converge with it
        "image": {"epochs": 10, "batch_size": 32, "lr_milestones": [7, 9], "arcface_scale": 32.0,
                  "arcface_margin": 0.3},
        "align": {"epochs": 4, "batch_size": 32, "text_lr": 2e-3, "lr": 2e-3, "arcface_scale": 32.0,
                  "arcface_margin": 0.3},
        # extra degraded views teach the fusion to lean on the caption when the face is poor
        "fusion": {"epochs": 6, "batch_size": 64, "lr": 0.02, "lr_milestones": [4, 5], "arcface_scale": 32.0,
                   "arcface_margin": 0.3,
                   "qualities": ["normal", "mixed", "mixed", "very_bad", "very_bad", "very_bad"]},
    },
    # The paper's system (§3-§4.2) on the embedded data: eq. 7 IMCL on two views per subject,
    # summed ID/CICL, BatchNorm IMIM, FCFM without the raw face feature, kernels 2-5, eq. 5 as
    # written; §4.2's batch 16 and weight decay 0.01 (step 1), SGD 0.1 / momentum 0.9 / 1e-4,
    # 36 epochs, /10 after epochs 6 and 24 (step 2). Captions and photos at normal quality only.
    "paper": {
        "model": {"imim_norm": "batch", "imim_gate": False, "fcfm_coarse_keys": "global",
                  "fcfm_face_feature": "none", "fusions": ["tgfr", "flf"]},
        "align": {"qualities": ["normal"], "epochs": 20, "batch_size": 16, "weight_decay": 0.01,
                  "optimizer": "adamw", "imcl": "views", "scaling": "paper", "mask_same_identity": False,
                  "wrcl_exponent": True},
        "fusion": {"qualities": ["normal"], "epochs": 36, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                   "lr_milestones": [6, 24]},
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


def _merge(base: dict, update: dict, where: str = "") -> dict:
    """``base`` updated by ``update`` recursively; every key of ``update`` must exist in
    ``base``, except inside the free-form ``data`` mapping."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in merged:
            raise KeyError(f"unknown config key {path!r}; known keys here: {sorted(merged)}")
        if path == "data" and isinstance(value, dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        elif isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge(merged[key], value, f"{path}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_type(path: str, value, expected):
    """``value`` as the annotated type ``expected`` (an int is a valid float), or a ValueError naming the key."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if get_origin(expected) in (Union, types.UnionType):  # Optional[...], X | None
        options = get_args(expected)
        if value is None and type(None) in options:
            return None
        expected = next(t for t in options if t is not type(None))
    origin = get_origin(expected) or expected
    valid = isinstance(value, origin) and not (isinstance(value, bool) and origin in (int, float))
    if not valid:
        raise ValueError(f"config key {path!r} must be {getattr(origin, '__name__', origin)}, got {value!r} "
                         f"({type(value).__name__})")
    return value


def _from_dict(cls, values: dict, where: str = ""):
    kwargs = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where + f.name!r} must be a mapping, got {value!r}")
            value = _from_dict(hints[f.name], value, f"{where}{f.name}.")
        else:
            value = _check_type(where + f.name, value, hints[f.name])
        kwargs[f.name] = value
    return cls(**kwargs)


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(values: dict) -> TrainConfig:
    """A ``TrainConfig`` from a (possibly partial) nested dict, checking every key."""
    return _from_dict(TrainConfig, _merge(config_to_dict(TrainConfig()), values))


def parse_override(text: str) -> dict:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}`` with the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override must look like key=value (nested keys with dots), got {text!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(source: str | Path | None = "default", overrides=()) -> TrainConfig:
    """A config from a preset name or a YAML file, then ``key=value`` ``overrides``.

    ``source`` is one of ``PRESETS`` or the path of a YAML file; a file may name the
    preset it starts from with a top-level ``preset:`` key (default: the defaults).
    """
    source = "default" if source is None else source
    if str(source) in PRESETS:
        values = _merge(config_to_dict(TrainConfig()), PRESETS[str(source)])
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(
                f"config source must be a preset ({', '.join(PRESETS)}) or a YAML file, got {str(source)!r}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        preset = loaded.pop("preset", "default")
        if preset not in PRESETS:
            raise ValueError(f"{path}: preset must be one of {sorted(PRESETS)}, got {preset!r}")
        values = _merge(_merge(config_to_dict(TrainConfig()), PRESETS[preset]), loaded)
    for text in overrides:
        values = _merge(values, parse_override(text))
    return config_from_dict(values)


def save_config(config: TrainConfig, path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
