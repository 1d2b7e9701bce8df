"""Evaluation protocols over a labelled set of photos: 1:1 verification pairs and the
identification gallery/probe split.

Both work on the ``labels`` of a :class:`FaceCaptionDataset` (``dataset.labels``) and return
indices into it, so the same protocol is applied at each quality level with
``dataset.with_quality(level)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size < 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array of at least 2 entries, got "
                         f"{labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


@dataclass(frozen=True)
class VerificationPairs:
    """``pairs`` int64 [P, 2] of photo indices (``i < j``), ``genuine`` bool [P]."""

    pairs: np.ndarray
    genuine: np.ndarray

    @property
    def num_genuine(self) -> int:
        return int(self.genuine.sum())

    @property
    def num_impostor(self) -> int:
        return int((~self.genuine).sum())

    def lowest_resolvable_far(self) -> float:
        """Smallest false-accept rate with at least one impostor pair above the threshold (the
        FAR-resolution rule of ``tgfr.evaluation.metrics.min_impostors_for_far``, inverted)."""
        return 1.0 / max(self.num_impostor, 1)


def verification_pairs(labels, max_impostors: int | None = None, seed: int = 0) -> VerificationPairs:
    """1:1 verification pairs of a labelled photo set.

    Genuine pairs are all same-identity pairs. Impostor pairs are, by default, *all*
    cross-identity pairs ``i < j`` - exactly the off-diagonal entries of the embedding
    similarity matrix - which for ``n`` photos of ``c`` equally sized identities is about
    ``n^2 (1 - 1/c) / 2`` pairs: 1,000 photos resolve a FAR of 1e-5. ``max_impostors``
    instead draws that many distinct impostor pairs uniformly (reproducibly from ``seed``)
    when the full set would be too large to hold.
    """
    labels = _check_labels(labels)
    first, second = np.triu_indices(labels.size, k=1)
    genuine = labels[first] == labels[second]
    if max_impostors is not None:
        if max_impostors < 1:
            raise ValueError(f"max_impostors must be >= 1 or None, got {max_impostors}")
        impostors = np.flatnonzero(~genuine)
        if max_impostors < impostors.size:
            keep = np.random.default_rng(seed).choice(impostors, size=max_impostors, replace=False)
            selected = np.sort(np.concatenate([np.flatnonzero(genuine), keep]))
            first, second, genuine = first[selected], second[selected], genuine[selected]
    if not genuine.any() or genuine.all():
        raise ValueError("labels must give at least one genuine and one impostor pair")
    return VerificationPairs(np.stack([first, second], axis=1).astype(np.int64), genuine)


@dataclass(frozen=True)
class IdentificationSplit:
    """``gallery``: one photo index per identity (sorted by label); ``probes``: all others."""

    gallery: np.ndarray
    probes: np.ndarray


def identification_split(labels, seed: int = 0) -> IdentificationSplit:
    """Closed-set identification: each identity's gallery photo is drawn from its photos
    (reproducibly from ``seed``); every other photo is a probe. Evaluate the gallery at
    ``normal`` quality and the probes at each level (``dataset.subset(split.probes)
    .with_quality(level)``). Identities with one photo have a gallery entry and no probe.
    """
    labels = _check_labels(labels)
    rng = np.random.default_rng(seed)
    gallery = np.array([rng.choice(np.flatnonzero(labels == label)) for label in np.unique(labels)],
                       dtype=np.int64)
    probes = np.setdiff1d(np.arange(labels.size, dtype=np.int64), gallery)
    if probes.size == 0:
        raise ValueError("every identity has a single photo: no probes")
    return IdentificationSplit(gallery, probes)
