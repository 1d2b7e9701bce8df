"""The benchmark harness: measurement, worker isolation, background load, reports and the GPU dry run.

Nothing here asserts a speed: only that every row is measured or says why not, and that the outputs exist.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tgfr.bench import cpu, gpu
from tgfr.bench.cases import make_case
from tgfr.bench.measure import Repeats, measure, summary
from tgfr.bench.report import load_ratio_table, results_table
from tgfr.bench.runner import Budget, Worker, WorkerLost, run_specs

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(op="word_region", dtype="fp32", device="cpu", condition="idle", T=5, N=7, D=16)
FAST = {"target_s": 0.0, "minimum": 2, "maximum": 2}


def test_summary_is_median_and_quartiles_in_ms():
    stat = summary([0.005, 0.001, 0.003, 0.002, 0.004])
    assert stat == {"median_ms": pytest.approx(3.0), "q25_ms": pytest.approx(2.0), "q75_ms": pytest.approx(4.0), "n": 5}
    assert summary([0.002])["q25_ms"] == summary([0.002])["q75_ms"] == pytest.approx(2.0)


def test_repeats_follow_the_step_time_within_bounds():
    repeats = Repeats(target_s=2.0, minimum=2, maximum=15)
    assert repeats.count(0.001) == 15
    assert repeats.count(0.5) == 4
    assert repeats.count(30.0) == 2


@pytest.mark.parametrize("impl", ["published", "vectorized"])
def test_measure_reports_forward_backward_and_total(impl):
    row = measure(make_case(dict(TINY, impl=impl, batch=3)), torch.device("cpu"), Repeats(**FAST))
    for mode in ("forward", "backward", "total"):
        assert row[mode]["n"] == 2
        assert 0 < row[mode]["q25_ms"] <= row[mode]["median_ms"] <= row[mode]["q75_ms"]
    # each step's total is its forward plus its backward
    assert row["total"]["median_ms"] == pytest.approx(row["forward"]["median_ms"] + row["backward"]["median_ms"],
                                                      rel=0.5)
    assert row["peak_mb"] >= 0


def test_info_nce_case_gives_every_leaf_a_gradient():
    case = make_case(dict(op="info_nce", impl="cross_entropy", dtype="fp32", device="cpu", batch=6, D=8))
    case.step()
    assert all(leaf.grad is not None and torch.isfinite(leaf.grad).all() for leaf in case.leaves)


def test_runner_records_a_failure_and_goes_on_in_the_same_worker():
    rows = []
    bad = dict(TINY, impl="vectorized", batch=2, T=0)  # no words: the op rejects it
    good = dict(TINY, impl="vectorized", batch=2)
    unavailable = dict(TINY, impl="cuda", batch=2)
    run_specs([bad, unavailable, good], repeats=FAST, on_row=rows.append, fresh_process_per_spec=False,
              row_timeout_s=120)
    assert [r["status"] for r in rows] == ["error", "unavailable", "ok"]
    assert rows[0]["error"]


def test_a_hung_worker_is_killed_and_reported():
    worker = Worker()
    start = time.monotonic()
    with pytest.raises(WorkerLost, match="timeout"):
        worker.ask({"spec": dict(TINY, impl="vectorized", batch=2), "repeats": FAST}, timeout_s=0.05)
    assert worker.proc.poll() is not None
    assert time.monotonic() - start < 30


def test_budget_skips_by_cap_oom_and_extrapolated_time():
    budget = Budget(seconds=10, max_batch={"reference": 64}, steps=4)
    spec = dict(TINY, impl="triton", dtype="bf16")
    assert budget.skip_reason(dict(spec, impl="reference", batch=128)) == "skipped (B > 64)"
    assert budget.skip_reason(dict(spec, batch=8)) is None
    budget.record(dict(spec, batch=8, status="ok", total={"median_ms": 100.0}))
    assert budget.skip_reason(dict(spec, batch=16)) is None  # 0.4 s * 4 steps
    assert budget.skip_reason(dict(spec, batch=64)) == "skipped (budget)"  # 6.4 s * 4 steps
    budget.record(dict(spec, impl="cuda", batch=8, status="OOM"))
    assert budget.skip_reason(dict(spec, impl="cuda", batch=16)) == "OOM"


def test_background_load_is_stopped_also_after_an_exception():
    with pytest.raises(KeyboardInterrupt):
        with cpu.background_load(2) as procs:
            assert all(p.poll() is None for p in procs)
            raise KeyboardInterrupt
    assert all(p.poll() is not None for p in procs)


def _row(condition, op, impl, batch, total_ms):
    stat = {"median_ms": total_ms, "q25_ms": total_ms * 0.9, "q75_ms": total_ms * 1.1, "n": 3}
    return dict(op=op, impl=impl, dtype="fp32", batch=batch, condition=condition, status="ok", T=22, N=196, D=256,
                forward=stat, backward=stat, total=stat, peak_mb=12.0)


def test_load_table_gives_ratios_per_backend_and_between_backends():
    rows = [_row("idle", "word_region", "vectorized", 64, 1000.0), _row("idle", "word_region", "cpp", 64, 500.0),
            _row("load 4", "word_region", "vectorized", 64, 3000.0), _row("load 4", "word_region", "cpp", 64, 2000.0)]
    lines = load_ratio_table(rows, "idle", "load 4")
    assert any("| cpp |" in line and "| 4.00 |" in line for line in lines)  # cpp: loaded / idle
    assert any("cpp / vectorized | 0.50 | 0.67 |" in line for line in lines)  # idle, then loaded
    table = "\n".join(results_table(rows[:2], "word_region"))
    assert "2.00×" not in table and "| 64 | cpp |" in table


def test_dry_run_of_the_device_benchmark_writes_a_complete_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # what benchmarks/app_runs.py leaves there first in gpu.sh: the report shows a row per command
    app_runs = {"text_model": "minilm", "rows": [
        {"name": "train --preset smoke (AMP)", "command": "train", "status": "finished", "seconds": 12.5},
        {"name": "xmodal train --preset tiny", "command": "xmodal train", "status": "failed (exit 1)",
         "seconds": 3.0, "error": "RuntimeError: scatter(): Expected self.dtype to be equal to src.dtype"}]}
    (out / "APP_RUNS.json").write_text(json.dumps(app_runs))
    # in a subprocess: the dry run sets TRITON_INTERPRET before importing triton
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run", "--quick",
                           "--budget-s", "120", "--out-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((out / "RESULTS_GPU.json").read_text())
    status = {(r["op"], r["impl"], r["dtype"]): r["status"] for r in data["rows"]}
    assert len(status) == len(gpu.WORD_REGION_RUNS) + len(gpu.INFO_NCE_RUNS)
    assert status[("word_region", "cuda", "fp32")] == "unavailable"
    assert status[("word_region", "vectorized", "fp32")] == "ok"
    assert status[("info_nce", "cross_entropy", "fp32")] == "ok"
    try:
        import triton  # noqa: F401

        assert status[("word_region", "triton", "fp32")] == "ok"
        assert status[("info_nce", "triton", "fp32")] == "ok"
    except ImportError:
        pass
    assert data["extra"]["ceilings"]
    report = (out / "RESULTS_GPU.md").read_text()
    assert "DRY RUN" in report and "| 2 | loop | fp32 |" in report
    assert "| train --preset smoke (AMP) | finished | 12.5 s |" in report
    assert "| xmodal train --preset tiny | failed (exit 1) | 3 s | RuntimeError: scatter()" in report
    assert (out / "RESULTS_GPU.png").stat().st_size > 10_000


def test_benchmarks_are_not_part_of_the_test_suite():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert (ROOT / "benchmarks" / "test_ops_benchmark.py").exists()


def test_bad_options_are_a_usage_error():
    for argv in (["--background-load", "-1"], ["--batches", "0"], ["--min-repeats", "3", "--max-repeats", "2"]):
        with pytest.raises(SystemExit) as exc:
            cpu.main(argv)
        assert exc.value.code == 2


@pytest.mark.slow
def test_device_script_dry_run_brings_every_result_back(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "TGFR_GPU_OUT": str(tmp_path), "PYTHON": sys.executable,
                                             # the device's budget is for a GPU: twice that rehearses it on a CPU
                                             # that others share
                                             "TGFR_GPU_TOTAL_S": "1140"})
    log = (tmp_path / "gpu_run.log").read_text()
    # on a loaded machine a step may run out of its time (status 124, "cut off"); a step that fails may not
    failed = [line for line in log.splitlines() if " failed with status " in line and "build with CUDA" not in line]
    assert not failed and proc.returncode in (0, 124), log[-3000:]
    assert "simulating a failed CUDA build" in log and "== build CPU-only" in log
    for name in ("RESULTS_GPU.md", "RESULTS_GPU.json", "RESULTS_GPU.png", "tests_gpu.xml", "tests_other.xml",
                 "APP_RUNS.json"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_quick_fills_only_what_the_command_line_leaves_out(monkeypatch, capsys):
    """--quick with --batches measures those batches, and the report names the command that made it."""
    specs = []
    monkeypatch.setattr(cpu, "run_specs", lambda given, **settings: specs.extend(given))
    argv = ["--quick", "--batches", "2", "--background-load", "0", "--implementations", "cpp"]
    assert cpu.main(argv, prog="tgfr bench") == 0
    assert {spec["batch"] for spec in specs if spec["op"] == "word_region"} == {2}
    assert {spec["batch"] for spec in specs if spec["op"] == "info_nce"} == {256, 512}  # --quick's
    assert f"Produced by `tgfr bench {' '.join(argv)}`" in capsys.readouterr().out
