"""Atomic training checkpoints and ``load_model``.

A checkpoint is one ``torch.save`` file of plain containers and tensors (loadable
with ``weights_only=True``):

``{"format": 1, "config": nested dict, "vocabulary": [words] | None, "num_classes": int,
"model": state dict, "progress": {"step": name, "epochs_done": int},
"trainer": {"heads": state dict, "optimizer": state dict} | None}``

``trainer`` holds the unfinished step's loss heads and optimizer so that a resumed
run continues exactly where the last finished epoch left it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import save_tensors

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def checkpoint_path(checkpoint_or_out_dir) -> Path:
    path = Path(checkpoint_or_out_dir)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` atomically: a killed run leaves the previous checkpoint intact."""
    save_tensors({"format": FORMAT_VERSION, **state}, path)


def read_checkpoint(checkpoint_or_out_dir) -> dict:
    path = checkpoint_path(checkpoint_or_out_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path} (expected a training output directory or a {CHECKPOINT_NAME})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a tgfr training checkpoint (format {FORMAT_VERSION})")
    return state


def load_model(checkpoint_or_out_dir, device="cpu"):
    """The trained ``TGFRModel`` of a checkpoint (or training output directory), in eval mode."""
    from ..models.text import Vocabulary
    from ..models.tgfr import TGFRModel
    from .config import config_from_dict

    state = read_checkpoint(checkpoint_or_out_dir)
    config = config_from_dict(state["config"])
    # the trained weights replace the pretrained ones: do not read the original image checkpoint again
    config.model.image_weights = None
    vocabulary = Vocabulary(state["vocabulary"]) if state["vocabulary"] is not None else None
    model = TGFRModel(config.model, vocabulary)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
