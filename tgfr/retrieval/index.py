"""Gallery index and single-query retrieval with a result grid.

A gallery is the embedded one (the test people's photos and their after-change photos,
none seen in training) or a directory of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``,
searched recursively; a file's identity is its folder below the gallery root, or its
file stem when it lies in the root). Its embeddings are computed once per (checkpoint,
gallery contents) and saved under ``RUN/index/``; later queries reuse them.
"""
from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..atomic import save_tensors
from .data import images_to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
EMBEDDED = "embedded"


@dataclass
class GalleryIndex:
    embeddings: torch.Tensor  # [G, D], unit norm
    names: list[str]
    identities: list[str]
    images: np.ndarray | None = None  # uint8 thumbnails [G, S, S, 3]


def load_image(path, size: int) -> np.ndarray:
    """An image file as uint8 [size, size, 3]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
    except OSError as error:
        raise ValueError(f"{path} is not a readable image: {error}") from error


def _gallery_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"gallery {directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"gallery {directory} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def embedded_gallery(splits) -> tuple[np.ndarray, list[str], list[str]]:
    """The test people's photos and after-change photos, with names and identities."""
    faces, changes = splits["test"].faces, splits["test"].changes
    source = splits["test"].source
    names = [f"{source}/{int(k):06d}_{i}" for i, k in enumerate(faces.identities)]
    names += [f"{source}/{int(k):06d}_after_{i}" for i, k in enumerate(changes.identities)]
    identities = [f"{int(k):06d}" for k in faces.identities] + [f"{int(k):06d}" for k in changes.identities]
    return np.concatenate([faces.images, changes.target]), names, identities


@torch.no_grad()
def _embed(model, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model.embed_faces(images_to_tensor(images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)])


def gallery_index(run_dir, model, config, gallery: str | Path | None, splits_fn) -> tuple[GalleryIndex, Path, bool]:
    """The index of ``gallery`` (None: the embedded one), read from ``RUN/index`` or built and saved there.

    Returns ``(index, its file, whether it was reused)``.
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    stat = checkpoint.stat()
    if gallery is None:
        description, files = [EMBEDDED], None
    else:
        files = _gallery_files(Path(gallery))
        description = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(json.dumps([stat.st_size, stat.st_mtime_ns, description]).encode()).hexdigest()[:16]
    path = run_dir / "index" / f"gallery_{key}.pt"
    size = config.image_size
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return GalleryIndex(state["embeddings"], state["names"], state["identities"], state["images"].numpy()), \
            path, True
    if files is None:
        images, names, identities = embedded_gallery(splits_fn())
    else:
        root = Path(gallery)
        images = np.stack([load_image(p, size) for p in files])
        names = [str(p.relative_to(root)) for p in files]
        identities = [p.parent.name if p.parent != root else p.stem for p in files]
    index = GalleryIndex(_embed(model.eval(), images), names, identities, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({"embeddings": index.embeddings, "names": names, "identities": identities,
                  "images": torch.from_numpy(np.ascontiguousarray(images))}, path)
    return index, path, False


def draw_grid(query_text: str, query_image: np.ndarray | None, index: GalleryIndex, ranked: list[int],
              scores: list[float], match: str | None, out, tile: int = 112) -> Path:
    """Query (text, and image when given) then the top-k, the correct match framed green (others gray)."""
    label_height, columns = 48, len(ranked) + 1
    grid = Image.new("RGB", (columns * (tile + 8) + 8, tile + label_height + 16), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    x = 8
    if query_image is not None:
        grid.paste(Image.fromarray(query_image).resize((tile, tile)), (x, 8))
        caption_y = tile + 10
    else:
        caption_y = 8
    wrapped = textwrap.wrap(query_text, 18)
    max_lines = max(1, (tile + label_height + 8 - caption_y) // 11)
    draw.multiline_text((x, caption_y), "\n".join(wrapped[:max_lines]), fill=(0, 0, 160), spacing=1)
    for rank, (item, score) in enumerate(zip(ranked, scores), start=1):
        x = 8 + rank * (tile + 8)
        correct = match is not None and match in (index.identities[item], index.names[item])
        draw.rectangle([x - 4, 4, x + tile + 3, tile + 11], fill=(20, 170, 40) if correct else (200, 200, 200))
        grid.paste(Image.fromarray(index.images[item]).resize((tile, tile)), (x, 8))
        label = f"#{rank}  id {index.identities[item]}\n{score:.3f}" + (" match" if correct else "")
        draw.multiline_text((x, tile + 14), label, fill=(0, 0, 0), spacing=1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
