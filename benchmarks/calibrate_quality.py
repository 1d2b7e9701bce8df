"""Calibrate the image-quality levels to the paper's image-only retention.

The paper (TGFR, WACV 2024) does not say how its poor / bad / very bad photos are made; its
image-only AdaFace keeps, of its normal-quality TAR@FAR=1e-3 (81.35 %), 66 % at poor (53.41),
49 % at bad (40.10) and 34 % at very bad (27.77). This script finds, for each level, the
severity of ``tgfr.data.quality.degradation_at`` at which this project's frozen image-only
encoder keeps the same share, at the demo's image size (``tgfr train --preset demo``, 48 px)
and at the quick study's (``tgfr study --preset quick``, 32 px): one severity per level for
both sizes.

For every size and seed it trains the face encoder once (step 0 only: ``align.epochs=0
fusion.epochs=0``; kept in ``--work`` and reused) and embeds its normal-quality test photos.
Each level's severity is then bisected (in [0, 1], or ``--bracket``) on the retention of TAR@FAR=1e-3
averaged over the seeds and sizes, until it is within ``--tolerance`` of the paper's; the evaluated
severity closest to the paper's retention is chosen.
Probes are the test photos degraded exactly as the evaluation degrades them
(``tgfr.evaluation.protocol``, with the test set's own random streams): the candidate
degradation stands in for the level while they are embedded. Every measured TAR is kept in
``--work`` (one file per level, so levels can run in parallel processes), so a rerun measures
nothing twice.

``--report`` measures the levels committed in ``tgfr/data/quality.py`` and writes ``--out``.md
and ``--out``.json: per size and seed, TAR@1e-3 at each level and its retention, the severities
and parameters, and the bisection steps found in ``--work``.

    python benchmarks/calibrate_quality.py --work /tmp/quality-calibration [--levels poor] [--seeds 0 1 2]
    python benchmarks/calibrate_quality.py --work /tmp/quality-calibration --report
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import tgfr
from tgfr.data import QUALITY_LEVELS
from tgfr.data import quality as quality_module
from tgfr.evaluation import TestProtocol
from tgfr.evaluation.protocol import embed_dataset, score_embeddings
from tgfr.study import STUDY_PRESETS
from tgfr.training import load_config, load_model, train
from tgfr.training.data import load_test_split

# the paper's Table 5, image-only AdaFace: TAR@FAR=1e-3 (%) per probe quality level
PAPER_TAR = {"normal": 81.35, "poor": 53.41, "bad": 40.10, "very_bad": 27.77}
TARGET_RETENTION = {level: PAPER_TAR[level] / PAPER_TAR["normal"] for level in QUALITY_LEVELS[1:]}
FAR = 1e-3
# the two image sizes the levels must fit: the demo's and the quick study's face encoder (step 0 only)
SIZES = {
    "demo": ("demo", []),
    "quick": ("paper", list(STUDY_PRESETS["quick"].overrides)),
}


def face_encoder(size: str, seed: int, work: Path) -> Path:
    """The checkpoint of the step-0 face encoder of ``size`` and ``seed`` (trained once, then reused)."""
    preset, overrides = SIZES[size]
    config = load_config(preset, [*overrides, "num_threads=1", "progress=false", "align.epochs=0",
                                  "fusion.epochs=0", f"seed={seed}"])
    return train(config, work / f"{size}-seed{seed}", resume=True)


@dataclasses.dataclass
class Encoder:
    """One size's and seed's frozen face encoder with its test set and normal-quality reference embeddings."""

    size: str
    image_size: int
    seed: int
    model: torch.nn.Module
    test: object
    protocol: TestProtocol
    reference: torch.Tensor
    normal_tar: float


def load_encoder(size: str, seed: int, work: Path) -> Encoder:
    checkpoint = face_encoder(size, seed, work)
    preset, overrides = SIZES[size]
    config = load_config(preset, [*overrides, f"seed={seed}"])
    test = load_test_split(config, checkpoint.parent)
    model = load_model(checkpoint)
    protocol = TestProtocol.for_labels(test.labels)
    reference = embed_dataset(model, test.with_quality("normal"), ("image",))["image"]
    normal = score_embeddings("image", "normal", reference, reference, protocol).verification.tar_at_far[FAR]
    return Encoder(size, config.model.image_size, seed, model, test, protocol, reference, normal)


def measure_tar(encoder: Encoder, level: str, severity: float) -> float:
    """TAR@FAR=1e-3 of ``encoder``'s test probes at ``level`` when the level is ``degradation_at(severity)``."""
    with mock.patch.dict(quality_module.DEGRADATIONS, {level: quality_module.degradation_at(severity)}):
        probes = embed_dataset(encoder.model, encoder.test.with_quality(level), ("image",))["image"]
    tar = score_embeddings("image", level, probes, encoder.reference, encoder.protocol).verification.tar_at_far[FAR]
    if tar is None:
        raise RuntimeError(f"{encoder.size} seed {encoder.seed}: the test set cannot resolve FAR={FAR:g}")
    return tar


class Measurements:
    """TARs measured for one level, on disk: ``{"size/seed/severity": tar}``."""

    def __init__(self, work: Path, level: str):
        self.path = work / f"tar-{level}.json"
        self.level = level
        self.values = json.loads(self.path.read_text()) if self.path.exists() else {}

    def retention(self, encoders, severity: float) -> dict[tuple[str, int], float]:
        """Each encoder's retention at ``severity`` (measured once, then read back)."""
        out = {}
        for encoder in encoders:
            key = f"{encoder.size}/{encoder.seed}/{severity!r}"
            if key not in self.values:
                self.values[key] = measure_tar(encoder, self.level, severity)
                self.path.write_text(json.dumps(self.values, indent=1) + "\n")
            out[encoder.size, encoder.seed] = self.values[key] / encoder.normal_tar
        return out


def mean_retention(per_encoder: dict) -> float:
    """The mean over sizes of each size's mean over seeds."""
    sizes = sorted({size for size, _ in per_encoder})
    return float(np.mean([np.mean([r for (s, _), r in per_encoder.items() if s == size]) for size in sizes]))


def bisect_level(level: str, encoders, work: Path, iterations: int, bracket=(0.0, 1.0), tolerance: float = 0.02,
                 log=print) -> list[dict]:
    """Bisect ``level``'s severity in ``bracket`` on the mean retention, stopping once it is within ``tolerance``
    of the paper's; returns the steps (severity, retentions)."""
    measurements, (low, high), steps = Measurements(work, level), bracket, []
    for _ in range(iterations):
        severity = (low + high) / 2
        per_encoder = measurements.retention(encoders, severity)
        retention = mean_retention(per_encoder)
        steps.append({"severity": severity, "mean_retention": retention,
                      "retention": {f"{size}/{seed}": r for (size, seed), r in per_encoder.items()}})
        log(f"{level}: severity {severity:.6f} keeps {100 * retention:.1f} % "
            f"(target {100 * TARGET_RETENTION[level]:.1f} %)")
        if abs(retention - TARGET_RETENTION[level]) <= tolerance:
            break
        low, high = (severity, high) if retention > TARGET_RETENTION[level] else (low, severity)
    record = {"bracket": list(bracket), "tolerance": tolerance, "steps": steps}
    (work / f"steps-{level}.json").write_text(json.dumps(record, indent=1) + "\n")
    return steps


def chosen_severity(steps: list[dict], level: str) -> float:
    return min(steps, key=lambda step: abs(step["mean_retention"] - TARGET_RETENTION[level]))["severity"]


def write_report(encoders, work: Path, out: Path) -> None:
    """Measure the committed levels and write ``out``.md and ``out``.json."""
    levels = QUALITY_LEVELS[1:]
    runs = [{"size": e.size, "image_size": e.image_size, "seed": e.seed, "tar": {"normal": e.normal_tar},
             "retention": {}} for e in encoders]
    for level in levels:
        measurements = Measurements(work, level)
        severity = quality_module.LEVEL_SEVERITY[level]
        retention = measurements.retention(encoders, severity)
        for run, encoder in zip(runs, encoders):
            run["tar"][level] = measurements.values[f"{encoder.size}/{encoder.seed}/{severity!r}"]
            run["retention"][level] = retention[encoder.size, encoder.seed]
    sizes = list(dict.fromkeys(run["size"] for run in runs))
    mean = {size: {level: float(np.mean([r["retention"][level] for r in runs if r["size"] == size]))
                   for level in levels} for size in sizes}
    mean["both sizes"] = {level: float(np.mean([mean[size][level] for size in sizes])) for level in levels}
    steps = {level: json.loads((work / f"steps-{level}.json").read_text())
             for level in levels if (work / f"steps-{level}.json").exists()}
    report = {
        "date": date.today().isoformat(), "machine": platform.platform(), "python": sys.version.split()[0],
        "torch": torch.__version__, "tgfr": tgfr.__version__, "far": FAR, "paper_tar": PAPER_TAR,
        "target_retention": TARGET_RETENTION,
        "levels": {level: {"severity": quality_module.LEVEL_SEVERITY[level],
                           "parameters": dataclasses.asdict(quality_module.DEGRADATIONS[level])} for level in levels},
        "runs": runs, "mean_retention": mean, "bisection": steps,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(report_markdown(report) + "\n")


def report_markdown(report: dict) -> str:
    levels = QUALITY_LEVELS[1:]
    percent = "{:.2f}".format
    lines = [
        "# Quality levels calibrated to the paper's image-only retention", "",
        f"`python benchmarks/calibrate_quality.py --work DIR --report`, {report['date']}, {report['machine']}, "
        f"Python {report['python']}, torch {report['torch']}, tgfr {report['tgfr']}.", "",
        "The paper's image-only AdaFace keeps, of its normal-quality TAR@FAR=1e-3 ("
        f"{report['paper_tar']['normal']} %), "
        + ", ".join(f"{100 * report['target_retention'][level]:.0f} % at {level.replace('_', ' ')}" for level in levels)
        + ". Below: the frozen image-only face encoder of this project (step 0 only) at the demo's size "
        "(`tgfr train --preset demo`) and the quick study's (`tgfr study --preset quick`), TAR@FAR=1e-3 in % "
        "and, in brackets, the share of the normal-quality TAR kept.", "",
        "| size | px | seed | normal | " + " | ".join(level.replace("_", " ") for level in levels) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(levels),
    ]
    for run in report["runs"]:
        cells = [f"{percent(100 * run['tar'][level])} ({100 * run['retention'][level]:.0f} %)" for level in levels]
        lines.append(f"| {run['size']} | {run['image_size']} | {run['seed']} | {percent(100 * run['tar']['normal'])} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Mean retention (%):", "", "| | " + " | ".join(level.replace("_", " ") for level in levels) + " |",
              "|---|" + "---:|" * len(levels)]
    for name, values in report["mean_retention"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * values[level]:.1f}" for level in levels) + " |")
    lines.append("| paper (target) | " + " | ".join(f"{100 * report['target_retention'][level]:.1f}" for level in levels)
                 + " |")
    lines += ["", "Levels (`tgfr/data/quality.py`: `degradation_at(severity)`; ranges in the 112-pixel reference "
              "frame, drawn per photo):", "",
              "| level | severity | colour cast | contrast | blur sigma | down-sampling | noise std | JPEG quality |",
              "|---|---:|---:|---|---|---|---|---|"]
    for level in levels:
        p = report["levels"][level]["parameters"]

        def span(pair, digits=2):
            return f"{pair[0]:.{digits}f}–{pair[1]:.{digits}f}"
        lines.append(f"| {level.replace('_', ' ')} | {report['levels'][level]['severity']:.6f} | "
                     f"{p['colour_cast']:.3f} | {span(p['contrast'])} | {span(p['blur_sigma'])} | "
                     f"{span(p['downsample'])} | {span(p['noise_std'], 1)} | {p['jpeg_quality'][0]}–{p['jpeg_quality'][1]} |")
    if report["bisection"]:
        lines += ["", "Bisection (mean retention over seeds and sizes, %):", ""]
        for level, record in report["bisection"].items():
            low, high = record["bracket"]
            lines.append(f"- {level.replace('_', ' ')} (`--bracket {low:g} {high:g}`): " + ", ".join(
                f"{step['severity']:.6f} → {100 * step['mean_retention']:.1f}" for step in record["steps"]))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="face encoders and measured TARs (reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--levels", nargs="+", choices=QUALITY_LEVELS[1:], default=list(QUALITY_LEVELS[1:]),
                        help="levels to bisect")
    parser.add_argument("--iterations", type=int, default=7, help="bisection steps per level, at most")
    parser.add_argument("--bracket", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="the severities the bisection starts between")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="stop a level's bisection once its mean retention is this close to the paper's")
    parser.add_argument("--report", action="store_true", help="measure the committed levels and write --out")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("QUALITY_CALIBRATION"),
                        help="report path without suffix (.md and .json are written)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    encoders = [load_encoder(size, seed, args.work) for size in args.sizes for seed in args.seeds]
    if args.report:
        write_report(encoders, args.work, args.out)
        print(f"wrote {args.out.with_suffix('.md')} and .json")
    else:
        for level in args.levels:
            steps = bisect_level(level, encoders, args.work, args.iterations, tuple(args.bracket), args.tolerance)
            print(f"{level}: severity {chosen_severity(steps, level)!r}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
