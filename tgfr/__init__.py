"""tgfr: text-guided face recognition with fused word-region and InfoNCE kernels."""
from . import ops
from .losses import InfoNCELoss, WordRegionLoss
from .ops import info_nce, word_region_loss, word_region_scores

__version__ = "0.1.0"

__all__ = ["InfoNCELoss", "WordRegionLoss", "info_nce", "load", "ops", "word_region_loss", "word_region_scores"]


def __getattr__(name):
    # tgfr.load needs the application (models, data, safetensors): imported on first use, so that
    # ``import tgfr`` stays as light as the ops
    if name == "load":
        from .inference import load

        return load
    raise AttributeError(f"module 'tgfr' has no attribute {name!r}")
