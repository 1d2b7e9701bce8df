"""The GEMM floor of the cpp word-region kernel: its matrix products alone, timed on one thread.

The kernel (csrc/cpu/word_region_cpu.cpp) does per image and caption block of up to 256 words
(`rows`): forward S = W R^T [rows, D]x[D, N] and A G [rows, N]x[N, N]; backward the same two again
(it recomputes the tile) plus A^T diag(beta) A [N, rows]x[rows, N], dW += E R [rows, N]x[N, D] and
dR += E^T W [N, rows]x[rows, D]; per image G = R R^T (forward and backward) and (.) R [N, N]x[N, D].
This times those products with torch.mm on one thread (CPU time of the thread, so that other
processes on the machine do not count), in the benchmark's shapes (ragged
captions of T/2..T words), and divides by the thread count for the floor of a perfectly parallel run.

It also prints the floor of a kernel that kept every tile's S and A G from the forward for the
backward (no recomputation, no second Gram matrix), and what keeping them would hold: 2 B_v W N
values, W the batch's words, the size the fused kernels never allocate. That floor bounds how fast
any backend that recomputes can get against one that stores.

    python benchmarks/gemm_floor.py --batch 64
    python benchmarks/gemm_floor.py --out benchmarks/GEMM_FLOOR.md   # the same, also written down with the machine
"""
import argparse
import time

import torch

from tgfr.atomic import write_text
from tgfr.bench.runner import environment

KERNEL_BLOCK_ROWS = 256  # kBlockRows in word_region_cpu.cpp


def caption_blocks(lengths: list[int]) -> list[int]:
    """Word counts of the kernel's caption blocks (whole captions, a new block past 256 words)."""
    blocks, rows = [], 0
    for n in lengths:
        if rows and rows + n > KERNEL_BLOCK_ROWS:
            blocks.append(rows)
            rows = 0
        rows += n
    return blocks + [rows]


def timed(a, b, repeats):
    out = torch.empty(a.shape[0], b.shape[1])
    torch.mm(a, b, out=out)
    start = time.thread_time()
    for _ in range(repeats):
        torch.mm(a, b, out=out)
    return (time.thread_time() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--T", type=int, default=22)
    parser.add_argument("--N", type=int, default=196)
    parser.add_argument("--D", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", help="also write the lines to this Markdown file, with the machine and date")
    args = parser.parse_args()
    env = environment("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    B, T, N, D = args.batch, args.T, args.N, args.D
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=gen).tolist()
    x = lambda *shape: torch.randn(*shape, generator=gen)
    per_rows = {}
    for rows in sorted(set(caption_blocks(lengths))):
        fwd = timed(x(rows, D), x(D, N), args.repeats) + timed(x(rows, N), x(N, N), args.repeats)
        bwd = fwd + timed(x(N, rows), x(rows, N), args.repeats) + timed(x(rows, N), x(N, D), args.repeats) \
            + timed(x(N, rows), x(rows, D), args.repeats)
        per_rows[rows] = (fwd, bwd)
    gram = timed(x(N, D), x(D, N), args.repeats)
    last = timed(x(N, N), x(N, D), args.repeats)
    blocks = caption_blocks(lengths)
    forward = B * (gram + sum(per_rows[r][0] for r in blocks))
    backward = B * (gram + last + sum(per_rows[r][1] for r in blocks))
    words = sum(lengths)
    flops = 2 * (B * words * N * (D + N) + B * N * N * D) \
        + 2 * (B * words * N * (3 * D + 2 * N) + 2 * B * N * N * D)
    lines = [f"B={B}: {words} words in {len(blocks)} blocks of {blocks[:3]}...; GEMM {flops / 1e9:.1f} GFLOP",
             f"one thread: forward {forward * 1e3:.0f} ms, backward {backward * 1e3:.0f} ms, "
             f"total {(forward + backward) * 1e3:.0f} ms ({flops / (forward + backward) / 1e9:.0f} GFLOP/s)",
             f"floor on {threads} threads (perfect split): {(forward + backward) / threads * 1e3:.0f} ms"]
    # the backward recomputes exactly the forward's products (Gram matrices included), so a kernel that kept
    # them would do the forward's products once plus the backward's own: as many as the backward alone
    stored_mb = 2 * B * words * N * torch.finfo(torch.float32).bits / 8 / 2**20
    lines.append(f"without the backward's recomputation: floor {backward / threads * 1e3:.0f} ms, holding "
                 f"{stored_mb:.0f} MB of float32 tiles (S and A G) from the forward to the backward")
    print("\n".join(lines))
    if args.out:
        header = (f"# GEMM floor of the cpp word-region kernel\n\nMachine: {env['cpu']}, {env['cores']} cores; "
                  f"Python {env['python']}, torch {env['torch']}; {env['date']}. Produced by "
                  f"`python benchmarks/gemm_floor.py --batch {B} --T {T} --N {N} --D {D}` (float32).\n\n")
        write_text(args.out, header + "```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
