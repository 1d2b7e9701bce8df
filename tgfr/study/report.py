"""What the study reports: the paper's tables (Markdown, mean ± standard deviation over seeds), the
paired differences behind its claims with their 95 % intervals and what they decide, ``study.json``
and the figures (Fig. 5's ROC curves, Fig. 6's quality levels).

Every run of a seed shares that seed's data, split and face encoder, so two systems' scores pair
by seed: a claim "A above B" is judged on the per-seed differences A − B, by the t-interval of their
mean (:func:`paired_interval`): it *holds* when the interval lies above 0, is *reversed* when it
lies below 0, and is *undecided* when it contains 0 (:func:`verdict`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import QUALITY_LEVELS
from ..evaluation import FAR_TARGETS
from ..markdown import table

CONFIDENCE = 0.95
# the metrics a claim is judged on: the lowest FAR the quick study's impostor pairs resolve, and rank-1
CLAIM_METRICS = (("tar@0.001", "TAR@FAR=1e-3"), ("rank1", "rank-1"))
VERDICTS = {"holds": "holds (interval above 0)", "reversed": "reversed (interval below 0)",
            "undecided": "undecided (interval contains 0)"}


@dataclass(frozen=True)
class Row:
    """A table row: the embeddings of ``mode`` from run ``run``; ``label`` None takes the run's."""

    run: str
    mode: str
    label: str | None = None


IMAGE_ONLY, TGFR = Row("tgfr", "image", "image only (frozen encoder)"), Row("tgfr", "tgfr")
FLF, CGFR, VARIANTS = Row("flf", "flf"), Row("cgfr", "cgfr"), Row("tgfr_variants", "tgfr")
FLF_BILSTM, TGFR_BILSTM = Row("flf_bilstm", "flf"), Row("tgfr_bilstm", "tgfr")
TABLE3_ID = Row("id", "tgfr")
TABLE3_STEPS = (Row("id_cicl", "tgfr"), Row("id_wrcl", "tgfr"), Row("id_imcl", "tgfr"),
                Row("tgfr", "tgfr", "all (ID + WRCL + CICL + IMCL)"))
TABLE2_ROWS = (IMAGE_ONLY, FLF, CGFR, TGFR, VARIANTS)
TABLE3_ROWS = (TABLE3_ID, *TABLE3_STEPS)
TABLE4_ROWS = (FLF_BILSTM, FLF, TGFR_BILSTM, TGFR)
TABLE5_ROWS = (IMAGE_ONLY, CGFR, TGFR, VARIANTS)
CLAIM_LEVELS = ("normal", "very_bad")


@dataclass(frozen=True)
class Claim:
    """The paper's claim that ``better`` is above ``baseline`` at probes of ``level``."""

    better: Row
    baseline: Row
    level: str
    table: str


def study_claims() -> list[Claim]:
    """Table 2: TGFR above each baseline at normal and very bad probes; Table 4: the transformer above
    the BiLSTM; Table 3: each term added to ID, and all of them, above ID alone."""
    claims = [Claim(TGFR, baseline, level, "Table 2") for level in CLAIM_LEVELS
              for baseline in (IMAGE_ONLY, FLF, CGFR)]
    claims += [Claim(FLF, FLF_BILSTM, "normal", "Table 4"), Claim(TGFR, TGFR_BILSTM, "normal", "Table 4")]
    return claims + [Claim(step, TABLE3_ID, "normal", "Table 3") for step in TABLE3_STEPS]


def paired_interval(differences, confidence: float = CONFIDENCE) -> dict | None:
    """Mean of per-seed differences with its two-sided t-interval over the seeds
    (``mean ± t(confidence, n-1) · sd / √n``); None with fewer than two seeds."""
    from scipy import stats

    values = np.asarray(differences, dtype=float)
    if values.size < 2:
        return None
    mean = float(values.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(values.size)}


def verdict(interval: dict | None) -> str:
    """``"holds"`` (interval above 0), ``"reversed"`` (below 0) or ``"undecided"`` (contains 0, or no interval)."""
    if interval is None:
        return "undecided"
    if interval["low"] > 0:
        return "holds"
    return "reversed" if interval["high"] < 0 else "undecided"


def _per_seed(results, row: Row, level: str, metric: str) -> dict:
    """{seed: value} of a row's metric at probes of ``level`` (None where it could not be resolved)."""
    return {seed: result[row.mode][level][metric] for seed, result in results.get(row.run, {}).items()}


def judge(results, claim: Claim, metric: str) -> dict:
    """The claim on one metric: the per-seed differences in points (seeds where both rows ran), their
    interval and verdict."""
    better, baseline = (_per_seed(results, row, claim.level, metric) for row in (claim.better, claim.baseline))
    seeds = [s for s in better if s in baseline and better[s] is not None and baseline[s] is not None]
    differences = [100.0 * (better[s] - baseline[s]) for s in seeds]
    interval = paired_interval(differences)
    return {"metric": metric, "seeds": seeds, "differences": differences, "interval": interval,
            "verdict": verdict(interval)}


def _cell(values) -> str:
    """Mean ± standard deviation over seeds in percent; n/a when any seed could not resolve the value."""
    if not values or any(v is None for v in values):
        return "n/a"
    values = 100.0 * np.asarray(values, dtype=float)
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _interval_cell(judged: dict) -> str:
    interval = judged["interval"]
    if interval is None:
        return "n/a" if not judged["seeds"] else f"{judged['differences'][0]:+.2f} (one seed)"
    return f"{interval['mean']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]"


class _Report:
    """The tables of one study's results; row labels from its runs."""

    def __init__(self, results: dict, runs, seeds):
        self.results, self.seeds = results, seeds
        self.run_labels = {run.name: run.label for run in runs}

    def has(self, row: Row) -> bool:
        return row.run in self.results

    def label(self, row: Row) -> str:
        label = row.label or self.run_labels.get(row.run, row.run)
        count = len(self.results.get(row.run, {}))
        return label if count == len(self.seeds) else f"{label} ({count} seed{'s' if count != 1 else ''})"

    def values(self, row: Row, level: str, metric: str) -> list:
        return list(_per_seed(self.results, row, level, metric).values())

    def verification(self, rows, level: str) -> list[str]:
        header = ["system", *(f"TAR@FAR={f:g} (%)" for f in FAR_TARGETS), "rank-1 (%)"]
        body = [[self.label(row), *(_cell(self.values(row, level, f"tar@{f:g}")) for f in FAR_TARGETS),
                 _cell(self.values(row, level, "rank1"))] for row in rows if self.has(row)]
        return table(header, body).split("\n")

    def per_level(self, rows) -> list[str]:
        header = ["probes", "system", "EER (%)", *(f"TAR@FAR={f:g} (%)" for f in FAR_TARGETS)]
        body = [[level.replace("_", " "), self.label(row), _cell(self.values(row, level, "eer")),
                 *(_cell(self.values(row, level, f"tar@{f:g}")) for f in FAR_TARGETS)]
                for level in QUALITY_LEVELS for row in rows if self.has(row)]
        return table(header, body).split("\n")

    def claim_text(self, claim: Claim) -> str:
        return f"{self.label(claim.better)} above {self.label(claim.baseline)}"

    def judged_claims(self) -> list[tuple[Claim, dict]]:
        """Every claim whose two rows ran, with its judgement on each claim metric."""
        return [(claim, {metric: judge(self.results, claim, metric) for metric, _ in CLAIM_METRICS})
                for claim in study_claims() if self.has(claim.better) and self.has(claim.baseline)]

    def claims_table(self, judged) -> list[str]:
        header = ["table", "claim", "probes"]
        for _, name in CLAIM_METRICS:
            header += [f"{name}: difference (points) [95 % interval]", "verdict"]
        body = []
        for claim, by_metric in judged:
            row = [claim.table, self.claim_text(claim), claim.level.replace("_", " ")]
            for metric, _ in CLAIM_METRICS:
                row += [_interval_cell(by_metric[metric]), by_metric[metric]["verdict"]]
            body.append(row)
        return table(header, body).split("\n")

    def claims_in_words(self, judged) -> list[str]:
        """The claims grouped by verdict, each with its interval, as bullet lists."""
        names = dict(CLAIM_METRICS)
        grouped = {key: [] for key in VERDICTS}
        for claim, by_metric in judged:
            for metric, outcome in by_metric.items():
                grouped[outcome["verdict"]].append(
                    f"{self.claim_text(claim)} ({claim.table}, {claim.level.replace('_', ' ')} probes, "
                    f"{names[metric]}: {_interval_cell(outcome)})")
        lines = []
        for key, title in VERDICTS.items():
            lines += [f"**{title[0].upper() + title[1:]}**:", ""]
            lines += [f"- {text}" for text in grouped[key]] or ["- none"]
            lines.append("")
        return lines


def study_markdown(results, runs, details) -> str:
    report = _Report(results, runs, details["seeds"])
    encoder = details.get("caption_encoder", "")
    on = f" on one caption encoder ({encoder})" if encoder else ""
    lines = [f"# TGFR study ({details['preset']} preset, seeds {details['seeds']}; mean ± standard deviation "
             "over seeds)", "",
             *([f"Deviations from the paper: {details['deviations']}.", ""] if details.get("deviations") else []),
             f"## Table 2: baselines and TGFR{on}, normal-quality probes", ""]
    lines += report.verification(TABLE2_ROWS, "normal")
    lines += ["", "## Table 2 at very bad probes", ""]
    lines += report.verification(TABLE2_ROWS, "very_bad")
    if report.has(FLF_BILSTM):
        lines += ["", "## Table 4 analogue: the caption encoder (BiLSTM trained from scratch against the "
                  "transformer), normal-quality probes", ""]
        lines += report.verification(TABLE4_ROWS, "normal")
    lines += ["", "## Table 3: FCAM loss ablation, the identity loss in every row (TGFR fusion, normal-quality "
              "probes)", ""]
    lines += report.verification(TABLE3_ROWS, "normal")
    lines += ["", "## Table 5: per probe quality level (trained on normal photos; the variants row also on "
              "degraded ones)", ""]
    lines += report.per_level(TABLE5_ROWS)
    lines += ["", "TAR@FAR=f is n/a when the test set has fewer than ceil(1/f) impostor pairs.", ""]
    judged = report.judged_claims()
    lines += [f"## The paper's claims: paired differences over seeds ({CONFIDENCE:.0%} t-intervals)", "",
              "Each seed's runs share its data, split and face encoder: the difference of two systems is taken "
              "per seed, and the interval is that of the mean difference.", ""]
    lines += report.claims_table(judged)
    lines += ["", "## What holds at this scale", ""]
    lines += report.claims_in_words(judged)
    lines += [f"- {key}: {value}" for key, value in details.items()]
    return "\n".join(lines) + "\n"


def claims_document(results, runs, seeds) -> list[dict]:
    """The judged claims as plain data (``study.json``)."""
    report = _Report(results, runs, seeds)
    return [{"table": claim.table, "claim": report.claim_text(claim), "level": claim.level, **{
        metric: {key: outcome[key] for key in ("seeds", "differences", "interval", "verdict")}
        for metric, outcome in by_metric.items()}} for claim, by_metric in report.judged_claims()]


def plot_quality_levels(test, path) -> Path:
    """Fig. 6: the first test face at each quality level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..evaluation.attention import image_for_display

    figure, axes = plt.subplots(1, len(QUALITY_LEVELS), figsize=(2.2 * len(QUALITY_LEVELS), 2.5))
    for axis, level in zip(axes, QUALITY_LEVELS):
        axis.imshow(image_for_display(test.with_quality(level)[0]["image"]))
        axis.set_title(level.replace("_", " "))
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_study_roc(results, runs, path, seed) -> Path:
    """Fig. 5: ROC curves of the Table 2 systems (one seed) at normal and very bad probes."""
    import matplotlib

    from ..evaluation.report import save_roc_figure, style_roc_axis

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = _Report(results, runs, [seed])
    levels = ("normal", "very_bad")
    figure, axes = plt.subplots(1, len(levels), figsize=(5.0 * len(levels), 4.2), squeeze=False, sharey=True)
    for axis, level in zip(axes[0], levels):
        for row in TABLE2_ROWS:
            if seed not in results.get(row.run, {}):
                continue
            roc = results[row.run][seed][row.mode][level]["roc"]
            far, tar = np.asarray(roc["far"]), np.asarray(roc["tar"])
            axis.plot(far[far > 0], tar[far > 0], label=row.label or report.run_labels[row.run])
        style_roc_axis(axis, f"{level.replace('_', ' ')} probes (seed {seed})", "lower right")
    save_roc_figure(figure, axes, path)
    return Path(path)


def write_study(results, runs, out_dir, details, test) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json", "roc": out_dir / "roc.png",
             "faces": out_dir / "faces.png"}
    paths["markdown"].write_text(study_markdown(results, runs, details))
    document = {"details": details, "runs": {run.name: {"label": run.label, "changes": run.changes} for run in runs},
                "claims": claims_document(results, runs, details["seeds"]),
                "results": {run: {str(seed): value for seed, value in per_seed.items()}
                            for run, per_seed in results.items()}}
    paths["json"].write_text(json.dumps(document) + "\n")
    plot_study_roc(results, runs, paths["roc"], details["seeds"][0])
    plot_quality_levels(test, paths["faces"])
    return paths
