"""Scaling of the global-batch losses over ranks: samples/s and peak memory per rank against world size.

Measured: one process per rank on this machine (``gloo`` on the CPU, ``nccl`` with
``--device cuda`` and enough GPUs), a fixed global batch split over 1, 2, 4, ...
ranks; every step runs InfoNCE (CICL) and the word-region loss (WRCL) forward and
backward with ``group=`` (world size 1: the plain ops). Also printed: the per-rank
memory MODEL of the README for global batches of 4096 to 65536 (computed, not measured).

    python benchmarks/bench_distributed.py --worlds 1 2 4 --batch 256 --json results.json
    python benchmarks/bench_distributed.py --model-only
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODEL_BATCHES = (4096, 8192, 16384, 32768, 65536)


def per_rank_memory_model(batch: int, world: int, dim: int, words: int, regions: int, element_bytes: int,
                          accumulation_bytes: int = 4) -> dict[str, float]:
    """Bytes one rank holds for the two losses with the fused kernels (the README's memory model).

    Gathered embeddings (InfoNCE's two ``[B, D]``, the words ``[B, T, D]`` and regions
    ``[B, N, D]``), as many again for their gradients and for the all-gather's receive
    buffers; the word-region scores of this rank's rows and columns ``2 [B_l, B]`` and
    their gradients. The fused InfoNCE keeps only ``O(B_l)`` statistics, never logits.
    """
    local = -(-batch // world)
    gathered = batch * (2 + words + regions) * dim * element_bytes
    scores = 4 * local * batch * accumulation_bytes
    parts = {"gathered embeddings": gathered, "their gradients": gathered, "gather buffers": gathered,
             "word-region scores + gradients": scores}
    parts["total"] = sum(parts.values())
    return parts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _rank(rank, world, port, args, queue):
    from tgfr.ops import distributed as dist_ops
    from tgfr.ops import info_nce, word_region_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    group = None
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
        group = dist.group.WORLD
    local = args.batch // world + (rank < args.batch % world)
    g = torch.Generator(device="cpu").manual_seed(rank)
    dtype = getattr(torch, args.dtype)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

    a, b = leaf(local, args.dim), leaf(local, args.dim)
    words, regions = leaf(local, args.words, args.dim), leaf(local, args.regions, args.dim)
    ids = torch.randint(0, max(args.batch // 4, 1), (local,), generator=g).to(device)
    temperature = torch.tensor(0.07, device=device, requires_grad=True)

    def step():
        normalize = torch.nn.functional.normalize
        if group is None:
            c = info_nce(normalize(a, dim=-1), normalize(b, dim=-1), temperature, ids, args.backend)
            i2t, t2i = word_region_loss(normalize(words, dim=-1), regions, None, ids, backend=args.backend)
        else:
            c = dist_ops.info_nce(normalize(a, dim=-1), normalize(b, dim=-1), temperature, ids, args.backend, True,
                                  group)
            i2t, t2i = dist_ops.word_region_loss(normalize(words, dim=-1), regions, None, ids, 4.0, 5.0, 10.0, 1e-8,
                                                 args.backend, group)
        (c + i2t + t2i).backward()

    before = _peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if group is not None:
            dist.barrier(group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()
    queue.put({"rank": rank, "median_s": sorted(times)[len(times) // 2], "peak_bytes": peak,
               "peak_growth_bytes": peak - (0 if device.type == "cuda" else before)})
    if group is not None:
        dist.destroy_process_group()


def measure(world: int, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a rank of world size {world} failed (exit code {p.exitcode})")
    step = max(r["median_s"] for r in results)  # a step ends when the slowest rank ends
    return {"world": world, "global_batch": args.batch, "step_s": step, "samples_per_s": args.batch / step,
            "peak_mib_per_rank": max(r["peak_bytes"] for r in results) / 2**20,
            "peak_growth_mib_per_rank": max(r["peak_growth_bytes"] for r in results) / 2**20}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="world sizes (default: 1 2 4)")
    parser.add_argument("--batch", type=int, default=256, help="global batch (default: 256)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--words", type=int, default=16, help="words per caption T")
    parser.add_argument("--regions", type=int, default=49, help="regions per image N")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backend", default="auto", help="tgfr.ops backend (default: auto)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default: 1)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--model-world", type=int, default=8, help="ranks of the memory model (default: 8)")
    parser.add_argument("--model-only", action="store_true", help="print the memory model only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if min(args.worlds) < 1 or args.batch < 2 * max(args.worlds):
        parser.error("--worlds must be >= 1 and --batch at least 2 per rank")

    rows = []
    if not args.model_only:
        print(f"measured: global batch {args.batch}, D={args.dim}, T={args.words}, N={args.regions}, {args.dtype}, "
              f"{args.device}, backend {args.backend}, {args.threads} thread(s) per rank")
        print("| ranks | step (ms) | samples/s | peak MiB per rank | growth MiB per rank |\n|---|---|---|---|---|")
        for world in args.worlds:
            row = measure(world, args)
            rows.append(row)
            print(f"| {world} | {1e3 * row['step_s']:.1f} | {row['samples_per_s']:.0f} | "
                  f"{row['peak_mib_per_rank']:.0f} | {row['peak_growth_mib_per_rank']:.0f} |", flush=True)
    element = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    model = []
    print(f"\nper-rank memory MODEL (computed, not measured): {args.model_world} ranks, D=256, T=22, N=196, "
          f"{args.dtype} embeddings, float32 scores")
    print("| global batch | per rank | embeddings gathered (GiB) | scores (GiB) | total (GiB) |\n|---|---|---|---|---|")
    for batch in MODEL_BATCHES:
        parts = per_rank_memory_model(batch, args.model_world, 256, 22, 196, element)
        model.append({"global_batch": batch, "world": args.model_world, **parts})
        print(f"| {batch} | {-(-batch // args.model_world)} | {parts['gathered embeddings'] / 2**30:.2f} | "
              f"{parts['word-region scores + gradients'] / 2**30:.2f} | {parts['total'] / 2**30:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": rows, "memory_model": model, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
