"""Which implementations exist, and which one ``backend="auto"`` picks.

Every fused backend is a module exposing the same four functions (inputs are
contiguous, ``word_mask`` is always a bool ``[B_t, T]`` tensor and ``class_ids``
always an int64 ``[M]`` tensor, the identities of ``b``'s rows, ``arange(M)``
when the caller gave none):

* ``word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps) -> scores``
* ``word_region_scores_backward(grad_scores, words, regions, word_mask, gamma1, gamma2, eps)
  -> (grad_words, grad_regions)``
* ``info_nce_forward(a, b, temperature, class_ids, offset, symmetric) -> (loss, lse_rows, lse_cols)``
* ``info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric)
  -> (grad_a, grad_b, grad_temperature)``

``a`` is ``[B, D]``, ``b`` is ``[M, D]`` and the positive of row ``i`` of ``a`` is row
``offset + i`` of ``b``. ``lse_rows`` (``[B]``) and ``lse_cols`` (``[B]``, or ``[0]``
when not symmetric) are the log-sum-exps of the rows and of the positives' columns
of the masked logits, in :func:`accumulation_dtype`: all the backward needs besides
the inputs. The temperature comes in the same dtype.

A module may also define ``unsupported_reason(op, dtype, sizes) -> str | None`` with
``op`` ``"word_region"`` (``sizes`` ``T``, ``N``, ``D``) or ``"info_nce"`` (``sizes``
``D``): ``"auto"`` skips the backend when it returns a reason, and naming the backend
raises ``ValueError`` with it.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings

import torch

from .validation import accumulation_dtype, triton_interpreted  # noqa: F401 (part of this module's API)

REFERENCE_BACKENDS = ("reference", "vectorized")
FUSED_BACKENDS = ("cpp", "cuda", "triton")
BACKENDS = REFERENCE_BACKENDS + FUSED_BACKENDS


@functools.cache
def _import(module_name: str):
    """``(module, None)``, or ``(None, why)`` when the import failed."""
    try:
        return importlib.import_module(module_name), None
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"


def _extension():
    return _import("tgfr._C")[0]


def _triton_kernels():
    kernels_module = _import("tgfr.kernels.backend")[0]
    return kernels_module if kernels_module is not None and kernels_module.TRITON_AVAILABLE else None


def extension_import_error() -> str | None:
    """Why ``tgfr._C`` (the ``cpp`` and ``cuda`` backends) did not import, or None if it did."""
    return _import("tgfr._C")[1]


def triton_import_error() -> str | None:
    """Why the Triton kernels did not import, or None if they did (or triton is not installed)."""
    return _import("tgfr.kernels.backend")[1]


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` tensors at all (whatever the op), or None."""
    if backend in REFERENCE_BACKENDS:
        return None
    if backend in ("cpp", "cuda"):
        error = extension_import_error()
        if error is not None:
            return f"the C++ extension tgfr._C did not import ({error}); rebuild it with pip install -e ."
        if backend == "cpp" and device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, these are on {device}"
        if backend == "cuda":
            if device.type != "cuda":
                return f"the cuda backend runs on CUDA tensors, these are on {device}"
            if not _extension().built_with_cuda():
                return "tgfr._C was built without CUDA (torch without CUDA, or no CUDA toolkit at build time)"
        return None
    if backend == "triton":
        error = triton_import_error()
        if error is not None:
            return f"the Triton kernels tgfr.kernels did not import ({error})"
        if _triton_kernels() is None:
            return "triton is not installed (pip install 'tgfr[triton]')"
        if device.type == "cpu" and not triton_interpreted():
            return "triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"triton does not run on {device}"
        return None
    raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")


def is_available(backend: str, device) -> bool:
    return _unavailable_reason(backend, torch.device(device)) is None


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on tensors of ``device``."""
    return [b for b in BACKENDS if is_available(b, device)]


def _unsupported_reason(backend: str, op: str, dtype: torch.dtype, sizes: dict) -> str | None:
    """Why an available fused backend cannot run this op at this dtype and these sizes (contract of
    ``unsupported_reason`` in the module docstring), or None."""
    if backend in REFERENCE_BACKENDS:
        return None
    module = kernels(backend)
    check = getattr(module, "unsupported_reason", None)
    return None if check is None else check(op, dtype, sizes)


@functools.cache
def _warn_fallback(backend: str, reason: str, fallback: str) -> None:
    # once per (backend, reason): a training loop calls the op thousands of times
    warnings.warn(f'backend="auto" skips {backend!r}, using {fallback!r}: {reason}', RuntimeWarning, stacklevel=4)


# Whether "auto" warns when it passes over a backend: only when that backend should have been
# there (built, or installed) and is broken, never for an optional backend that is simply absent.
def _broken(backend: str) -> bool:
    if backend in ("cpp", "cuda"):
        error = extension_import_error()
        return error is not None and "No module named 'tgfr._C'" not in error
    if backend == "triton":
        return triton_import_error() is not None
    return False


# The choice depends only on the arguments and what is installed, so torch.compile may
# evaluate it once while tracing instead of tracing the imports behind it.
@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device, op: str = "", dtype: torch.dtype = torch.float32, **sizes) -> str:
    """Turn ``"auto"`` into a concrete backend and check that a named one can run ``op``.

    ``"auto"`` takes the first backend of its order that is available and supports the op
    (warning once when it passes over a fused backend that failed to import or declined the
    shape); a named backend that cannot run raises with the reason.
    """
    device = torch.device(device)
    if backend == "auto":
        if device.type == "cuda":
            # Triton first: it follows the dtype (bf16/fp16 tensor cores) without a rebuild.
            order = ("triton", "cuda", "vectorized")
        else:
            order = ("cpp", "vectorized")
        skipped = []
        for candidate in order:
            reason = _unavailable_reason(candidate, device)
            if reason is None and op:
                reason = _unsupported_reason(candidate, op, dtype, sizes)
                if reason is not None:
                    skipped.append((candidate, reason))
            elif reason is not None and _broken(candidate):
                skipped.append((candidate, reason))
            if reason is None:
                for skipped_backend, why in skipped:
                    _warn_fallback(skipped_backend, why, candidate)
                return candidate
        raise AssertionError("vectorized is always available")  # pragma: no cover
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    reason = _unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} is not available for {device} tensors: {reason}")
    if op:
        reason = _unsupported_reason(backend, op, dtype, sizes)
        if reason is not None:
            raise ValueError(f"backend {backend!r} does not support this {op} call: {reason}")
    return backend


def kernels(backend: str):
    """The module holding the four kernel entry points of a fused backend."""
    if backend in ("cpp", "cuda"):
        return _extension()
    if backend == "triton":
        return _triton_kernels()
    raise ValueError(f"{backend!r} is not a fused backend")
