"""Training data: the training split of the configured dataset, its quality views and the batches of a step.

A step trains on one or more *views* of the training split, each a full copy at one
quality level (``"mixed"`` draws a level per photo, fixed per view). :class:`TrainingViews`
decodes the photos of all views lazily; :class:`FeatureViews` holds the frozen face
encoder's outputs for them, read from the on-disk cache of :mod:`tgfr.training.features`.
Both batch through a ``DataLoader`` driven by a batch sampler (:func:`make_batch_sampler`)
into dicts with ``index``, ``label``, ``captions`` (all captions of each photo) and either
``image`` or ``global`` and ``regions``.

The run directory records the split (``split.json``: the dataset, its root, how it was split
and the names of the train and test photos), so evaluation uses exactly the held-out photos.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..atomic import write_text
from ..data import FaceCaptionDataset, SyntheticConfig, SyntheticData, build_synthetic_splits
from ..data.sources import (
    SPLIT_RULES,
    DataError,
    check_images,
    read_dataset,
    select_records,
    split_dataset,
    split_names,
)

SPLIT_FILE = "split.json"
log = logging.getLogger("tgfr.data")


def synthetic_config(data: SyntheticData, image_size: int, seed: int) -> SyntheticConfig:
    """The ``SyntheticConfig`` of a training config's ``data``: at the model's input size, from the
    training seed."""
    return SyntheticConfig(**dataclasses.asdict(data), image_size=image_size, seed=seed)


@dataclass
class DataSplits:
    """The train and test photos of a run, and what the split file records about them."""

    train: FaceCaptionDataset
    test: FaceCaptionDataset
    info: dict = field(default_factory=dict)


def _synthetic_splits(config) -> tuple[FaceCaptionDataset, FaceCaptionDataset]:
    splits = build_synthetic_splits(synthetic_config(config.data, config.model.image_size, config.seed))
    return splits["train"], splits["test"]


def build_splits(config, progress: bool = False) -> DataSplits:
    """Read and split the dataset of ``config`` (``dataset``, ``data_root``, ``skip_bad``, ``seed``).

    Bad input raises :class:`tgfr.data.sources.DataError` before anything trains; with
    ``skip_bad`` the skipped items are listed in ``info["skipped"]`` and logged.
    """
    if config.dataset == "synthetic":
        train, test = _synthetic_splits(config)
        return DataSplits(train, test, {"dataset": "synthetic", "rule": SPLIT_RULES["synthetic"],
                                        "train": split_names(train.records), "test": split_names(test.records)})
    skipped: list[str] = []
    records = read_dataset(config.dataset, config.data_root, config.skip_bad, skipped, progress=progress)
    split = split_dataset(config.dataset, records, config.data_root, config.seed, config.skip_bad, skipped)
    for note in split.notes:
        log.warning(note)
    if skipped:
        log.warning("skipped %d bad item(s) (--skip-bad): %s", len(skipped), "; ".join(skipped[:5]))
    size = config.model.image_size
    train = FaceCaptionDataset(split.train, image_size=size, seed=config.seed)
    test = FaceCaptionDataset(split.test, image_size=size, seed=config.seed + 2)
    info = {"dataset": config.dataset, "data_root": str(Path(config.data_root).expanduser().resolve()),
            "rule": split.rule, "notes": split.notes, "skipped": skipped,
            "train": split_names(train.records), "test": split_names(test.records)}
    return DataSplits(train, test, info)


def write_split(info: dict, out_dir) -> Path:
    return write_text(Path(out_dir) / SPLIT_FILE,
                      json.dumps({**info, "num_train": len(info["train"]), "num_test": len(info["test"])}, indent=1))


def check_same_split(info: dict, run_dir) -> None:
    """A :class:`DataError` when the run in ``run_dir`` was split differently (the data changed since)."""
    path = Path(run_dir) / SPLIT_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved["train"], saved["test"]) != (info["train"], info["test"]):
            raise DataError(f"{path}: the data now give another split than the run started with; "
                            "resume on the same data or start a new run")


def load_test_split(config, run_dir, data_root=None) -> FaceCaptionDataset:
    """The test photos a run held out, read from its ``split.json`` (``data_root`` replaces the saved root)."""
    path = Path(run_dir) / SPLIT_FILE
    saved = json.loads(path.read_text()) if path.is_file() else None
    if config.dataset == "synthetic":
        test = _synthetic_splits(config)[1]
        if saved is not None and saved["test"] != split_names(test.records):
            raise DataError(f"{path}: the synthetic test split differs from the one the run held out")
        return test
    if saved is None:
        raise DataError(f"no {SPLIT_FILE} in {run_dir}: the run's test split is unknown")
    root = data_root if data_root is not None else saved["data_root"]
    skipped: list[str] = []
    records = read_dataset(config.dataset, root, skip_bad=True, skipped=skipped, check_decoding=False)
    test = select_records(records, saved["test"], f"{config.dataset} at {root}")
    check_images(test, skip_bad=False, skipped=skipped)
    return FaceCaptionDataset(test, image_size=config.model.image_size, seed=config.seed + 2)


def collate_batch(items) -> dict:
    """Stack a list of item dicts (tensors stacked, ``captions`` kept as a list of tuples)."""
    if isinstance(items, dict):  # already batched by a dataset's __getitems__
        return items
    batch = {"index": torch.tensor([it["index"] for it in items]), "label": torch.stack([it["label"] for it in items]),
             "captions": [it["captions"] for it in items]}
    for key in ("image", "global", "regions"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    return batch


class TrainingViews(Dataset):
    """The training split at each quality of ``qualities``, concatenated; photos decoded on access.

    Item ``k`` is photo ``k % n`` of view ``k // n`` (``n`` photos in the split); view ``v`` draws
    its degradations as epoch ``v`` of the split, so a view is the same photos every epoch.
    """

    def __init__(self, split: FaceCaptionDataset, qualities):
        if not qualities:
            raise ValueError("qualities must name at least one view (a quality level or 'mixed')")
        self.split = split
        self.qualities = tuple(qualities)
        self.views = []
        for view, quality in enumerate(self.qualities):
            rendered = split.with_quality(quality)
            rendered.set_epoch(view)  # two "mixed" views draw different degradations
            self.views.append(rendered)
        self.labels = torch.as_tensor(np.tile(split.labels, len(self.qualities)))
        self.num_classes = split.num_identities
        # Photos held in memory (the synthetic set) are small: keep each rendered item after its first
        # epoch, as a tensor copy of the views would, instead of degrading it again every epoch.
        self.memo = {} if all(r.pixels is not None for r in split.records) else None

    def __len__(self) -> int:
        return len(self.split) * len(self.views)

    def captions(self, index: int) -> tuple[str, ...]:
        return self.split.records[index % len(self.split)].captions

    def photo(self, index: int) -> torch.Tensor:
        """The image of item ``index`` (``[3, H, W]``)."""
        return self[index]["image"]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self.memo is not None and index in self.memo:
            return self.memo[index]
        view, photo = divmod(index, len(self.split))
        item = self.views[view][photo]
        item = {"index": index, "label": self.labels[index], "captions": item["captions"], "image": item["image"]}
        if self.memo is not None:
            self.memo[index] = item
        return item


class FeatureViews(Dataset):
    """The frozen face encoder's outputs of :class:`TrainingViews`, one (memory-mapped) array pair per view.

    Batches are read with one fancy index per view (``__getitems__``), so no photo is decoded.
    """

    def __init__(self, images: TrainingViews, features: list[tuple[np.ndarray, np.ndarray]]):
        if len(features) != len(images.views):
            raise ValueError(f"need the features of {len(images.views)} views, got {len(features)}")
        self.images, self.features = images, features
        self.labels, self.num_classes = images.labels, images.num_classes

    def __len__(self) -> int:
        return len(self.images)

    def photo(self, index: int) -> torch.Tensor:
        """The image behind item ``index`` (for an augmented view the cache does not hold)."""
        return self.images.photo(index)

    def __getitems__(self, indices) -> dict:
        index = np.asarray(indices, dtype=np.int64)
        view, photo = np.divmod(index, len(self.images.split))
        first_global, first_regions = self.features[0]
        globals_ = np.empty((index.size, *first_global.shape[1:]), first_global.dtype)
        regions = np.empty((index.size, *first_regions.shape[1:]), first_regions.dtype)
        for v in np.unique(view):  # a batch spans several views: one read per view
            rows = view == v
            globals_[rows] = self.features[v][0][photo[rows]]
            regions[rows] = self.features[v][1][photo[rows]]
        return {"index": torch.from_numpy(index), "label": self.labels[index],
                "captions": [self.images.captions(i) for i in index.tolist()],
                "global": torch.from_numpy(globals_), "regions": torch.from_numpy(regions)}

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}


class ShuffledBatches:
    """Index batches of one epoch in an order drawn from ``generator``; a last batch of one sample is
    dropped (BatchNorm and contrastive losses need two). The order is drawn when it is made."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator):
        order = torch.randperm(count, generator=generator)
        self.batches = [order[start:start + batch_size].tolist() for start in range(0, count, batch_size)]
        self.batches = [batch for batch in self.batches if len(batch) > 1]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_batch_sampler(dataset, batch_size: int, generator: torch.Generator):
    """The batch sampler of one training epoch (the one place to swap in another sampler)."""
    return ShuffledBatches(len(dataset), batch_size, generator)


def make_loader(dataset, batch_sampler, num_workers: int = 0, device=None) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in the batches of ``batch_sampler`` (pinned memory on CUDA)."""
    pin = device is not None and torch.device(device).type == "cuda"
    if isinstance(dataset, FeatureViews):
        num_workers = 0  # reading mapped rows is cheap, and a worker would get a pickled (in-memory) copy
    # Its own generator: the loader's base seed must not draw from the global RNG that dropout uses
    # (items are random only through their own seeds).
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_batch,
                      pin_memory=pin, generator=torch.Generator().manual_seed(0))


def sample_captions(captions, generator: torch.Generator) -> list[str]:
    """One caption per photo, drawn from its captions with ``generator``."""
    draws = torch.rand(len(captions), generator=generator)
    return [texts[int(u * len(texts))] for texts, u in zip(captions, draws.tolist())]
