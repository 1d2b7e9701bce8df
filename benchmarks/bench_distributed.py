"""The global-batch losses over ranks: time, peak memory and bytes sent per rank, two schemes side by side.

Measured: one process per rank on this machine (``gloo`` on the CPU, ``nccl`` with
``--device cuda`` and as many GPUs as ranks), a fixed global batch split over 1, 2, 3, ...
ranks; each rank times the word-region loss (WRCL) forward and backward, then InfoNCE
(CICL) forward and backward, with ``group=`` (world size 1: the plain ops). Two schemes of
the word-region loss, each in its own processes:

* ``all_to_all`` (the ops' scheme): a rank scores its own images against every caption
  (words gathered, regions never leave the rank) and an all-to-all hands each rank the
  score blocks of its captions; every pair is scored once in the job.
* ``gather`` (the former scheme): words and regions gathered, a rank scores its images
  against every caption and its captions against every image; every pair twice.

Per rank and step: the median time (a step ends when the slowest rank ends: the maximum
over ranks), the growth of the peak resident memory (CPU) or the peak allocated memory
(CUDA) over the word-region steps, and the payload bytes the loss's collectives send
(all-gather ``(W-1) n``, all-reduce ``2 (W-1)/W n`` as a ring, all-to-all the parts for
other ranks). ``--repeats`` repeats every measurement, the schemes interleaved, and
reports medians. Also printed: the per-rank memory MODEL of both schemes for global
batches of 4096 to 65536 (computed, not measured).

    python benchmarks/bench_distributed.py --worlds 1 2 3 --repeats 3 --json benchmarks/DISTRIBUTED_RESULTS.json
    python benchmarks/bench_distributed.py --model-only
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODEL_BATCHES = (4096, 8192, 16384, 32768, 65536)
SCHEMES = ("all_to_all", "gather")
ACCUMULATION_BYTES = 4  # float32 scores


def per_rank_memory_model(batch: int, world: int, dim: int, words: int, regions: int, element_bytes: int,
                          scheme: str = "all_to_all") -> dict[str, int]:
    """Bytes one rank holds for the two losses with the fused kernels (the docs' memory model).

    Gathered embeddings (InfoNCE's two ``[B, D]``, the words ``[B, T, D]`` and, in the
    ``gather`` scheme, the regions ``[B, N, D]``), held three times: the gathered copy, its
    gradient and the all-gather's receive buffers. In the ``all_to_all`` scheme the regions
    stay on their rank: only the gradient of the rank's ``[B_l, N, D]`` (the shard itself is
    the caller's, as every rank's own rows are in both schemes). Scores: ``gather`` holds
    its rows' and its columns' ``[B_l, B]`` scores and their gradients; ``all_to_all`` its
    rows' scores and the column blocks the all-to-all brought (its receive buffer), their
    gradients, and the exchange's send buffer (transient, one block each way). The fused InfoNCE keeps only ``O(B_l)``
    statistics, never logits.
    """
    local = -(-batch // world)
    block = local * batch * ACCUMULATION_BYTES
    if scheme == "gather":
        gathered = batch * (2 + words + regions) * dim * element_bytes
        parts = {"gathered embeddings": gathered, "their gradients": gathered, "gather buffers": gathered,
                 "region gradient": 0, "word-region scores + gradients": 4 * block, "exchange buffers": 0}
    else:
        gathered = batch * (2 + words) * dim * element_bytes
        parts = {"gathered embeddings": gathered, "their gradients": gathered, "gather buffers": gathered,
                 "region gradient": local * regions * dim * element_bytes,
                 "word-region scores + gradients": 4 * block, "exchange buffers": block}
    parts["total"] = sum(parts.values())
    return parts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


class _BytesSent:
    """Counts the payload bytes this rank's collectives send, by wrapping torch.distributed's functions."""

    def __init__(self, world: int):
        self.world, self.count = world, 0
        for name in ("all_gather", "all_reduce", "all_to_all_single"):
            setattr(dist, name, self._counting(name, getattr(dist, name)))

    def _counting(self, name, collective):
        def counted(*args, **kwargs):
            self.count += self._sent(name, *args, **kwargs)
            return collective(*args, **kwargs)
        return counted

    def _sent(self, name, first, second=None, output_split_sizes=None, input_split_sizes=None, group=None, **_):
        w = self.world
        if name == "all_gather":  # (outputs, input): the input to every other rank
            return (w - 1) * second.numel() * second.element_size()
        if name == "all_reduce":  # a ring: 2 (W-1)/W of the tensor
            return round(2 * (w - 1) / w * first.numel() * first.element_size())
        rows = second.shape[0]  # all_to_all_single(output, input, output_splits, input_splits)
        row_bytes = second.numel() // max(rows, 1) * second.element_size()
        splits = input_split_sizes or [rows // w] * w
        return row_bytes * (sum(splits) - splits[dist.get_rank(group)])


def _rank(rank, world, port, scheme, args, queue):
    from tgfr.ops import info_nce, word_region, word_region_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    group = None
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
        group = dist.group.WORLD
    sent = _BytesSent(world)
    local = args.batch // world + (rank < args.batch % world)
    g = torch.Generator(device="cpu").manual_seed(rank)
    dtype = getattr(torch, args.dtype)

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()

    a, b = leaf(local, args.dim), leaf(local, args.dim)
    words, regions = leaf(local, args.words, args.dim), leaf(local, args.regions, args.dim)
    ids = torch.randint(0, max(args.batch // 4, 1), (local,), generator=g).to(device)
    temperature = torch.tensor(0.07, device=device, requires_grad=True)
    normalize = torch.nn.functional.normalize

    def word_region_step():
        unit = normalize(words, dim=-1)
        if group is None:
            i2t, t2i = word_region_loss(unit, regions, None, ids, backend=args.backend)
        else:
            i2t, t2i = word_region.global_batch_loss(unit, regions, None, ids, 4.0, 5.0, 10.0, 1e-8, args.backend,
                                                     group, gather_regions=scheme == "gather")
        (i2t + t2i).backward()
        return (i2t + t2i).item()

    def info_nce_step():
        loss = info_nce(normalize(a, dim=-1), normalize(b, dim=-1), temperature, ids, args.backend, group=group)
        loss.backward()
        return loss.item()

    def timed(step):
        times, bytes_sent, value = [], [], None
        for i in range(args.warmup + args.steps):
            if group is not None:
                dist.barrier(group)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            sent.count, start = 0, time.perf_counter()
            value = step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
                bytes_sent.append(sent.count)
        return statistics.median(times), max(bytes_sent), value

    before = _peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wr_s, wr_bytes, wr_loss = timed(word_region_step)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _peak_rss_bytes() - before
    nce_s, nce_bytes, _ = timed(info_nce_step)
    queue.put({"rank": rank, "word_region_s": wr_s, "info_nce_s": nce_s, "word_region_peak_bytes": peak,
               "word_region_bytes_sent": wr_bytes, "info_nce_bytes_sent": nce_bytes, "word_region_loss": wr_loss})
    if group is not None:
        dist.destroy_process_group()


def measure(world: int, scheme: str, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, scheme, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted((queue.get(timeout=1800) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a rank of world size {world} failed (exit code {p.exitcode})")
    # a step ends when the slowest rank ends
    return {"world": world, "scheme": scheme if world > 1 else "single process",
            "word_region_ms": 1e3 * max(r["word_region_s"] for r in results),
            "info_nce_ms": 1e3 * max(r["info_nce_s"] for r in results),
            "word_region_peak_mib": max(r["word_region_peak_bytes"] for r in results) / 2**20,
            "word_region_mib_sent": max(r["word_region_bytes_sent"] for r in results) / 2**20,
            "info_nce_mib_sent": max(r["info_nce_bytes_sent"] for r in results) / 2**20,
            # the mean over ranks is the loss of the global batch, whichever the scheme
            "word_region_loss": statistics.fmean(r["word_region_loss"] for r in results)}


_MEDIANS = ("word_region_ms", "info_nce_ms", "word_region_peak_mib")


def _median_row(runs: list[dict]) -> dict:
    row = dict(runs[0])
    for key in _MEDIANS:
        row[key] = statistics.median(r[key] for r in runs)
        row[f"{key}_runs"] = [r[key] for r in runs]
    return row


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 3], help="world sizes (default: 1 2 3)")
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES),
                        help="word-region schemes to measure (default: both)")
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
    parser.add_argument("--repeats", type=int, default=1, help="measure everything this many times (default: 1)")
    parser.add_argument("--model-world", type=int, default=8, help="ranks of the memory model (default: 8)")
    parser.add_argument("--model-only", action="store_true", help="print the memory model only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if min(args.worlds) < 1 or args.batch < 2 * max(args.worlds):
        parser.error("--worlds must be >= 1 and --batch at least 2 per rank")
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0")

    rows, environment = [], {}
    if not args.model_only:
        environment = {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                       "torch": torch.__version__, "python": platform.python_version(),
                       "cpu": _cpu_model(), "cores": os.cpu_count(), "load_before": _load()}
        print(f"measured: global batch {args.batch}, D={args.dim}, T={args.words}, N={args.regions}, {args.dtype}, "
              f"{args.device}, backend {args.backend}, {args.threads} thread(s) per rank, median of {args.steps} "
              f"steps, {args.repeats} repeat(s); load average {environment['load_before']}")
        # the schemes interleaved in every repeat, so that a change of the machine's load hits both
        plan = [(w, s) for w in args.worlds for s in (args.schemes if w > 1 else args.schemes[:1])]
        runs = {key: [] for key in plan}
        for _ in range(args.repeats):
            for world, scheme in plan:
                runs[(world, scheme)].append(measure(world, scheme, args))
        rows = [_median_row(runs[key]) for key in plan]
        environment["load_after"] = _load()
        print("| ranks | scheme | word-region ms | InfoNCE ms | word-region peak MiB | word-region MiB sent | "
              "InfoNCE MiB sent | mean loss |\n|---|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['world']} | {row['scheme']} | {row['word_region_ms']:.1f} | {row['info_nce_ms']:.1f} | "
                  f"{row['word_region_peak_mib']:.1f} | {row['word_region_mib_sent']:.2f} | "
                  f"{row['info_nce_mib_sent']:.2f} | {row['word_region_loss']:.6f} |")
        for world in args.worlds:
            pair = {row["scheme"]: row for row in rows if row["world"] == world}
            if world > 1 and set(SCHEMES) <= set(pair):
                ratio = pair["all_to_all"]["word_region_ms"] / pair["gather"]["word_region_ms"]
                print(f"{world} ranks: word-region loss time all_to_all / gather = {ratio:.2f}")
        print(f"load average after: {environment['load_after']}")

    element = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    model = []
    print(f"\nper-rank memory MODEL (computed, not measured): {args.model_world} ranks, D=256, T=22, N=196, "
          f"{args.dtype} embeddings, float32 scores; GiB per rank (embeddings: everything of width D)")
    print("| global batch | per rank | gather: embeddings | gather: scores | gather: total | "
          "all_to_all: embeddings | all_to_all: scores | all_to_all: total |\n|---|---|---|---|---|---|---|---|")
    for batch in MODEL_BATCHES:
        schemes = {s: per_rank_memory_model(batch, args.model_world, 256, 22, 196, element, s) for s in SCHEMES}
        model += [{"global_batch": batch, "world": args.model_world, "scheme": s, **parts}
                  for s, parts in schemes.items()]
        cells = []
        for s in ("gather", "all_to_all"):
            scores = schemes[s]["word-region scores + gradients"] + schemes[s]["exchange buffers"]
            cells += [(schemes[s]["total"] - scores) / 2**30, scores / 2**30, schemes[s]["total"] / 2**30]
        print(f"| {batch} | {-(-batch // args.model_world)} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"measured": rows, "environment": environment, "memory_model": model, "args": vars(args)}, f,
                      indent=1)
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
