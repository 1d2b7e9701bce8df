"""Face-caption records and the ``torch.utils.data.Dataset`` over them.

A :class:`FaceRecord` is one photo with its captions and its identity key, holding either
the pixels (synthetic data) or a path (real datasets). :class:`FaceCaptionDataset` maps
identity keys to contiguous labels ``0..num_identities-1``, applies a quality level and
returns dict items; :func:`collate_face_captions` batches them.

Randomness in an item (the quality drawn by ``quality="mixed"``, the degradation, the
caption chosen) comes from ``numpy.random.default_rng([seed, epoch, index])``: items are
reproducible, identical across DataLoader workers, and change with :meth:`set_epoch`.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .quality import QUALITY_LEVELS, check_quality, degrade

MIXED = "mixed"
CAPTION_CHOICES = ("random", "first")


@dataclass(frozen=True)
class FaceRecord:
    """One photo. Exactly one of ``pixels`` (uint8 [H, W, 3]) and ``image_path`` is set.

    ``identity`` is any hashable key (an int for synthetic people, the CelebA identity
    number for real data); ``name`` identifies the photo in its source (``"12.jpg"``);
    ``attributes`` holds what is known about the person and photo (synthetic data: the
    identity's attributes plus ``smiling`` and ``mouth_open``), empty when unknown.
    """

    identity: Hashable
    captions: tuple[str, ...]
    image_path: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)
    name: str = ""
    attributes: Mapping[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if (self.pixels is None) == (self.image_path is None):
            raise ValueError(f"record {self.name!r}: give exactly one of pixels and image_path")
        if not self.captions or not all(isinstance(c, str) and c.strip() for c in self.captions):
            raise ValueError(f"record {self.name!r}: captions must be a non-empty tuple of non-empty "
                             f"strings, got {self.captions!r}")

    def load_image(self, size: int | None = None) -> np.ndarray:
        """The photo as uint8 [H, W, 3]; ``size`` lets a JPEG decode at a reduced scale no smaller than it."""
        if self.pixels is not None:
            return self.pixels
        with Image.open(self.image_path) as image:
            if size is not None:
                image.draft("RGB", (size, size))
            return np.asarray(image.convert("RGB"))


def crop_and_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The centred square crop of ``image`` (aligned faces sit in the middle), resized to ``size``."""
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(square.resize((size, size), Image.BILINEAR, reducing_gap=2.0))


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""
    # In numpy: per-item torch kernels wait on the intra-op thread pool in loader workers.
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw /= 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


class FaceCaptionDataset(Dataset):
    """Photos with captions and identity labels.

    Args:
        records: the photos.
        quality: one of :data:`QUALITY_LEVELS`, or ``"mixed"`` to draw a level uniformly
            per item (training on all qualities).
        image_size: square side the images are resized to (before degradation); ``None``
            keeps their size, which must then be the same for all records to batch them.
        caption_choice: ``"random"`` picks one of a record's captions per item, ``"first"``
            always the first.
        seed: base of the per-item random streams.
        identity_keys: the identity key of each label; defaults to the sorted distinct keys
            of ``records``. Pass a parent's keys so subsets share its labels.

    Items are dicts: ``image`` float32 [3, H, W] in [-1, 1], ``identity`` int label,
    ``caption`` str, ``captions`` tuple of all the record's captions, ``quality`` str,
    ``index`` int (position in this dataset).
    """

    def __init__(self, records: Sequence[FaceRecord], quality: str = "normal",
                 image_size: int | None = None, caption_choice: str = "random", seed: int = 0,
                 identity_keys: Sequence[Hashable] | None = None):
        if quality != MIXED:
            check_quality(quality)
        if caption_choice not in CAPTION_CHOICES:
            raise ValueError(f"caption_choice must be one of {CAPTION_CHOICES}, got {caption_choice!r}")
        if image_size is not None and image_size < 16:
            raise ValueError(f"image_size must be >= 16 or None, got {image_size}")
        self.records = list(records)
        if not self.records:
            raise ValueError("records is empty")
        self.quality = quality
        self.image_size = image_size
        self.caption_choice = caption_choice
        self.seed = int(seed)
        self.epoch = 0
        if identity_keys is None:
            identity_keys = sorted({r.identity for r in self.records}, key=lambda k: (str(type(k)), k))
        self.identity_keys = list(identity_keys)
        label_of = {key: label for label, key in enumerate(self.identity_keys)}
        missing = {r.identity for r in self.records} - label_of.keys()
        if missing:
            raise ValueError(f"identity_keys lacks identities of records: {sorted(map(str, missing))[:5]}")
        #: Contiguous identity label of every item, int64 [len(self)].
        self.labels = np.array([label_of[r.identity] for r in self.records], dtype=np.int64)

    @property
    def num_identities(self) -> int:
        return len(self.identity_keys)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh qualities, degradations and captions (like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def with_quality(self, quality: str) -> FaceCaptionDataset:
        """The same photos at another quality, sharing labels."""
        return FaceCaptionDataset(self.records, quality, self.image_size, self.caption_choice,
                                  self.seed, self.identity_keys)

    def subset(self, indices: Sequence[int]) -> FaceCaptionDataset:
        """The photos at ``indices``, sharing labels (gallery and probe sets)."""
        return FaceCaptionDataset([self.records[int(i)] for i in indices], self.quality,
                                  self.image_size, self.caption_choice, self.seed, self.identity_keys)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} records")
        record = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        level = self.quality if self.quality != MIXED else QUALITY_LEVELS[int(rng.integers(len(QUALITY_LEVELS)))]
        image = record.load_image(self.image_size)
        if self.image_size is not None:
            image = crop_and_resize(image, self.image_size)
        # The degradation stream depends on the level so that each level of a photo is fixed.
        image = degrade(image, level, np.random.default_rng(
            [self.seed, self.epoch, index, QUALITY_LEVELS.index(level)]))
        captions = record.captions
        caption = captions[int(rng.integers(len(captions)))] if self.caption_choice == "random" else captions[0]
        return {"image": image_to_tensor(image), "identity": int(self.labels[index]), "caption": caption,
                "captions": captions, "quality": level, "index": index}


class FixedItems(Dataset):
    """Every item of ``dataset`` computed once and kept: a test set at one quality (its degradations are
    fixed per photo) that many models are scored on, as in a study, is decoded and degraded once."""

    def __init__(self, dataset: FaceCaptionDataset):
        self.quality, self.labels = dataset.quality, dataset.labels
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def collate_face_captions(items: Sequence[dict]) -> dict:
    """Batch items of :class:`FaceCaptionDataset`: ``image`` [B, 3, H, W], ``identity`` and
    ``index`` int64 [B]; ``caption``, ``captions`` and ``quality`` stay lists."""
    if not items:
        raise ValueError("items is empty")
    return {
        "image": torch.stack([item["image"] for item in items]),
        "identity": torch.tensor([item["identity"] for item in items], dtype=torch.int64),
        "caption": [item["caption"] for item in items],
        "captions": [item["captions"] for item in items],
        "quality": [item["quality"] for item in items],
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
    }
