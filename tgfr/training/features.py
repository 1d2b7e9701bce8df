"""On-disk cache of the frozen face encoder's outputs (the global feature and the regions) per quality view.

The face encoder never changes after step 0, so steps 1 and 2 read its outputs instead of
decoding and encoding photos every epoch. Each view is stored as two ``.npy`` files opened
memory-mapped (``numpy.load(mmap_mode="r")``), under::

    cache_dir/<dataset>-<split fingerprint>-<quality>-view<v>-<size>px/<encoder weights hash>/

An entry is written into a temporary directory and renamed into place, so a killed run never
leaves a half-written entry; writing a new weights hash removes the entries of the other
weights for the same photos (the cache is invalidated when the weights change).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import TrainingViews, make_loader

GLOBAL_FILE, REGIONS_FILE = "global.npy", "regions.npy"


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def split_fingerprint(views: TrainingViews, extra: dict | None = None) -> str:
    """Hash of the photos of a split (names, identities, item seed) and ``extra`` (e.g. the synthetic config)."""
    split = views.split
    content = {"names": [r.name for r in split.records], "identities": [str(r.identity) for r in split.records],
               "seed": split.seed, "extra": extra or {}}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def entry_dir(cache_dir, dataset: str, fingerprint: str, quality: str, view: int, image_size: int,
              weights: str) -> Path:
    return Path(cache_dir) / f"{dataset}-{fingerprint}-{quality}-view{view}-{image_size}px" / weights


@torch.no_grad()
def _write_entry(encoder, views: TrainingViews, view: int, path: Path, batch_size: int, num_workers: int,
                 device, progress: bool) -> None:
    """Encode one view in batches straight into memory-mapped .npy files in a temporary directory, then rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = len(views.split)
    first = view * count
    batches = [list(range(first + s, first + min(s + batch_size, count))) for s in range(0, count, batch_size)]
    loader = make_loader(views, batches, num_workers, device)
    out_global = out_regions = None
    done = 0
    for batch in tqdm(loader, total=len(batches), desc=f"encoding view {view} ({views.qualities[view]})",
                      disable=not progress, leave=False):
        feature, regions = encoder(batch["image"].to(device, non_blocking=True))
        feature, regions = feature.float().cpu().numpy(), regions.float().cpu().numpy()
        if out_global is None:
            out_global = np.lib.format.open_memmap(tmp / GLOBAL_FILE, "w+", np.float32, (count, *feature.shape[1:]))
            out_regions = np.lib.format.open_memmap(tmp / REGIONS_FILE, "w+", np.float32,
                                                    (count, *regions.shape[1:]))
        out_global[done:done + len(feature)] = feature
        out_regions[done:done + len(regions)] = regions
        done += len(feature)
    out_global.flush()
    out_regions.flush()
    del out_global, out_regions
    for stale in path.parent.glob("*"):  # other weights' features of these photos are invalid now
        if stale.is_dir() and not stale.name.startswith(".") and stale != path:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, path)
    except OSError:
        # another job sharing the cache wrote this entry meanwhile (and may be reading it): keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / REGIONS_FILE).is_file():
            raise


def cached_features(encoder, views: TrainingViews, cache_dir, dataset: str, extra: dict | None = None,
                    batch_size: int = 256, num_workers: int = 0, device="cpu",
                    progress: bool = False) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Memory-mapped ``(global, regions)`` of every view of ``views``, encoding the views not in the cache.

    Returns the per-view arrays and how many views were encoded now (0: all read from the cache).
    """
    was_training = encoder.training
    encoder.eval()
    weights = weights_hash(encoder)
    fingerprint = split_fingerprint(views, extra)
    size = views.split.image_size or int(views[0]["image"].shape[-1])  # synthetic photos come at size
    arrays, encoded = [], 0
    try:
        for view, quality in enumerate(views.qualities):
            path = entry_dir(cache_dir, dataset, fingerprint, quality, view, size, weights)
            if not (path / REGIONS_FILE).is_file():
                _write_entry(encoder, views, view, path, batch_size, num_workers, device, progress)
                encoded += 1
            arrays.append((np.load(path / GLOBAL_FILE, mmap_mode="r"), np.load(path / REGIONS_FILE, mmap_mode="r")))
    finally:
        encoder.train(was_training)
    return arrays, encoded
