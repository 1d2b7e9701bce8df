"""How the study runs: the training config of every run, resolved and checked before anything trains,
then the face encoder of each seed, the runs, their scores and the report.

``out_dir`` holds ``config.yaml`` (the study's config: ``tgfr study --config`` runs it again) and,
per seed, ``seed<N>/face`` (step 0, shared by every run of the seed as its pretrained
``model.image_weights``, ``face_encoder.pth``), the runs' training directories
``seed<N>/<run>/train`` and their scores ``seed<N>/<run>/results.json`` (whose existence marks a
run done), and the frozen face encoder's feature cache ``seed<N>/features``.

A study that is run again continues where it stopped: a run directory is reused only when the
``config.yaml`` it was trained with equals the run's config now; otherwise the study stops
before training anything and names the runs and the keys that differ.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import config as configs
from ..atomic import save_tensors, write_text
from ..config import ConfigError
from ..data import QUALITY_LEVELS
from ..engine import CONFIG_NAME
from ..training.config import TrainConfig
from .presets import StudyConfig
from .report import write_study
from .runs import BERT_SYSTEMS, Run, study_runs

FACE_ENCODER_FILE = "face_encoder.pth"


@dataclass
class PlannedRun:
    """A run of one seed: where it trains and with which config."""

    seed: int
    run: Run
    directory: Path
    config: TrainConfig

    @property
    def result_file(self) -> Path:
        return self.directory / "results.json"

    @property
    def train_dir(self) -> Path:
        return self.directory / "train"


def plan(study: StudyConfig, out_dir) -> tuple[dict[int, TrainConfig], list[PlannedRun], list[Run]]:
    """The face-encoder config of every seed and every run's config (all checked), and the runs."""
    out_dir = Path(out_dir)
    runs = study_runs(study.resolved_text_model(), study.transformer_text_lr)
    transformer_seeds = set(study.seeds if study.transformer_seeds is None else study.transformer_seeds)
    faces, planned = {}, []
    for seed in study.seeds:
        seed_dir = out_dir / f"seed{seed}"
        base = configs.merge(configs.dump(study.training), {"seed": seed})
        faces[seed] = configs.from_dict(TrainConfig, configs.merge(base, {"align": {"epochs": 0},
                                                                          "fusion": {"epochs": 0}}))
        # every run of a seed shares the frozen face encoder, hence its cached features of the same photos
        shared = {"model": {"image_weights": str(seed_dir / FACE_ENCODER_FILE)},
                  "feature_cache_dir": str(seed_dir / "features")}
        for run in runs:
            if run.name in BERT_SYSTEMS and seed not in transformer_seeds:
                continue
            try:
                config = configs.from_dict(TrainConfig, configs.merge(base, run.changes, shared))
            except ConfigError as error:
                raise ConfigError(f"run {run.name}: {error}") from None
            planned.append(PlannedRun(seed, run, seed_dir / run.name, config))
    return faces, planned, runs


def _config_differences(run_dir: Path, config: TrainConfig) -> list[str] | None:
    """The keys in which the run in ``run_dir`` was trained with another config (None: no run there)."""
    if not run_dir.exists():
        return None
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return ["(no config.yaml)"]
    return configs.differences(configs.read_yaml(path), configs.dump(config))


def check_reusable(out_dir, faces: dict[int, TrainConfig], planned: list[PlannedRun]) -> None:
    """A ConfigError naming every run in ``out_dir`` trained with another config than the one planned."""
    out_dir = Path(out_dir)
    trained = [(f"seed{seed}/face", out_dir / f"seed{seed}" / "face", config) for seed, config in faces.items()]
    trained += [(f"seed{p.seed}/{p.run.name}", p.train_dir, p.config) for p in planned]
    differing = []
    for name, run_dir, config in trained:
        keys = _config_differences(run_dir, config)
        if keys:
            differing.append(f"{name} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if differing:
        raise ConfigError(f"{out_dir} holds runs trained with another config: {'; '.join(differing)}; "
                          "use another --out, or remove those runs to train them again")


def _face_encoder(config: TrainConfig, seed_dir: Path, log=print) -> Path:
    """Train step 0 once for this seed and save the encoder in the insightface layout it loads from."""
    from ..training import load_model, train

    path = seed_dir / FACE_ENCODER_FILE
    if not path.exists():
        started, cpu_started = time.perf_counter(), time.process_time()
        checkpoint = train(config, seed_dir / "face", resume=True)
        save_tensors(load_model(checkpoint).image_encoder.state_dict(), path)
        log(f"{seed_dir.name} face encoder: {time.perf_counter() - started:.1f} s wall, "
            f"{time.process_time() - cpu_started:.1f} s CPU")
    return path


def _score_run(checkpoint, modes, test, protocol) -> dict:
    """{mode: {level: metrics}} of a trained run: probes of every quality level against normal references."""
    from ..evaluation.protocol import embed_dataset, score_embeddings
    from ..training import load_model

    model = load_model(checkpoint)
    embedded = {level: embed_dataset(model, test.with_quality(level), modes) for level in QUALITY_LEVELS}
    scored = {}
    for mode in modes:
        scored[mode] = {}
        for level in QUALITY_LEVELS:
            result = score_embeddings(mode, level, embedded[level][mode], embedded["normal"][mode],
                                      protocol).as_dict()
            scored[mode][level] = {**{f"tar@{far}": tar for far, tar in result["tar_at_far"].items()},
                                   "eer": result["eer"], "rank1": result["rank1"], "roc": result["roc"]}
    return scored


def run_study(out_dir, study: StudyConfig, name: str = "quick", log=print) -> dict[str, Path]:
    """Train and score every run of ``study`` (called ``name`` in the report) for every seed, then write
    the tables and figures."""
    from ..evaluation import TestProtocol
    from ..training import train
    from ..training.data import load_test_split

    faces, planned, runs = plan(study, out_dir)  # every config checked before anything trains
    check_reusable(out_dir, faces, planned)
    out_dir = Path(out_dir)
    results: dict = {}
    started, study_cpu_started = time.perf_counter(), time.process_time()
    for seed in study.seeds:
        seed_dir = out_dir / f"seed{seed}"
        # the first seed's face encoder reads the data: a dataset that cannot be used stops the study there,
        # and its run directory (the study's too, when new) is removed again
        _face_encoder(faces[seed], seed_dir, log)
        configs.save(study, out_dir / CONFIG_NAME)
        test = load_test_split(faces[seed], seed_dir / "face")
        protocol = TestProtocol.for_labels(test.labels)
        for run in (p for p in planned if p.seed == seed):
            if not run.result_file.exists():
                run_started, cpu_started = time.perf_counter(), time.process_time()
                checkpoint = train(run.config, run.train_dir, resume=True)
                scored = _score_run(checkpoint, run.run.modes, test, protocol)
                write_text(run.result_file, json.dumps(scored) + "\n")  # its existence marks the run done
                log(f"seed {seed} {run.run.name}: {time.perf_counter() - run_started:.1f} s wall, "
                    f"{time.process_time() - cpu_started:.1f} s CPU")
            results.setdefault(run.run.name, {})[seed] = json.loads(run.result_file.read_text())
    details = {"preset": name, **({"deviations": study.deviations} if study.deviations else {}),
               "seeds": list(study.seeds), "text_model": study.resolved_text_model() or "none (BERT rows skipped)",
               "test_photos": len(protocol.labels), "test_identities": int(np.unique(protocol.labels).size),
               "impostor_pairs": protocol.num_impostor,
               "wall_seconds_this_call": round(time.perf_counter() - started, 1),
               "cpu_seconds_this_call": round(time.process_time() - study_cpu_started, 1)}
    return write_study(results, runs, out_dir, details, test)
