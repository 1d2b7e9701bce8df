"""How the study runs: the training config of every run, resolved and checked before anything trains,
then the face encoder of each seed, the runs, their scores and the report.

``out_dir`` holds ``config.yaml`` (the study's config: ``tgfr study --config`` runs it again) and,
per seed, ``seed<N>/face`` (step 0, shared by every run of the seed as its pretrained
``model.image_weights``, ``face_encoder.pth``), the runs' training directories
``seed<N>/<run>/train`` and their scores ``seed<N>/<run>/results.json`` (whose existence marks a
run done), and the frozen face encoder's feature cache ``seed<N>/features``. Each trained step 0
and run records its wall and CPU seconds in ``timing.json`` beside it, so that the report gives the
cost of the whole study however many calls it took.

A study that is run again continues where it stopped: a run directory is reused only when the
``config.yaml`` it was trained with equals the run's config now; otherwise the study stops
before training anything and names the runs and the keys that differ.
"""
from __future__ import annotations

import json
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import config as configs
from ..atomic import save_tensors, write_text
from ..config import ConfigError
from ..data import QUALITY_LEVELS
from ..data.dataset import FixedItems
from ..engine import CONFIG_NAME
from ..training.config import TrainConfig
from .presets import StudyConfig
from .report import write_study
from .runs import Run, encoder_name, study_runs

FACE_ENCODER_FILE = "face_encoder.pth"
TIMING_FILE = "timing.json"


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
    missing = set(study.runs) - {run.name for run in runs}
    if missing:
        raise ConfigError(f"names runs that need a transformer caption encoder (text_model): {sorted(missing)}",
                          "runs")
    runs = [run for run in runs if not study.runs or run.name in study.runs]
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


class _Timer:
    """Wall and CPU seconds of a block of work, written to ``directory/timing.json`` and logged."""

    def __init__(self, directory: Path, name: str, log=print):
        self.path, self.name, self.log = directory / TIMING_FILE, name, log

    def __enter__(self):
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, kind, *_):
        if kind is None:
            timing = {"wall_seconds": round(time.perf_counter() - self.started, 1),
                      "cpu_seconds": round(time.process_time() - self.cpu_started, 1)}
            write_text(self.path, json.dumps(timing) + "\n")
            self.log(f"{self.name}: {timing['wall_seconds']} s wall, {timing['cpu_seconds']} s CPU")


def _face_encoder(config: TrainConfig, seed_dir: Path, log=print) -> Path:
    """Train step 0 once for this seed and save the encoder in the insightface layout it loads from."""
    from ..training import load_model, train

    path = seed_dir / FACE_ENCODER_FILE
    if not path.exists():
        with _Timer(seed_dir / "face", f"{seed_dir.name} face encoder", log):
            checkpoint = train(config, seed_dir / "face", resume=True)
            save_tensors(load_model(checkpoint).image_encoder.state_dict(), path)
    return path


def study_seconds(out_dir) -> dict:
    """Wall and CPU seconds of every step 0 and run trained in ``out_dir``, summed, and how many there were."""
    totals = {"wall_seconds": 0.0, "cpu_seconds": 0.0, "timed_trainings": 0}
    for path in sorted(Path(out_dir).glob(f"seed*/*/{TIMING_FILE}")):
        timing = json.loads(path.read_text())
        totals["wall_seconds"] += timing["wall_seconds"]
        totals["cpu_seconds"] += timing["cpu_seconds"]
        totals["timed_trainings"] += 1
    return {key: round(value, 1) for key, value in totals.items()}


def _score_run(checkpoint, modes, test_levels: dict, protocol) -> dict:
    """{mode: {level: metrics}} of a trained run: probes of every quality level (``test_levels``: the test
    set at each) against normal references."""
    from ..evaluation.protocol import embed_dataset, score_embeddings
    from ..training import load_model

    model = load_model(checkpoint)
    embedded = {level: embed_dataset(model, test_levels[level], modes) for level in QUALITY_LEVELS}
    scored = {}
    for mode in modes:
        scored[mode] = {}
        for level in QUALITY_LEVELS:
            result = score_embeddings(mode, level, embedded[level][mode], embedded["normal"][mode],
                                      protocol).as_dict()
            scored[mode][level] = {**{f"tar@{far}": tar for far, tar in result["tar_at_far"].items()},
                                   "eer": result["eer"], "rank1": result["rank1"], "roc": result["roc"]}
    return scored


def _train_seed(seed: int, face: TrainConfig, planned: list[PlannedRun], log=print) -> None:
    """Train and score every run of one seed that has no result yet (its face encoder first)."""
    from ..evaluation import TestProtocol
    from ..training import train
    from ..training.data import load_test_split

    seed_dir = planned[0].directory.parent
    _face_encoder(face, seed_dir, log)
    test = load_test_split(face, seed_dir / "face")
    protocol = TestProtocol.for_labels(test.labels)
    test_levels = {}  # every run of the seed scores the same degraded photos: made once, when first needed
    for run in planned:
        if not run.result_file.exists():
            with _Timer(run.directory, f"seed {seed} {run.run.name}", log):
                checkpoint = train(run.config, run.train_dir, resume=True)
                test_levels = test_levels or {level: FixedItems(test.with_quality(level)) for level in QUALITY_LEVELS}
                scored = _score_run(checkpoint, run.run.modes, test_levels, protocol)
            write_text(run.result_file, json.dumps(scored) + "\n")  # its existence marks the run done


def _train_seed_star(item) -> None:
    _train_seed(*item)


def _start_worker() -> None:
    """A worker leaves Ctrl-C to the study, which stops every worker at once; its progress bars take a
    thread lock, not tqdm's default process lock, whose semaphore a stopped worker would leave behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _train_seeds(seeds: list[int], faces: dict, planned: list[PlannedRun], jobs: int, log) -> None:
    """Every seed's runs, ``jobs`` seeds at a time (each worker a process of its own). On Ctrl-C the
    workers are stopped; what they finished (runs, and epochs: checkpoints are atomic) is kept."""
    work = [(seed, faces[seed], [p for p in planned if p.seed == seed], log) for seed in seeds]
    if jobs == 1 or len(work) == 1:
        for item in work:
            _train_seed(*item)
        return
    # spawned, not forked: a forked child would inherit the parent's thread pools and locks
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(work)), initializer=_start_worker)
    try:
        for _ in pool.imap_unordered(_train_seed_star, work):
            pass
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def run_study(out_dir, study: StudyConfig, name: str = "quick", log=print) -> dict[str, Path]:
    """Train and score every run of ``study`` (called ``name`` in the report) for every seed, ``study.jobs``
    seeds at a time, then write the tables and figures."""
    from ..evaluation import TestProtocol
    from ..training.data import load_test_split

    faces, planned, runs = plan(study, out_dir)  # every config checked before anything trains
    check_reusable(out_dir, faces, planned)
    out_dir = Path(out_dir)
    first = study.seeds[0]
    # the first seed's face encoder reads the data, alone: a dataset that cannot be used stops the study
    # there, and its run directory (the study's too, when new) is removed again
    _face_encoder(faces[first], out_dir / f"seed{first}", log)
    configs.save(study, out_dir / CONFIG_NAME)
    _train_seeds(list(study.seeds), faces, planned, study.resolved_jobs(), log)
    results: dict = {}
    for run in planned:
        results.setdefault(run.run.name, {})[run.seed] = json.loads(run.result_file.read_text())
    test = load_test_split(faces[first], out_dir / f"seed{first}" / "face")  # every seed's test set is as large
    protocol = TestProtocol.for_labels(test.labels)
    main_lr = next(p.config.caption_lr for p in planned if p.run.name == "tgfr")
    encoder = f"{encoder_name(study.resolved_text_model())}, " + ("frozen" if main_lr == 0 else f"trained at {main_lr:g}")
    details = {"preset": name, **({"deviations": study.deviations} if study.deviations else {}),
               "seeds": list(study.seeds),
               "caption_encoder": encoder,
               "test_photos": len(protocol.labels), "test_identities": int(np.unique(protocol.labels).size),
               "impostor_pairs": protocol.num_impostor, **study_seconds(out_dir)}
    return write_study(results, runs, out_dir, details, test)
