"""Markdown tables and the plot of result rows, shared by the CPU and the GPU benchmark.

A row is a spec (op, impl, dtype, batch, sizes, device, condition) plus either ``status == "ok"`` with
``forward``/``backward``/``total`` timings (``median_ms``, ``q25_ms``, ``q75_ms``) and ``peak_mb``, or
another status (``unavailable``, ``skipped (...)``, ``OOM``, ``error`` with ``error``).
matplotlib is imported by ``plot`` alone, so the tables never wait on it.
"""
from __future__ import annotations

from pathlib import Path

from ..markdown import table
from .cases import BASELINE, DTYPES, IMPLS, label

# Time ratios reported under every condition: the fused backend against its plain-PyTorch rivals.
PAIRS = {"word_region": (("cpp", "vectorized"), ("cpp", "reference")), "info_nce": (("cpp", "cross_entropy"),)}
OP_TITLES = {"word_region": "Word-region matching scores", "info_nce": "InfoNCE"}


def fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1e3:,.2f} s"
    if ms >= 100:
        return f"{ms:,.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.3f} ms"


def fmt_stat(stat: dict) -> str:
    """Median and, in brackets, the quartiles (when there was more than one timing)."""
    if stat.get("n", 2) < 2:
        return fmt_ms(stat["median_ms"])
    return f"{fmt_ms(stat['median_ms'])} ({fmt_ms(stat['q25_ms'])}–{fmt_ms(stat['q75_ms'])})"


def fmt_mb(mb: float) -> str:
    return f"{mb:,.0f} MB" if abs(mb) >= 10 else f"{mb:.1f} MB"


def left_aligned_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A benchmark table as lines, every column left-aligned as the published results are."""
    return table(header, rows, align=["l"] * len(header)).splitlines()


def _ok(row) -> bool:
    return row is not None and row.get("status") == "ok"


def _sizes(op: str, row: dict) -> str:
    keys = ("T", "N", "D") if op == "word_region" else ("D",)
    return ", ".join(f"{k}={row[k]}" for k in keys)


def _order(rows: list[dict], op: str) -> list[tuple]:
    """(batch, impl, dtype) in table order: by batch, then the implementations' fixed order."""
    keys = {(r["batch"], r["impl"], r["dtype"]) for r in rows if r["op"] == op}
    rank = {impl: i for i, impl in enumerate(IMPLS[op])}
    dtype_rank = {dtype: i for i, dtype in enumerate(DTYPES)}
    return sorted(keys, key=lambda k: (k[0], rank.get(k[1], 99), dtype_rank.get(k[2], 99)))


def results_table(rows: list[dict], op: str) -> list[str]:
    """One line per (batch, implementation, dtype): the three timings, memory and speed-up."""
    by = {(r["batch"], r["impl"], r["dtype"]): r for r in rows if r["op"] == op}
    base = BASELINE[op]
    header = ["B", "implementation", "dtype", "forward", "backward", "forward+backward", "peak memory",
              f"vs {label(base)}"]
    body = []
    for batch, impl, dtype in _order(rows, op):
        r = by[(batch, impl, dtype)]
        if not _ok(r):
            detail = f": {r['error']}" if r.get("error") else ""
            body.append([f"{batch:,}", label(impl), dtype, f"{r['status']}{detail}", "", "", "", ""])
            continue
        ref = by.get((batch, base, "fp32"))
        speedup = f"{ref['total']['median_ms'] / r['total']['median_ms']:.2f}×" if _ok(ref) else ""
        cells = [fmt_stat(r[m]) for m in ("forward", "backward", "total")] + [fmt_mb(r["peak_mb"]), speedup]
        body.append([f"{batch:,}", label(impl), dtype, *cells])
    return left_aligned_table(header, body)


def sections(rows: list[dict], heading: str = "##") -> list[str]:
    """A results table per op present in ``rows``."""
    lines = []
    for op in IMPLS:
        op_rows = [r for r in rows if r["op"] == op]
        if op_rows:
            lines += [f"{heading} {OP_TITLES[op]} ({_sizes(op, op_rows[0])})", "", *results_table(rows, op), ""]
    return lines


def load_ratio_table(rows: list[dict], idle: str, loaded: str) -> list[str]:
    """Forward+backward under load against idle per row, and the fused/plain ratios in both conditions."""
    by = {(r["condition"], r["op"], r["batch"], r["impl"], r["dtype"]): r for r in rows}

    def total(condition, op, batch, impl, dtype="fp32"):
        r = by.get((condition, op, batch, impl, dtype))
        return r["total"]["median_ms"] if _ok(r) else None

    def ratio(x, y):
        return f"{x / y:.2f}" if x is not None and y is not None else "n/a"

    per_backend = []
    for op in IMPLS:
        for batch, impl, dtype in _order([r for r in rows if r["condition"] == idle], op):
            t_idle, t_load = total(idle, op, batch, impl, dtype), total(loaded, op, batch, impl, dtype)
            cells = [fmt_ms(t) if t is not None else "n/a" for t in (t_idle, t_load)] + [ratio(t_load, t_idle)]
            per_backend.append([op, f"{batch:,}", label(impl), *cells])
    between = []
    for op, pairs in PAIRS.items():
        for batch in sorted({r["batch"] for r in rows if r["op"] == op}):
            for fused, plain in pairs:
                cells = [ratio(total(c, op, batch, fused), total(c, op, batch, plain)) for c in (idle, loaded)]
                between.append([op, f"{batch:,}", f"{label(fused)} / {label(plain)}", *cells])
    return [*left_aligned_table(["op", "B", "implementation", "idle", loaded, f"{loaded} / idle"], per_backend), "",
            *left_aligned_table(["op", "B", "time ratio", "idle", loaded], between)]


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Forward+backward time (median, quartile bars) and peak memory against B, one column per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in IMPLS if any(r["op"] == op for r in rows)]
    conditions = list(dict.fromkeys(r.get("condition", "") for r in rows))
    fig, axes = plt.subplots(2, max(len(ops), 1), figsize=(6 * max(len(ops), 1), 8), squeeze=False)
    for col, op in enumerate(ops):
        series = dict.fromkeys((r["impl"], r["dtype"], r.get("condition", "")) for r in rows if r["op"] == op)
        # one colour per implementation and dtype, one line style per condition
        colours = {key: f"C{i % 10}" for i, key in enumerate(dict.fromkeys((i, d) for i, d, _ in series))}
        for impl, dtype, condition in series:
            done = sorted((r for r in rows if r["op"] == op and (r["impl"], r["dtype"], r.get("condition", ""))
                           == (impl, dtype, condition) and _ok(r)), key=lambda r: r["batch"])
            if not done:
                continue
            name = f"{label(impl)} {dtype}" + (f" [{condition}]" if len(conditions) > 1 else "")
            style = "-o" if conditions.index(condition) == 0 else "--s"
            batches = [r["batch"] for r in done]
            median = [r["total"]["median_ms"] for r in done]
            spread = [[m - r["total"]["q25_ms"] for m, r in zip(median, done)],
                      [r["total"]["q75_ms"] - m for m, r in zip(median, done)]]
            colour = colours[(impl, dtype)]
            axes[0, col].errorbar(batches, median, yerr=spread, fmt=style, color=colour, capsize=3, label=name)
            axes[1, col].plot(batches, [max(r["peak_mb"], 0.1) for r in done], style, color=colour, label=name)
        axes[0, col].set_title(f"{OP_TITLES[op]}: forward+backward time")
        axes[0, col].set_ylabel("ms (median, quartiles)")
        axes[1, col].set_title(f"{OP_TITLES[op]}: peak memory above inputs")
        axes[1, col].set_ylabel("MB")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch B")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
