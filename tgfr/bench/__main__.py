"""``python -m tgfr.bench`` runs the CPU benchmark; ``--worker`` is the measuring process of both benchmarks."""
import sys

if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        from .runner import worker_main

        sys.exit(worker_main())
    from . import main

    sys.exit(main())
