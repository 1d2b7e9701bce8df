"""Word-region matching scores (DAMSM words loss) in Triton, flash-attention style.

A program takes one image ``i`` and a block of ``CAPS`` captions: its rows are the
``M = CAPS * T_PAD`` words of those captions (``T`` padded to a power of two), so the
two products ``S = W R_i^T`` and ``C = A R_i`` are GEMMs with ``M`` rows. All ``N``
regions (196, padded to 256) stay on chip as the columns of ``S``/``P``/``A``
(``[M, N_PAD]`` in float32): the softmax over words (eq. 3) runs down each column
within one caption, the softmax over regions (eq. 4) along each row, and both need
whole columns/rows. ``D`` is the reduction width of ``S`` and the output width of
``C``, so it is walked in ``BLOCK_D`` chunks: ``S`` accumulates over chunks, and the
cosine needs only ``<w,c>``, ``|w|^2`` and ``|c|^2``, which also accumulate chunk by
chunk, so ``C`` is never held whole. Only the scores leave the chip.

The backward pass recomputes ``S``, ``P``, ``A``, the cosines and the scores (in the
accumulation dtype, like the scores the forward returns) per block, then walks ``D``
twice more: once for ``dA = dC R^T`` and once for the input gradients. Gradient
accumulation without races:

* ``d_regions[i]`` sums over every caption. A backward program owns image ``i``
  and loops over a group of caption blocks (all of them unless ``B_v`` is too small
  to fill the GPU), so it adds into its own rows of a float32 (float64) buffer, one
  per group, with plain loads and stores; a barrier after each caption block makes
  the stores visible to the threads of the program that load them next. The groups'
  buffers are summed at the end. Atomics here would cost ``N * D`` per caption block.
* ``d_words[k]`` sums over every image and is added with float32 (float64) atomics,
  ``M * D`` per (image, caption block): the smaller of the two, since ``T < N``.
  The order of the additions varies, so ``d_words`` is not bitwise deterministic, except
  under ``torch.use_deterministic_algorithms(True)``: the images then go one launch each,
  whose programs own disjoint caption blocks, so every element of ``d_words`` gets one
  addition per launch, in image order.

16-bit inputs use tensor cores with float32 accumulation: ``A`` and the gradient
tiles ``dC``/``dS`` are rounded to the input dtype for the products, as in
flash-attention, and the backward keeps ``P`` and ``A`` in the input dtype while it
walks ``D`` (registers are what limits its tile). ``dC`` and ``dS`` enter the products
divided by a power of two above their largest entry, so float16 keeps the ~1/B^2
gradients of off-diagonal pairs. float32 products run in IEEE float32 unless TF32 is
enabled (``set_allow_tf32``); float64 runs the same kernels in float64. ``gamma1``,
``gamma2`` and ``eps`` are compile-time constants (exact in float64; one compilation per
value, and they stay fixed through training).
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
def _caption_rows(mask_ptr, kblk, B_t, T, D, CAPS: tl.constexpr, T_PAD: tl.constexpr):
    """Rows of a caption block: caption index, word offset from the block's first word, real or not.

    Offsets within a block (or an image) are int32; only the block's base is 64-bit.
    """
    m = tl.arange(0, CAPS * T_PAD)
    caption = kblk * CAPS + m // T_PAD
    t = m % T_PAD
    in_range = (caption < B_t) & (t < T)
    real = tl.load(mask_ptr + caption * T + t, mask=in_range, other=0) != 0
    return caption, ((m // T_PAD) * T + t) * D, real


@triton.jit
def _attention(words_ptr, regions_ptr, w_rows, w_ok, r_rows, r_ok, D, gamma1,
               CAPS: tl.constexpr, T_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
               ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``P`` (eq. 3, softmax over each caption's real words) and ``A`` (eq. 4), ``[M, N_PAD]``."""
    M: tl.constexpr = CAPS * T_PAD
    s = tl.zeros([M, N_PAD], ACC)
    for d0 in range(0, D, BLOCK_D):
        w = load_tile(words_ptr, w_rows, w_ok, d0, D, BLOCK_D)
        r = load_tile(regions_ptr, r_rows, r_ok, d0, D, BLOCK_D)
        s = dot(w, tl.trans(r), s, DOT_DTYPE, INPUT_PRECISION, ACC)
    s = tl.reshape(tl.where(w_ok[:, None], s, float("-inf")), [CAPS, T_PAD, N_PAD])
    col_max = tl.max(s, axis=1)
    col_max = tl.where(col_max == float("-inf"), 0.0, col_max)  # captions beyond B_t have no real word
    e = tl.exp(s - col_max[:, None, :])
    col_sum = tl.sum(e, axis=1)
    p = tl.reshape(e / tl.where(col_sum == 0.0, 1.0, col_sum)[:, None, :], [M, N_PAD])
    z = tl.where(r_ok[None, :], gamma1 * p, float("-inf"))  # padded regions leave the softmax
    e = tl.exp(z - tl.max(z, axis=1)[:, None])
    a = e / tl.sum(e, axis=1)[:, None]
    return p, a


@triton.jit
def _cosine_terms(words_ptr, regions_ptr, a_in, w_rows, w_ok, r_rows, r_ok, D,
                  CAPS: tl.constexpr, T_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                  ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``<w_t, c_t>``, ``|w_t|^2``, ``|c_t|^2`` with ``C = A R`` produced chunk by chunk."""
    M: tl.constexpr = CAPS * T_PAD
    num = tl.zeros([M], ACC)
    ww = tl.zeros([M], ACC)
    cc = tl.zeros([M], ACC)
    for d0 in range(0, D, BLOCK_D):
        w = load_tile(words_ptr, w_rows, w_ok, d0, D, BLOCK_D).to(ACC)
        c = dot(a_in, load_tile(regions_ptr, r_rows, r_ok, d0, D, BLOCK_D), None, DOT_DTYPE, INPUT_PRECISION, ACC)
        num += tl.sum(w * c, axis=1)
        ww += tl.sum(w * w, axis=1)
        cc += tl.sum(c * c, axis=1)
    return num, ww, cc


@triton.jit
def _caption_logsumexp(x, CAPS: tl.constexpr, T_PAD: tl.constexpr):
    """Log-sum-exp of ``x[M]`` within each caption; ``-inf`` entries are left out.

    A caption without a real word (all ``-inf``: every word masked, or beyond ``B_t``)
    gets ``-inf``, the log-sum-exp of an empty set.
    """
    x = tl.reshape(x, [CAPS, T_PAD])
    peak = tl.max(x, axis=1)
    empty = peak == float("-inf")
    peak = tl.where(empty, 0.0, peak)
    total = tl.sum(tl.exp(x - peak[:, None]), axis=1)
    return tl.where(empty, float("-inf"), peak + tl.log(tl.where(empty, 1.0, total)))


@triton.jit
def _scores_forward_kernel(words_ptr, regions_ptr, mask_ptr, scores_ptr, B_t, T, N, D,
                           GAMMA1: tl.constexpr, GAMMA2: tl.constexpr, EPS: tl.constexpr,
                           CAPS: tl.constexpr, T_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                           ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    # caption blocks vary fastest: programs running together share one image's regions in L2
    caption_blocks = tl.cdiv(B_t, CAPS)
    image = tl.program_id(0) // caption_blocks
    kblk = tl.program_id(0) % caption_blocks
    _, w_rows, w_ok = _caption_rows(mask_ptr, kblk, B_t, T, D, CAPS, T_PAD)
    words_ptr += tl.cast(kblk * CAPS, tl.int64) * T * D
    regions_ptr += image.to(tl.int64) * N * D
    regions = tl.arange(0, N_PAD)
    r_ok = regions < N
    r_rows = regions * D

    _, a = _attention(words_ptr, regions_ptr, w_rows, w_ok, r_rows, r_ok, D, tl.full([], GAMMA1, ACC),
                      CAPS, T_PAD, N_PAD, BLOCK_D, ACC, DOT_DTYPE, INPUT_PRECISION)
    num, ww, cc = _cosine_terms(words_ptr, regions_ptr, a.to(regions_ptr.dtype.element_ty), w_rows, w_ok, r_rows,
                                r_ok, D, CAPS, T_PAD, BLOCK_D, ACC, DOT_DTYPE, INPUT_PRECISION)
    cos = num / tl.maximum(tl.sqrt(ww) * tl.sqrt(cc), tl.full([], EPS, ACC))
    score = _caption_logsumexp(tl.where(w_ok, tl.full([], GAMMA2, ACC) * cos, float("-inf")), CAPS, T_PAD)
    captions = kblk * CAPS + tl.arange(0, CAPS)
    tl.store(scores_ptr + image.to(tl.int64) * B_t + captions, score.to(scores_ptr.dtype.element_ty),
             mask=captions < B_t)


@triton.jit
def _scores_backward_kernel(grad_scores_ptr, words_ptr, regions_ptr, mask_ptr, grad_words_ptr, grad_regions_ptr,
                            B_t, T, N, D, blocks_per_group,
                            GAMMA1: tl.constexpr, GAMMA2: tl.constexpr, EPS: tl.constexpr,
                            CAPS: tl.constexpr, T_PAD: tl.constexpr, N_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                            ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """One program per (image, group of caption blocks).

    It adds into its own ``grad_regions[group, image]`` rows with plain loads and stores,
    and into ``grad_words`` atomically.
    """
    M: tl.constexpr = CAPS * T_PAD
    in_ty = regions_ptr.dtype.element_ty
    gamma1 = tl.full([], GAMMA1, ACC)
    gamma2 = tl.full([], GAMMA2, ACC)
    eps = tl.full([], EPS, ACC)
    image = tl.program_id(0)
    group = tl.program_id(1)
    regions_ptr += image.to(tl.int64) * N * D
    grad_regions_ptr += (group.to(tl.int64) * tl.num_programs(0) + image) * N * D
    regions = tl.arange(0, N_PAD)
    r_ok = regions < N
    r_rows = regions * D

    first_block = group * blocks_per_group
    block_count = tl.minimum(blocks_per_group, tl.cdiv(B_t, CAPS) - first_block)
    for step in range(0, block_count):
        # each image starts at another caption block: co-resident programs of one group
        # would otherwise add into the same grad_words rows at the same time
        kblk = first_block + (step + image) % block_count
        caption, w_rows, w_ok = _caption_rows(mask_ptr, kblk, B_t, T, D, CAPS, T_PAD)
        block_words_ptr = words_ptr + tl.cast(kblk * CAPS, tl.int64) * T * D
        block_grad_words_ptr = grad_words_ptr + tl.cast(kblk * CAPS, tl.int64) * T * D
        p, a = _attention(block_words_ptr, regions_ptr, w_rows, w_ok, r_rows, r_ok, D, gamma1,
                          CAPS, T_PAD, N_PAD, BLOCK_D, ACC, DOT_DTYPE, INPUT_PRECISION)
        # P and A live through the whole D walk below: keep them in the input dtype (halves
        # their registers for 16-bit inputs; exact for float32/float64)
        p = p.to(in_ty)
        a_in = a.to(in_ty)
        num, ww, cc = _cosine_terms(block_words_ptr, regions_ptr, a_in, w_rows, w_ok, r_rows, r_ok, D,
                                    CAPS, T_PAD, BLOCK_D, ACC, DOT_DTYPE, INPUT_PRECISION)
        norms = tl.sqrt(ww) * tl.sqrt(cc)
        unclamped = norms > eps
        den = tl.where(unclamped, norms, eps)
        cos = num / den
        logit = tl.where(w_ok, gamma2 * cos, float("-inf"))
        score = tl.reshape(tl.broadcast_to(_caption_logsumexp(logit, CAPS, T_PAD)[:, None], [CAPS, T_PAD]), [M])
        grad_score = tl.load(grad_scores_ptr + image.to(tl.int64) * B_t + caption, mask=w_ok, other=0.0).to(ACC)
        # d score / d cos_t = gamma2 * softmax_t(gamma2 * cos); a caption without a real word
        # (score -inf) has no w_ok row, so it gets no gradient and passes none to the regions
        d_cos = tl.where(w_ok, grad_score * gamma2 * tl.exp(logit - tl.where(w_ok, score, 0.0)), 0.0)
        # d cos = alpha * (c dw + w dc) + beta_w * w dw + beta_c * c dc; the clamped branch has no beta terms
        alpha = d_cos / den
        beta_w = tl.where(unclamped, -d_cos * cos / tl.where(unclamped, ww, 1.0), 0.0)
        beta_c = tl.where(unclamped, -d_cos * cos / tl.where(unclamped, cc, 1.0), 0.0)
        # the products take dC and dS divided by a power of two above their largest entry:
        # gradients of off-diagonal pairs are ~1/B^2, below float16's normal range
        # (|dC_td| <= |alpha_t| |w_t| + |beta_t| |c_t| bounds dC without forming it)
        context_unit = power_of_2_above(tl.max(tl.abs(alpha) * tl.sqrt(ww) + tl.abs(beta_c) * tl.sqrt(cc), axis=0))
        alpha_c = alpha / context_unit
        beta_c = beta_c / context_unit

        d_attn = tl.zeros([M, N_PAD], ACC)
        for d0 in range(0, D, BLOCK_D):
            w = load_tile(block_words_ptr, w_rows, w_ok, d0, D, BLOCK_D)
            r = load_tile(regions_ptr, r_rows, r_ok, d0, D, BLOCK_D)
            c = dot(a_in, r, None, DOT_DTYPE, INPUT_PRECISION, ACC)
            d_context = alpha_c[:, None] * w.to(ACC) + beta_c[:, None] * c
            d_attn = dot(d_context.to(in_ty), tl.trans(r), d_attn, DOT_DTYPE, INPUT_PRECISION, ACC)
        d_attn *= context_unit
        # back through eq. 4 (softmax along the row) and eq. 3 (softmax down the caption's column)
        a = a_in.to(ACC)
        d_p = gamma1 * a * (d_attn - tl.sum(d_attn * a, axis=1)[:, None])
        p = p.to(ACC)
        col_dot = tl.sum(tl.reshape(d_p * p, [CAPS, T_PAD, N_PAD]), axis=1)
        d_s = p * (d_p - tl.reshape(tl.broadcast_to(col_dot[:, None, :], [CAPS, T_PAD, N_PAD]), [M, N_PAD]))
        score_unit = power_of_2_above(tl.max(tl.max(tl.abs(d_s), axis=1), axis=0))
        d_s_in = (d_s / score_unit).to(in_ty)

        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            d_ok = dims < D
            w = load_tile(block_words_ptr, w_rows, w_ok, d0, D, BLOCK_D)
            r = load_tile(regions_ptr, r_rows, r_ok, d0, D, BLOCK_D)
            c = dot(a_in, r, None, DOT_DTYPE, INPUT_PRECISION, ACC)
            d_context = alpha_c[:, None] * w.to(ACC) + beta_c[:, None] * c
            d_r = dot(tl.trans(a_in), d_context.to(in_ty), None, DOT_DTYPE, INPUT_PRECISION, ACC) * context_unit
            d_r += dot(tl.trans(d_s_in), w, None, DOT_DTYPE, INPUT_PRECISION, ACC) * score_unit
            r_ptrs = grad_regions_ptr + r_rows[:, None] + dims[None, :]
            r_mask = r_ok[:, None] & d_ok[None, :]
            tl.store(r_ptrs, tl.load(r_ptrs, mask=r_mask, other=0.0) + d_r, mask=r_mask)
            d_w = dot(d_s_in, r, None, DOT_DTYPE, INPUT_PRECISION, ACC) * score_unit
            d_w += alpha[:, None] * c + beta_w[:, None] * w.to(ACC)
            # a plain sum: no ordering with other memory operations needed
            tl.atomic_add(block_grad_words_ptr + w_rows[:, None] + dims[None, :], d_w,
                          mask=w_ok[:, None] & d_ok[None, :], sem="relaxed")
        # the next caption block reloads grad_regions rows, possibly in other threads of this program
        tl.debug_barrier()


# Preferred GPU tiles per (pass, operand kind): (words per block, BLOCK_D, num_warps, num_stages).
# Picked by compiling for sm_90 at T_PAD = 32, N_PAD = 256: the backward holds three
# [M, N_PAD] tiles through a D walk, so it takes half the words and narrower D chunks.
# "fp32" covers IEEE and TF32 products. Pipelining (num_stages) prefetches only loads
# that feed products (words, regions) within one D walk, never the grad_regions rows the
# backward reads back across caption blocks. _launch_config shrinks them to the GPU.
_GPU_TILES = {
    ("forward", "16bit"): (64, 32, 8, 2),
    ("backward", "16bit"): (32, 16, 8, 2),
    ("forward", "fp32"): (32, 16, 8, 2),
    ("backward", "fp32"): (32, 16, 8, 2),
    ("forward", "fp64"): (32, 16, 8, 1),
    ("backward", "fp64"): (32, 16, 8, 1),
}
# registers per thread the [M, N_PAD] tiles may take (estimated by ``footprint``): at 160,
# ptxas spills under 1 KB per thread (sm_80/90, T_PAD = 32, float32 backward). float64
# serves verification, not speed: it may spill more (~1.5 KB at T_PAD = 32).
_TILE_REGISTERS = {"16bit": 160, "fp32": 160, "fp64": 320}
# more warps share the tiles of 16-bit inputs; past 8 warps ptxas caps float32 kernels at
# 64-128 registers per thread and spills more than 8 warps do
MAX_WARPS = {"16bit": 16, "fp32": 8, "fp64": 8}


def footprint(kernel: str, dtype: torch.dtype, config: dict) -> tuple[int, int]:
    """Estimated (shared memory bytes, tile registers per thread) of ``kernel`` with ``config``.

    Shared memory: the pipelined word and region chunks, and the ``[M, N_PAD]`` tiles that
    enter a product as an operand (``A``; backward also ``dS`` and ``A^T``, and a scratch tile).
    Registers: the ``[M, N_PAD]`` tiles alive together (forward: S, P, A; backward: P and A
    in the input dtype, dA and the transient dP, dS in the accumulation dtype).
    """
    size, acc = torch.empty(0, dtype=dtype).element_size(), accumulation_dtype(dtype).itemsize
    rows, n_pad = config["CAPS"] * config["T_PAD"], config["N_PAD"]
    tile = rows * n_pad
    threads = 32 * config["num_warps"]
    shared = config["num_stages"] * (rows + n_pad) * config["BLOCK_D"] * size
    if kernel == "forward":
        shared += tile * size
        held = 3 * tile * acc
    else:
        # + a layout-conversion scratch tile in the accumulation dtype and a margin: what
        # ptxas reported at T_PAD = 32 and 64 on triton 3.6 and 3.9
        shared += 2 * tile * size + tile * acc + 8192
        held = 2 * tile * size + 3 * tile * acc
    return shared, held // 4 // threads


def _launch_config(words: torch.Tensor, regions: torch.Tensor, kernel: str, caps: int | None = None,
                   block_d: int | None = None, gpu: GPU | None = None) -> dict:
    """Tiles of ``kernel`` ("forward" or "backward"): ``CAPS`` captions of ``T_PAD`` words per block,
    all ``N_PAD`` regions, ``BLOCK_D`` chunks of the embedding.

    Sized for ``gpu`` (default: the GPU ``words`` is on; the interpreter's small tiles on the
    CPU): from the preferred tiles, captions per block, D chunk and stages shrink and warps
    grow until the estimated ``footprint`` fits; a shape that fits in no way raises
    ValueError naming the limit (``unsupported_reason`` reports it before dispatch).
    ``caps``/``block_d`` override the choice (tests use them to cross block boundaries).
    """
    T, N = words.shape[1], regions.shape[1]
    t_pad = triton.next_power_of_2(T)
    gpu = gpu or gpu_of(words)
    if gpu is None:
        tile_caps, tile_d, num_warps, num_stages, smallest = 2, 8, 4, 1, 1
    else:
        kind = {torch.float64: "fp64", torch.float32: "fp32"}.get(words.dtype, "16bit")
        rows, tile_d, num_warps, num_stages = _GPU_TILES[kernel, kind]
        tile_caps = max(1, rows // t_pad)
        smallest = MIN_GPU_TILE
    if caps is not None:
        check_block("caps", caps)
    if block_d is not None:
        check_block("block_d", block_d)
    # the products' M is CAPS * T_PAD words, N (or K) N_PAD regions, K (or N) BLOCK_D
    config = dict(CAPS=max(caps or tile_caps, triton.cdiv(smallest, t_pad)), BLOCK_D=max(smallest, block_d or tile_d),
                  num_warps=num_warps, num_stages=num_stages, T_PAD=t_pad,
                  N_PAD=max(smallest, triton.next_power_of_2(N)))
    if gpu is not None and caps is None and block_d is None:
        _shrink_to_fit(kernel, words.dtype, config, gpu)
    config.update(ACC=TL_DTYPES[accumulation_dtype(words.dtype)], DOT_DTYPE=dot_operand_dtype(words.dtype),
                  INPUT_PRECISION=dot_precision(words.dtype))
    return config


def _shrink_to_fit(kernel: str, dtype: torch.dtype, config: dict, gpu: GPU) -> None:
    # fewer captions per block, then more warps for the registers; narrower D chunks for
    # shared memory. Never fewer stages: at one stage ptxas spills kilobytes per thread.
    smallest_caps = triton.cdiv(MIN_GPU_TILE, config["T_PAD"])
    kind = {torch.float64: "fp64", torch.float32: "fp32"}.get(dtype, "16bit")
    max_warps, max_registers = MAX_WARPS[kind], _TILE_REGISTERS[kind]
    while True:
        shared, registers = footprint(kernel, dtype, config)
        if shared <= gpu.shared_memory and registers <= max_registers:
            return
        if registers > max_registers and config["CAPS"] > smallest_caps:
            config["CAPS"] //= 2
        elif registers > max_registers and config["num_warps"] < max_warps:
            config["num_warps"] *= 2
        elif shared > gpu.shared_memory and config["BLOCK_D"] > MIN_GPU_TILE:
            config["BLOCK_D"] //= 2
        else:
            raise ValueError(
                f"word_region {kernel} keeps {config['T_PAD']} (padded) words x {config['N_PAD']} (padded) regions "
                f"on chip: about {shared} B of shared memory (sm_{gpu.arch} has {gpu.shared_memory} B) and "
                f"{registers} tile registers per thread (limit {max_registers}, {config['num_warps']} warps) "
                f"in {dtype}")


def word_region_scores_forward(words, regions, word_mask, gamma1, gamma2, eps, *,
                               caps: int | None = None, block_d: int | None = None, gpu: GPU | None = None):
    """``scores[B_v, B_t]`` in the accumulation dtype; ``caps``/``block_d`` override the tiles, ``gpu`` sizes
    them for another GPU."""
    (B_t, T, D), (B_v, N, _) = words.shape, regions.shape
    config = _launch_config(words, regions, "forward", caps, block_d, gpu)
    scores = torch.empty(B_v, B_t, dtype=accumulation_dtype(words.dtype), device=words.device)
    grid = (B_v * triton.cdiv(B_t, config["CAPS"]),)
    with device_of(words):
        _scores_forward_kernel[grid](words, regions, word_mask.view(torch.uint8), scores, B_t, T, N, D,
                                     GAMMA1=float(gamma1), GAMMA2=float(gamma2), EPS=float(eps), **config)
    return scores


def _caption_groups(regions: torch.Tensor, caption_blocks: int) -> int:
    """How many groups the caption blocks of the backward are split into.

    One program per image leaves SMs idle when ``B_v`` is small; splitting the captions
    into groups gives each (image, group) program its own ``grad_regions`` copy, summed
    afterwards. Aim at two programs per SM with the extra copies under 64 MB.
    """
    if regions.device.type != "cuda":
        return 1
    B_v = regions.shape[0]
    sms = torch.cuda.get_device_properties(regions.device).multi_processor_count
    copy_bytes = regions[0].numel() * B_v * accumulation_dtype(regions.dtype).itemsize
    wanted = triton.cdiv(2 * sms, B_v)
    affordable = 1 + (64 << 20) // copy_bytes
    return max(1, min(wanted, affordable, caption_blocks))


def word_region_scores_backward(grad_scores, words, regions, word_mask, gamma1, gamma2, eps, *,
                                caps: int | None = None, block_d: int | None = None,
                                caption_groups: int | None = None, gpu: GPU | None = None):
    """``(grad_words, grad_regions)``; the scores are recomputed in the accumulation dtype.

    ``caps``/``block_d`` override the tiles, ``caption_groups`` the split of the captions,
    ``gpu`` sizes the tiles for another GPU.
    """
    (B_t, T, D), (B_v, N, _) = words.shape, regions.shape
    config = _launch_config(words, regions, "backward", caps, block_d, gpu)
    caption_blocks = triton.cdiv(B_t, config["CAPS"])
    acc_dtype = accumulation_dtype(words.dtype)
    grad_words = torch.zeros(words.shape, dtype=acc_dtype, device=words.device)
    grad_regions = torch.empty(regions.shape, dtype=acc_dtype, device=regions.device)
    # the images of one launch add into grad_words in no fixed order (see the module docstring)
    images_per_launch = 1 if torch.are_deterministic_algorithms_enabled() else max(B_v, 1)
    for first in range(0, B_v, images_per_launch):
        images = slice(first, first + images_per_launch)
        launch_regions = regions[images]
        blocks_per_group = triton.cdiv(caption_blocks,
                                       caption_groups or _caption_groups(launch_regions, caption_blocks))
        groups = triton.cdiv(caption_blocks, blocks_per_group)
        group_grad_regions = torch.zeros((groups,) + tuple(launch_regions.shape), dtype=acc_dtype,
                                         device=regions.device)
        with device_of(words):
            _scores_backward_kernel[(launch_regions.shape[0], groups)](
                grad_scores[images], words, launch_regions, word_mask.view(torch.uint8), grad_words,
                group_grad_regions, B_t, T, N, D, blocks_per_group,
                GAMMA1=float(gamma1), GAMMA2=float(gamma2), EPS=float(eps), **config)
        grad_regions[images] = group_grad_regions[0] if groups == 1 else group_grad_regions.sum(0)
    return grad_words.to(words.dtype), grad_regions.to(regions.dtype)
