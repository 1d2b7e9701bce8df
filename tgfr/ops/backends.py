"""Which implementations exist, and which one ``backend="auto"`` picks.

Every fused backend is a module exposing the same four functions (inputs are
contiguous, ``word_mask`` is always a bool ``[B_t, T]`` tensor and ``class_ids``
always an int64 ``[B]`` tensor, distinct ids meaning "no masking"):

* ``word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps) -> scores``
* ``word_region_scores_backward(grad_scores, words, regions, word_mask, scores, gamma1, gamma2, eps)
  -> (grad_words, grad_regions)``
* ``info_nce_forward(a, b, temperature, class_ids) -> (loss, lse_rows, lse_cols)``
* ``info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols)
  -> (grad_a, grad_b, grad_temperature)``

``lse_rows``/``lse_cols`` are the log-sum-exp of each row/column of the masked
logits, in float32 (float64 for float64 inputs): all the backward needs besides
the inputs.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

REFERENCE_BACKENDS = ("reference", "vectorized")
FUSED_BACKENDS = ("cpp", "cuda", "triton")
BACKENDS = REFERENCE_BACKENDS + FUSED_BACKENDS


@functools.lru_cache(maxsize=None)
def _extension():
    try:
        return importlib.import_module("tgfr._C")
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    try:
        return importlib.import_module("tgfr.kernels")
    except ImportError:
        return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available(backend: str, device: torch.device) -> bool:
    device = torch.device(device)
    if backend in REFERENCE_BACKENDS:
        return True
    if backend == "cpp":
        return device.type == "cpu" and _extension() is not None
    if backend == "cuda":
        ext = _extension()
        return device.type == "cuda" and ext is not None and ext.built_with_cuda()
    if backend == "triton":
        kernels = _triton_kernels()
        if kernels is None or not kernels.TRITON_AVAILABLE:
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on tensors of ``device``."""
    return [b for b in BACKENDS if is_available(b, device)]


# The choice depends only on the arguments and what is installed, so torch.compile may
# evaluate it once while tracing instead of tracing the imports behind it.
@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend and check that a named one can run."""
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda":
            # Triton first: it follows the dtype (bf16/fp16 tensor cores) without a rebuild.
            order = ("triton", "cuda", "vectorized")
        else:
            order = ("cpp", "vectorized")
        return next(b for b in order if is_available(b, device))
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    if not is_available(backend, device):
        hint = {
            "cpp": "the C++ extension tgfr._C is not built (pip install -e .) or the tensors are not on the CPU",
            "cuda": "tgfr._C was built without CUDA or the tensors are not on a CUDA device",
            "triton": "triton is not installed, or the tensors are on the CPU without TRITON_INTERPRET=1",
        }.get(backend, "")
        raise RuntimeError(f"backend {backend!r} is not available for {device} tensors: {hint}")
    return backend


def kernels(backend: str):
    """The module holding the four kernel entry points of a fused backend."""
    if backend in ("cpp", "cuda"):
        return _extension()
    if backend == "triton":
        return _triton_kernels()
    raise ValueError(f"{backend!r} is not a fused backend")
