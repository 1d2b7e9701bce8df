"""TGFR checkpoints (the engine's format, :mod:`tgfr.engine.checkpoint`) and ``load_model``.

Besides the engine's keys, a ``tgfr train`` checkpoint holds ``"model"`` (the state dict),
``"vocabulary"`` (the BiLSTM's words, or None) and ``"num_classes"``; its ``"config"`` is the
config with the face-encoder architecture read from pretrained weights filled in, so that it
alone rebuilds the model.
"""
from __future__ import annotations

from ..engine import read_checkpoint as read_run_checkpoint
from ..models.text import Vocabulary
from ..models.tgfr import TGFRModel
from .config import config_from_dict

KIND, COMMAND = "tgfr", "tgfr train"


def read_checkpoint(checkpoint_or_out_dir) -> dict:
    """The checkpoint of a ``tgfr train`` run directory (or checkpoint file)."""
    return read_run_checkpoint(checkpoint_or_out_dir, KIND, COMMAND)


def load_model(checkpoint_or_out_dir, device="cpu") -> TGFRModel:
    """The trained ``TGFRModel`` of a checkpoint (or training output directory), in eval mode."""
    state = read_checkpoint(checkpoint_or_out_dir)
    config = config_from_dict(state["config"])
    # the trained weights replace the pretrained ones: do not read the original image checkpoint again
    config.model.image_weights = None
    vocabulary = Vocabulary(state["vocabulary"]) if state["vocabulary"] is not None else None
    model = TGFRModel(config.model, vocabulary)
    model.load_state_dict(state["model"])
    return model.to(device).eval()
