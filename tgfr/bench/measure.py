"""Timing and memory of one case, the same code for the CPU and the GPU benchmark.

Every measurement reports ``forward``, ``backward`` and ``total`` (forward+backward) separately, each as
the median and quartiles of its timed repeats:

* CPU: ``time.perf_counter`` around each half of every step, after one warm-up step; the number of
  repeats follows the step's time (``Repeats``), so slow rows get fewer.
* CUDA: ``triton.testing.do_bench`` (the L2 cache flushed before every call, quantiles) for each of
  forward, backward (``retain_graph``) and forward+backward; without triton, or for a row so slow that
  do_bench's fixed estimation loop would dominate, CUDA events around each call after an L2 flush.

Memory is the peak above the inputs after the warm-up step: ``VmHWM`` over the timed steps minus the
resident set with the inputs on the CPU (meaningful in a fresh process), ``torch.cuda.max_memory_allocated``
over one forward+backward step minus what was allocated with the inputs on CUDA.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from .cases import Case

QUANTILES = (0.25, 0.5, 0.75)
MODES = ("forward", "backward", "total")


@dataclass
class Repeats:
    """How many timed steps: about ``target_s`` of them, at least ``minimum``, at most ``maximum``."""

    target_s: float = 2.0
    minimum: int = 2
    maximum: int = 20

    def count(self, step_s: float) -> int:
        return max(self.minimum, min(self.maximum, math.ceil(self.target_s / max(step_s, 1e-9))))


def summary(times_s: list[float]) -> dict:
    """Median and quartiles in milliseconds."""
    ms = [t * 1e3 for t in times_s]
    q25, q50, q75 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
    return {"median_ms": q50, "q25_ms": q25, "q75_ms": q75, "n": len(ms)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class MemoryProbe:
    """Peak memory above what was in use when the probe was made (the inputs)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
        self.baseline = torch.cuda.memory_allocated() if self.cuda else _status_kib("VmRSS") * 1024

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            # writing 5 to clear_refs resets VmHWM to the current resident set (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_mb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.baseline) / 2**20
        return (_status_kib("VmHWM") * 1024 - self.baseline) / 2**20


def _cpu_times(case: Case, repeats: Repeats, first_step_s: float) -> dict:
    times = {mode: [] for mode in MODES}
    for _ in range(repeats.count(first_step_s)):
        case.clear_grads()
        start = time.perf_counter()
        out = case.forward()
        middle = time.perf_counter()
        case.backward(out)
        end = time.perf_counter()
        times["forward"].append(middle - start)
        times["backward"].append(end - middle)
        times["total"].append(end - start)
    return {mode: summary(t) for mode, t in times.items()}


def _triton_do_bench():
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench


def _events_bench(fn, repeats: int, case: Case | None = None) -> list[float]:
    """Seconds of each call between CUDA events, the L2 cache flushed before each (as do_bench does)."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(repeats):
        if case is not None:
            case.clear_grads()
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def _cuda_times(case: Case, repeats: Repeats, step_s: float, slow_s: float) -> dict:
    do_bench = _triton_do_bench()
    held = {}

    def backward_only():
        case.backward(held["out"], retain_graph=True)

    fns = {"total": lambda: case.backward(case.forward()), "forward": case.forward, "backward": backward_only}
    result = {}
    for mode, fn in fns.items():
        if mode == "backward":
            # one graph kept for the backward timings, made only now: the forward timings must not hold it
            held["out"] = case.forward()
        if do_bench is not None and step_s < slow_s:
            q25, q50, q75 = do_bench(fn, warmup=25, rep=100, grad_to_none=case.leaves, quantiles=list(QUANTILES))
            result[mode] = {"median_ms": q50, "q25_ms": q25, "q75_ms": q75, "timer": "triton.testing.do_bench"}
        else:
            result[mode] = {**summary(_events_bench(fn, repeats.count(step_s), case)), "timer": "cuda events"}
    held.clear()
    return {mode: result[mode] for mode in MODES}


def measure(case: Case, device: torch.device, repeats: Repeats, slow_s: float = 0.2) -> dict:
    """Times (forward, backward, total) and peak memory of ``case``; raises what the case raises."""
    probe = MemoryProbe(device)
    start = time.perf_counter()
    case.step()  # warm-up: compilation, autotuning, first touch of every buffer
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = time.perf_counter() - start
    probe.reset()
    if device.type == "cuda":
        # a step of its own (do_bench's L2-flush buffer must not count), also the time estimate:
        # the warm-up's includes the JIT compilation
        start = time.perf_counter()
        case.step()
        peak_mb = probe.peak_mb()
        times = _cuda_times(case, repeats, time.perf_counter() - start, slow_s)
    else:
        # on the CPU the timed steps are the memory step: a slow row pays for no extra step
        times = _cpu_times(case, repeats, step_s)
        peak_mb = probe.peak_mb()
    case.clear_grads()
    return {**times, "peak_mb": peak_mb, "warmup_ms": step_s * 1e3}


def time_call(fn, device: torch.device, repeats: int = 5) -> dict:
    """Median and quartiles of a plain call after one warm-up (the ceilings: a copy, a matrix product)."""
    fn()
    if device.type == "cuda":
        do_bench = _triton_do_bench()
        if do_bench is None:
            return summary(_events_bench(fn, repeats))
        q25, q50, q75 = do_bench(fn, quantiles=list(QUANTILES))
        return {"median_ms": q50, "q25_ms": q25, "q75_ms": q75}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summary(times)
