"""Descriptions of a folder's photos: a JSON Lines file, one ``{"image": PATH, "caption": TEXT}`` per line.

``PATH`` is the photo's path below the folder (``alice/1.jpg``). ``tgfr embed --captions FILE``
reads this format, and a gallery folder describes its faces in ``captions.jsonl``.
"""
from __future__ import annotations

import json
from pathlib import Path

CAPTIONS_FILE = "captions.jsonl"


def read_captions(path, names) -> list[str | None]:
    """The caption of each photo in ``names`` (paths below the folder; None where the file gives none).

    A ValueError names the file and line of a malformed line, an empty caption, a photo the folder
    does not hold or one described twice.
    """
    path = Path(path)
    known = set(names)
    captions: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the captions file {path}: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} is not JSON: {error}") from error
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) \
                or not isinstance(entry.get("caption"), str):
            raise ValueError(f'{where}: expected {{"image": "path/below/the/folder.jpg", "caption": "text"}}')
        name, caption = Path(entry["image"]).as_posix(), entry["caption"]
        if name not in known:
            raise ValueError(f"{where}: no image {entry['image']!r} in the folder")
        if name in captions:
            raise ValueError(f"{where}: image {entry['image']!r} is described twice")
        if not caption.strip():
            raise ValueError(f"{where}: the caption of {entry['image']!r} is empty")
        captions[name] = caption
    return [captions.get(name) for name in names]


def require_captions(names, captions, mode: str, remedy: str) -> list[str]:
    """``captions`` when every photo of ``names`` has one; a ValueError saying how many lack one otherwise."""
    undescribed = [name for name, caption in zip(names, captions or [None] * len(names)) if caption is None]
    if undescribed:
        raise ValueError(f"mode {mode!r} needs a description of every photo: {len(undescribed)} of {len(names)} "
                         f"have none (e.g. {undescribed[0]}); {remedy}")
    return list(captions)
