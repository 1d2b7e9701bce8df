"""``tgfr embed``: the embeddings of a folder of photos, written as ``.npy`` or ``.safetensors``.

Rows follow the photos' paths below the folder, sorted. A ``.safetensors`` file holds the
tensor ``embeddings`` and, in its metadata, ``names`` (JSON list), ``mode`` and ``model``; an
``.npy`` file holds the array, and ``NAME.json`` beside it the same metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.images import image_files
from .captions import read_captions, require_captions

EMBEDDING_SUFFIXES = (".npy", ".safetensors")


def check_output(out) -> Path:
    out = Path(out)
    if out.suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(f"--out must end in {' or '.join(EMBEDDING_SUFFIXES)}, got {out.name!r}")
    return out


def embed_folder(recognizer, images_dir, captions_file=None, mode: str | None = None, batch_size: int = 64,
                 progress: bool = True) -> tuple[np.ndarray, list[str], str]:
    """``(embeddings [N, E] float32, photo names, mode)`` of the photos under ``images_dir``; the fused modes
    take each photo's description from ``captions_file`` (:mod:`tgfr.inference.captions`)."""
    root = Path(images_dir)
    files = image_files(root, "--images")
    names = [path.relative_to(root).as_posix() for path in files]
    captions = read_captions(captions_file, names) if captions_file is not None else None
    mode = recognizer.resolve_mode(mode, captions is not None)
    if mode != "image":
        captions = require_captions(names, captions, mode, "give them in --captions")
    embeddings = recognizer.embed(files, captions if mode != "image" else None, mode, batch_size, progress)
    return embeddings.numpy(), names, mode


def write_embeddings(out, embeddings: np.ndarray, names: list[str], mode: str, model: str) -> list[Path]:
    """Write ``embeddings`` with their row names to ``out`` (see the module doc); returns the files written."""
    out = check_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"names": names, "mode": mode, "model": model}
    if out.suffix == ".npy":
        np.save(out, embeddings)
        sidecar = out.with_suffix(".json")
        sidecar.write_text(json.dumps(metadata, indent=1) + "\n")
        return [out, sidecar]
    import torch
    from safetensors.torch import save_file

    save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(embeddings))}, str(out),
              metadata={key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()})
    return [out]
