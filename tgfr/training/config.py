"""Training configuration: nested dataclasses with defaults, YAML files, ``key=value`` overrides and presets.

``load_config("demo", ["align.epochs=3", "model.text_encoder=minilm"])`` starts
from a preset (or a YAML file, which may itself name a preset), then applies the
overrides; values are parsed as YAML (``3`` is an int, ``[4, 6]`` a list, ``null`` None).
Unknown keys are errors.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

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
    """Step 1: caption encoder and projections with the FCAM loss (Adam), face encoder frozen."""

    qualities: list = field(default_factory=lambda: ["normal", "mixed"])
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
    """Step 2: FCFM and the FLF baseline with ArcFace heads (SGD), everything else frozen."""

    qualities: list = field(default_factory=lambda: ["normal", "mixed"])
    batch_size: int = 64


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

    ``data`` holds the keyword arguments of ``tgfr.data.SyntheticConfig`` (the
    embedded synthetic face-caption set); ``ops_backend`` picks the
    ``tgfr.ops`` backend of the WRCL/InfoNCE losses. ``cache_frozen_features``
    runs the frozen face encoder once per step instead of once per batch (exact,
    since the training images are fixed tensors; costs the encoder outputs' memory).
    """

    seed: int = 0
    device: str = "auto"
    amp: bool = True
    ops_backend: str = "auto"
    num_threads: int = 0
    progress: bool = True
    cache_frozen_features: bool = True
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


def _from_dict(cls, values: dict):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            value = _from_dict(f.default_factory, value)
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
