"""Files written whole or not at all: checkpoints, caches, splits and reports.

A reader (a resumed run, another rank, a second job sharing a cache) sees the previous file or the
complete new one, never a part: the data go to a temporary file beside the target, are flushed to
disk, and the temporary file is renamed over the target. The temporary name carries the process id,
so several processes writing the same path at once (every rank of a torchrun job, two jobs on one
cache) do not rename each other's files away; the last rename wins.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch


def write_file(path, write: Callable[[IO[bytes]], object]) -> Path:
    """Atomically replace ``path`` with what ``write(f)`` writes to the binary file ``f``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return write_file(path, lambda f: f.write(text.encode("utf-8")))


def save_tensors(obj, path) -> Path:
    """Atomically replace ``path`` with ``torch.save(obj)`` (read back with ``weights_only=True``)."""
    return write_file(path, lambda f: torch.save(obj, f))


def read_cache(path, keys) -> dict | None:
    """What ``save_tensors`` wrote to the cache file ``path``, or None when there is none or it cannot be
    used (damaged, or without one of ``keys``): a cache is rebuilt then, never trusted or fatal."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever is wrong with the bytes, recomputing replaces them
        return None
    return state if isinstance(state, dict) and set(keys) <= state.keys() else None
