"""CPU benchmark of word_region_scores and info_nce, idle and beside busy processes (see ``tgfr.bench.cpu``).
Writes RESULTS.md, RESULTS.json and RESULTS.png beside this file.

    python benchmarks/bench_ops.py                        # idle + 4 busy processes (about 15 minutes on 2 cores)
    python benchmarks/bench_ops.py --background-load 0    # idle only
    python benchmarks/bench_ops.py --quick                # a smoke run
"""
import sys
from pathlib import Path

from tgfr.bench import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        argv += ["--out", str(Path(__file__).with_name("RESULTS.md"))]
    sys.exit(main(argv))
