"""GPU benchmark of the two ops: every backend, fp32 and bf16, forward / backward / forward+backward.

Rows: the published code, the loop reference and the vectorised form (fp32), ``cuda`` and ``triton``
(fp32 and bf16); InfoNCE: ``F.cross_entropy`` on the full logits against the fused backends. Each
configuration catches its own failure (out of memory, Triton out of resources, any CUDA error) and
becomes a row saying so; one that poisons the CUDA context costs only its worker process. The JSON
(and the Markdown) are rewritten after every row, the plot is drawn last. Also measures the ceilings
to compare with: a device-to-device copy and 8192³ matrix products.

    python benchmarks/bench_gpu.py --out-dir DIR          # full run (about --budget-s seconds)
    python benchmarks/bench_gpu.py --quick                # small batches
    python benchmarks/bench_gpu.py --dry-run --out-dir D  # on the CPU: Triton interpreted, tiny sizes
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import torch

from .measure import time_call
from .report import fmt_ms, left_aligned_table, plot, sections
from .runner import Budget, ResultsFile, environment, run_specs

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "benchmarks"
WORD_REGION_RUNS = [("published", "fp32"), ("reference", "fp32"), ("vectorized", "fp32"), ("cuda", "fp32"),
                    ("cuda", "bf16"), ("triton", "fp32"), ("triton", "bf16")]
INFO_NCE_RUNS = [("cross_entropy", "fp32"), ("cuda", "fp32"), ("cuda", "bf16"), ("triton", "fp32"),
                 ("triton", "bf16")]
# (word-region batches, T, N, D), (InfoNCE batches, D)
SIZES = {
    "full": (((32, 128, 256, 512, 1024, 4096), 22, 196, 256), ((4096, 16384, 65536, 262144, 1048576), 256)),
    "quick": (((32, 128), 22, 196, 256), ((4096, 16384), 256)),
    # the Triton interpreter runs every program in numpy: tiny sizes, odd on purpose (masked tile edges)
    "dry-run": (((2, 3), 5, 7, 16), ((6, 9), 16)),
    "dry-run-quick": (((2,), 5, 7, 16), ((6,), 16)),
}
# the Python loops launch a handful of kernels per caption: beyond this they alone would take minutes
LOOP_MAX_BATCH = 1024


def specs(size_key: str, device: str) -> tuple[list[dict], list[dict]]:
    (wr_batches, T, N, D), (nce_batches, nce_dim) = SIZES[size_key]
    word_region = [dict(op="word_region", impl=impl, dtype=dtype, batch=b, device=device, condition="", T=T, N=N, D=D)
                   for impl, dtype in WORD_REGION_RUNS for b in wr_batches]
    nce = [dict(op="info_nce", impl=impl, dtype=dtype, batch=b, device=device, condition="", D=nce_dim)
           for impl, dtype in INFO_NCE_RUNS for b in nce_batches]
    return word_region, nce


def ceilings(device_name: str, size: int) -> list[dict]:
    """Achieved copy bandwidth and matrix-product rates, the rooflines the op timings are read against."""
    device = torch.device(device_name)
    rows = []
    n = size * size * 16  # fp32 elements copied: 1 GiB at size 8192
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    stat = time_call(functools.partial(dst.copy_, src), device)  # no closure over names deleted below
    rows.append({"what": "copy (bytes read + written)", "size": f"{n * 4 / 2**20:,.0f} MiB", **stat,
                 "rate": f"{2 * n * 4 / stat['median_ms'] / 1e9:,.0f} GB/s"})
    del src, dst
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x = torch.randn(size, size, device=device).to(dtype)
            y = torch.randn(size, size, device=device).to(dtype)
            stat = time_call(functools.partial(torch.matmul, x, y), device)
            rows.append({"what": f"matrix product {name}", "size": f"{size}³", **stat,
                         "rate": f"{2 * size**3 / stat['median_ms'] / 1e9:,.1f} TFLOP/s"})
            del x, y
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return rows


def markdown(env: dict, settings: dict, rows: list[dict], extra: dict) -> str:
    dry = settings["dry_run"]
    lines = [
        "# GPU benchmark" + (" — DRY RUN on the CPU (Triton interpreted, tiny sizes): not a measurement" if dry else ""),
        "",
        f"{env['device']} ({env.get('memory_gib', '?')} GiB, {env.get('capability', 'no CUDA')}), "
        f"torch {env['torch']}, CUDA {env.get('cuda', 'none')}, triton {env['triton']}, {env['date']}. "
        f"Produced by `{settings['command']}`.",
        "",
        *(["Dry run: times are `time.perf_counter` on the CPU and memory the resident set; the text below",
           "describes the real run.", ""] if dry else []),
        "Forward, backward (`retain_graph`) and forward+backward timed separately with",
        "`triton.testing.do_bench` (L2 flushed before each call; median, quartiles in brackets); a row slower",
        f"than {settings['slow_s'] * 1e3:.0f} ms a step is timed with CUDA events over a few calls instead. Memory is",
        "`torch.cuda.max_memory_allocated` over one forward+backward above the inputs. TF32 off for the",
        "PyTorch rows; value checks " + ("off." if settings["value_checks_off"] else "at their default."),
        "",
    ]
    if extra.get("ceilings"):
        measured = [[c["what"], c["size"], fmt_ms(c["median_ms"]), c["rate"]] for c in extra["ceilings"]]
        lines += ["## Ceilings (measured)", "", *left_aligned_table(["what", "size", "time", "rate"], measured), ""]
    elif extra.get("ceilings_error"):
        lines += ["## Ceilings", "", f"not measured: {extra['ceilings_error']}", ""]
    app = extra.get("app_runs")
    if app:
        runs = [[r["name"], r["status"], f"{r['seconds']:g} s", r.get("error", "")] for r in app["rows"]]
        lines += ["## The application at its smallest size", "",
                  f"A user's first commands (`benchmarks/app_runs.py`, caption encoder {app['text_model']}):", "",
                  *left_aligned_table(["command", "status", "time", "error"], runs), ""]
    lines += sections(rows)
    lines += [
        "`unavailable`: the backend cannot run here; `skipped (budget)`: the time extrapolated from the",
        f"smaller batch would not fit in the run's budget; `skipped (B > {LOOP_MAX_BATCH})`: the Python loops past",
        "that size; `OOM`: out of GPU memory (also every larger batch of that row); `out of resources`: a Triton",
        "tile beyond the chip's shared memory or registers; `error`: anything else, with its message.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_gpu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget of the op rows")
    parser.add_argument("--quick", action="store_true", help="small batches only")
    parser.add_argument("--dry-run", action="store_true",
                        help="rehearse on the CPU: Triton interpreted, 'cuda' rows unavailable, tiny sizes")
    parser.add_argument("--row-timeout-s", type=float, default=150.0)
    parser.add_argument("--no-value-checks", action="store_true", help="measure with the ops' value checks off")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    if args.budget_s <= 0 or args.row_timeout_s <= 0:
        parser.error("--budget-s and --row-timeout-s must be positive")
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton, here and in the workers

    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device (--dry-run rehearses the run on the CPU)")
    size_key = ("dry-run" + ("-quick" if args.quick else "")) if args.dry_run else "quick" if args.quick else "full"
    worker_env = {"TRITON_INTERPRET": "1"} if args.dry_run else {}
    if args.no_value_checks:
        worker_env["TGFR_VALUE_CHECKS"] = "0"
    repeats = {"target_s": 0.0, "minimum": 1, "maximum": 1} if args.dry_run else {"target_s": 1.0, "minimum": 3, "maximum": 10}
    slow_s = 0.2
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    settings = {"command": f"python benchmarks/bench_gpu.py {argv_text}".strip(), "dry_run": args.dry_run,
                "sizes": SIZES[size_key], "budget_s": args.budget_s, "repeats": repeats, "slow_s": slow_s,
                "value_checks_off": args.no_value_checks, "loop_max_batch": LOOP_MAX_BATCH}
    env = environment(device)
    print(env, flush=True)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path, png_path = out / "RESULTS_GPU.md", out / "RESULTS_GPU.json", out / "RESULTS_GPU.png"
    results = ResultsFile(json_path, env, settings)
    extra = results.data["extra"]
    app_runs = out / "APP_RUNS.json"  # written before the benchmark by benchmarks/app_runs.py (gpu.sh)
    if app_runs.is_file():
        extra["app_runs"] = json.loads(app_runs.read_text())

    def save_markdown():
        md_path.write_text(markdown(env, settings, results.rows, extra))

    try:
        extra["ceilings"] = ceilings(device, 64 if args.dry_run else 8192)
        for c in extra["ceilings"]:
            print(f"ceiling: {c['what']} {c['size']}: {fmt_ms(c['median_ms'])}, {c['rate']}", flush=True)
    except Exception as exc:  # noqa: BLE001 - the op rows matter more than the roofline
        extra["ceilings_error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(f"ceilings failed: {extra['ceilings_error']}", flush=True)
    results.save()
    save_markdown()

    def on_row(row):
        results.add(row)
        save_markdown()
        timing = (f"fwd {fmt_ms(row['forward']['median_ms'])}, bwd {fmt_ms(row['backward']['median_ms'])}, "
                  f"fwd+bwd {fmt_ms(row['total']['median_ms'])}, {row['peak_mb']:,.0f} MB"
                  if row["status"] == "ok" else f"{row['status']} {row.get('error', '')}")
        print(f"{row['op']:>11} {row['impl']:>13} {row['dtype']} B={row['batch']:<8} {timing}", flush=True)

    word_region, nce = specs(size_key, device)
    # word-region first, with most of the budget: it is the op this package exists for
    budget = Budget(args.budget_s, {"published": LOOP_MAX_BATCH, "reference": LOOP_MAX_BATCH}, steps=11,
                    shares={"word_region": 0.65})
    run_specs(word_region + nce, repeats=repeats, on_row=on_row, budget=budget, fresh_process_per_spec=False,
              row_timeout_s=args.row_timeout_s, slow_s=slow_s, env=worker_env)
    save_markdown()
    print(f"wrote {md_path} and {json_path}", flush=True)
    # last, once everything else is saved: a broken matplotlib must not cost the results
    plot(results.rows, png_path, f"tgfr GPU benchmark: {env['device']}" + (" (dry run)" if args.dry_run else ""))
    print(f"wrote {png_path}", flush=True)
    return 0
