"""Runs specs in worker processes, one result row per spec, whatever happens to a worker.

The parent sends one spec at a time to a worker (``python -m tgfr.bench --worker``) and reads back one
row. A worker that crashes, hangs past ``row_timeout_s`` or loses its CUDA context is replaced and the
spec it was on is recorded as an error row; the remaining specs go on in a fresh worker. The CPU
benchmark uses a fresh worker per spec (its peak resident set must be its own); the GPU benchmark keeps
one worker until something goes wrong (a process start costs seconds there).

Rows that need not run are decided in the parent (``Budget``): unavailable implementations, batches
past an implementation's cap, batches larger than one that ran out of memory, and batches whose time,
extrapolated from the previous batch of the same series, would not fit in what is left of the budget.
"""
from __future__ import annotations

import collections
import datetime
import gc
import json
import os
import platform
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from ..atomic import write_text
from .cases import available, make_case
from .measure import Repeats, measure

ROW_PREFIX = "tgfr-bench-row "
CONTEXT_LOST = 3  # a worker's exit status after a CUDA error that poisons its context


# ---------------------------------------------------------------------------------------------- worker side
def _failure(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "OOM"
    if name == "OutOfResources":  # triton: the tile needs more shared memory or registers than the chip has
        return "out of resources"
    return "error"


def _cuda_usable() -> bool:
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return False


def run_one(request: dict) -> dict:
    """Measure one spec in this process; every failure becomes a row."""
    spec = request["spec"]
    row = dict(spec)
    device = torch.device(spec["device"])
    case = None
    try:
        case = make_case(spec)
        row.update(measure(case, device, Repeats(**request["repeats"]), request.get("slow_s", 0.2)))
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded in the row, the run goes on
        row["status"] = _failure(exc)
        row["error"] = f"{type(exc).__name__}: {exc}".strip()[:400]
        if device.type == "cuda" and not _cuda_usable():
            row["context_lost"] = True
    finally:
        del case
        gc.collect()
        if device.type == "cuda" and not row.get("context_lost"):
            torch.cuda.empty_cache()
    return row


def worker_main() -> int:
    """Answer one row line per request line on stdin until stdin closes."""
    for line in sys.stdin:
        if not line.strip():
            continue
        row = run_one(json.loads(line))
        print(ROW_PREFIX + json.dumps(row), flush=True)
        if row.get("context_lost"):
            return CONTEXT_LOST
    return 0


# ---------------------------------------------------------------------------------------------- parent side
class WorkerLost(RuntimeError):
    pass


class Worker:
    def __init__(self, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tgfr.bench", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.rows: queue.Queue = queue.Queue()
        self.stderr_tail: collections.deque = collections.deque(maxlen=20)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            if line.startswith(ROW_PREFIX):
                self.rows.put(json.loads(line[len(ROW_PREFIX):]))
            else:
                sys.stderr.write(line)
        self.rows.put(None)  # end of output: the worker is gone

    def _read_stderr(self):
        for line in self.proc.stderr:
            sys.stderr.write(line)
            self.stderr_tail.append(line.rstrip())

    def ask(self, request: dict, timeout_s: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerLost(f"worker gone before the spec was sent ({exc})") from exc
        try:
            row = self.rows.get(timeout=timeout_s)
        except queue.Empty:
            self.kill()
            raise WorkerLost(f"timeout: no result after {timeout_s:.0f} s") from None
        if row is None:
            status = self.proc.wait()
            last = next((line for line in reversed(self.stderr_tail) if line.strip()), "no output")
            raise WorkerLost(f"worker exited with status {status}: {last}"[:400])
        return row

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Budget:
    """Which specs not to run, from what the earlier rows of the same series showed."""

    def __init__(self, seconds: float | None = None, max_batch: dict | None = None, steps: int = 8,
                 shares: dict | None = None):
        start = time.monotonic()
        self.deadline = None if seconds is None else start + seconds
        # an op named in ``shares`` must be done within that fraction of the budget, leaving the rest to the others
        self.op_deadline = {op: start + share * seconds for op, share in (shares or {}).items() if seconds is not None}
        self.max_batch = max_batch or {}
        self.steps = steps  # how many steps a row costs, warm-up and timing together
        self.last = {}  # series -> (batch, seconds of one forward+backward)
        self.out_of_memory = set()

    @staticmethod
    def series(spec: dict) -> tuple:
        return spec["op"], spec["impl"], spec["dtype"], spec.get("condition", "")

    def left_s(self, op: str | None = None) -> float:
        deadline = self.op_deadline.get(op, self.deadline)
        return float("inf") if deadline is None else deadline - time.monotonic()

    def skip_reason(self, spec: dict) -> str | None:
        key = self.series(spec)
        cap = self.max_batch.get(spec["impl"])
        if cap is not None and spec["batch"] > cap:
            return f"skipped (B > {cap})"
        if key in self.out_of_memory:
            return "OOM"  # memory grows with B: a larger batch cannot fit either
        left = self.left_s(spec["op"])
        if left <= 0:
            return "skipped (budget)"
        if key in self.last:
            prev_batch, prev_s = self.last[key]
            # both ops cost B^2 per step
            if prev_s * (spec["batch"] / prev_batch) ** 2 * self.steps > left:
                return "skipped (budget)"
        return None

    def record(self, row: dict) -> None:
        if row.get("status") == "ok":
            self.last[self.series(row)] = (row["batch"], row["total"]["median_ms"] / 1e3)
        elif row.get("status") == "OOM":
            self.out_of_memory.add(self.series(row))


def run_specs(specs, *, repeats: dict, on_row, budget: Budget | None = None, fresh_process_per_spec: bool,
              row_timeout_s: float, slow_s: float = 0.2, env: dict | None = None) -> list[dict]:
    """Measure every spec (in workers), calling ``on_row(row)`` as soon as each row is known."""
    budget = budget or Budget()
    rows, worker = [], None
    try:
        for spec in specs:
            reason = None if available(spec["impl"], spec["device"]) else "unavailable"
            reason = reason or budget.skip_reason(spec)
            if reason:
                row = {**spec, "status": reason}
            else:
                worker = worker or Worker(env)
                try:
                    row = worker.ask({"spec": spec, "repeats": repeats, "slow_s": slow_s},
                                     min(row_timeout_s, max(budget.left_s(spec["op"]), 30.0)))
                except WorkerLost as exc:
                    row = {**spec, "status": "error", "error": str(exc)}
                    worker.kill()
                    worker = None
                if worker is not None and (fresh_process_per_spec or row.get("context_lost")):
                    worker.close()
                    worker = None
            budget.record(row)
            rows.append(row)
            on_row(row)
    except BaseException:
        if worker is not None:
            worker.kill()  # interrupted: do not wait for the row in progress
        raise
    if worker is not None:
        worker.close()
    return rows


# ---------------------------------------------------------------------------------------------- results
def environment(device: str) -> dict:
    """Machine, versions and date, for the report's header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import triton  # optional: the report says when it is missing

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    env = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"sm_{props.major}{props.minor}", cuda=torch.version.cuda)
    else:
        env["device"] = cpu
    return env


class ResultsFile:
    """The JSON results, rewritten (atomically) after every row so that a killed run keeps what it did."""

    def __init__(self, path: Path, environment: dict, settings: dict):
        self.path = Path(path)
        self.data = {"environment": environment, "settings": settings, "rows": [], "extra": {}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def save(self) -> None:
        write_text(self.path, json.dumps(self.data, indent=1, default=str))
