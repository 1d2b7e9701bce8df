"""CPU benchmark of the two ops: every backend against the plain-PyTorch baselines, idle and under load.

Each measurement runs in a fresh worker process (its peak resident set is its own): one warm-up
forward+backward, then timed ones (about ``--target-s`` seconds of them, at least ``--min-repeats``),
forward, backward and forward+backward each reported as median and quartiles. With
``--background-load K`` (default 4) the same measurements are repeated beside K busy processes that
the benchmark starts and stops itself, and the report puts the loaded tables beside the idle ones.

    tgfr bench                                  # idle + 4 busy processes, printed
    python benchmarks/bench_ops.py              # the same, written to benchmarks/RESULTS.{md,json,png}
    tgfr bench --quick --background-load 1      # small sizes, a smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..arguments import OUTPUT_FILE, ArgumentParser, PathArgument, non_negative_int, positive_float, positive_int
from .report import load_ratio_table, plot, sections
from .runner import Budget, ResultsFile, environment, run_specs

WORD_REGION_SHAPE = {"T": 22, "N": 196, "D": 256}
INFO_NCE_DIM = 256
CPU_IMPLS = {"word_region": ("published", "reference", "vectorized", "cpp"), "info_nce": ("cross_entropy", "cpp")}

# A busy process: pure Python arithmetic, no memory traffic; it exits by itself once its parent is gone,
# so that not even a killed benchmark leaves the machine loaded.
BUSY_LOOP = "import os\nparent = {pid}\nwhile os.getppid() == parent:\n    for _ in range(1_000_000):\n        pass\n"


@contextlib.contextmanager
def background_load(k: int):
    """K busy processes for the duration of the block; stopped on any exit, Ctrl-C included."""
    procs = []
    try:
        for _ in range(k):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(pid=os.getpid())],
                                          stdin=subprocess.DEVNULL))
        time.sleep(0.5 if k else 0)  # let them start spinning before the first measurement
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def specs(args, condition: str) -> list[dict]:
    out = []
    for batch in args.batches:
        for impl in (i for i in CPU_IMPLS["word_region"] if i in args.implementations):
            out.append(dict(op="word_region", impl=impl, dtype="fp32", batch=batch, device="cpu",
                            condition=condition, **WORD_REGION_SHAPE))
    for batch in args.info_nce_batches:
        for impl in (i for i in CPU_IMPLS["info_nce"] if i in args.implementations):
            out.append(dict(op="info_nce", impl=impl, dtype="fp32", batch=batch, device="cpu",
                            condition=condition, D=INFO_NCE_DIM))
    return out


def markdown(env: dict, settings: dict, rows: list[dict]) -> str:
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    lines = [
        "# CPU benchmark",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores ({env['torch_threads']} torch threads); Python {env['python']}, "
        f"torch {env['torch']}, triton {env['triton']}; {env['date']}. Produced by `{settings['command']}`.",
        "",
        "float32, ragged captions. Each row runs in a fresh process: one warm-up forward+backward, then",
        f"timed ones (about {settings['repeats']['target_s']} s of them, at least {settings['repeats']['minimum']}); "
        "times are the median (quartiles in brackets) of",
        "`time.perf_counter` around each half of every step. Peak memory is the peak resident set (`VmHWM`)",
        "above the inputs. `published code`: the authors' DAMSM words loss verbatim (channel-first, `repeat` per",
        "caption; it includes the loss on the scores); `loop`: the `reference` backend; `vectorized`: all pairs",
        "at once; `F.cross_entropy`: InfoNCE on the full B×B logits.",
        "",
    ]
    for condition in conditions:
        title = "Idle machine" if condition == "idle" else f"Under load: {condition.split()[-1]} busy background processes"
        lines += [f"## {title}", "", *sections([r for r in rows if r["condition"] == condition], "###")]
    if len(conditions) > 1:
        lines += [
            f"## Load against idle (forward+backward medians; `{conditions[1]}`: "
            f"{conditions[1].split()[-1]} × `python -c 'while True: pass'`-like processes)",
            "",
            *load_ratio_table(rows, conditions[0], conditions[1]),
            "",
        ]
    return "\n".join(lines)


QUICK = {"batches": [4, 8], "info_nce_batches": [256, 512], "target_s": 0.1, "min_repeats": 2, "max_repeats": 3}


def build_parser(prog: str = "python benchmarks/bench_ops.py") -> argparse.ArgumentParser:
    """The benchmark's command line; ``prog`` is the command that runs it, named in usage errors and in the
    report (``tgfr bench``, or the script that writes RESULTS.md)."""
    parser = ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small sizes (B=4, 8; InfoNCE B=256, 512) and few repeats, for what the "
                             "options below do not give")
    parser.add_argument("--batches", type=positive_int, nargs="+", help="word-region batch sizes (default: 16 32 64)")
    parser.add_argument("--info-nce-batches", type=positive_int, nargs="+", metavar="B",
                        help="InfoNCE batch sizes (default: 4096 16384)")
    all_impls = sorted(set(CPU_IMPLS["word_region"] + CPU_IMPLS["info_nce"]))
    parser.add_argument("--implementations", nargs="+", choices=all_impls, default=all_impls, metavar="IMPL",
                        help=f"measure only these ({', '.join(all_impls)}; default all)")
    parser.add_argument("--background-load", type=non_negative_int, default=4, metavar="K",
                        help="also measure beside K busy processes (0: idle only; default 4)")
    parser.add_argument("--target-s", type=positive_float, help="timed seconds per row (default 2)")
    parser.add_argument("--min-repeats", type=positive_int, help="timed steps per row at least (default 2)")
    parser.add_argument("--max-repeats", type=positive_int, help="timed steps per row at most (default 15)")
    parser.add_argument("--row-timeout-s", type=positive_float, default=600.0,
                        help="a row that takes longer is an error (default 600)")
    parser.add_argument("--out", type=PathArgument(OUTPUT_FILE, suffixes=(".md",)),
                        help="Markdown report to write, with .json and .png beside it, in an existing folder "
                             "(default: print only)")
    return parser


def main(argv=None, prog: str = "python benchmarks/bench_ops.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)

    defaults = QUICK if args.quick else {"batches": [16, 32, 64], "info_nce_batches": [4096, 16384],
                                         "target_s": 2.0, "min_repeats": 2, "max_repeats": 15}
    for option, value in defaults.items():  # what the command line gives wins over --quick
        if getattr(args, option) is None:
            setattr(args, option, value)
    if args.min_repeats > args.max_repeats:
        parser.error(f"need --min-repeats <= --max-repeats, got {args.min_repeats} and {args.max_repeats}")
    repeats = {"target_s": args.target_s, "minimum": args.min_repeats, "maximum": args.max_repeats}
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    settings = {"command": f"{prog} {argv_text.replace(f'--out {args.out}', '')}".strip(),
                "repeats": repeats, "batches": args.batches, "info_nce_batches": args.info_nce_batches,
                "background_load": args.background_load}
    env = environment("cpu")
    json_path = args.out.with_suffix(".json") if args.out else Path("/dev/null")
    results = ResultsFile(json_path, env, settings) if args.out else None
    rows = []

    def on_row(row):
        rows.append(row)
        if results is not None:
            results.add(row)
        timing = f"{row['total']['median_ms']:>10.1f} ms {row['peak_mb']:>8.0f} MB" if row["status"] == "ok" else row["status"]
        print(f"[{row['condition']}] {row['op']:>11} {row['impl']:>13} B={row['batch']:<6} {timing}", flush=True)

    # SIGTERM unwinds like Ctrl-C, so the busy processes are always stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = dict(repeats=repeats, on_row=on_row, fresh_process_per_spec=True, row_timeout_s=args.row_timeout_s)
    run_specs(specs(args, "idle"), budget=Budget(), **run)
    if args.background_load:
        with background_load(args.background_load):
            run_specs(specs(args, f"load {args.background_load}"), budget=Budget(), **run)

    report = markdown(env, settings, rows)
    print()
    print(report)
    if args.out is not None:
        args.out.write_text(report)
        plot(rows, args.out.with_suffix(".png"), f"tgfr CPU benchmark (float32, {env['cores']} cores)")
        print(f"wrote {args.out}, {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0
