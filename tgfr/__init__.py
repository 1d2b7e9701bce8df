"""tgfr: text-guided face recognition with fused word-region and InfoNCE kernels."""
from . import ops
from .losses import InfoNCELoss, WordRegionLoss
from .ops import info_nce, word_region_loss, word_region_scores

__version__ = "0.1.0"

__all__ = ["InfoNCELoss", "WordRegionLoss", "info_nce", "ops", "word_region_loss", "word_region_scores"]
