"""Symmetric InfoNCE in Triton without the ``B x B`` logits.

Logits ``l = a b^T / tau`` are produced one ``[BLOCK_M, BLOCK_N]`` tile at a time
and reduced on chip. Pairs ``i != j`` of the same class leave both denominators.

Forward: ``lse_rows`` needs a reduction along each row, ``lse_cols`` along each
column. Rather than reducing columns across row blocks with atomics, the same
kernel runs twice: over row blocks of ``(a, b)`` for the rows and over row blocks
of ``(b, a)`` for the columns (column ``j`` of ``a b^T`` is row ``j`` of ``b a^T``,
and the class mask is symmetric). Each program keeps its ``[BLOCK_M, D]`` block of
the first operand on chip and streams blocks of the second, with an online
log-sum-exp, so nothing of size ``B x B`` (nor ``B x #blocks``) is ever stored.

Backward: ``dl_ij = g/(2B) (exp(l_ij - lse_row_i) + exp(l_ij - lse_col_j) - 2[i==j])``
is symmetric under swapping the roles of ``a`` and ``b`` (it becomes ``dl^T``), so
one gradient kernel gives ``grad_a = dl b / tau`` over row blocks of ``(a, b)`` and
``grad_b = dl^T a / tau`` over row blocks of ``(b, a)``; each program owns its
output rows, so there are no atomics and the result is deterministic. The first
launch also reduces ``sum(dl * l)`` per row block for ``grad_tau``. The products take
``dl * 2B / g`` (in ``[-2, 2]``) and scale afterwards, so 16-bit operands lose nothing
to ``dl``'s size of ``1/B^2``.

Cost: four passes over the logits (one product each forward, two each backward).
The temperature and the upstream gradient are read from device pointers, so
nothing synchronises with the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    MIN_GPU_TILE,
    accumulation_dtype,
    check_block,
    device_of,
    dot,
    dot_operand_dtype,
    dot_precision,
    interpreted,
    load_tile,
    next_power_of_2,
)


@triton.jit
def _logit_tile(x, y_ptr, ids_ptr, rows, row_ids, start, B, D, inv_t,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_DTYPE: tl.constexpr,
                INPUT_PRECISION: tl.constexpr):
    """One tile of logits ``x y[start:start+BLOCK_N]^T / tau`` with what it excludes.

    Returns ``(y_block, logits, excluded, cols)``; ``excluded`` marks same-class
    off-diagonal pairs and columns beyond ``B`` (rows beyond ``B`` are never stored).
    """
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < B
    dims = tl.arange(0, BLOCK_D)
    y = tl.load(y_ptr + cols.to(tl.int64)[:, None] * D + dims[None, :],
                mask=col_ok[:, None] & (dims < D)[None, :], other=0.0)
    logits = dot(x, tl.trans(y), None, DOT_DTYPE, INPUT_PRECISION) * inv_t
    col_ids = tl.load(ids_ptr + cols, mask=col_ok, other=0)
    same_class = (row_ids[:, None] == col_ids[None, :]) & (rows[:, None] != cols[None, :])
    excluded = same_class | ~col_ok[None, :]
    return y, logits, excluded, cols


@triton.jit
def _row_lse_kernel(x_ptr, y_ptr, ids_ptr, temp_ptr, lse_ptr, nll_ptr, B, D,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``lse[i] = logsumexp_j l_ij`` over kept ``j`` and ``nll[i] = lse[i] - l_ii``."""
    acc_ty = lse_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    inv_t = 1.0 / tl.load(temp_ptr)
    row_offsets = rows.to(tl.int64) * D
    x = load_tile(x_ptr, row_offsets, row_ok, 0, D, BLOCK_D)
    positive = tl.sum(x.to(acc_ty) * load_tile(y_ptr, row_offsets, row_ok, 0, D, BLOCK_D).to(acc_ty), axis=1) * inv_t
    row_ids = tl.load(ids_ptr + rows, mask=row_ok, other=0)

    run_max = tl.full([BLOCK_M], float("-inf"), acc_ty)
    run_sum = tl.zeros([BLOCK_M], acc_ty)
    for start in range(0, B, BLOCK_N):
        _, logits, excluded, _ = _logit_tile(x, y_ptr, ids_ptr, rows, row_ids, start, B, D, inv_t,
                                             BLOCK_N, BLOCK_D, DOT_DTYPE, INPUT_PRECISION)
        logits = tl.where(excluded, float("-inf"), logits)
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        # a row whose kept entries are all still ahead has max -inf: shift by 0 instead
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(logits - shift[:, None]), axis=1)
        run_max = new_max
    # rows beyond B may have every entry excluded (their class id is a fill value)
    lse = run_max + tl.log(tl.where(row_ok, run_sum, 1.0))
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(nll_ptr + rows, lse - positive, mask=row_ok)


@triton.jit
def _row_grad_kernel(x_ptr, y_ptr, ids_ptr, temp_ptr, grad_loss_ptr, lse_x_ptr, lse_y_ptr, grad_x_ptr,
                     tau_partial_ptr, B, D,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, REDUCE_TAU: tl.constexpr):
    """``grad_x = dl y / tau`` for a block of rows; optionally ``sum(dl * l)`` of the block."""
    acc_ty = lse_x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    inv_t = 1.0 / tl.load(temp_ptr)
    scale = tl.load(grad_loss_ptr) / (2 * B)
    x = load_tile(x_ptr, rows.to(tl.int64) * D, row_ok, 0, D, BLOCK_D)
    row_ids = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=0.0)

    # sums of q_ij = dl_ij / scale, which lies in [-2, 2]: 16-bit operands of the product
    # keep their precision (dl itself is ~1/B, below float16's normal range for large B)
    grad = tl.zeros([BLOCK_M, BLOCK_D], acc_ty)
    tau_sum = tl.zeros([BLOCK_M], acc_ty)
    for start in range(0, B, BLOCK_N):
        y, logits, excluded, cols = _logit_tile(x, y_ptr, ids_ptr, rows, row_ids, start, B, D, inv_t,
                                                BLOCK_N, BLOCK_D, DOT_DTYPE, INPUT_PRECISION)
        lse_y = tl.load(lse_y_ptr + cols, mask=cols < B, other=0.0)
        prob = tl.exp(logits - lse_x[:, None]) + tl.exp(logits - lse_y[None, :])
        prob -= tl.where(rows[:, None] == cols[None, :], 2.0, 0.0)
        q = tl.where(excluded | ~row_ok[:, None], 0.0, prob)
        grad = dot(q.to(y.dtype), y, grad, DOT_DTYPE, INPUT_PRECISION)
        if REDUCE_TAU:
            tau_sum += tl.sum(q * logits, axis=1)
    dims = tl.arange(0, BLOCK_D)
    tl.store(grad_x_ptr + rows.to(tl.int64)[:, None] * D + dims[None, :],
             (grad * (scale * inv_t)).to(grad_x_ptr.dtype.element_ty), mask=row_ok[:, None] & (dims < D)[None, :])
    if REDUCE_TAU:
        tl.store(tau_partial_ptr + tl.program_id(0), tl.sum(tau_sum, axis=0) * scale)


# GPU tiles per (pass, operand kind) for D <= 256: (BLOCK_M, BLOCK_N, num_warps, num_stages).
# Picked by compiling for sm_90 and reading ptxas' register, spill and SMEM usage: the
# gradient pass holds a [BLOCK_M, D] float32 accumulator, so it takes half the rows; SMEM
# stays under the 164 KB of an A100. "fp32" is IEEE float32 (CUDA cores), "tf32" tensor cores.
_GPU_TILES = {
    ("lse", "16bit"): (128, 64, 8, 3),
    ("grad", "16bit"): (64, 32, 8, 2),
    ("lse", "tf32"): (64, 32, 8, 2),
    ("grad", "tf32"): (64, 32, 8, 2),
    ("lse", "fp32"): (32, 32, 4, 2),
    ("grad", "fp32"): (32, 32, 4, 2),
    ("lse", "fp64"): (32, 32, 4, 1),
    ("grad", "fp64"): (32, 16, 4, 1),
}


def _launch_config(x: torch.Tensor, kernel: str, block_m: int | None, block_n: int | None) -> dict:
    """Tiles and launch options of ``kernel`` ("lse" or "grad") for ``x[B, D]``.

    ``block_m``/``block_n`` override the tiles (tests use them to cross block boundaries).
    """
    block_d = next_power_of_2(x.shape[1])
    if interpreted():
        tile_m, tile_n, num_warps, num_stages, smallest = 4, 4, 4, 1, 1
    else:
        precision = dot_precision(x.dtype)
        kind = {torch.float64: "fp64", torch.float32: "tf32" if precision == "tf32" else "fp32"}.get(x.dtype, "16bit")
        tile_m, tile_n, num_warps, num_stages = _GPU_TILES[kernel, kind]
        # wider rows: fewer of them, so the resident block and accumulator keep their size
        tile_m = max(MIN_GPU_TILE, tile_m * 256 // max(256, block_d))
        smallest = MIN_GPU_TILE
    block_m, block_n = block_m or tile_m, block_n or tile_n
    check_block("block_m", block_m)
    check_block("block_n", block_n)
    config = dict(BLOCK_M=max(smallest, block_m), BLOCK_N=max(smallest, block_n), BLOCK_D=max(smallest, block_d),
                  num_warps=num_warps, num_stages=num_stages)
    config.update(DOT_DTYPE=dot_operand_dtype(x.dtype), INPUT_PRECISION=dot_precision(x.dtype))
    return config


def info_nce_forward(a, b, temperature, class_ids, block_m: int | None = None, block_n: int | None = None):
    """``(loss, lse_rows, lse_cols)``; ``block_m``/``block_n`` override the tile sizes."""
    B, D = a.shape
    config = _launch_config(a, "lse", block_m, block_n)
    stat_dtype = accumulation_dtype(a.dtype)
    lse_rows = torch.empty(B, dtype=stat_dtype, device=a.device)
    lse_cols = torch.empty_like(lse_rows)
    nll = torch.empty(2, B, dtype=stat_dtype, device=a.device)  # lse - positive logit, rows then columns
    grid = (triton.cdiv(B, config["BLOCK_M"]),)
    with device_of(a):
        for x, y, lse, side_nll in ((a, b, lse_rows, nll[0]), (b, a, lse_cols, nll[1])):
            _row_lse_kernel[grid](x, y, class_ids, temperature, lse, side_nll, B, D, **config)
    loss = nll.sum() / (2 * B)
    return loss, lse_rows, lse_cols


def info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols,
                      block_m: int | None = None, block_n: int | None = None):
    """``(grad_a, grad_b, grad_temperature)``; ``block_m``/``block_n`` override the tile sizes."""
    B, D = a.shape
    config = _launch_config(a, "grad", block_m, block_n)
    grid = (triton.cdiv(B, config["BLOCK_M"]),)
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
    tau_partial = torch.empty(grid[0], dtype=lse_rows.dtype, device=a.device)
    passes = ((a, b, lse_rows, lse_cols, grad_a, True), (b, a, lse_cols, lse_rows, grad_b, False))
    with device_of(a):
        for x, y, lse_x, lse_y, grad_x, reduce_tau in passes:
            _row_grad_kernel[grid](x, y, class_ids, temperature, grad_loss, lse_x, lse_y, grad_x, tau_partial, B, D,
                                   REDUCE_TAU=reduce_tau, **config)
    # l = s / tau, so dL/dtau = -sum(dl * l) / tau
    grad_temperature = -tau_partial.sum() / temperature
    return grad_a, grad_b, grad_temperature
