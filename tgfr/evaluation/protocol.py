"""The paper's evaluation protocol: per embedding mode and probe quality level, on one test set.

The reference side of verification and the identification gallery are normal-quality photos;
the probes are the same test photos degraded to each level. Verification scores every pair
``(i, j)``, ``i < j``, of the test set (:func:`tgfr.data.verification_pairs`) as probe ``i``
(degraded) against reference ``j`` (normal), so all cross-identity pairs are impostors and a
few hundred photos resolve small FARs; the pairs are scored in blocks of rows
(:func:`tgfr.evaluation.metrics.all_pair_scores`), so 6,000 photos (18M pairs) fit in memory.
Identification matches the probes of :func:`tgfr.data.identification_split` against its
one-photo-per-identity gallery. Photos are decoded by a ``DataLoader`` in batches and only the
embeddings are kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import ConfigError
from ..data import QUALITY_LEVELS, DataError, collate_face_captions, identification_split
from ..engine import checkpoint_path, resolve_device
from ..models import EMBED_MODES
from .attention import plot_attention_grid
from .metrics import all_pair_scores, rank1_accuracy, verification_metrics
from .report import Result, write_report
from .thresholds import CALIBRATION_LEVEL, THRESHOLDS_FILE, calibrate, file_sha256, write_thresholds


def _modes(model, modes) -> tuple[str, ...]:
    """``modes`` (None: every mode ``model`` was built for), checked."""
    modes = model.modes if modes is None else tuple(modes)
    unknown = [mode for mode in modes if mode not in EMBED_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {EMBED_MODES}, got {modes}")
    return modes


@dataclass(frozen=True)
class FaceSet:
    """Images ``[n, 3, H, W]`` with one caption and one identity each."""

    images: torch.Tensor
    captions: list[str]
    identities: torch.Tensor

    def __post_init__(self):
        count = self.images.shape[0]
        if len(self.captions) != count or self.identities.shape != (count,):
            raise ValueError(
                f"a face set needs one caption and one identity per image: {count} images, "
                f"{len(self.captions)} captions, identities of shape {tuple(self.identities.shape)}"
            )

    @classmethod
    def from_dataset(cls, dataset) -> FaceSet:
        """Every item of a :class:`tgfr.data.FaceCaptionDataset`, rendered at its quality."""
        batch = collate_face_captions([dataset[i] for i in range(len(dataset))])
        return cls(batch["image"], batch["caption"], batch["identity"])


@dataclass(frozen=True)
class TestProtocol:
    """All verification pairs ``i < j`` and the identification split over the photos of one test set."""

    labels: np.ndarray
    gallery: np.ndarray  # photo indices, one per identity
    probes: np.ndarray  # all other photo indices

    @classmethod
    def for_labels(cls, labels, seed: int = 0) -> TestProtocol:
        labels = np.asarray(labels)
        split = identification_split(labels, seed)
        _, sizes = np.unique(labels, return_counts=True)
        if not (sizes > 1).any() or sizes.size < 2:
            raise ValueError("labels must give at least one genuine and one impostor pair")
        return cls(labels, split.gallery, split.probes)

    @property
    def num_genuine(self) -> int:
        _, sizes = np.unique(self.labels, return_counts=True)
        return int((sizes * (sizes - 1) // 2).sum())

    @property
    def num_impostor(self) -> int:
        count = len(self.labels)
        return count * (count - 1) // 2 - self.num_genuine


def score_embeddings(mode: str, level: str, probe_embeddings, reference_embeddings, protocol: TestProtocol) -> Result:
    """Verification and rank-1 identification of one level's probe embeddings against the references."""
    count = len(protocol.labels)
    if probe_embeddings.shape[0] != count or reference_embeddings.shape[0] != count:
        raise ValueError(
            f"probe and reference embeddings must have one row per test photo ({count}), "
            f"got {probe_embeddings.shape[0]} and {reference_embeddings.shape[0]}"
        )
    genuine, impostor = all_pair_scores(probe_embeddings, reference_embeddings, protocol.labels)
    labels = torch.as_tensor(protocol.labels)
    probes, gallery = torch.as_tensor(protocol.probes), torch.as_tensor(protocol.gallery)
    rank1 = rank1_accuracy(probe_embeddings[probes], labels[probes], reference_embeddings[gallery], labels[gallery])
    return Result(mode, level, verification_metrics(genuine, impostor), rank1)


@torch.no_grad()
def embed_faces(model, faces: FaceSet, mode: str, batch_size: int = 128) -> torch.Tensor:
    """Embeddings of ``faces`` in ``mode``, computed in batches in evaluation mode, returned on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model.embed(faces.images[start:start + batch_size].to(device), faces.captions[start:start + batch_size],
                        mode).float().cpu()
            for start in range(0, faces.images.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def evaluate_face_sets(model, reference: FaceSet, probes: dict[str, FaceSet], protocol: TestProtocol,
                       modes=None, batch_size: int = 128) -> list[Result]:
    """Score each level's probes (the reference photos at that quality) for each mode (None: every mode
    of the model); rows mode-major.

    A level whose probe set *is* ``reference`` (normal quality) reuses the reference embeddings.
    """
    if not probes:
        raise ValueError("probes must hold at least one quality level")
    modes = _modes(model, modes)
    results = []
    for mode in modes:
        reference_embeddings = embed_faces(model, reference, mode, batch_size)
        for level, faces in probes.items():
            probe_embeddings = reference_embeddings if faces is reference else embed_faces(model, faces, mode,
                                                                                            batch_size)
            results.append(score_embeddings(mode, level, probe_embeddings, reference_embeddings, protocol))
    return results


def plot_word_attention(model, faces: FaceSet, indices, path) -> Path:
    """Heat-maps of the caption words' attention over the image regions of ``faces[indices]``."""
    device = next(model.parameters()).device
    indices = [int(i) for i in indices]
    words, attention = zip(*(model.word_region_attention(faces.images[i].to(device), faces.captions[i])
                             for i in indices))
    return plot_attention_grid(faces.images[indices], list(words), [a.cpu() for a in attention], path)


@torch.no_grad()
def embed_dataset(model, dataset, modes=None, batch_size: int = 128, num_workers: int = 0,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """Embeddings of every photo of ``dataset`` (with the caption the dataset draws for it) in each
    of ``modes`` (None: every mode of the model): the photos are decoded batch by batch and only the
    embeddings are kept (on the CPU)."""
    modes = _modes(model, modes)
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_face_captions,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    chunks: dict[str, list] = {mode: [] for mode in modes}
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc=f"embedding {dataset.quality} photos", disable=not progress, leave=False):
            images = batch["image"].to(device, non_blocking=True)
            for mode in modes:
                chunks[mode].append(model.embed(images, batch["caption"], mode).float().cpu())
    finally:
        model.train(was_training)
    return {mode: torch.cat(parts) for mode, parts in chunks.items()}


def evaluate(model, test_data, out_dir, levels=QUALITY_LEVELS, modes=None, attention_examples: int = 4,
             metadata: dict | None = None, num_workers: int = 0, progress: bool = False,
             calibrates: Path | None = None) -> dict[str, Path]:
    """Evaluate ``model`` on ``test_data`` (a :class:`tgfr.data.FaceCaptionDataset`) in ``modes`` (None:
    every mode of the model) and write the report.

    Writes report.md, report.json and roc.png into ``out_dir`` and, with ``attention_examples > 0``
    and the "tgfr" mode, attention.png: the word -> region attention of that many gallery photos.
    With ``calibrates`` (the checkpoint file evaluated) and the normal level, the run's verification
    thresholds go to ``thresholds.json`` beside that checkpoint (:mod:`tgfr.evaluation.thresholds`).
    Returns the paths written, by kind.
    """
    levels = tuple(levels)
    unknown = [level for level in levels if level not in QUALITY_LEVELS]
    if unknown or not levels:
        raise ValueError(f"levels must be a non-empty subset of {QUALITY_LEVELS}, got {levels}")
    modes = _modes(model, modes)
    started = time.perf_counter()
    protocol = TestProtocol.for_labels(test_data.labels)
    reference = embed_dataset(model, test_data.with_quality("normal"), modes, num_workers=num_workers,
                              progress=progress)
    probes = {level: reference if level == "normal" else embed_dataset(
        model, test_data.with_quality(level), modes, num_workers=num_workers, progress=progress) for level in levels}
    results = [score_embeddings(mode, level, probes[level][mode], reference[mode], protocol)
               for mode in modes for level in levels]
    details = {
        "test_photos": len(protocol.labels),
        "test_identities": int(np.unique(protocol.labels).size),
        "genuine_pairs": protocol.num_genuine,
        "impostor_pairs": protocol.num_impostor,
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        **(metadata or {}),
    }
    out_dir = Path(out_dir)
    paths = write_report(results, out_dir, details)
    if calibrates is not None and CALIBRATION_LEVEL in levels:
        calibrates = Path(calibrates)
        paths["thresholds"] = write_thresholds(calibrates.parent / THRESHOLDS_FILE, calibrate(results),
                                               file_sha256(calibrates), paths["json"].resolve())
    if attention_examples > 0 and "tgfr" in modes:
        normal = test_data.with_quality("normal")
        batch = collate_face_captions([normal[int(i)] for i in protocol.gallery[:attention_examples]])
        examples = FaceSet(batch["image"], batch["caption"], batch["identity"])
        paths["attention"] = plot_word_attention(model, examples, range(len(examples.captions)),
                                                 out_dir / "attention.png")
    return paths


def evaluate_checkpoint(checkpoint, out_dir, levels=QUALITY_LEVELS, modes=None, attention_examples: int = 4,
                        device: str = "auto", metadata: dict | None = None, dataset: str | None = None,
                        data_root=None, num_workers: int | None = None) -> dict[str, Path]:
    """Evaluate a checkpoint of :func:`tgfr.training.train` on the test split its run held out, in
    ``modes`` (None: every mode the run trained, ``TrainConfig.embedding_modes``).

    The split comes from the run directory's ``split.json``; ``data_root`` reads the photos from
    another root than the one saved (the same dataset, moved); ``dataset``, when given, must be
    the run's dataset. A mode the run did not train is a :class:`~tgfr.config.ConfigError` (key ``modes``).
    """
    # training code imported on use: an exported model is evaluated and served without it
    from ..training import config_from_dict, read_checkpoint
    from ..training.checkpoint import model_from_checkpoint
    from ..training.data import load_test_split

    state = read_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    trained = config.embedding_modes
    modes = trained if modes is None else tuple(modes)
    untrained = [mode for mode in modes if mode not in trained]
    if untrained:
        raise ConfigError(f"names mode(s) {', '.join(untrained)} that the run in {checkpoint_path(checkpoint).parent} "
                          f"did not train: its modes are {', '.join(trained)}", "modes")
    if dataset is not None and dataset != config.dataset:
        raise DataError(f"the checkpoint was trained on dataset {config.dataset!r}, not {dataset!r}")
    if data_root is not None and config.dataset == "synthetic":
        raise DataError("the run was trained on the embedded synthetic set, which reads no files: a data root "
                        "(--data-root) is not used")
    test_data = load_test_split(config, checkpoint_path(checkpoint).parent, data_root)
    model = model_from_checkpoint(state, checkpoint).to(resolve_device(device)).eval()
    workers = config.num_workers if num_workers is None else num_workers
    return evaluate(model, test_data, out_dir, levels, modes, attention_examples,
                    metadata={"checkpoint": str(checkpoint), "dataset": config.dataset, **(metadata or {})},
                    num_workers=workers, progress=config.progress, calibrates=checkpoint_path(checkpoint))
