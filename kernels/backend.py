"""The Triton backend of tgfr: its four entry points and what it declines (``tgfr.kernels.backend``).

``kernels/`` is installed as ``tgfr.kernels`` and has no ``__init__.py``: a top-level ``kernels``
package of ours would shadow the ``kernels`` distribution that ``transformers`` imports.

On a CUDA device they compile for the GPU; on the CPU they run only under
``TRITON_INTERPRET=1`` (the test suite does this at small shapes). Without triton this
module does not import, which dispatch reports as "not installed" (``tgfr.ops.backends``).
The arguments have passed the ops' checks; the host functions check only their launch limits.
"""
from __future__ import annotations

import functools

import torch
import triton

from . import info_nce, word_region
from ._common import GPU, gpu_of, set_allow_tf32
from .info_nce import info_nce_backward, info_nce_forward
from .word_region import word_region_scores_backward, word_region_scores_forward

__all__ = ["GPU", "gpu_of", "info_nce_backward", "info_nce_forward", "set_allow_tf32", "unsupported_reason",
           "word_region_scores_backward", "word_region_scores_forward"]

# float64 products of the word-region kernels compile to an MMA shape that triton 3.6
# rejects on sm_80+ ("MMAv2: fp64 don't support largeK MMA"); 3.9 compiles them (3.7
# and 3.8 are unverified, so they are declined too)
_FP64_WORD_REGION = tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 9)


def unsupported_reason(op: str, dtype: torch.dtype, sizes: dict, gpu: GPU | None = None) -> str | None:
    """Why the Triton kernels cannot run ``op`` ("word_region": sizes T, N, D; "info_nce": D)
    for ``dtype`` on ``gpu`` (default: the current CUDA device), or None when they can."""
    if gpu is None:
        if not torch.cuda.is_available():
            return None  # the interpreter takes any shape
        gpu = gpu_of(torch.empty(0, device="cuda"))
        if gpu is None:
            return None
    return _unsupported_reason(op, dtype, tuple(sorted(sizes.items())), gpu)


@functools.cache  # dispatch asks on every call; the answer depends on these only
def _unsupported_reason(op: str, dtype: torch.dtype, sizes: tuple, gpu: GPU) -> str | None:
    sizes = dict(sizes)
    meta = dict(dtype=dtype, device="meta")
    try:
        if op == "word_region":
            if dtype == torch.float64 and not _FP64_WORD_REGION:
                return f"float64 word_region needs triton >= 3.9 (installed: {triton.__version__})"
            words = torch.empty(1, sizes["T"], sizes["D"], **meta)
            regions = torch.empty(1, sizes["N"], sizes["D"], **meta)
            for kernel in ("forward", "backward"):
                word_region._launch_config(words, regions, kernel, gpu=gpu)
        elif op == "info_nce":
            for kernel in ("lse", "grad"):
                info_nce._launch_config(torch.empty(1, sizes["D"], **meta), kernel, gpu=gpu)
        else:
            raise ValueError(f"unknown op {op!r}; expected 'word_region' or 'info_nce'")
    except ValueError as error:
        if "unknown op" in str(error):
            raise
        return str(error)
    return None
