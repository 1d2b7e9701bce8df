"""``python -m tgfr.bench`` runs the CPU benchmark; ``--worker`` is the measuring process of both benchmarks."""
import sys

from . import main
from .runner import worker_main

if __name__ == "__main__":
    sys.exit(worker_main() if sys.argv[1:] == ["--worker"] else main())
