"""InfoNCE in Triton without the ``B x M`` logits, square or rectangular.

``a[B, D]`` against ``b[M, D]`` (``M >= offset + B``): the positive of row ``i`` of ``a``
is row ``offset + i`` of ``b``. Logits ``l = a b^T / tau`` are produced one
``[BLOCK_M, BLOCK_N]`` tile at a time and reduced on chip. A pair leaves both
denominators when its two identities agree and it is not the positive pair.

Forward: the row term needs a log-sum-exp along each row of ``l`` (all ``M`` columns),
the column term (symmetric loss) along the ``B`` columns ``offset .. offset+B-1``.
Rather than reducing columns across row blocks with atomics, one kernel runs twice:
over row blocks of ``(a, b)`` for the rows, and over row blocks of
``(b[offset:offset+B], a)`` for the columns (column ``offset+k`` of ``a b^T`` is row
``k`` of ``b[offset:offset+B] a^T``). Each program streams blocks of the second
operand with an online log-sum-exp, so nothing of size ``B x M`` is ever stored.

Backward: ``dl_ij = g w/B (exp(l_ij - lse_row_i) + [j in slice] exp(l_ij - lse_col_j)
- (1 + symmetric)[j == offset+i])`` with ``w = 1/2`` for the symmetric loss. Swapping the
roles of ``a`` and ``b`` turns it into ``dl^T``, so one gradient kernel gives
``grad_a = dl b / tau`` over row blocks of ``(a, b)`` and ``grad_b = dl^T a / tau`` over
row blocks of ``(b, a)`` (rows of ``b`` outside the slice get only the row term). Each
program owns its output rows: no atomics, deterministic. The first launch also reduces
``sum(dl * l)`` per row block for ``grad_tau``. The products take the probabilities
``q`` (``dl`` without its factor and its diagonal, which is added exactly afterwards),
each row divided by a power of two above its largest entry: ``q ~ 1/M`` for an
untrained model is below float16's normal range once ``M`` passes ~32K, and the
rescaled rows keep their precision in 16-bit operands.

Tiles: a program keeps its ``[BLOCK_M, D]`` rows on chip when ``D`` fits in one
``BLOCK_D`` chunk ("resident"); past that it walks ``D`` in chunks, reloading its rows
(from L2) per column block, and the gradient pass produces its output ``BLOCK_D``
columns at a time, recomputing the logits for each chunk. ``_launch_config`` picks the
tiles from the GPU's shared memory and register file.

Cost: one product per pass forward; backward, one per pass plus one per output chunk.
The temperature and the upstream gradient are read from device pointers, so nothing
synchronises with the host.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tgfr.ops.common import accumulation_dtype

from ._common import (
    GPU,
    MIN_GPU_TILE,
    TL_DTYPES,
    check_block,
    device_of,
    dot,
    dot_operand_dtype,
    dot_precision,
    gpu_of,
    load_tile,
    power_of_2_above,
)


@triton.jit
def _logit_tile(x, x_ptr, y_ptr, col_ids_ptr, rows, row_offsets, row_ok, row_ids, start, C, D, diag_offset, inv_t,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, RESIDENT: tl.constexpr,
                ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Logits ``x y[start:start+BLOCK_N]^T / tau`` of one tile and what they exclude.

    ``x`` is the program's resident rows when ``RESIDENT`` (else unused: the rows are
    reloaded chunk by chunk). Returns ``(y, logits, excluded, cols, diagonal)``: ``y`` is
    the whole ``[BLOCK_N, BLOCK_D]`` block when resident; ``excluded`` marks pairs of one
    identity other than the positive, and columns beyond ``C``.
    """
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < C
    col_offsets = cols.to(tl.int64) * D
    if RESIDENT:
        y = load_tile(y_ptr, col_offsets, col_ok, 0, D, BLOCK_D)
        logits = dot(x, tl.trans(y), None, DOT_DTYPE, INPUT_PRECISION, ACC)
    else:
        logits = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        for d0 in range(0, D, BLOCK_D):
            x_chunk = load_tile(x_ptr, row_offsets, row_ok, d0, D, BLOCK_D)
            y_chunk = load_tile(y_ptr, col_offsets, col_ok, d0, D, BLOCK_D)
            logits = dot(x_chunk, tl.trans(y_chunk), logits, DOT_DTYPE, INPUT_PRECISION, ACC)
        y = col_ok  # unused: the caller loads the chunk it needs
    logits = logits * inv_t
    col_ids = tl.load(col_ids_ptr + cols, mask=col_ok, other=0)
    diagonal = cols[None, :] == (rows + diag_offset)[:, None]
    excluded = ((row_ids[:, None] == col_ids[None, :]) & ~diagonal) | ~col_ok[None, :]
    return y, logits, excluded, cols, diagonal


@triton.jit
def _row_lse_kernel(x_ptr, y_ptr, row_ids_ptr, col_ids_ptr, temp_ptr, lse_ptr, nll_ptr, R, C, D, diag_offset,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, RESIDENT: tl.constexpr,
                    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Row ``r < R`` of ``x`` against the ``C`` rows of ``y``, positive at column ``r + diag_offset``:
    ``lse[r] = logsumexp_c l_rc`` over kept ``c`` and ``nll[r] = lse[r] - l_{r, r+diag_offset}``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    inv_t = 1.0 / tl.load(temp_ptr)
    row_offsets = rows.to(tl.int64) * D
    positive_offsets = (rows + diag_offset).to(tl.int64) * D
    positive = tl.zeros([BLOCK_M], ACC)
    for d0 in range(0, D, BLOCK_D):
        x_chunk = load_tile(x_ptr, row_offsets, row_ok, d0, D, BLOCK_D).to(ACC)
        positive += tl.sum(x_chunk * load_tile(y_ptr, positive_offsets, row_ok, d0, D, BLOCK_D).to(ACC), axis=1)
    positive *= inv_t
    row_ids = tl.load(row_ids_ptr + rows, mask=row_ok, other=0)
    if RESIDENT:
        x = load_tile(x_ptr, row_offsets, row_ok, 0, D, BLOCK_D)
    else:
        x = row_ok  # unused: the tiled path reloads the rows chunk by chunk

    run_max = tl.full([BLOCK_M], float("-inf"), ACC)
    run_sum = tl.zeros([BLOCK_M], ACC)
    for start in range(0, C, BLOCK_N):
        _, logits, excluded, _, _ = _logit_tile(x, x_ptr, y_ptr, col_ids_ptr, rows, row_offsets, row_ok, row_ids,
                                                start, C, D, diag_offset, inv_t, BLOCK_M, BLOCK_N, BLOCK_D, RESIDENT,
                                                ACC, DOT_DTYPE, INPUT_PRECISION)
        logits = tl.where(excluded, float("-inf"), logits)
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        # a row whose kept entries are all still ahead has max -inf: shift by 0 instead
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(logits - shift[:, None]), axis=1)
        run_max = new_max
    # rows beyond R may have every entry excluded (their identity is a fill value)
    lse = run_max + tl.log(tl.where(row_ok, run_sum, 1.0))
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(nll_ptr + rows, lse - positive, mask=row_ok)


@triton.jit
def _row_grad_kernel(x_ptr, y_ptr, row_ids_ptr, col_ids_ptr, temp_ptr, grad_loss_ptr, lse_x_ptr, lse_y_ptr,
                     grad_x_ptr, tau_partial_ptr, R, C, D, diag_offset, x_lse_start, x_lse_count, y_lse_start,
                     y_lse_count, B,
                     SYMMETRIC: tl.constexpr, REDUCE_TAU: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, RESIDENT: tl.constexpr,
                     ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``grad_x = dl y / tau`` for a block of the ``R`` rows of ``x`` against the ``C`` rows of ``y``.

    Row ``r``'s own log-sum-exp term exists for ``x_lse_start <= r < x_lse_start + x_lse_count``
    (``lse_x[r - x_lse_start]``), column ``c``'s likewise; the positive pair is
    ``c = r + diag_offset``. With ``REDUCE_TAU``, also ``sum(dl * l)`` of the block.
    """
    in_ty = x_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    inv_t = 1.0 / tl.load(temp_ptr)
    # the loss is (row term + column term) / 2, each a mean over B
    if SYMMETRIC:
        scale = tl.load(grad_loss_ptr) / (2 * B)
        diag_weight = 2.0
    else:
        scale = tl.load(grad_loss_ptr) / B
        diag_weight = 1.0
    row_offsets = rows.to(tl.int64) * D
    positive_cols = rows + diag_offset
    has_positive = row_ok & (positive_cols >= 0) & (positive_cols < C)
    positive_offsets = positive_cols.to(tl.int64) * D
    row_ids = tl.load(row_ids_ptr + rows, mask=row_ok, other=0)
    # an absent term reads +inf: exp(l - inf) = 0
    x_term = row_ok & (rows >= x_lse_start) & (rows < x_lse_start + x_lse_count)
    lse_x = tl.load(lse_x_ptr + (rows - x_lse_start), mask=x_term, other=float("inf"))
    if RESIDENT:
        x = load_tile(x_ptr, row_offsets, row_ok, 0, D, BLOCK_D)
    else:
        x = row_ok  # unused: the tiled path reloads the rows chunk by chunk

    tau_sum = tl.zeros([BLOCK_M], ACC)
    for d_out in range(0, D, BLOCK_D):  # one chunk when resident
        grad = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for start in range(0, C, BLOCK_N):
            y, logits, excluded, cols, diagonal = _logit_tile(
                x, x_ptr, y_ptr, col_ids_ptr, rows, row_offsets, row_ok, row_ids, start, C, D, diag_offset, inv_t,
                BLOCK_M, BLOCK_N, BLOCK_D, RESIDENT, ACC, DOT_DTYPE, INPUT_PRECISION)
            y_term = (cols >= y_lse_start) & (cols < y_lse_start + y_lse_count)
            lse_y = tl.load(lse_y_ptr + (cols - y_lse_start), mask=y_term, other=float("inf"))
            q = tl.exp(logits - lse_x[:, None]) + tl.exp(logits - lse_y[None, :])
            q = tl.where(excluded | ~row_ok[:, None], 0.0, q)
            if REDUCE_TAU:
                dl = q - tl.where(diagonal, diag_weight, 0.0)
                tau_sum += tl.where(d_out == 0, tl.sum(dl * logits, axis=1), 0.0)
            if not RESIDENT:
                y = load_tile(y_ptr, cols.to(tl.int64) * D, cols < C, d_out, D, BLOCK_D)
            # q in [0, 2]: each row enters the product divided by a power of two above its
            # largest entry, so its small entries stay normal in 16-bit operands
            unit = power_of_2_above(tl.max(q, axis=1))
            grad += dot((q / unit[:, None]).to(in_ty), y, None, DOT_DTYPE, INPUT_PRECISION, ACC) * unit[:, None]
        # the positive pair's -(1 + symmetric), added exactly
        grad -= diag_weight * load_tile(y_ptr, positive_offsets, has_positive, d_out, D, BLOCK_D).to(ACC)
        dims = d_out + tl.arange(0, BLOCK_D)
        tl.store(grad_x_ptr + row_offsets[:, None] + dims[None, :], (grad * (scale * inv_t)).to(in_ty),
                 mask=row_ok[:, None] & (dims < D)[None, :])
    if REDUCE_TAU:
        tl.store(tau_partial_ptr + tl.program_id(0), tl.sum(tau_sum, axis=0) * scale)


# Preferred GPU tiles per (pass, operand kind) at D <= 256: (BLOCK_M, BLOCK_N, num_warps, num_stages).
# "16bit" and "tf32" run on tensor cores (operands staged through shared memory); "fp32"
# (IEEE) and "fp64" multiply from registers. _launch_config shrinks them to the GPU.
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
# widest D chunk kept on chip: past it the tiled path walks D
MAX_BLOCK_D = 256
# registers per thread the tiles may take (the rest: addresses, masks, row statistics)
_TILE_REGISTERS = 160


def _operand_kind(dtype: torch.dtype) -> str:
    if dtype == torch.float64:
        return "fp64"
    if dtype == torch.float32:
        return "tf32" if dot_precision(dtype) == "tf32" else "fp32"
    return "16bit"


def footprint(kernel: str, dtype: torch.dtype, config: dict) -> tuple[int, int]:
    """Estimated (shared memory bytes, tile registers per thread) of ``kernel`` with ``config``.

    Tensor-core kinds stage the streamed operand (and the tiled path's rows) through
    shared memory, ``num_stages`` deep; register kinds hold both operands in registers.
    """
    size, acc = torch.empty(0, dtype=dtype).element_size(), accumulation_dtype(dtype).itemsize
    bm, bn, bd, stages = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_D"], config["num_stages"]
    threads = 32 * config["num_warps"]
    registers_kind = _operand_kind(dtype) in ("fp32", "fp64")
    rows = bm * bd * size * (1 if config["RESIDENT"] else stages)
    shared = rows + stages * bn * bd * size + bm * bn * 4  # + a reduction/layout scratch tile
    held = bm * bn * acc * 2 + bm * bd * size  # logits and q, the resident rows as an operand
    if kernel == "grad":
        held += bm * bd * acc
        shared += bm * bn * size
    if registers_kind:
        # the products run on CUDA cores from registers: both operands, the rows twice
        # (loaded and in the product's layout)
        held += bn * bd * size + bm * bd * size
        shared = bm * bn * 4 + (0 if config["RESIDENT"] else bn * bd * size)
    return shared, held // 4 // threads


def _launch_config(x: torch.Tensor, kernel: str, block_m: int | None = None, block_n: int | None = None,
                   block_d: int | None = None, gpu: GPU | None = None) -> dict:
    """Tiles and launch options of ``kernel`` ("lse" or "grad") for rows ``x[., D]``.

    Sized for ``gpu`` (default: the GPU ``x`` is on; the interpreter's small tiles on the
    CPU): the preferred tiles shrink (stages, then rows, then the D chunk) until the
    estimated ``footprint`` fits the GPU's shared memory and register file.
    ``block_m``/``block_n``/``block_d`` override the choice (tests cross block boundaries).
    """
    D = x.shape[1]
    gpu = gpu or gpu_of(x)
    if gpu is None:
        tile_m, tile_n, tile_d, num_warps, num_stages, smallest = 4, 4, triton.next_power_of_2(D), 4, 1, 1
    else:
        tile_m, tile_n, num_warps, num_stages = _GPU_TILES[kernel, _operand_kind(x.dtype)]
        tile_d = min(MAX_BLOCK_D, max(MIN_GPU_TILE, triton.next_power_of_2(D)))
        smallest = MIN_GPU_TILE
    for name, value in (("block_m", block_m), ("block_n", block_n), ("block_d", block_d)):
        if value is not None:
            check_block(name, value)
    config = dict(BLOCK_M=max(smallest, block_m or tile_m), BLOCK_N=max(smallest, block_n or tile_n),
                  BLOCK_D=max(smallest, block_d or tile_d), num_warps=num_warps, num_stages=num_stages)
    if gpu is not None and block_m is None and block_d is None:
        _shrink_to_fit(kernel, x.dtype, D, config, gpu)
    config.update(RESIDENT=config["BLOCK_D"] >= D, ACC=TL_DTYPES[accumulation_dtype(x.dtype)],
                  DOT_DTYPE=dot_operand_dtype(x.dtype), INPUT_PRECISION=dot_precision(x.dtype))
    return config


def _shrink_to_fit(kernel: str, dtype: torch.dtype, D: int, config: dict, gpu: GPU) -> None:
    def fits():
        shared, registers = footprint(kernel, dtype, {**config, "RESIDENT": config["BLOCK_D"] >= D})
        return shared <= gpu.shared_memory and registers <= _TILE_REGISTERS

    # stages only down to 2: at one stage ptxas spills kilobytes per thread (float32)
    while not fits():
        if config["num_stages"] > 2:
            config["num_stages"] -= 1
        elif config["BLOCK_M"] > 2 * MIN_GPU_TILE and config["BLOCK_M"] > config["BLOCK_N"]:
            config["BLOCK_M"] //= 2
        elif config["BLOCK_D"] > 64:
            config["BLOCK_D"] //= 2
        elif config["BLOCK_N"] > MIN_GPU_TILE:
            config["BLOCK_N"] //= 2
        elif config["BLOCK_M"] > MIN_GPU_TILE:
            config["BLOCK_M"] //= 2
        else:
            shared, registers = footprint(kernel, dtype, {**config, "RESIDENT": config["BLOCK_D"] >= D})
            raise ValueError(f"info_nce {kernel} tiles for D={D} {dtype} need about {shared} B of shared memory "
                             f"and {registers} registers per thread; sm_{gpu.arch} has {gpu.shared_memory} B")


def info_nce_forward(a, b, temperature, class_ids, offset: int = 0, symmetric: bool = True, *,
                     block_m: int | None = None, block_n: int | None = None, block_d: int | None = None,
                     gpu: GPU | None = None):
    """``(loss, lse_rows [B], lse_cols [B, or 0 when not symmetric])``.

    ``block_*`` override the tiles, ``gpu`` sizes them for another GPU than the tensors'.
    """
    (B, D), M = a.shape, b.shape[0]
    config = _launch_config(a, "lse", block_m, block_n, block_d, gpu)
    stat_dtype = accumulation_dtype(a.dtype)
    sides = 2 if symmetric else 1
    # separate tensors: outputs of a custom op may not alias one another
    lse_rows = torch.empty(B, dtype=stat_dtype, device=a.device)
    lse_cols = torch.empty(B if symmetric else 0, dtype=stat_dtype, device=a.device)
    nll = torch.empty(sides, B, dtype=stat_dtype, device=a.device)  # lse - positive logit, rows then columns
    grid = (triton.cdiv(B, config["BLOCK_M"]),)
    ids_of_a = class_ids[offset:]
    # rows: a against all of b; columns offset.. offset+B-1: b's slice against a
    passes = [(a, b, ids_of_a, class_ids, M, offset)]
    if symmetric:
        passes.append((b[offset:offset + B], a, ids_of_a, ids_of_a, B, 0))
    with device_of(a):
        for side, (x, y, row_ids, col_ids, C, diag_offset) in enumerate(passes):
            _row_lse_kernel[grid](x, y, row_ids, col_ids, temperature, (lse_rows, lse_cols)[side], nll[side], B, C, D,
                                  diag_offset, **config)
    loss = nll.sum() / (sides * B)
    return loss, lse_rows, lse_cols


def info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset: int = 0,
                      symmetric: bool = True, *, block_m: int | None = None, block_n: int | None = None,
                      block_d: int | None = None, gpu: GPU | None = None):
    """``(grad_a [B, D], grad_b [M, D], grad_temperature)``; keywords as in ``info_nce_forward``."""
    (B, D), M = a.shape, b.shape[0]
    config = _launch_config(a, "grad", block_m, block_n, block_d, gpu)
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
    grid_a = (triton.cdiv(B, config["BLOCK_M"]),)
    tau_partial = torch.empty(grid_a[0], dtype=lse_rows.dtype, device=a.device)
    ids_of_a = class_ids[offset:]
    col_count = B if symmetric else 0
    cols = lse_cols if symmetric else lse_rows  # never read when not symmetric
    with device_of(a):
        # rows of a: own term lse_rows, column term for columns in the slice
        _row_grad_kernel[grid_a](a, b, ids_of_a, class_ids, temperature, grad_loss, lse_rows, cols, grad_a,
                                 tau_partial, B, M, D, offset, 0, B, offset, col_count, B,
                                 SYMMETRIC=symmetric, REDUCE_TAU=True, **config)
        # rows of b: own (column) term inside the slice only, every row term of a
        _row_grad_kernel[(triton.cdiv(M, config["BLOCK_M"]),)](
            b, a, class_ids, ids_of_a, temperature, grad_loss, cols, lse_rows, grad_b, tau_partial, M, B, D, -offset,
            offset, col_count, 0, B, B, SYMMETRIC=symmetric, REDUCE_TAU=False, **config)
    # l = s / tau, so dL/dtau = -sum(dl * l) / tau
    grad_temperature = -tau_partial.sum() / temperature
    return grad_a, grad_b, grad_temperature
