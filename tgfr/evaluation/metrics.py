"""Face-recognition metrics: 1:1 verification (ROC, TAR@FAR, EER, AUC) and rank-1 identification.

Scores are similarities (higher means "same identity"). Everything is vectorised and runs in
O(n log n) for n pairs, so all cross-identity pairs of a few thousand embeddings are cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FAR_TARGETS = (1e-5, 1e-4, 1e-3)


def _as_1d_float(name: str, scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite scores")
    return array


def roc_curve(genuine, impostor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of a verifier that accepts a pair when its score is >= a threshold.

    Returns ``(far, tar, thresholds)``, one point per distinct score taken as the threshold in
    decreasing order, preceded by the point (0, 0) at threshold +inf; ``far`` and ``tar`` are
    non-decreasing. This equals ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    genuine = _as_1d_float("genuine", genuine)
    impostor = _as_1d_float("impostor", impostor)
    scores = np.concatenate([genuine, impostor])
    is_genuine = np.concatenate([np.ones(genuine.size, bool), np.zeros(impostor.size, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_genuine = scores[order], is_genuine[order]
    # The last index of each run of equal scores: accepting at that threshold accepts the whole run.
    run_ends = np.flatnonzero(np.diff(scores)) if scores.size > 1 else np.empty(0, np.int64)
    run_ends = np.append(run_ends, scores.size - 1)
    true_accepts = np.cumsum(is_genuine)[run_ends]
    false_accepts = (run_ends + 1) - true_accepts
    far = np.concatenate([[0.0], false_accepts / impostor.size])
    tar = np.concatenate([[0.0], true_accepts / genuine.size])
    thresholds = np.concatenate([[np.inf], scores[run_ends]])
    return far, tar, thresholds


def min_impostors_for_far(far: float) -> int:
    """The n/a rule: a FAR of ``far`` is resolved only with at least ``ceil(1 / far)`` impostor pairs.

    With fewer, a single false accept already exceeds ``far``, so the ROC has no point at or
    below it other than FAR = 0 and the interpolated TAR would be an artefact of the line to (0, 0).
    """
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    return int(np.ceil(1.0 / far - 1e-9))


def tar_at_far(far: np.ndarray, tar: np.ndarray, target_far: float, num_impostors: int) -> float | None:
    """TAR at ``target_far`` by linear interpolation of the ROC, or None when it cannot be resolved.

    Where the ROC has several points at one FAR (a vertical step), the highest TAR is used: it is
    reachable without exceeding that FAR. None follows the rule of :func:`min_impostors_for_far`.
    """
    if num_impostors < min_impostors_for_far(target_far):
        return None
    distinct_far, first = np.unique(far, return_index=True)
    # tar is non-decreasing along the curve, so the top of each step is its last point.
    last = np.append(first[1:], far.size) - 1
    return float(np.interp(target_far, distinct_far, tar[last]))


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target_far: float, num_impostors: int) -> float | None:
    """The lowest score threshold whose FAR does not exceed ``target_far`` (accept when score >= it), or None
    when :func:`min_impostors_for_far` says the ROC cannot resolve that FAR, or only an infinite threshold
    (accepting nothing) keeps to it."""
    if num_impostors < min_impostors_for_far(target_far):
        return None
    # far is non-decreasing while thresholds decrease: the last point at or below the target
    threshold = thresholds[int(np.searchsorted(far, target_far, side="right")) - 1]
    return float(threshold) if np.isfinite(threshold) else None


def equal_error_rate(far: np.ndarray, tar: np.ndarray) -> float:
    """The rate where FAR equals the false-reject rate 1 - TAR, on the linearly interpolated ROC."""
    # far + tar rises monotonically along the curve from 0 to 2; the EER is where it crosses 1.
    excess = far + tar - 1.0
    i = int(np.searchsorted(excess, 0.0, side="left"))
    if i == 0:
        return float(far[0])
    if excess[i] == excess[i - 1]:
        return float(far[i])
    weight = -excess[i - 1] / (excess[i] - excess[i - 1])
    return float(far[i - 1] + weight * (far[i] - far[i - 1]))


def area_under_curve(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under the ROC by the trapezoidal rule (ties count one half, as in ``roc_auc_score``)."""
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1])) / 2.0)


@dataclass(frozen=True)
class VerificationResult:
    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray  # the score threshold of each ROC point (accept when score >= it)
    tar_at_far: dict[float, float | None]
    eer: float
    auc: float
    num_genuine: int
    num_impostor: int


def verification_metrics(genuine, impostor, far_targets=FAR_TARGETS) -> VerificationResult:
    """ROC, TAR at each of ``far_targets`` (None where unresolved), EER and AUC of one score set."""
    far, tar, thresholds = roc_curve(genuine, impostor)
    num_impostor = len(impostor)
    return VerificationResult(
        far=far,
        tar=tar,
        thresholds=thresholds,
        tar_at_far={target: tar_at_far(far, tar, target, num_impostor) for target in far_targets},
        eer=equal_error_rate(far, tar),
        auc=area_under_curve(far, tar),
        num_genuine=len(genuine),
        num_impostor=num_impostor,
    )


def _as_embeddings(name: str, embeddings) -> torch.Tensor:
    embeddings = torch.as_tensor(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [n, dim] matrix, got shape {tuple(embeddings.shape)}")
    return embeddings.float()


def _as_ids(name: str, ids, count: int) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.shape != (count,):
        raise ValueError(f"{name} must have shape ({count},) to match its embeddings, got {tuple(ids.shape)}")
    return ids.long()


def pair_scores(probe, reference, pairs, genuine) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each pair ``(probe[i], reference[j])`` for ``(i, j)`` in ``pairs``,
    split into (genuine, impostor) scores by the boolean ``genuine``.

    Embeddings are L2-normalised here, so raw features work too. The pairs index one
    probe x reference similarity matrix, so hundreds of thousands of them cost one matrix product.
    """
    probe = torch.nn.functional.normalize(_as_embeddings("probe", probe), dim=1)
    reference = torch.nn.functional.normalize(_as_embeddings("reference", reference), dim=1)
    if probe.shape[1] != reference.shape[1]:
        raise ValueError(f"probe and reference must have the same width, got {probe.shape[1]} and {reference.shape[1]}")
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.long)
    genuine = torch.as_tensor(np.asarray(genuine), dtype=torch.bool)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or genuine.shape != (pairs.shape[0],):
        raise ValueError(f"pairs must be [P, 2] with genuine [P], got {tuple(pairs.shape)} and {tuple(genuine.shape)}")
    if pairs.numel() and (pairs.min() < 0 or pairs[:, 0].max() >= probe.shape[0] or pairs[:, 1].max() >= reference.shape[0]):
        raise ValueError(f"pairs must index {probe.shape[0]} probes and {reference.shape[0]} references")
    scores = (probe @ reference.T)[pairs[:, 0], pairs[:, 1]].double().numpy()
    return scores[genuine.numpy()], scores[~genuine.numpy()]


def all_pair_scores(probe, reference, labels, block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every pair ``(probe[i], reference[j])``, ``i < j``, split into (genuine,
    impostor) by ``labels``; in the order of ``numpy.triu_indices(n, 1)``, as :func:`pair_scores` gives it.

    Computed in blocks of ``block_size`` probe rows, so only a ``block_size x n`` similarity block
    and the scores themselves (float32) are held: 6,000 photos (18M pairs) take about 72 MB.
    """
    probe = torch.nn.functional.normalize(_as_embeddings("probe", probe), dim=1)
    reference = torch.nn.functional.normalize(_as_embeddings("reference", reference), dim=1)
    count = probe.shape[0]
    if reference.shape != probe.shape:
        raise ValueError(f"probe and reference must both be [n, dim], got {tuple(probe.shape)} and "
                         f"{tuple(reference.shape)}")
    labels = _as_ids("labels", labels, count)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    sizes = torch.bincount(labels - labels.min())
    num_genuine = int((sizes * (sizes - 1) // 2).sum())
    genuine = np.empty(num_genuine, np.float32)
    impostor = np.empty(count * (count - 1) // 2 - num_genuine, np.float32)
    g = i = 0
    columns = torch.arange(count)
    for start in range(0, count, block_size):
        rows = torch.arange(start, min(start + block_size, count))
        similarity = probe[rows] @ reference.T
        upper = columns[None, :] > rows[:, None]  # row-major over i < j, as triu_indices
        same = labels[rows][:, None] == labels[None, :]
        block_genuine = similarity[upper & same].numpy()
        block_impostor = similarity[upper & ~same].numpy()
        genuine[g:g + block_genuine.size] = block_genuine
        impostor[i:i + block_impostor.size] = block_impostor
        g, i = g + block_genuine.size, i + block_impostor.size
    return genuine.astype(np.float64), impostor.astype(np.float64)


def rank1_accuracy(probe, probe_ids, gallery, gallery_ids, chunk_size: int = 4096) -> float:
    """Fraction of probes whose most similar gallery embedding (cosine) has the probe's identity."""
    probe = torch.nn.functional.normalize(_as_embeddings("probe", probe), dim=1)
    gallery = torch.nn.functional.normalize(_as_embeddings("gallery", gallery), dim=1)
    if probe.shape[1] != gallery.shape[1]:
        raise ValueError(f"probe and gallery must have the same width, got {probe.shape[1]} and {gallery.shape[1]}")
    probe_ids = _as_ids("probe_ids", probe_ids, probe.shape[0])
    gallery_ids = _as_ids("gallery_ids", gallery_ids, gallery.shape[0])
    # Chunked so a large probe set never holds the full probe x gallery matrix.
    nearest = torch.cat([(chunk @ gallery.T).argmax(dim=1) for chunk in probe.split(chunk_size)])
    return float((gallery_ids[nearest] == probe_ids).float().mean())
