"""Training data: the embedded synthetic set's train split, materialised as tensors per step.

A step trains on one or more *views* of the training split, each a full copy at one
quality level (``"mixed"`` draws a level per photo). Views are rendered once into
fixed tensors, so the frozen face encoder's outputs can be cached for the whole step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import FaceCaptionDataset, SyntheticConfig, build_synthetic_splits


@dataclass
class TrainingSet:
    """Images ``[N, 3, H, W]`` in ``[-1, 1]``, labels ``[N]`` (``0..num_classes-1``) and each image's captions."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list
    num_classes: int

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample_captions(self, index: torch.Tensor, generator: torch.Generator) -> list[str]:
        """One caption per sample, drawn from its captions with ``generator``."""
        draws = torch.rand(len(index), generator=generator)
        return [self.captions[i][int(u * len(self.captions[i]))] for i, u in zip(index.tolist(), draws.tolist())]


def synthetic_config(data: dict, image_size: int, seed: int) -> SyntheticConfig:
    """The ``SyntheticConfig`` of a training config's ``data`` mapping.

    The image size defaults to the model's input size and the seed to the training seed.
    """
    return SyntheticConfig(**{"image_size": image_size, "seed": seed, **data})


def materialise(dataset: FaceCaptionDataset, qualities) -> TrainingSet:
    """Concatenate one rendered view of ``dataset`` per entry of ``qualities``."""
    if not qualities:
        raise ValueError("qualities must name at least one view (a quality level or 'mixed')")
    images, labels, captions = [], [], []
    for view, quality in enumerate(qualities):
        rendered = dataset.with_quality(quality)
        rendered.set_epoch(view)  # two "mixed" views draw different degradations
        for i in range(len(rendered)):
            item = rendered[i]
            images.append(item["image"])
            captions.append(tuple(item["captions"]))
        labels.append(torch.as_tensor(rendered.labels))
    return TrainingSet(torch.stack(images), torch.cat(labels), captions, dataset.num_identities)


def load_training_split(data: dict, image_size: int, seed: int) -> FaceCaptionDataset:
    return build_synthetic_splits(synthetic_config(data, image_size, seed))["train"]
