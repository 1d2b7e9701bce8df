"""Argument checks shared by every backend.

Shape, dtype and device checks are static and run everywhere (also while
``torch.compile`` traces with fake tensors). Value checks (NaN/Inf, empty
captions) read the data, so they run only on real tensors, inside the ops'
eager implementations; ``set_value_checks(False)`` turns them off to avoid the
device synchronisation they cost on a GPU.
"""
from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_value_checks = os.environ.get("TGFR_VALUE_CHECKS", "1") != "0"


def set_value_checks(enabled: bool) -> None:
    """Enable or disable the data-reading checks (NaN/Inf inputs, empty captions)."""
    global _value_checks
    _value_checks = bool(enabled)


def value_checks_enabled() -> bool:
    return _value_checks


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


def check_finite(name, x):
    if _value_checks and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")


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
        empty = (~word_mask.any(dim=1)).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"word_mask marks no valid word for caption(s) {empty.tolist()[:8]}: "
                "every caption needs at least one word"
            )


def check_class_ids(class_ids, batch, device, name="class_ids"):
    if class_ids is None:
        return
    if not isinstance(class_ids, torch.Tensor) or class_ids.dim() != 1:
        raise ValueError(f"{name} must be a 1-D integer tensor of length {batch}")
    if class_ids.dtype.is_floating_point or class_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers, got {class_ids.dtype}")
    if class_ids.shape[0] != batch:
        raise ValueError(f"{name} must have length {batch}, got {class_ids.shape[0]}")
    if class_ids.device != device:
        raise ValueError(f"{name} is on {class_ids.device} but the embeddings are on {device}")


def check_info_nce_args(a, b, temperature, class_ids):
    check_tensor("a", a, 2)
    check_tensor("b", b, 2)
    check_same("b", b, "a", a)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape [B, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    if not isinstance(temperature, torch.Tensor) or temperature.numel() != 1:
        raise ValueError("temperature must be a tensor holding one value (use torch.tensor(0.07))")
    if temperature.device != a.device:
        raise ValueError(f"temperature is on {temperature.device} but a is on {a.device}")
    if not temperature.is_floating_point():
        raise ValueError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
    check_class_ids(class_ids, a.shape[0], a.device)


def check_info_nce_values(a, b, temperature):
    if not _value_checks:
        return
    check_finite("a", a)
    check_finite("b", b)
    t = temperature.detach().reshape(())
    if not (bool(torch.isfinite(t)) and bool(t > 0)):
        raise ValueError(f"temperature must be positive and finite, got {temperature.detach().item()}")
