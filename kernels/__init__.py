"""Triton kernels of tgfr (installed as ``tgfr.kernels``).

On a CUDA device they compile for the GPU; on the CPU they run only under
``TRITON_INTERPRET=1`` (the test suite does this at small shapes).
"""
try:
    import triton  # noqa: F401

    TRITON_AVAILABLE = True
except ImportError:  # triton is an optional dependency
    TRITON_AVAILABLE = False

if TRITON_AVAILABLE:
    from ._common import set_allow_tf32
    from .info_nce import info_nce_backward, info_nce_forward
    from .word_region import word_region_scores_backward, word_region_scores_forward
