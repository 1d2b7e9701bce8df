"""Two builds of tgfr timed by bench_ops.py in one run, alternately, on the same machine: the build before a
change (another source tree with its extension built in place, e.g. ``git archive main`` then
``python setup.py build_ext --inplace``) and this checkout. On a shared machine the load moves between
minutes, so the builds take turns round after round, and the table gives each build's median over the rounds
of the per-run forward+backward medians, with the load average at the start of every run. Each build runs
with its own tgfr package, the benchmark's harness (tgfr.bench) included.

    python benchmarks/ab_ops.py --before /tmp/tgfr-main --rounds 3 --out /tmp/ab.md -- \\
        --batches 64 --info-nce-batches 4096 --implementations cpp --background-load 4
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from tgfr.arguments import DIRECTORY, OUTPUT_FILE, ArgumentParser, PathArgument, positive_int
from tgfr.markdown import table

HERE = Path(__file__).resolve().parent


def run_bench(tree: Path | None, bench_args: list[str], out: Path) -> dict | int:
    """One bench_ops.py run with ``tree`` first on the import path (None: the installed tgfr): its results,
    or its exit status where it failed (it has said why on stderr)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    run = subprocess.run([sys.executable, str(HERE / "bench_ops.py"), *bench_args, "--out", str(out)], env=env,
                         stdout=subprocess.DEVNULL)
    return run.returncode or json.loads(out.with_suffix(".json").read_text())


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python benchmarks/ab_ops.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=PathArgument(DIRECTORY), required=True,
                        help="source tree of the build before the change, its extension built in place")
    parser.add_argument("--rounds", type=positive_int, default=3, help="turns of each build (default 3)")
    parser.add_argument("--out", type=PathArgument(OUTPUT_FILE, suffixes=(".md",)), required=True,
                        help="Markdown file to write, with .json beside it, in an existing folder")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: bench_ops.py's options")
    args = parser.parse_args(argv)
    if not (args.before / "tgfr" / "__init__.py").is_file():
        parser.error(f"--before: {args.before} is not a source tree of tgfr (no tgfr/__init__.py)")
    bench_args = [a for a in args.bench_args if a != "--"]
    builds = {"before": args.before.resolve(), "after": None}
    runs = []  # (round, build, load average, rows)
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(1, args.rounds + 1):
            for build, tree in builds.items():
                load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "n/a"
                result = run_bench(tree, bench_args, Path(scratch) / f"{build}_{round_}.md")
                if isinstance(result, int):
                    return result
                runs.append((round_, build, load, result["rows"]))
                print(f"round {round_} {build}: done (load average {load} at the start)", file=sys.stderr)

    totals: dict[tuple, dict[str, list[float]]] = {}
    for _, build, _, rows in runs:
        for row in rows:
            if row["status"] == "ok":
                key = (row["op"], row["batch"], row["impl"], row["dtype"], row["condition"])
                totals.setdefault(key, {"before": [], "after": []})[build].append(row["total"]["median_ms"])
    lines = []
    for (op, batch, impl, dtype, condition), times in sorted(totals.items()):
        before, after = statistics.median(times["before"]), statistics.median(times["after"])
        lines.append([op, str(batch), impl, dtype, condition, f"{before:.0f}", f"{after:.0f}",
                      f"{after / before:.3f}", " / ".join(f"{t:.0f}" for t in times["before"]),
                      " / ".join(f"{t:.0f}" for t in times["after"])])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# A/B of two builds (bench_ops.py, alternately)", "",
        f"{when}; before: `{args.before}`; after: this checkout. bench_ops.py options: `{' '.join(bench_args)}`; "
        f"{args.rounds} rounds. Forward+backward medians in ms (each run's median, then the median over rounds).", "",
        table(["op", "B", "impl", "dtype", "condition", "before", "after", "after / before", "before, per round",
               "after, per round"], lines), "",
        "Load average (1 min) at the start of each run: "
        + ", ".join(f"round {r} {b} {load}" for r, b, load, _ in runs) + ".", "",
    ]
    args.out.write_text("\n".join(text))
    args.out.with_suffix(".json").write_text(json.dumps(
        [{"round": r, "build": b, "load_average": load, "rows": rows} for r, b, load, rows in runs], indent=1))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
