"""Galleries of known faces: a folder's photos, their identities and descriptions, embedded once and cached.

A gallery is a directory of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, searched
recursively); a photo's identity is its folder below the gallery root, or its file stem when
it lies in the root. An index holds the photos' embeddings in one mode with their names,
identities and thumbnails; it is computed once per (model weights, mode, gallery contents)
and saved in the model's ``index/`` folder, so later queries only embed the probe.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import read_cache, save_tensors
from ..data.images import image_files, read_pixels
from .captions import CAPTIONS_FILE, read_captions, require_captions

INDEX_DIR = "index"


@dataclass
class GalleryIndex:
    embeddings: torch.Tensor  # [G, D], unit norm
    names: list[str]
    identities: list[str]
    images: np.ndarray | None = None  # uint8 thumbnails [G, S, S, 3]


@dataclass(frozen=True)
class Match:
    """One gallery face: its place in the ranking, identity, name (path in the gallery) and cosine score."""

    rank: int
    identity: str
    name: str
    score: float
    index: int  # row in the gallery index (its thumbnail: ``images[index]``)


def rank_gallery(index: GalleryIndex, query: torch.Tensor, top_k: int) -> list[Match]:
    """The ``top_k`` faces of ``index`` most similar (cosine) to the unit ``query`` [1, D] or [D], best first."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_k > len(index.names):
        raise ValueError(f"top_k {top_k} is larger than the gallery ({len(index.names)} faces)")
    scores = index.embeddings @ query.reshape(-1).to(index.embeddings)
    best = torch.topk(scores, top_k)
    return [Match(rank, index.identities[i], index.names[i], float(scores[i]), i)
            for rank, i in enumerate(best.indices.tolist(), start=1)]


def gallery_entries(directory) -> tuple[list[Path], list[str], list[str]]:
    """The image files of a gallery directory, their names (paths below it) and identities."""
    root = Path(directory)
    files = image_files(root, "gallery")
    names = [p.relative_to(root).as_posix() for p in files]
    identities = [p.parent.name if p.parent != root else p.stem for p in files]
    return files, names, identities


def files_fingerprint(files) -> list:
    """What changes when a file is replaced: its resolved path, size and modification time."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cached_index(cache_dir, fingerprint, build: Callable[[], GalleryIndex]) -> tuple[GalleryIndex, Path, bool]:
    """The index keyed by ``fingerprint`` (JSON data naming the model and the gallery's contents), read
    from ``cache_dir`` or built by ``build()`` and saved there. Returns ``(index, its file, whether reused)``."""
    key = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"gallery_{key}.pt"
    state = read_cache(path, ("embeddings", "names", "identities", "images"))
    if state is not None:
        return GalleryIndex(state["embeddings"], state["names"], state["identities"], state["images"].numpy()), \
            path, True
    index = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({"embeddings": index.embeddings, "names": index.names, "identities": index.identities,
                  "images": torch.from_numpy(np.ascontiguousarray(index.images))}, path)
    return index, path, False


def write_gallery(records, root) -> Path:
    """Write photos (:class:`tgfr.data.FaceRecord` with pixels, e.g. a run's test split) as a gallery folder:
    ``personID/NNN.png`` and ``captions.jsonl`` with each photo's first caption. Returns ``root``."""
    from PIL import Image

    root = Path(root)
    lines = []
    for number, record in enumerate(records):
        name = f"person{record.identity:03d}/{number:03d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(record.load_image()).save(root / name)
        lines.append(json.dumps({"image": name, "caption": record.captions[0]}))
    (root / CAPTIONS_FILE).write_text("\n".join(lines) + "\n")
    return root


class Gallery:
    """A folder of known faces for a :class:`tgfr.inference.FaceRecognizer`.

    Descriptions of the photos, needed to identify in a fused mode, come from the folder's
    ``captions.jsonl`` (:mod:`tgfr.inference.captions`).
    """

    def __init__(self, recognizer, directory):
        self.recognizer = recognizer
        self.directory = Path(directory)
        self.files, self.names, self.identities = gallery_entries(self.directory)
        captions_file = self.directory / CAPTIONS_FILE
        self.captions = read_captions(captions_file, self.names) if captions_file.is_file() else None
        self._indexes: dict[str, GalleryIndex] = {}

    def __len__(self) -> int:
        return len(self.files)

    def index(self, mode: str) -> GalleryIndex:
        """The gallery embedded in ``mode``, from the cache or computed and cached."""
        if mode in self._indexes:
            return self._indexes[mode]
        captions = None
        if mode != "image":
            captions = require_captions(self.names, self.captions, mode,
                                        f"describe the gallery's photos in {self.directory / CAPTIONS_FILE}, or "
                                        f"leave the probe's description out to identify by the face alone")
        recognizer = self.recognizer

        def build() -> GalleryIndex:
            pixels = [read_pixels(path, recognizer.image_size) for path in self.files]
            return GalleryIndex(recognizer.embed(pixels, captions, mode), self.names, self.identities,
                                np.stack(pixels))

        fingerprint = [recognizer.weights_sha256, mode, files_fingerprint(self.files), captions]
        self._indexes[mode] = cached_index(recognizer.directory / INDEX_DIR, fingerprint, build)[0]
        return self._indexes[mode]
