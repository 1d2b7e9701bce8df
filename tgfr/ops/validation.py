"""Argument checks shared by every backend.

Shape, dtype and device checks are static and run everywhere (also while
``torch.compile`` traces with fake tensors). Value checks (NaN/Inf, empty
captions, the temperature's sign) read the data, so they run only on real
tensors, inside the ops' eager implementations. On the CPU they raise
``ValueError`` at once; on CUDA they are asynchronous device asserts
(``torch._assert_async``) that never stall the step: a failure surfaces as a
CUDA error at the next synchronisation. ``set_value_checks(False)`` or
``TGFR_VALUE_CHECKS=0`` turns them off.
"""
from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes, and keeps statistics and the temperature, in:
    float64 for float64 inputs, float32 for all others (float16/bfloat16 are upcast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_interpreted() -> bool:
    """True when triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"

_value_checks = os.environ.get("TGFR_VALUE_CHECKS", "1") != "0"


def set_value_checks(enabled: bool) -> None:
    """Enable or disable the data-reading checks (NaN/Inf inputs, empty captions)."""
    global _value_checks
    _value_checks = bool(enabled)


def check_tensor(name, x, ndim, dtypes=FLOAT_DTYPES):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def check_same(name, x, ref_name, ref):
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}; they must share a device")
    if x.is_floating_point() and x.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; they must match")


def _check_value(holds: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the bool tensor ``holds`` is true; on a device that
    runs asynchronously, a device assert instead, so that no host waits for the value."""
    if holds.device.type == "cpu":
        if not bool(holds):
            raise ValueError(message)
    else:
        torch._assert_async(holds, message)


def check_finite(name, x):
    if _value_checks:
        _check_value(torch.isfinite(x).all(), f"{name} contains NaN or Inf values")


def check_word_region_args(words, regions, word_mask):
    check_tensor("words", words, 3)
    check_tensor("regions", regions, 3)
    check_same("regions", regions, "words", words)
    if regions.shape[2] != words.shape[2]:
        raise ValueError(
            f"words and regions must share the embedding width D: words is {tuple(words.shape)} "
            f"([B_t, T, D]), regions is {tuple(regions.shape)} ([B_v, N, D])"
        )
    if word_mask is not None:
        check_tensor("word_mask", word_mask, 2, dtypes=(torch.bool,))
        if tuple(word_mask.shape) != tuple(words.shape[:2]):
            raise ValueError(
                f"word_mask must have shape [B_t, T] = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}"
            )
        if word_mask.device != words.device:
            raise ValueError(f"word_mask is on {word_mask.device} but words is on {words.device}")


def check_word_region_values(words, regions, word_mask):
    if not _value_checks:
        return
    check_finite("words", words)
    check_finite("regions", regions)
    if word_mask is not None:
        has_word = word_mask.any(dim=1)
        if word_mask.device.type == "cpu":
            empty = (~has_word).nonzero().flatten()
            if empty.numel():
                raise ValueError(
                    f"word_mask marks no valid word for caption(s) {empty.tolist()[:8]}: "
                    "every caption needs at least one word"
                )
        else:
            _check_value(has_word.all(), "word_mask marks no valid word for some caption: every caption needs one")


def check_class_ids(class_ids, length, device, name="class_ids", what=""):
    if class_ids is None:
        return
    if not isinstance(class_ids, torch.Tensor) or class_ids.dim() != 1:
        raise ValueError(f"{name} must be a 1-D integer tensor of length {length}{what}")
    if class_ids.dtype.is_floating_point or class_ids.dtype.is_complex or class_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got {class_ids.dtype}")
    if class_ids.shape[0] != length:
        raise ValueError(f"{name} must have length {length}{what}, got {class_ids.shape[0]}")
    if class_ids.device != device:
        raise ValueError(f"{name} is on {class_ids.device} but the embeddings are on {device}")


def check_info_nce_args(a, b, temperature, class_ids, offset=0, symmetric=True):
    check_tensor("a", a, 2)
    check_tensor("b", b, 2)
    check_same("b", b, "a", a)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a [B, D] and b [M, D] must share D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    if offset + a.shape[0] > b.shape[0]:
        raise ValueError(
            f"b must hold the positives of a's rows at rows offset..offset+B-1: offset + B = "
            f"{offset} + {a.shape[0]} exceeds b's {b.shape[0]} rows"
        )
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    if not isinstance(temperature, torch.Tensor) or temperature.numel() != 1:
        raise ValueError("temperature must be a tensor holding one value (use torch.tensor(0.07))")
    if temperature.device != a.device:
        raise ValueError(f"temperature is on {temperature.device} but a is on {a.device}")
    if not temperature.is_floating_point():
        raise ValueError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
    check_class_ids(class_ids, b.shape[0], a.device, what=" (one id per row of b)")


def check_info_nce_values(a, b, temperature):
    if not _value_checks:
        return
    check_finite("a", a)
    check_finite("b", b)
    t = temperature.detach().reshape(())
    got = f", got {t.item()}" if t.device.type == "cpu" else ""
    _check_value(torch.isfinite(t) & (t > 0), f"temperature must be positive and finite{got}")
