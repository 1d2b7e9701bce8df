"""The embedded face-caption set: synthetic identities, rendered photos, noisy captions.

``build_synthetic_splits(SyntheticConfig(...))`` renders ``num_identities *
images_per_identity`` photos and splits the *identities* into train / valid / test.
Everything is a function of the config: the same config gives byte-identical images and
captions (given the same NumPy and Pillow versions). Photo ``j`` of identity ``k`` uses the
random streams ``[seed, k]`` (the person), ``[seed, k, j, 1]`` (the photo) and
``[seed, k, j, 2]`` (its captions), so growing ``num_identities`` keeps the existing people.

Rendering takes a few milliseconds per 112-pixel photo on one core; give ``cache_dir`` to
keep the result in an ``.npz`` keyed by the config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, check, setting
from .captions import make_caption
from .dataset import FaceCaptionDataset, FaceRecord
from .identities import IdentityProfile, sample_identity
from .render import render_face, sample_variation

SPLITS = ("train", "valid", "test")
CACHE_FORMAT = 2  # bump when rendering or captions change, to invalidate caches


@dataclass(frozen=True)
class SyntheticData:
    """What to generate, but the photo size and the seed (a training run gives its model's input size
    and its own seed; see :class:`SyntheticConfig`).

    ``split_fractions`` share the identities (not the photos) among train / valid / test.
    ``template_fraction`` of the captions are in the Multi-Modal-CelebA-HQ style, the rest
    in the Face2Text style. ``mention_probability`` and ``contradiction_probability`` are
    the caption noise of :func:`tgfr.data.captions.make_caption`; ``occlusion_probability``
    the share of photos with an object in front of the face.
    """

    num_identities: int = setting(200, ge=1)
    images_per_identity: int = setting(10, ge=1)
    captions_per_image: int = setting(5, ge=1)
    split_fractions: tuple[float, float, float] = setting((0.6, 0.1, 0.3), ge=0, le=1)
    template_fraction: float = setting(0.5, ge=0, le=1)
    mention_probability: float = setting(0.4, ge=0, le=1)
    contradiction_probability: float = setting(0.05, ge=0, le=1)
    occlusion_probability: float = setting(0.25, ge=0, le=1)

    def validate(self) -> None:
        if not np.isclose(sum(self.split_fractions), 1.0):
            raise ConfigError(f"must sum to 1; got {list(self.split_fractions)}", "split_fractions")


@dataclass(frozen=True)
class SyntheticConfig(SyntheticData):
    """What to generate: :class:`SyntheticData` at ``image_size`` pixels from ``seed``."""

    image_size: int = setting(112, ge=16)
    seed: int = setting(0, ge=0)

    def __post_init__(self):
        # Configs read from YAML/JSON give lists; keep the config hashable.
        object.__setattr__(self, "split_fractions", tuple(self.split_fractions))
        check(self)

    def cache_key(self) -> str:
        fields = dataclasses.asdict(self) | {"format": CACHE_FORMAT}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SyntheticFaces:
    """All generated photos: ``images`` uint8 [N, S, S, 3], ``identities`` int64 [N],
    ``captions`` N tuples, ``attributes`` N dicts (identity attributes plus photo facts),
    ``statements`` N tuples of one dict per caption: what that caption states
    (:meth:`tgfr.data.captions.Caption.statements`, contradictions included)."""

    images: np.ndarray
    identities: np.ndarray
    captions: list[tuple[str, ...]]
    attributes: list[dict]
    statements: list[tuple[dict, ...]]

    def records(self, indices=None) -> list[FaceRecord]:
        indices = range(len(self.identities)) if indices is None else indices
        return [FaceRecord(identity=int(self.identities[i]), captions=self.captions[i],
                           pixels=self.images[i], name=f"synthetic/{int(self.identities[i]):06d}_{i}",
                           attributes=self.attributes[i]) for i in indices]


#: what a photo's attributes hold besides its person's: facts of that one photo
PHOTO_FACTS = ("smiling", "mouth_open")


def identity_profiles(config: SyntheticConfig) -> list[IdentityProfile]:
    return [sample_identity(config.seed, k) for k in range(config.num_identities)]


def _photo(config: SyntheticConfig, profile: IdentityProfile, photo_index: int):
    variation = sample_variation(profile, np.random.default_rng([config.seed, profile.identity, photo_index, 1]),
                                 config.occlusion_probability)
    photo_facts = {name: getattr(variation, name) for name in PHOTO_FACTS}
    rng = np.random.default_rng([config.seed, profile.identity, photo_index, 2])
    captions = [make_caption(profile.attributes, photo_facts,
                             "template" if rng.random() < config.template_fraction else "free", rng,
                             config.mention_probability, config.contradiction_probability)
                for _ in range(config.captions_per_image)]
    return (render_face(profile, variation, config.image_size), tuple(c.text for c in captions),
            dict(profile.attributes) | photo_facts, tuple(c.statements() for c in captions))


def generate_synthetic(config: SyntheticConfig, cache_dir: str | Path | None = None) -> SyntheticFaces:
    """Render every photo of ``config`` (or load them from ``cache_dir``)."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"tgfr_synthetic_{config.cache_key()}.npz"
        if cache_file.exists():
            with np.load(cache_file, allow_pickle=False) as cached:
                return SyntheticFaces(cached["images"], cached["identities"],
                                      [tuple(c) for c in json.loads(str(cached["captions"]))],
                                      json.loads(str(cached["attributes"])),
                                      [tuple(s) for s in json.loads(str(cached["statements"]))])
    count = config.num_identities * config.images_per_identity
    images = np.empty((count, config.image_size, config.image_size, 3), dtype=np.uint8)
    identities = np.repeat(np.arange(config.num_identities, dtype=np.int64), config.images_per_identity)
    captions, attributes, statements = [], [], []
    for index, profile in enumerate(p for p in identity_profiles(config)
                                    for _ in range(config.images_per_identity)):
        images[index], photo_captions, photo_attributes, photo_statements = _photo(
            config, profile, index % config.images_per_identity)
        captions.append(photo_captions)
        attributes.append(photo_attributes)
        statements.append(photo_statements)
    faces = SyntheticFaces(images, identities, captions, attributes, statements)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_file.with_suffix(".partial.npz")
        np.savez(partial, images=images, identities=identities, captions=json.dumps(captions),
                 attributes=json.dumps(attributes), statements=json.dumps(statements))
        partial.replace(cache_file)  # readers never see a half-written cache
    return faces


def split_identities(config: SyntheticConfig) -> dict[str, np.ndarray]:
    """Disjoint identity ids of each split, drawn reproducibly from the seed."""
    order = np.random.default_rng([config.seed, 7]).permutation(config.num_identities)
    n_train = round(config.split_fractions[0] * config.num_identities)
    n_valid = round(config.split_fractions[1] * config.num_identities)
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
              "test": (n_train + n_valid, config.num_identities)}
    splits = {name: np.sort(order[lo:hi]) for name, (lo, hi) in bounds.items()}
    for name, fraction in zip(SPLITS, config.split_fractions):
        if fraction > 0 and splits[name].size == 0:
            raise ValueError(f"split {name!r} gets no identity: raise num_identities "
                             f"({config.num_identities}) or its split fraction ({fraction})")
    return splits


def build_synthetic_splits(config: SyntheticConfig = SyntheticConfig(), cache_dir: str | Path | None = None,
                           quality: str = "normal") -> dict[str, FaceCaptionDataset]:
    """``{"train", "valid", "test"}`` datasets with disjoint identities.

    Splits with a zero fraction are left out. Each dataset labels its own identities
    ``0..num_identities-1``; its ``identity_keys`` are the synthetic identity ids. Use
    ``quality="mixed"`` (or ``dataset.with_quality``) for degraded photos.
    """
    faces = generate_synthetic(config, cache_dir)
    datasets = {}
    for name, members in split_identities(config).items():
        if members.size:
            indices = np.flatnonzero(np.isin(faces.identities, members))
            datasets[name] = FaceCaptionDataset(faces.records(indices), quality=quality,
                                                seed=config.seed + SPLITS.index(name))
    return datasets
