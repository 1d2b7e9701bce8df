"""TGFR checkpoints (the engine's format, :mod:`tgfr.engine.checkpoint`) and ``load_model``.

Besides the engine's keys, a ``tgfr train`` checkpoint holds ``"model"`` (the state dict),
``"vocabulary"`` (the BiLSTM's words, or None) and ``"num_classes"``; its ``"config"`` is the
config with the face-encoder architecture read from pretrained weights filled in, so that it
alone rebuilds the model.
"""
from __future__ import annotations

import dataclasses

from ..engine import load_weights
from ..engine import read_checkpoint as read_run_checkpoint
from ..models.text import Vocabulary
from ..models.tgfr import TGFRModel
from .config import config_from_dict

KIND, COMMAND = "tgfr", "tgfr train"


def read_checkpoint(checkpoint_or_out_dir) -> dict:
    """The checkpoint of a ``tgfr train`` run directory (or checkpoint file)."""
    return read_run_checkpoint(checkpoint_or_out_dir, KIND, COMMAND)


def model_from_checkpoint(state: dict, where) -> TGFRModel:
    """The ``TGFRModel`` of the checkpoint ``state`` (read from ``where``) with its weights; a
    :class:`tgfr.engine.CheckpointError` when they do not fit the model its config describes."""
    config = config_from_dict(state["config"])
    vocabulary = Vocabulary(state["vocabulary"]) if state.get("vocabulary") is not None else None
    # the trained weights replace the pretrained ones: do not read the original image checkpoint again
    model = TGFRModel(dataclasses.replace(config.model, image_weights=None), vocabulary)
    load_weights(model, state, where)
    return model


def load_model(checkpoint_or_out_dir, device="cpu") -> TGFRModel:
    """The trained ``TGFRModel`` of a checkpoint (or training output directory), in eval mode."""
    model = model_from_checkpoint(read_checkpoint(checkpoint_or_out_dir), checkpoint_or_out_dir)
    return model.to(device).eval()
