"""The two hot ops of TGFR training, each with pure-PyTorch references and fused backends.

Each op lives in one module (``word_region``, ``info_nce``): its argument checks, its
pure-PyTorch forms, its custom op and its public functions. ``common`` holds what they
share, ``backends`` the table of backends and the dispatch, ``distributed`` the
process-group forms.
"""
from .backends import BACKENDS, available_backends
from .common import set_value_checks
from .info_nce import info_nce
from .word_region import word_region_loss, word_region_scores

__all__ = [
    "BACKENDS",
    "available_backends",
    "info_nce",
    "set_value_checks",
    "word_region_loss",
    "word_region_scores",
]
