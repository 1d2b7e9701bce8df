"""Benchmarks of the two ops: one harness for the CPU (``tgfr bench``) and the GPU (``benchmarks/bench_gpu.py``).

* ``cases``: the inputs and the forward/backward of every (op, implementation, size, dtype);
* ``measure``: timing (forward, backward, forward+backward; medians and quartiles) and peak memory;
* ``runner``: worker processes that turn every spec into a result row whatever happens, the budget,
  the incrementally written JSON;
* ``report``: Markdown tables and the plot;
* ``cpu`` / ``gpu``: the two command lines.
"""
from .cpu import main

__all__ = ["main"]
