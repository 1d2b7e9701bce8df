"""Per (mode, quality level) results and the files that report them: Markdown, JSON and a ROC plot.

matplotlib is imported by the plotting functions alone, so the tables and the JSON never wait on it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..markdown import table
from .metrics import FAR_TARGETS, VerificationResult

MODE_LABELS = {"image": "image only", "flf": "feature-level fusion", "tgfr": "TGFR", "cgfr": "CGFR-style fusion"}
# Enough points to draw a ROC faithfully (the full curve can hold a million), and to keep one in report.json.
ROC_PLOT_POINTS = 2000
ROC_JSON_POINTS = 200


@dataclass(frozen=True)
class Result:
    """Metrics of one embedding mode at one probe quality level."""

    mode: str
    level: str
    verification: VerificationResult
    rank1: float

    def as_dict(self) -> dict:
        far, tar = _subsample_roc(self.verification.far, self.verification.tar, ROC_JSON_POINTS)
        return {
            "mode": self.mode,
            "level": self.level,
            "tar_at_far": {f"{far:g}": tar for far, tar in self.verification.tar_at_far.items()},
            "eer": self.verification.eer,
            "auc": self.verification.auc,
            "rank1": self.rank1,
            "num_genuine_pairs": self.verification.num_genuine,
            "num_impostor_pairs": self.verification.num_impostor,
            "roc": {"far": far.round(8).tolist(), "tar": tar.round(8).tolist()},
        }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def markdown_table(results: list[Result]) -> str:
    """One row per mode and level; rates in percent, "n/a" where too few impostors resolve a FAR."""
    far_columns = [f"TAR@FAR={far:g} (%)" for far in FAR_TARGETS]
    header = ["mode", "level", *far_columns, "EER (%)", "AUC", "rank-1 (%)"]
    rows = [
        [
            MODE_LABELS.get(result.mode, result.mode),
            result.level,
            *(_percent(result.verification.tar_at_far.get(far)) for far in FAR_TARGETS),
            _percent(result.verification.eer),
            f"{result.verification.auc:.4f}",
            _percent(result.rank1),
        ]
        for result in results
    ]
    return table(header, rows, align=["l", "l"] + ["r"] * (len(header) - 2))


def _subsample_roc(far: np.ndarray, tar: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``points`` ROC points, spread evenly in log FAR so the low-FAR end keeps its detail.

    Each kept point is the top of its FAR step, so the curve keeps its best TAR at every FAR kept.
    """
    if far.size <= points:
        return far, tar
    positive = far[far > 0]
    grid = np.geomspace(positive.min(), 1.0, points)
    keep = np.unique(np.clip(np.searchsorted(far, grid, side="right") - 1, 0, far.size - 1))
    return far[keep], tar[keep]


def plot_roc(results: list[Result], path: Path) -> None:
    """One panel per quality level, one curve per mode, FAR on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(dict.fromkeys(result.level for result in results))
    figure, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4.0), squeeze=False, sharey=True)
    for axis, level in zip(axes[0], levels):
        smallest_far = 1.0
        for result in (r for r in results if r.level == level):
            far, tar = _subsample_roc(result.verification.far, result.verification.tar, ROC_PLOT_POINTS)
            shown = far > 0  # log axis: FAR 0 has no place on it
            smallest_far = min(smallest_far, 1.0 / result.verification.num_impostor)
            label = f"{MODE_LABELS.get(result.mode, result.mode)} (AUC {result.verification.auc:.3f})"
            axis.plot(far[shown], tar[shown], label=label)
        axis.set_xlim(smallest_far, 1.0)
        style_roc_axis(axis, level, "upper left")
    save_roc_figure(figure, axes, path)


def style_roc_axis(axis, title: str, legend_loc: str) -> None:
    """Log-FAR axis, TAR from 0 to 1, grid, title and legend: the look every ROC plot shares."""
    axis.set_xscale("log")
    axis.set_ylim(0.0, 1.01)
    axis.set_title(title)
    axis.set_xlabel("false accept rate")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc=legend_loc, fontsize=8)


def save_roc_figure(figure, axes, path) -> None:
    import matplotlib.pyplot as plt

    axes[0][0].set_ylabel("true accept rate")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: list[Result], out_dir, metadata: dict | None = None) -> dict[str, Path]:
    """Write report.md, report.json and roc.png into ``out_dir``; return their paths."""
    if not results:
        raise ValueError("results must hold at least one (mode, level) result")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json", "roc": out_dir / "roc.png"}
    metadata = dict(metadata or {})
    impostor_rule = (
        "TAR@FAR=f is n/a when there are fewer than ceil(1/f) impostor pairs: "
        "one false accept would already exceed f."
    )
    lines = ["# TGFR evaluation", "", markdown_table(results), "", impostor_rule, ""]
    lines += [f"- {key}: {value}" for key, value in metadata.items()]
    paths["markdown"].write_text("\n".join(lines).rstrip() + "\n")
    document = {"results": [result.as_dict() for result in results], "impostor_rule": impostor_rule, "metadata": metadata}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    plot_roc(results, paths["roc"])
    return paths
