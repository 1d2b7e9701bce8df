"""GPU benchmark of word_region_scores and info_nce (see ``tgfr.bench.gpu``); ``bash benchmarks/gpu.sh`` runs it.

    python benchmarks/bench_gpu.py --out-dir DIR            # RESULTS_GPU.{md,json,png} in DIR (default: here)
    python benchmarks/bench_gpu.py --dry-run --out-dir DIR  # a rehearsal on the CPU
"""
import sys

from tgfr.bench.gpu import main

if __name__ == "__main__":
    sys.exit(main())
