"""What the Triton kernels of both ops share: precision and launch choices."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tgfr.ops.common import triton_interpreted

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


def dot_operand_dtype(dtype: torch.dtype):
    """The ``tl`` dtype the operands of ``tl.dot`` are cast to, for inputs of ``dtype``.

    The input dtype itself (so 16-bit inputs run on tensor cores), except bfloat16
    under the interpreter, whose ``tl.dot`` multiplies the raw bits of bfloat16
    values; there the (exact) float32 upcast gives the same products.
    """
    if dtype == torch.bfloat16 and triton_interpreted():
        return tl.float32
    return TL_DTYPES[dtype]


@triton.jit
def dot(x, y, acc, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr):
    """``acc + x @ y`` with both operands in ``DOT_DTYPE`` (see ``dot_operand_dtype``), summed in ``ACC``.

    ``out_dtype`` is explicit: older triton defaults it to float32 and rejects a float64 accumulator.
    """
    return tl.dot(x.to(DOT_DTYPE), y.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION, out_dtype=ACC)


@triton.jit
def power_of_2_above(x):
    """The power of two at or above ``x`` (1 for 0): dividing a tile by it is exact."""
    return tl.where(x > 0, tl.exp2(tl.ceil(tl.log2(tl.where(x > 0, x, 1.0)))), 1.0)


@triton.jit
def load_tile(ptr, row_offsets, row_ok, d0, D, BLOCK_D: tl.constexpr):
    """Columns ``[d0, d0 + BLOCK_D)`` of the rows starting at ``ptr + row_offsets``; zero where masked."""
    dims = d0 + tl.arange(0, BLOCK_D)
    return tl.load(ptr + row_offsets[:, None] + dims[None, :], mask=row_ok[:, None] & (dims < D)[None, :], other=0.0)


def device_of(tensor: torch.Tensor):
    """Context making ``tensor``'s GPU current: triton launches on the current device."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


@dataclass(frozen=True)
class GPU:
    """What launch tiles are sized for: compute capability (80 for sm_80) and the most
    shared memory one block may use, in bytes."""

    arch: int
    shared_memory: int

    @classmethod
    def of_arch(cls, arch: int) -> GPU:
        return cls(arch, SHARED_MEMORY_LIMIT.get(arch, min(SHARED_MEMORY_LIMIT.values())))


# largest dynamic shared memory per block (opt-in), by compute capability: A100/H100 class
# parts have 164/227 KB, the sm_86/89 parts (A10, L4, RTX) 99 KB
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


def gpu_of(tensor: torch.Tensor) -> GPU | None:
    """The GPU a launch on ``tensor`` sizes its tiles for; None when the interpreter runs it."""
    if triton_interpreted() or not tensor.is_cuda:
        return None
    props = torch.cuda.get_device_properties(tensor.device)
    arch = props.major * 10 + props.minor
    shared = getattr(props, "shared_memory_per_block_optin", 0) or GPU.of_arch(arch).shared_memory
    return GPU(arch, shared)


# Smallest M, N and K of a product compiled for a GPU: 16 suits the tensor-core shapes of
# every input dtype. Tile overrides are raised to it there (the interpreter takes any size).
MIN_GPU_TILE = 16


def check_block(name: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a positive power of two, got {value}")
