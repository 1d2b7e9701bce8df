"""The end-to-end demo: embedded synthetic data, the three training steps, evaluation and report."""
from __future__ import annotations

import time
from pathlib import Path


def run_demo(out_dir, config, metadata: dict | None = None) -> dict[str, Path]:
    """Train with ``config`` into ``out_dir/train``, evaluate into ``out_dir``; return the report paths.

    Training resumes a run already in ``out_dir/train``, so an interrupted demo continues where it
    stopped and a finished one goes straight to evaluation. ``metadata`` is added to the report.
    """
    from .evaluation import evaluate_checkpoint
    from .training import train

    started = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint = train(config, out_dir / "train", resume=True)
    training_seconds = round(time.perf_counter() - started, 1)
    return evaluate_checkpoint(checkpoint, out_dir, device=config.device,
                               metadata={**(metadata or {}), "training_seconds": training_seconds})
