"""What the Triton kernels of both ops share: precision and launch choices."""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}

_allow_tf32 = os.environ.get("TGFR_TRITON_ALLOW_TF32", "0") == "1"


def set_allow_tf32(enabled: bool) -> None:
    """Let float32 products use TF32 tensor cores (faster, ~1e-3 relative error).

    Off by default so float32 inputs give float32-exact results; the environment
    variable ``TGFR_TRITON_ALLOW_TF32=1`` turns it on at import.
    """
    global _allow_tf32
    _allow_tf32 = bool(enabled)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of ``tl.dot`` for operands of ``dtype``."""
    return "tf32" if dtype == torch.float32 and _allow_tf32 else "ieee"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and statistics are float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dot_operand_dtype(dtype: torch.dtype):
    """The ``tl`` dtype the operands of ``tl.dot`` are cast to, for inputs of ``dtype``.

    The input dtype itself (so 16-bit inputs run on tensor cores), except bfloat16
    under the interpreter, whose ``tl.dot`` multiplies the raw bits of bfloat16
    values; there the (exact) float32 upcast gives the same products.
    """
    if dtype == torch.bfloat16 and interpreted():
        return tl.float32
    return TL_DTYPES[dtype]


@triton.jit
def dot(x, y, acc, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``acc + x @ y`` with both operands in ``DOT_DTYPE`` (see ``dot_operand_dtype``)."""
    return tl.dot(x.to(DOT_DTYPE), y.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)


@triton.jit
def load_tile(ptr, row_offsets, row_ok, d0, D, BLOCK_D: tl.constexpr):
    """Columns ``[d0, d0 + BLOCK_D)`` of the rows starting at ``ptr + row_offsets``; zero where masked."""
    dims = d0 + tl.arange(0, BLOCK_D)
    return tl.load(ptr + row_offsets[:, None] + dims[None, :], mask=row_ok[:, None] & (dims < D)[None, :], other=0.0)


def interpreted() -> bool:
    """True when triton runs the kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_of(tensor: torch.Tensor):
    """Context making ``tensor``'s GPU current: triton launches on the current device."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# Smallest M, N and K of a product compiled for a GPU: 16 suits the tensor-core shapes of
# every input dtype. Tile overrides are raised to it there (the interpreter takes any size).
MIN_GPU_TILE = 16


def check_block(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a positive power of two, got {value}")
