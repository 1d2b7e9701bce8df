"""CPU benchmark of the two ops: every backend against the reference, in one run.

Each measurement runs in a fresh subprocess so that its peak resident memory is
its own: the worker builds the inputs, records its resident set, runs one warm-up
forward+backward, then ``repeats`` timed ones, and reports the median time and
the peak resident memory above the inputs (Linux ``VmHWM`` minus ``VmRSS`` taken
after the inputs were made).

    tgfr bench                    # full table -> benchmarks/RESULTS.md (+ PNG)
    tgfr bench --quick            # small sizes, a few seconds
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

WORD_REGION_IMPLS = ("published", "reference", "vectorized", "cpp")
INFO_NCE_IMPLS = ("cross_entropy", "cpp")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> None:
    # writing 5 to clear_refs resets VmHWM to the current resident set (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _word_region_case(spec):
    from tgfr.ops import word_region_scores

    gen = torch.Generator().manual_seed(0)
    B, T, N, D = spec["batch"], spec["T"], spec["N"], spec["D"]
    words = torch.nn.functional.normalize(torch.randn(B, T, D, generator=gen), dim=-1).requires_grad_()
    regions = torch.randn(B, N, D, generator=gen).requires_grad_()
    mask = torch.ones(B, T, dtype=torch.bool)
    if spec["impl"] == "published":
        from tgfr.ops.reference import published_damsm_words_loss

        # the published code's own layout: channel-first features, the loss of the B x B scores
        words_cf = words.detach().transpose(1, 2).contiguous().requires_grad_()
        regions_cf = regions.detach().transpose(1, 2).contiguous().requires_grad_()
        labels, class_ids = torch.arange(B), torch.arange(B)

        def step():
            i2t, t2i = published_damsm_words_loss(regions_cf, words_cf, labels, [T] * B, class_ids, B)
            (i2t + t2i).backward()
            words_cf.grad = regions_cf.grad = None

        return step

    def step():
        scores = word_region_scores(words, regions, mask, backend=spec["impl"])
        scores.sum().backward()
        words.grad = regions.grad = None

    return step


def _info_nce_case(spec):
    from tgfr.ops import info_nce

    gen = torch.Generator().manual_seed(0)
    B, D = spec["batch"], spec["D"]
    a = torch.nn.functional.normalize(torch.randn(B, D, generator=gen), dim=1).requires_grad_()
    b = torch.nn.functional.normalize(torch.randn(B, D, generator=gen), dim=1).requires_grad_()
    t = torch.tensor(0.07, requires_grad=True)
    labels = torch.arange(B)

    def step():
        if spec["impl"] == "cross_entropy":
            logits = a @ b.t() / t
            loss = 0.5 * (
                torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)
            )
        else:
            loss = info_nce(a, b, t, backend=spec["impl"])
        loss.backward()
        a.grad = b.grad = t.grad = None

    return step


def _worker(spec) -> dict:
    step = (_word_region_case if spec["op"] == "word_region_scores" else _info_nce_case)(spec)
    rss_inputs = _status_kib("VmRSS")
    _reset_peak_rss()
    step()  # warm-up (and first-touch of every buffer)
    peak = _status_kib("VmHWM") - rss_inputs
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = max(peak, _status_kib("VmHWM") - rss_inputs)
    return {**spec, "median_s": statistics.median(times), "times_s": times, "peak_mb": peak / 1024}


def run_case(spec, timeout=900) -> dict:
    """Run one measurement in a subprocess; returns the spec with results (or an error)."""
    cmd = [sys.executable, "-m", "tgfr.bench", "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout}s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**spec, "error": tail[0][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "date": datetime.date.today().isoformat(),
    }


def _fmt_time(r):
    return "error" if "error" in r else f"{r['median_s'] * 1e3:,.1f} ms"


def _fmt_mem(r):
    return "" if "error" in r else f"{r['peak_mb']:,.0f} MB"


def markdown_report(info, word_region, info_nce_rows, settings) -> str:
    lines = [
        "# CPU benchmark",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['threads']} torch threads); "
        f"Python {info['python']}, torch {info['torch']}, triton {info['triton']}; {info['date']}.",
        "",
        "Forward + backward, float32, median of the timed repeats after one warm-up; peak memory is the",
        "peak resident set above the inputs, each measurement in its own process. Produced by",
        f"`{('python benchmarks/bench_ops.py ' + settings).strip()}`.",
        "",
        f"## Word-region matching scores (T={word_region[0]['T']}, N={word_region[0]['N']}, D={word_region[0]['D']})"
        if word_region
        else "",
        "",
        "`published`: the authors' DAMSM words loss verbatim (channel-first, `repeat` per caption); `loop`: the",
        "reference backend (the same loop over captions without the copies); `vectorised`: all pairs at once.",
        "",
        "| B | published | loop | vectorised | cpp | cpp vs published | cpp vs loop | cpp vs vectorised "
        "| published mem | loop mem | vectorised mem | cpp mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["impl"], r["batch"]): r for r in word_region}
    for B in sorted({r["batch"] for r in word_region}):
        rows = [by.get((i, B), {"error": "n/a"}) for i in WORD_REGION_IMPLS]
        cpp = rows[-1]
        ratio = lambda x: "" if "error" in x or "error" in cpp else f"{x['median_s'] / cpp['median_s']:.2f}x"  # noqa: E731
        cells = [_fmt_time(r) for r in rows] + [ratio(r) for r in rows[:-1]] + [_fmt_mem(r) for r in rows]
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    if info_nce_rows:
        lines += [
            "",
            f"## InfoNCE (D={info_nce_rows[0]['D']})",
            "",
            "| B | F.cross_entropy on logits | cpp | speed-up | cross_entropy mem | cpp mem |",
            "|---|---|---|---|---|---|",
        ]
        by = {(r["impl"], r["batch"]): r for r in info_nce_rows}
        for B in sorted({r["batch"] for r in info_nce_rows}):
            ce, cpp = (by.get((i, B), {"error": "n/a"}) for i in INFO_NCE_IMPLS)
            speed = "" if "error" in ce or "error" in cpp else f"{ce['median_s'] / cpp['median_s']:.2f}x"
            lines.append(f"| {B} | {_fmt_time(ce)} | {_fmt_time(cpp)} | {speed} | {_fmt_mem(ce)} | {_fmt_mem(cpp)} |")
    return "\n".join(lines) + "\n"


def plot(word_region, info_nce_rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rows, impls, style in ((word_region, WORD_REGION_IMPLS, "-o"), (info_nce_rows, INFO_NCE_IMPLS, "--s")):
        for impl in impls:
            ok = sorted((r for r in rows if r["impl"] == impl and "error" not in r), key=lambda r: r["batch"])
            if not ok:
                continue
            label = f"{ok[0]['op']}: {'loop' if impl == 'reference' else impl}"
            axes[0].plot([r["batch"] for r in ok], [r["median_s"] * 1e3 for r in ok], style, label=label)
            axes[1].plot([r["batch"] for r in ok], [max(r["peak_mb"], 1) for r in ok], style, label=label)
    for ax, ylabel in zip(axes, ("forward+backward time (ms)", "peak memory above inputs (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("tgfr CPU benchmark (float32)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tgfr bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes (B=4, 8; InfoNCE B=1024) for a smoke run")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64], help="word-region batch sizes")
    parser.add_argument("--info-nce-batches", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    from tgfr.ops import backends

    if args.quick:
        args.batches, args.info_nce_batches, args.repeats = [4, 8], [1024], 2
    impls = [i for i in WORD_REGION_IMPLS if i == "published" or backends.is_available(i, "cpu")]
    word_region, info_nce_rows = [], []
    for B in args.batches:
        for impl in impls:
            spec = dict(op="word_region_scores", impl=impl, batch=B, T=22, N=196, D=256, repeats=args.repeats)
            word_region.append(run_case(spec))
            print(f"word_region_scores {impl:>10} B={B:<5} {_fmt_time(word_region[-1]):>12} {_fmt_mem(word_region[-1]):>9}", flush=True)
    for B in args.info_nce_batches:
        for impl in (i for i in INFO_NCE_IMPLS if i == "cross_entropy" or backends.is_available(i, "cpu")):
            spec = dict(op="info_nce", impl=impl, batch=B, D=256, repeats=args.repeats)
            info_nce_rows.append(run_case(spec))
            print(f"info_nce {impl:>13} B={B:<6} {_fmt_time(info_nce_rows[-1]):>12} {_fmt_mem(info_nce_rows[-1]):>9}", flush=True)

    settings = " ".join(argv if argv is not None else sys.argv[1:]).replace(f"--out {args.out}", "").strip()
    report = markdown_report(machine_info(), word_region, info_nce_rows, settings)
    print()
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        plot(word_region, info_nce_rows, args.out.with_suffix(".png"))
        (args.out.with_suffix(".json")).write_text(json.dumps(word_region + info_nce_rows, indent=1))
        print(f"wrote {args.out}, {args.out.with_suffix('.png')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
