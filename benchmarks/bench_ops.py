"""CPU benchmark of word_region_scores and info_nce: reference loop, vectorised reference and the fused C++
backend, forward+backward median time and peak memory, one run. Writes RESULTS.md, RESULTS.png, RESULTS.json
beside this file.

    python benchmarks/bench_ops.py            # B = 16, 32, 64 and InfoNCE B = 4096, 16384
    python benchmarks/bench_ops.py --quick    # a smoke run
"""
import sys
from pathlib import Path

from tgfr.bench import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv:
        argv += ["--out", str(Path(__file__).with_name("RESULTS.md"))]
    sys.exit(main(argv))
