"""``torchrun -m tgfr train`` with 2 gloo processes: rank 0 checkpoints, a killed run resumes.

The align step caches gradients (chunks of 4 of each rank's 6 samples); the fusion step goes through DDP.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_distributed import free_port, kernel_runs

from tgfr.training import read_checkpoint

ARGS = ["--preset", "smoke", "data.num_identities=12", "data.images_per_identity=3", "data.captions_per_image=2",
        "image.epochs=0", "align.epochs=3", "align.batch_size=12", "align.grad_cache_chunk=4",
        "fusion.epochs=1", "fusion.batch_size=12"]
KILLED_TRAIN = Path(__file__).parent / "fixtures" / "train_killed_in_second_align_epoch.py"


def _torchrun(out, *extra, program=("-m", "tgfr", "train")):
    # the op backend "auto" picks on the CPU, where its kernels run the rectangular InfoNCE
    backend = "auto" if kernel_runs("info_nce", "cpp") else "vectorized"
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            *program, "--out", str(out), *ARGS, f"ops_backend={backend}", *extra]


def _progress(out):
    return read_checkpoint(out)["progress"]


def _log(out):
    return [(r["step"], r["epoch"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())]


def test_two_process_training_is_killed_and_resumes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, so that the kill takes torchrun and both ranks and nothing else
    killed = subprocess.run(_torchrun(out, program=(str(KILLED_TRAIN),)), env=env, start_new_session=True,
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    killed_at = _progress(out)
    assert killed_at == {"step": "align", "epochs_done": 1}, killed_at
    # rank 0 alone logs: one line per finished epoch, not one per rank
    assert _log(out).count(("align", 1)) == 1

    done = subprocess.run(_torchrun(out, "--resume"), env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("checkpoint:") == 1  # printed by rank 0 only
    assert sorted(set(_log(out))) == [("align", 1), ("align", 2), ("align", 3), ("fusion", 1)]
    state = read_checkpoint(out)
    assert state["progress"] == {"step": "fusion", "epochs_done": 1}
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
