"""The two hot ops of TGFR training, each with a pure-PyTorch reference and fused backends."""
from .backends import BACKENDS, available_backends
from .info_nce import info_nce
from .validation import set_value_checks
from .word_region import word_region_loss, word_region_scores

__all__ = [
    "BACKENDS",
    "available_backends",
    "info_nce",
    "set_value_checks",
    "word_region_loss",
    "word_region_scores",
]
