"""The backends of the two ops as a table, and the dispatch that looks ``backend=`` up in it.

A backend is a record: where it runs, where its kernels live, what it computes natively,
and how to tell why it cannot run. The pure-PyTorch backends (``reference``,
``vectorized``) live in each op's module; every fused backend is a module exposing the
same four functions (inputs are contiguous, ``word_mask`` is always a bool ``[B_t, T]``
tensor and ``class_ids`` always an int64 ``[M]`` tensor, the identities of ``b``'s rows,
``arange(M)`` when the caller gave none):

* ``word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps) -> scores``
* ``word_region_scores_backward(grad_scores, words, regions, word_mask, gamma1, gamma2, eps)
  -> (grad_words, grad_regions)``
* ``info_nce_forward(a, b, temperature, class_ids, offset, symmetric) -> (loss, lse_rows, lse_cols)``
* ``info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric)
  -> (grad_a, grad_b, grad_temperature)``

``a`` is ``[B, D]``, ``b`` is ``[M, D]`` and the positive of row ``i`` of ``a`` is row
``offset + i`` of ``b``. ``scores``, ``grad_scores``, the temperature, the loss and
``lse_rows`` (``[B]``) and ``lse_cols`` (``[B]``, or ``[0]`` when not symmetric), the
log-sum-exps of the rows and of the positives' columns of the masked logits, are in
:func:`~tgfr.ops.common.accumulation_dtype`; the input gradients in the inputs' dtypes.
The arguments have passed the ops' checks (``tgfr.ops.word_region``, ``tgfr.ops.info_nce``),
which are the only ones: the kernels check nothing but their own launch limits.

A kernel module may also define ``unsupported_reason(op, dtype, sizes) -> str | None`` with
``op`` ``"word_region"`` (``sizes`` ``T``, ``N``, ``D``) or ``"info_nce"`` (``sizes``
``D``): ``"auto"`` skips the backend when it returns a reason, and naming the backend
raises ``ValueError`` with it.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

import torch

from .common import FLOAT_DTYPES, accumulation_dtype, triton_interpreted

# what a device requires of a backend's loaded kernels: None when they can run there, else why not
Requirement = Callable[[ModuleType], "str | None"]


@functools.cache
def _import(module_name: str) -> tuple[ModuleType | None, ImportError | None]:
    try:
        return importlib.import_module(module_name), None
    except ImportError as error:
        return None, error


@dataclass(frozen=True)
class Backend:
    name: str
    # the device types it runs on, each with what it requires there; None: every device
    devices: Mapping[str, Requirement | None] | None
    # the module of its four kernel entry points; None for the pure-PyTorch forms of each op's module
    module: str | None = None
    # what the module is and how to get it, for the reason it did not import
    label: str = ""
    install_hint: str = ""
    # modules whose absence means "not installed" (nothing to warn about), not "broken"
    optional: tuple[str, ...] = ()
    # input dtypes computed as they are; inputs of the other float dtypes are cast to the
    # accumulation dtype first, so that every backend accepts every float dtype
    native_dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES

    @property
    def fused(self) -> bool:
        return self.module is not None

    def kernels(self) -> ModuleType | None:
        """The module of the four kernel entry points (None if it did not import)."""
        return _import(self.module)[0] if self.fused else None

    def import_error(self) -> str | None:
        error = _import(self.module)[1] if self.fused else None
        return None if error is None else f"{type(error).__name__}: {error}"

    def broken(self) -> bool:
        """Present but failing to import (an ABI mismatch, a missing symbol): worth a warning,
        unlike an optional backend that is simply not installed."""
        error = _import(self.module)[1] if self.fused else None
        return error is not None and not (isinstance(error, ModuleNotFoundError) and error.name in self.optional)

    def unavailable_reason(self, device: torch.device) -> str | None:
        """Why it cannot run on ``device`` tensors at all (whatever the op), or None."""
        if self.devices is not None and device.type not in self.devices:
            where = " or ".join(d.upper() for d in self.devices)
            return f"the {self.name} backend runs on {where} tensors, these are on {device}"
        error = self.import_error()
        if error is not None:
            return f"{self.label} did not import ({error}); {self.install_hint}"
        requirement = None if self.devices is None else self.devices[device.type]
        return None if requirement is None else requirement(self.kernels())

    def unsupported_reason(self, op: str, dtype: torch.dtype, sizes: dict) -> str | None:
        """Why it cannot run ``op`` at this dtype and these sizes (the kernels' own hook), or None."""
        hook = getattr(self.kernels(), "unsupported_reason", None)
        return None if hook is None else hook(op, dtype, sizes)

    def native_inputs(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensors`` in a dtype it computes natively: as they are, or cast once to the accumulation dtype."""
        return tuple(x if x.dtype in self.native_dtypes else x.to(accumulation_dtype(x.dtype)) for x in tensors)


def _built_with_cuda(extension: ModuleType) -> str | None:
    if extension.built_with_cuda():
        return None
    return "tgfr._C was built without CUDA (torch without CUDA, or no CUDA toolkit at build time)"


def _interpreter(_kernels: ModuleType) -> str | None:
    return None if triton_interpreted() else "triton runs on CPU tensors only under TRITON_INTERPRET=1"


_PURE_PYTORCH_DTYPES = (torch.float32, torch.float64)
_EXTENSION = dict(module="tgfr._C", label="the C++ extension tgfr._C", install_hint="rebuild it with pip install -e .",
                  optional=("tgfr._C",))

RECORDS: dict[str, Backend] = {record.name: record for record in (
    # the published loop over captions (the ground truth), and all pairs at once
    Backend("reference", None, native_dtypes=_PURE_PYTORCH_DTYPES),
    Backend("vectorized", None, native_dtypes=_PURE_PYTORCH_DTYPES),
    # csrc/cpu/: no 16-bit arithmetic, the kernels would convert 16-bit inputs themselves
    Backend("cpp", {"cpu": None}, **_EXTENSION, native_dtypes=_PURE_PYTORCH_DTYPES),
    Backend("cuda", {"cuda": _built_with_cuda}, **_EXTENSION),
    Backend("triton", {"cuda": None, "cpu": _interpreter}, module="tgfr.kernels.backend",
            label="the Triton kernels tgfr.kernels", install_hint="pip install 'tgfr[triton]'", optional=("triton",)),
)}
BACKENDS = tuple(RECORDS)

# What "auto" tries, in order, on tensors of each device type (any other: vectorized).
# CUDA: Triton first, it follows the dtype (bf16/fp16 tensor cores) without a rebuild.
AUTO_ORDER = {"cuda": ("triton", "cuda", "vectorized"), "cpu": ("cpp", "vectorized")}
FALLBACK_ORDER = ("vectorized",)


def _record(backend: str) -> Backend:
    if not isinstance(backend, str) or backend not in RECORDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    return RECORDS[backend]


def is_available(backend: str, device) -> bool:
    return _record(backend).unavailable_reason(torch.device(device)) is None


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on tensors of ``device``."""
    return [name for name in BACKENDS if is_available(name, device)]


@functools.cache
def _warn_fallback(backend: str, reason: str, fallback: str) -> None:
    # once per (backend, reason): a training loop calls the op thousands of times
    warnings.warn(f'backend="auto" skips {backend!r}, using {fallback!r}: {reason}', RuntimeWarning, stacklevel=4)


# The choice depends only on the arguments and what is installed, so torch.compile may
# evaluate it once while tracing instead of tracing the imports behind it.
@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device, op: str = "", dtype: torch.dtype = torch.float32, **sizes) -> str:
    """Turn ``"auto"`` into a concrete backend and check that a named one can run ``op``.

    ``"auto"`` takes the first backend of :data:`AUTO_ORDER` that is available and supports
    the op (warning once when it passes over a fused backend that is broken or declined the
    shape); a named backend that cannot run raises with the reason.
    """
    device = torch.device(device)
    if backend == "auto":
        skipped = []
        for record in map(_record, AUTO_ORDER.get(device.type, FALLBACK_ORDER)):
            reason = record.unavailable_reason(device)
            if reason is None and op:
                reason = record.unsupported_reason(op, dtype, sizes)
                if reason is not None:
                    skipped.append((record.name, reason))
            elif reason is not None and record.broken():
                skipped.append((record.name, reason))
            if reason is None:
                for skipped_backend, why in skipped:
                    _warn_fallback(skipped_backend, why, record.name)
                return record.name
        raise AssertionError("vectorized is always available")  # pragma: no cover
    record = _record(backend)
    reason = record.unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} is not available for {device} tensors: {reason}")
    if op:
        reason = record.unsupported_reason(op, dtype, sizes)
        if reason is not None:
            raise ValueError(f"backend {backend!r} does not support this {op} call: {reason}")
    return backend
