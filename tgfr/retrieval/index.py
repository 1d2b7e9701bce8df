"""X-Modal gallery indexes and the retrieval result grid.

A gallery is the embedded one (the test people's photos and their after-change photos,
none seen in training) or a directory of images (:func:`tgfr.inference.gallery.gallery_entries`).
Its embeddings are computed once per (checkpoint, gallery contents) and saved under
``RUN/index/``; later queries reuse them.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.images import read_pixels
from ..inference.gallery import INDEX_DIR, GalleryIndex, cached_index, files_fingerprint, gallery_entries
from .data import images_to_tensor

EMBEDDED = "embedded"


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


def _read_gallery(files, names, identities, size: int, skip_bad: bool, skipped: list[str]):
    """The photos of a gallery folder that decode (with their names and identities); an undecodable one is
    a ValueError naming it, or with ``skip_bad`` left out and listed in ``skipped``."""
    kept = []
    for path, name, identity in zip(files, names, identities):
        try:
            kept.append((read_pixels(path, size), name, identity))
        except ValueError as error:
            if not skip_bad:
                raise ValueError(f"gallery photo {error} (--skip-bad leaves such photos out)") from None
            skipped.append(name)
    if not kept:
        raise ValueError(f"no photo of the gallery could be read (skipped {len(skipped)})")
    images, names, identities = zip(*kept)
    return np.stack(images), list(names), list(identities)


def gallery_index(run_dir, model, config, gallery: str | Path | None, splits_fn, skip_bad: bool = False,
                  skipped: list[str] | None = None) -> tuple[GalleryIndex, Path, bool]:
    """The X-Modal index of ``gallery`` (None: the embedded one), read from ``RUN/index`` or built and saved
    there. Returns ``(index, its file, whether it was reused)``. A gallery photo that does not decode is a
    ValueError, or with ``skip_bad`` left out of the index and its name added to ``skipped``."""
    run_dir = Path(run_dir)
    stat = (run_dir / "checkpoint.pt").stat()
    if gallery is None:
        description = [EMBEDDED]

        def build():
            images, names, identities = embedded_gallery(splits_fn())
            return GalleryIndex(_embed(model.eval(), images), names, identities, images)
    else:
        files, names, identities = gallery_entries(gallery)
        description = [*files_fingerprint(files), *(["skip_bad"] if skip_bad else [])]

        def build():
            images, kept, kept_identities = _read_gallery(files, names, identities, config.image_size, skip_bad,
                                                          skipped if skipped is not None else [])
            return GalleryIndex(_embed(model.eval(), images), kept, kept_identities, images)
    return cached_index(run_dir / INDEX_DIR, [stat.st_size, stat.st_mtime_ns, description], build)


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
    grid.save(out)
    return out
