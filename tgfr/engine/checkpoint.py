"""The files of a run directory, and its checkpoint.

Every command that trains writes the same files into its run directory (``--out``):

* ``config.yaml``: the config of the run, which ``--config`` reads back to train the same run again;
* ``checkpoint.pt``: rewritten atomically after every epoch (a killed run leaves the previous one);
* ``log.jsonl``: one JSON line per finished epoch;

plus the command's own files (``split.json``, ``features/``, the caches of X-Modal). A checkpoint
is one ``torch.save`` file of plain containers and tensors, loadable with ``weights_only=True``::

    {"format": 2, "kind": "tgfr" | "xmodal", "config": nested dict,
     "progress": {"step": stage name, "epochs_done": int},
     "trainer": the unfinished stage's state (optimizer, loss heads) | None,
     ...: what the command keeps besides (the model's state dict, ...)}
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import save_tensors

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
LOG_NAME = "log.jsonl"
FORMAT_VERSION = 2
# what each kind of run is, for the message when one is given where another is expected
RUN_KINDS = {"tgfr": "a TGFR training run ('tgfr train')", "xmodal": "an X-Modal retrieval run ('tgfr xmodal train')"}


def checkpoint_path(checkpoint_or_run_dir) -> Path:
    path = Path(checkpoint_or_run_dir)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically: a killed run leaves the previous checkpoint intact."""
    save_tensors({"format": FORMAT_VERSION, **state}, path)


def read_checkpoint(checkpoint_or_run_dir, kind: str, command: str) -> dict:
    """The checkpoint of a run directory (or checkpoint file) that ``command`` (``tgfr train``) wrote."""
    path = checkpoint_path(checkpoint_or_run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected the --out directory of '{command}' "
                                f"or its {CHECKPOINT_NAME})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or (state.get("format"), state.get("kind")) != (FORMAT_VERSION, kind):
        other = RUN_KINDS.get(state.get("kind")) if isinstance(state, dict) else None
        if other is not None:
            raise ValueError(f"{path} is {other}, not a checkpoint of '{command}'")
        raise ValueError(f"{path} is not a checkpoint of '{command}' (format {FORMAT_VERSION})")
    return state
