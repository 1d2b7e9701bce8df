"""A trained TGFR model for use: ``tgfr.load(run_or_export)`` and what it answers.

::

    import tgfr
    model = tgfr.load("runs/a")                        # a run directory or an exported model
    emb = model.embed(["a.jpg", "b.jpg"], ["A young woman with ...", "..."])   # [2, E], mode "tgfr"
    result = model.verify("a.jpg", "b.jpg", caption_a="...", caption_b="...")
    result.score, result.threshold, result.same
    model.identify("probe.jpg", "gallery/", caption="...", top_k=5)

Photos are read as training reads them (:mod:`tgfr.data.images`): a path, a PIL image, a uint8
``[H, W, 3]`` array, or a float ``[3, S, S]`` tensor in ``[-1, 1]`` at the model's size. Modes are
those the run trained: ``"image"`` (the face encoder alone) and its fusion heads (``"tgfr"``,
``"flf"``, ``"cgfr"``), which need one description per photo. Without ``mode`` a call with
descriptions uses TGFR (the run's first fusion if it has no FCFM) and one without uses ``"image"``.

Verification accepts a pair when its cosine score reaches the mode's threshold: the run's own
FAR = 1e-3 threshold at normal quality (``thresholds.json``, written by ``tgfr eval``), or one
set with :meth:`FaceRecognizer.set_threshold`.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.dataset import image_to_tensor
from ..data.images import as_image_list, read_pixels, to_model_input
from ..evaluation.thresholds import THRESHOLDS_FILE, file_sha256, read_thresholds
from .gallery import Gallery, Match, rank_gallery


@dataclass(frozen=True)
class Verification:
    """A 1:1 comparison: the cosine ``score``, the ``threshold`` it was held to (None: none known) and
    the decision ``same`` (score >= threshold; None without a threshold), in embedding ``mode``."""

    score: float
    threshold: float | None
    same: bool | None
    mode: str


def resolve_device(device) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _caption_list(captions, count: int, name: str) -> list[str] | None:
    """``captions`` (None, one string, or one string per photo) as a list of ``count`` descriptions."""
    if captions is None:
        return None
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(captions) != count:
        raise ValueError(f"{name} must give one description per photo: {count} photos, {len(captions)} descriptions")
    for position, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            where = name if count == 1 else f"{name}[{position}]"
            raise ValueError(f"{where} is empty: a description needs at least one word")
    return captions


class FaceRecognizer:
    """A TGFR model with its preprocessing, modes and verification thresholds (see the module doc).

    Calls are batched, run under ``torch.no_grad()`` and are thread-safe (one at a time through the model).
    ``directory`` holds the model (a run or an export); gallery indexes are cached in its ``index/``.
    ``provenance`` says where the weights come from (see :mod:`tgfr.inference.export`).
    """

    def __init__(self, model, modes, thresholds: dict, directory, weights_sha256: str, provenance: dict):
        self.model = model.eval()
        self.modes = tuple(modes)
        self.thresholds = {mode: thresholds.get(mode) for mode in self.modes}
        self.directory = Path(directory)
        self.weights_sha256 = weights_sha256
        self.provenance = provenance
        self._lock = threading.RLock()

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fused_modes(self) -> tuple[str, ...]:
        return tuple(mode for mode in self.modes if mode != "image")

    def resolve_mode(self, mode: str | None, described: bool) -> str:
        """``mode``, checked against the run's modes, or the default for calls with or without descriptions."""
        if mode is None:
            if not described:
                return "image"
            if not self.fused_modes:
                raise ValueError("this model has no text-guided mode (it was trained for images only)")
            return "tgfr" if "tgfr" in self.fused_modes else self.fused_modes[0]
        if mode not in self.modes:
            raise ValueError(f"mode must be one of this model's modes {self.modes}, got {mode!r}")
        return mode

    def set_threshold(self, mode: str, threshold: float | None) -> None:
        """Accept pairs of ``mode`` whose score is >= ``threshold`` (None: no decision, scores only)."""
        self.resolve_mode(mode, True)
        if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"a threshold on cosine scores must lie in [-1, 1], got {threshold}")
        self.thresholds[mode] = None if threshold is None else float(threshold)

    @torch.no_grad()
    def embed(self, images, captions=None, mode: str | None = None, batch_size: int = 64,
              progress: bool = False) -> torch.Tensor:
        """Unit-length embeddings ``[N, E]`` (float32, on the CPU) of ``images`` (one or a sequence);
        ``captions`` gives one description per photo (a string for one photo) for the fused modes."""
        images, _ = as_image_list(images)
        mode = self.resolve_mode(mode, captions is not None)
        captions = _caption_list(captions, len(images), "captions") if mode != "image" else None
        if mode != "image" and captions is None:
            raise ValueError(f"mode {mode!r} needs one description per photo (captions)")
        if not images:
            raise ValueError("images is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=f"embedding ({mode})", unit="batch", disable=not progress):
            batch = torch.stack([to_model_input(image, self.image_size) for image in images[start:start + batch_size]])
            texts = captions[start:start + batch_size] if captions is not None else None
            with self._lock:
                chunks.append(self.model.embed(batch.to(self.device), texts, mode).float().cpu())
        return torch.cat(chunks)

    def verify(self, a, b, caption_a=None, caption_b=None, mode: str | None = None,
               threshold: float | None = None):
        """Do photos ``a`` and ``b`` show the same person? One :class:`Verification`, or a list of them for
        two equally long sequences of photos (pairwise). With descriptions (``caption_a`` and ``caption_b``,
        both or neither) the fused mode decides; ``threshold`` overrides the mode's own."""
        first, batched = as_image_list(a)
        second, _ = as_image_list(b)
        if len(first) != len(second):
            raise ValueError(f"a and b must hold as many photos: {len(first)} and {len(second)}")
        described = caption_a is not None or caption_b is not None
        mode = self.resolve_mode(mode, described)
        if mode != "image" and (caption_a is None or caption_b is None):
            missing = "caption_a" if caption_a is None else "caption_b"
            raise ValueError(f"mode {mode!r} compares described photos: {missing} is missing (describe both "
                             f"photos, or neither for image-only verification)")
        scores = (self.embed(first, caption_a, mode) * self.embed(second, caption_b, mode)).sum(1)
        limit = self.thresholds.get(mode) if threshold is None else float(threshold)
        results = [Verification(float(score), limit, None if limit is None else bool(score >= limit), mode)
                   for score in scores.tolist()]
        return results if batched else results[0]

    def gallery(self, directory) -> Gallery:
        """The faces of ``directory`` to identify against (see :class:`tgfr.inference.gallery.Gallery`)."""
        return Gallery(self, directory)

    def identify(self, probe, gallery, caption: str | None = None, top_k: int = 5,
                 mode: str | None = None) -> list[Match]:
        """The ``top_k`` faces of ``gallery`` (a folder, or a :class:`Gallery`) most like ``probe``, best
        first; with a description of the probe (``caption``) the fused mode ranks, which needs the gallery's
        descriptions too."""
        gallery = gallery if isinstance(gallery, Gallery) else self.gallery(gallery)
        mode = self.resolve_mode(mode, caption is not None)
        index = gallery.index(mode)
        query = self.embed(probe, caption if mode != "image" else None, mode)
        return rank_gallery(index, query, top_k)

    def attention(self, image, caption: str) -> tuple[list[str], torch.Tensor, np.ndarray]:
        """``(words, attention [T, h, w], photo)``: each word's attention over the photo's regions (WRCL's
        eq. 4, rows summing to 1) and the photo as the model saw it (uint8 ``[S, S, 3]``)."""
        _caption_list(caption, 1, "caption")
        pixels = read_pixels(image, self.image_size)
        with self._lock:
            words, attention = self.model.word_region_attention(image_to_tensor(pixels).to(self.device), caption)
        return words, attention.cpu(), pixels


def load_run(path, device="auto") -> FaceRecognizer:
    """The finished training run in ``path`` (its directory or checkpoint file), with its thresholds."""
    from ..engine import checkpoint_path
    from ..training import config_from_dict, read_checkpoint
    from ..training.checkpoint import model_from_checkpoint
    from .export import run_provenance

    checkpoint = checkpoint_path(path)
    state = read_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    progress, last = state["progress"], config.fusion.epochs
    if (progress["step"], progress["epochs_done"]) != ("fusion", last):
        raise ValueError(f"the run in {checkpoint.parent} has not finished training (step {progress['step']}, "
                         f"{progress['epochs_done']} epoch(s) done): finish it with tgfr train --resume")
    digest = file_sha256(checkpoint)
    thresholds = {}
    calibration = checkpoint.parent / THRESHOLDS_FILE
    if calibration.is_file():
        document = read_thresholds(calibration)
        if document.get("checkpoint_sha256") == digest:
            thresholds = document["thresholds"]
        else:
            warnings.warn(f"{calibration} calibrates another checkpoint than {checkpoint} (trained further "
                          f"since?): no thresholds; run tgfr eval again", stacklevel=2)
    model = model_from_checkpoint(state, checkpoint).to(resolve_device(device))
    return FaceRecognizer(model, config.embedding_modes, thresholds, checkpoint.parent, digest,
                          run_provenance(state, checkpoint, digest, calibration if thresholds else None))


def load(path, device="auto") -> FaceRecognizer:
    """A trained model from a run directory (or its ``checkpoint.pt``) or an exported model directory,
    on ``device`` (``"auto"``: CUDA when available)."""
    from .export import is_export, load_export

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path} (expected a run directory or an exported model directory)")
    if is_export(path):
        return load_export(path, device)
    return load_run(path, device)
