"""A run's verification thresholds: the score at which each mode accepts a pair, from its own evaluation.

``tgfr eval`` writes ``thresholds.json`` into the run directory: per embedding mode, the
lowest cosine score whose false accept rate on the run's test pairs at normal quality stays
within FAR = 1e-3 (null where the test set has too few impostor pairs to resolve it). The
file names the SHA-256 of the checkpoint it calibrates, so thresholds of weights that were
trained further afterwards are not taken for the new ones.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import write_text
from .metrics import threshold_at_far

THRESHOLDS_FILE = "thresholds.json"
CALIBRATION_FAR = 1e-3
CALIBRATION_LEVEL = "normal"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibrate(results) -> dict[str, float | None]:
    """The FAR=1e-3 threshold of each mode evaluated at normal quality (``tgfr.evaluation.Result`` rows)."""
    return {result.mode: threshold_at_far(result.verification.far, result.verification.thresholds,
                                          CALIBRATION_FAR, result.verification.num_impostor)
            for result in results if result.level == CALIBRATION_LEVEL}


def write_thresholds(path, thresholds: dict[str, float | None], checkpoint_sha256: str | None, report=None) -> Path:
    """Write ``thresholds`` (mode -> score or None) with what they calibrate, atomically."""
    document = {"far": CALIBRATION_FAR, "level": CALIBRATION_LEVEL, "thresholds": thresholds,
                "checkpoint_sha256": checkpoint_sha256, "report": str(report) if report is not None else None}
    return write_text(Path(path), json.dumps(document, indent=1) + "\n")


def read_thresholds(path) -> dict:
    """The document :func:`write_thresholds` wrote; a ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable thresholds file: {error}") from error
    thresholds = document.get("thresholds") if isinstance(document, dict) else None
    if not isinstance(thresholds, dict) or not all(
            value is None or isinstance(value, (int, float)) for value in thresholds.values()):
        raise ValueError(f"{path}: expected {{\"thresholds\": {{mode: score or null}}, ...}}")
    return document
