"""What the study reports: the paper's tables (Markdown, mean ± standard deviation over seeds),
``study.json`` and the figures (Fig. 5's ROC curves, Fig. 6's quality levels)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import QUALITY_LEVELS
from ..evaluation import FAR_TARGETS
from ..markdown import table


def _values(results, run, mode, level, metric):
    per_seed = results.get(run, {})
    return [seed_result[mode][level][metric] for seed_result in per_seed.values()]


def _cell(values) -> str:
    """Mean ± standard deviation over seeds in percent; n/a when any seed could not resolve the value."""
    if not values or any(v is None for v in values):
        return "n/a"
    values = 100.0 * np.asarray(values, dtype=float)
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def _table(header, rows) -> list[str]:
    return table(header, rows).split("\n")


TABLE2_ROWS = (("tgfr", "image", "image only (frozen encoder)"), ("bilstm_flf", "flf", "BiLSTM-FLF"),
               ("bert_flf", "flf", "BERT-FLF"), ("cgfr", "cgfr", "CGFR-style"), ("tgfr", "tgfr", "TGFR (paper)"),
               ("tgfr_variants", "tgfr", "TGFR (tgfr variants)"))
TABLE3_ROWS = (("wrcl", "WRCL only"), ("wrcl_id", "WRCL + ID"), ("wrcl_cicl", "WRCL + CICL"),
               ("wrcl_imcl", "WRCL + IMCL"), ("tgfr", "all (WRCL + ID + CICL + IMCL)"))
TABLE5_ROWS = (("tgfr", "image", "image only"), ("tgfr", "tgfr", "TGFR, trained on normal (paper)"),
               ("tgfr_mixed", "tgfr", "TGFR, trained on normal + mixed + very bad (tgfr)"))


def _label(results, run, label, seeds) -> str:
    count = len(results[run])
    return label if count == len(seeds) else f"{label} ({count} seed{'s' if count > 1 else ''})"


def _verification_rows(results, rows, level, seeds):
    out = []
    for run, mode, label in rows:
        if run not in results:
            continue
        tars = [_cell(_values(results, run, mode, level, f"tar@{f:g}")) for f in FAR_TARGETS]
        out.append([_label(results, run, label, seeds), *tars, _cell(_values(results, run, mode, level, "rank1"))])
    return out


def study_markdown(results, details) -> str:
    header = ["system", *(f"TAR@FAR={f:g} (%)" for f in FAR_TARGETS), "rank-1 (%)"]
    seeds = details["seeds"]
    lines = [f"# TGFR study ({details['preset']} preset, seeds {seeds}; mean ± standard deviation over seeds)", "",
             *([f"Deviations from the paper: {details['deviations']}.", ""] if details.get("deviations") else []),
             "## Table 2: baselines and TGFR (normal-quality probes)", ""]
    lines += _table(header, _verification_rows(results, TABLE2_ROWS, "normal", seeds))
    lines += ["", "## Table 2 at very bad probes", ""]
    lines += _table(header, _verification_rows(results, TABLE2_ROWS, "very_bad", seeds))
    lines += ["", "## Table 3: FCAM loss ablation (TGFR fusion, normal-quality probes)", ""]
    lines += _table(header, _verification_rows(results, [(r, "tgfr", label) for r, label in TABLE3_ROWS], "normal",
                                           seeds))
    lines += ["", "## Table 5: per probe quality level (EER % / TAR@FAR=1e-3 %)", ""]
    level_rows = []
    for run, mode, label in TABLE5_ROWS:
        if run in results:
            cells = [f"{_cell(_values(results, run, mode, level, 'eer'))} / "
                     f"{_cell(_values(results, run, mode, level, 'tar@0.001'))}" for level in QUALITY_LEVELS]
            level_rows.append([_label(results, run, label, seeds), *cells])
    lines += _table(["system", *QUALITY_LEVELS], level_rows)
    lines += ["", "TAR@FAR=f is n/a when the test set has fewer than ceil(1/f) impostor pairs.", ""]
    lines += [f"- {key}: {value}" for key, value in details.items()]
    return "\n".join(lines) + "\n"


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


def plot_study_roc(results, path, seed) -> Path:
    """Fig. 5: ROC curves of the Table 2 systems (one seed) at normal and very bad probes."""
    import matplotlib

    from ..evaluation.report import save_roc_figure, style_roc_axis

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = ("normal", "very_bad")
    figure, axes = plt.subplots(1, len(levels), figsize=(5.0 * len(levels), 4.2), squeeze=False, sharey=True)
    for axis, level in zip(axes[0], levels):
        for run, mode, label in TABLE2_ROWS:
            if seed not in results.get(run, {}):
                continue
            roc = results[run][seed][mode][level]["roc"]
            far, tar = np.asarray(roc["far"]), np.asarray(roc["tar"])
            axis.plot(far[far > 0], tar[far > 0], label=label)
        style_roc_axis(axis, f"{level.replace('_', ' ')} probes (seed {seed})", "lower right")
    save_roc_figure(figure, axes, path)
    return Path(path)


def write_study(results, runs, out_dir, details, test) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"markdown": out_dir / "study.md", "json": out_dir / "study.json", "roc": out_dir / "roc.png",
             "faces": out_dir / "faces.png"}
    paths["markdown"].write_text(study_markdown(results, details))
    document = {"details": details, "runs": {run.name: {"label": run.label, "changes": run.changes} for run in runs},
                "results": {run: {str(seed): value for seed, value in per_seed.items()}
                            for run, per_seed in results.items()}}
    paths["json"].write_text(json.dumps(document) + "\n")
    plot_study_roc(results, paths["roc"], details["seeds"][0])
    plot_quality_levels(test, paths["faces"])
    return paths
