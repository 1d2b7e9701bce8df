"""GPU benchmark of word_region_scores and info_nce, every backend, forward+backward.

For each configuration: one warm-up step (compilation, autotuning), then timed
steps between CUDA events, reporting the median; peak memory is
``torch.cuda.max_memory_allocated`` over those steps minus what was allocated
before (the inputs). Out-of-memory is recorded as "OOM". A configuration whose
time, extrapolated from the previous batch size of the same backend, would not fit
in what is left of ``--budget-s`` is recorded as "skipped". Also measures the
achieved matmul throughput (8192^3 in float32, TF32 and bfloat16) as the roofline
to compare with.

Writes RESULTS_GPU.md, RESULTS_GPU.json and RESULTS_GPU.png beside this file (and
copies them to $OUT when that variable is set).

    python benchmarks/bench_gpu.py                  # full run, about 5 minutes on an H100
    python benchmarks/bench_gpu.py --quick          # small sizes, a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from tgfr.ops import available_backends, info_nce, set_value_checks, word_region_scores

HERE = Path(__file__).resolve().parent
T, N, D = 22, 196, 256
WORD_REGION_BATCHES = (32, 128, 256, 512, 1024, 4096)
INFO_NCE_BATCHES = (4096, 65536, 1048576)
# the published loop is launch-bound: beyond this it alone would take minutes
LOOP_MAX_BATCH = 512
# (backend, dtype) pairs; the references only in float32
WORD_REGION_RUNS = [
    ("reference", torch.float32),
    ("vectorized", torch.float32),
    ("cuda", torch.float32),
    ("triton", torch.float32),
    ("cuda", torch.bfloat16),
    ("triton", torch.bfloat16),
]
INFO_NCE_RUNS = [
    ("reference", torch.float32),
    ("cuda", torch.float32),
    ("triton", torch.float32),
    ("cuda", torch.bfloat16),
    ("triton", torch.bfloat16),
]
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def word_region_step(batch: int, backend: str, dtype: torch.dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    words = torch.nn.functional.normalize(torch.randn(batch, T, D, device="cuda", generator=gen), dim=-1)
    regions = torch.randn(batch, N, D, device="cuda", generator=gen)
    words = words.to(dtype).requires_grad_()
    regions = regions.to(dtype).requires_grad_()
    lengths = torch.randint(T // 2, T + 1, (batch,), device="cuda", generator=gen)
    mask = torch.arange(T, device="cuda")[None, :] < lengths[:, None]
    upstream = torch.randn(batch, batch, device="cuda", generator=gen).to(dtype)

    def step():
        scores = word_region_scores(words, regions, mask, backend=backend)
        torch.autograd.grad(scores, (words, regions), upstream)

    return step


def info_nce_step(batch: int, backend: str, dtype: torch.dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(batch, D, device="cuda", generator=gen), dim=1)
    b = torch.nn.functional.normalize(a + 0.5 * torch.randn(batch, D, device="cuda", generator=gen), dim=1)
    a = a.to(dtype).requires_grad_()
    b = b.to(dtype).requires_grad_()
    temperature = torch.tensor(0.07, device="cuda", requires_grad=True)

    def step():
        loss = info_nce(a, b, temperature, backend=backend)
        torch.autograd.grad(loss, (a, b, temperature))

    return step


def cuda_time_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def measure(make_step, target_s: float, max_repeats: int) -> dict:
    """Median time and peak memory of one forward+backward step."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    step = None
    try:
        step = make_step()
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        warmup_ms = cuda_time_ms(step)
        # after the warm-up (which may autotune), so the repeats are timed on the steady state
        repeats = int(max(1, min(max_repeats, target_s * 1e3 / max(cuda_time_ms(step), 1e-3))))
        times = [cuda_time_ms(step) for _ in range(repeats)]
        peak = torch.cuda.max_memory_allocated() - baseline
        return {"median_ms": statistics.median(times), "repeats": repeats, "warmup_ms": warmup_ms, "peak_bytes": peak}
    except torch.cuda.OutOfMemoryError:
        return {"status": "OOM"}
    finally:
        del step
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class Budget:
    """Wall-clock budget, with per-series extrapolation in the batch size."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.last = {}  # (op, backend, dtype) -> (batch, seconds per step)
        self.out_of_memory = set()  # series that ran out of memory at a smaller batch

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def affordable(self, key, batch: int, steps: int) -> bool:
        if key not in self.last:
            return self.left() > 0
        prev_batch, prev_s = self.last[key]
        # both ops cost B^2 per step
        return prev_s * (batch / prev_batch) ** 2 * steps < self.left()

    def record(self, key, batch: int, result: dict) -> None:
        if "median_ms" in result:
            self.last[key] = (batch, result["median_ms"] / 1e3)
        elif result.get("status") == "OOM":
            self.out_of_memory.add(key)


def run_op(op: str, batches, runs, step_factory, budget: Budget, args) -> list[dict]:
    rows = []
    for backend, dtype in runs:
        if backend not in available_backends("cuda"):
            rows += [{"op": op, "backend": backend, "dtype": DTYPE_NAMES[dtype], "batch": b, "status": "unavailable"} for b in batches]
            continue
        for batch in batches:
            key = (op, backend, dtype)
            row = {"op": op, "backend": backend, "dtype": DTYPE_NAMES[dtype], "batch": batch}
            if op == "word_region_scores" and backend == "reference" and batch > LOOP_MAX_BATCH:
                row["status"] = "skipped"
            elif key in budget.out_of_memory:
                row["status"] = "OOM"  # memory grows with B: a larger batch cannot fit either
            elif not budget.affordable(key, batch, steps=3):
                row["status"] = "skipped"
            else:
                row.update(measure(lambda: step_factory(batch, backend, dtype), args.target_s, args.max_repeats))
                budget.record(key, batch, row)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def matmul_peak(size: int) -> list[dict]:
    """Achieved TFLOP/s of one size^3 matmul in float32, TF32 and bfloat16."""
    rows = []
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x = torch.randn(size, size, device="cuda", dtype=dtype)
            y = torch.randn(size, size, device="cuda", dtype=dtype)
            for _ in range(2):
                x @ y
            times = [cuda_time_ms(lambda: x @ y) for _ in range(5)]
            ms = statistics.median(times)
            rows.append({"precision": name, "size": size, "median_ms": ms, "tflops": 2 * size**3 / ms / 1e9})
            print(json.dumps(rows[-1]), flush=True)
            del x, y
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return rows


def environment() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cell(row: dict) -> str:
    if "median_ms" not in row:
        return row.get("status", "?")
    return f"{row['median_ms']:,.2f} ms / {row['peak_bytes'] / 2**20:,.0f} MiB"


def table(rows: list[dict], batches) -> list[str]:
    series = list(dict.fromkeys((r["backend"], r["dtype"]) for r in rows))
    lines = ["| backend | dtype | " + " | ".join(f"B = {b:,}" for b in batches) + " |"]
    lines.append("|---|---|" + "---|" * len(batches))
    for backend, dtype in series:
        by_batch = {r["batch"]: r for r in rows if (r["backend"], r["dtype"]) == (backend, dtype)}
        lines.append(f"| {backend} | {dtype} | " + " | ".join(cell(by_batch[b]) for b in batches) + " |")
    return lines


def markdown(env: dict, settings: dict, word_region: list[dict], nce: list[dict], matmul: list[dict]) -> str:
    lines = [
        "# GPU benchmark",
        "",
        f"{env['device']} ({env['memory_gib']} GiB), torch {env['torch']}, CUDA {env['cuda']}, "
        f"triton {env['triton']}, {env['date']}.",
        "",
        "Forward+backward, median of the timed steps after one warm-up (CUDA events); memory is the peak",
        "allocated by the step above its inputs (`torch.cuda.max_memory_allocated`). Value checks off,",
        f"TF32 off (float32 products are exact float32). Settings: {json.dumps(settings)}.",
        "",
        f"## word_region_scores (T = {T}, N = {N}, D = {D}, B_v = B_t = B, ragged masks)",
        "",
        *table(word_region, settings["word_region_batches"]),
        "",
        f"## info_nce (D = {D}); `reference` is F.cross_entropy on the full B x B logits",
        "",
        *table(nce, settings["info_nce_batches"]),
        "",
        "## Matmul roofline (achieved)",
        "",
        "| precision | size | time | TFLOP/s |",
        "|---|---|---|---|",
        *[f"| {r['precision']} | {r['size']}^3 | {r['median_ms']:.2f} ms | {r['tflops']:.1f} |" for r in matmul],
        "",
        "`skipped`: not run, the time extrapolated from the smaller batch would not fit in the run's budget",
        f"(or, for the published loop, B > {LOOP_MAX_BATCH}). `OOM`: ran out of GPU memory.",
        "",
    ]
    return "\n".join(lines)


def plot(word_region: list[dict], nce: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for col, (title, rows) in enumerate((("word_region_scores", word_region), ("info_nce", nce))):
        for backend, dtype in dict.fromkeys((r["backend"], r["dtype"]) for r in rows):
            done = [r for r in rows if (r["backend"], r["dtype"]) == (backend, dtype) and "median_ms" in r]
            if not done:
                continue
            batches = [r["batch"] for r in done]
            label = f"{backend} {dtype}"
            axes[0, col].plot(batches, [r["median_ms"] for r in done], marker="o", label=label)
            axes[1, col].plot(batches, [r["peak_bytes"] / 2**20 for r in done], marker="o", label=label)
        axes[0, col].set_title(f"{title}: forward+backward time")
        axes[0, col].set_ylabel("ms")
        axes[1, col].set_title(f"{title}: peak memory above inputs")
        axes[1, col].set_ylabel("MiB")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch B")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget of the op benchmarks")
    parser.add_argument("--target-s", type=float, default=1.0, help="timed seconds per configuration (at least one step)")
    parser.add_argument("--max-repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="small batches only (a smoke run)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device")

    set_value_checks(False)  # they synchronise the device: measure the ops, not the checks
    word_region_batches = (32, 128) if args.quick else WORD_REGION_BATCHES
    info_nce_batches = (4096, 16384) if args.quick else INFO_NCE_BATCHES
    settings = {"word_region_batches": word_region_batches, "info_nce_batches": info_nce_batches,
                "budget_s": args.budget_s, "target_s": args.target_s, "max_repeats": args.max_repeats}
    env = environment()
    print(json.dumps(env), flush=True)

    matmul = matmul_peak(2048 if args.quick else 8192)
    start = time.monotonic()
    # word-region first, with most of the budget: it is the op this package exists for
    word_region = run_op("word_region_scores", word_region_batches, WORD_REGION_RUNS, word_region_step,
                         Budget(0.7 * args.budget_s), args)
    nce = run_op("info_nce", info_nce_batches, INFO_NCE_RUNS, info_nce_step,
                 Budget(args.budget_s - (time.monotonic() - start)), args)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [args.out_dir / "RESULTS_GPU.md", args.out_dir / "RESULTS_GPU.json", args.out_dir / "RESULTS_GPU.png"]
    outputs[0].write_text(markdown(env, settings, word_region, nce, matmul))
    outputs[1].write_text(json.dumps({"environment": env, "settings": settings, "word_region_scores": word_region,
                                      "info_nce": nce, "matmul": matmul}, indent=1, default=str))
    plot(word_region, nce, outputs[2])
    if os.environ.get("OUT"):
        for path in outputs:
            shutil.copy(path, os.environ["OUT"])
    print("wrote " + ", ".join(str(p) for p in outputs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
