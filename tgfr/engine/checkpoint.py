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


class CheckpointError(ValueError):
    """A path that holds no checkpoint of the run asked for: no run there, a damaged file, a file tgfr did
    not write, or a run of another command."""


def checkpoint_path(checkpoint_or_run_dir) -> Path:
    path = Path(checkpoint_or_run_dir)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically: a killed run leaves the previous checkpoint intact."""
    save_tensors({"format": FORMAT_VERSION, **state}, path)


def read_checkpoint(checkpoint_or_run_dir, kind: str, command: str) -> dict:
    """The checkpoint of a run directory (or checkpoint file) that ``command`` (``tgfr train``) wrote; a
    :class:`CheckpointError` saying why not otherwise. Only plain tensors and containers are unpickled."""
    path = checkpoint_path(checkpoint_or_run_dir)
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_or_run_dir} holds no run of '{command}' (no {CHECKPOINT_NAME})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the bytes are, they are no checkpoint of ours
        # (the loader's own message would suggest weights_only=False: unsafe for a file of unknown origin)
        raise CheckpointError(f"{path} is damaged or was not written by tgfr: it does not load as a checkpoint") \
            from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or \
            not {"kind", "config", "progress"} <= state.keys():
        raise CheckpointError(f"{path} was not written by '{command}' (it is no tgfr checkpoint of format "
                              f"{FORMAT_VERSION})")
    if state["kind"] != kind:
        other = RUN_KINDS.get(state["kind"], f"a run of kind {state['kind']!r}")
        raise CheckpointError(f"{path} is {other}, not a checkpoint of '{command}'")
    return state


def load_weights(module: torch.nn.Module, state: dict, where) -> None:
    """The weights (``state["model"]``) of a checkpoint read from ``where`` into ``module``, built from its
    config; a :class:`CheckpointError` when they do not fit it."""
    try:
        module.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:
        detail = str(error).splitlines()[0][:200]
        raise CheckpointError(f"{checkpoint_path(where)} is damaged: its weights do not fit its config ({detail})") \
            from None
