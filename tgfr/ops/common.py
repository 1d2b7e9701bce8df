"""What both ops share: the argument checks, the dtype rule, the value-check switch, the
masked cross-entropy. A leaf: it imports nothing of tgfr, so the Triton host code
(``tgfr.kernels``) may import it without a cycle.

Argument checks read only shapes, dtypes, devices and Python values, so they run on
every call, also while ``torch.compile`` traces with fake tensors. Value checks (NaN/Inf,
empty captions, the temperature's sign) read the data, so they run only on real
tensors, inside the ops' eager implementations. On the CPU they raise ``ValueError``
at once; on CUDA they are asynchronous device asserts (``torch._assert_async``) that
never stall the step: a failure surfaces as a CUDA error at the next synchronisation.
``set_value_checks(False)`` or ``TGFR_VALUE_CHECKS=0`` turns them off.

The dtype rule, for every backend on every device: inputs may be float16, bfloat16,
float32 or float64; they are computed (accumulated) in :func:`accumulation_dtype`
(float64 for float64 inputs, float32 for the others), the outputs (scores, losses, the
saved statistics) come back in that dtype, and each input's gradient in the input's
own dtype.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os

import torch
import torch.nn.functional as F

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError`` by Python's convention, and a ``ValueError``
    like every other bad argument of the ops."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes in and returns its outputs in: float64 for float64
    inputs, float32 for all others (float16/bfloat16 are upcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_interpreted() -> bool:
    """True when triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autocast_disabled(device: torch.device):
    """A region where autocast leaves every op's dtype alone: the ops follow their own dtype
    rule, which autocast would override (a bfloat16 softmax in a pure-PyTorch backend)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


_value_checks = os.environ.get("TGFR_VALUE_CHECKS", "1") != "0"


def set_value_checks(enabled: bool) -> None:
    """Enable or disable the data-reading checks (NaN/Inf inputs, empty captions, the temperature's sign)."""
    global _value_checks
    _value_checks = bool(enabled)


def value_checks_enabled() -> bool:
    return _value_checks


# --------------------------------------------------------------------------- Python values


def check_real(name: str, value, *, positive: bool = False) -> float:
    """``value`` as a float; it must be a finite real number (and ``> 0`` when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number (int or float), got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"{name} must be {'positive and finite' if positive else 'finite'}, got {value!r}")
    return number


def check_int(name: str, value, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be {'non-negative' if minimum == 0 else f'at least {minimum}'}, got {value}")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- tensors


def check_tensor(name, x, ndim, dtypes=FLOAT_DTYPES):
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def check_device(name, x, ref_name, ref):
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}; they must share a device")


def check_same(name, x, ref_name, ref):
    """Same device, and for floating-point tensors the same dtype."""
    check_device(name, x, ref_name, ref)
    if x.is_floating_point() and x.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; they must match")


def check_class_ids(class_ids, length, ref_name, ref, what=""):
    """None, or a 1-D integer tensor of ``length`` identities on ``ref``'s device."""
    if class_ids is None:
        return
    if not isinstance(class_ids, torch.Tensor) or class_ids.dim() != 1:
        raise ValueError(f"class_ids must be a 1-D integer tensor of length {length}{what}")
    if class_ids.dtype.is_floating_point or class_ids.dtype.is_complex or class_ids.dtype == torch.bool:
        raise ValueError(f"class_ids must hold integers, got {class_ids.dtype}")
    if class_ids.shape[0] != length:
        raise ValueError(f"class_ids must have length {length}{what}, got {class_ids.shape[0]}")
    check_device("class_ids", class_ids, ref_name, ref)


# --------------------------------------------------------------------------- values (read the data)


def check_value(holds: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the bool tensor ``holds`` is true; on a device that
    runs asynchronously, a device assert instead, so that no host waits for the value."""
    if holds.device.type == "cpu":
        if not bool(holds):
            raise ValueError(message)
    else:
        torch._assert_async(holds, message)


def check_finite(name, x):
    if _value_checks:
        check_value(torch.isfinite(x).all(), f"{name} contains NaN or Inf values")


# --------------------------------------------------------------------------- the masked cross-entropy


def masked_cross_entropy(logits: torch.Tensor, class_ids: torch.Tensor | None = None, offset: int = 0,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each row ``i`` of ``logits [B, M]`` against column ``offset + i``.

    ``class_ids [M]`` are the identities of the columns (row ``i`` has ``class_ids[offset + i]``):
    the other columns of row ``i``'s identity leave its softmax (AttnGAN's same-class masking).
    Both ops' references and their distributed forms compute their cross-entropies with it.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    positives = offset + rows
    if class_ids is not None:
        same = class_ids[positives][:, None] == class_ids[None, :]
        same[rows, positives] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, positives, reduction=reduction)
