"""Retrieval metrics and the X-Modal evaluation table.

``retrieval_metrics(scores, relevant)``: for each query (a row of ``scores`` over the
gallery), R@K is 1 when a relevant item is among the K best, the rank is that of the
best-placed relevant item (1-based) and AP the mean precision at each relevant item.
Ties are counted against the query (an irrelevant item scoring as high as a relevant one
ranks before it), so a constant scorer earns nothing. Items excluded from a query's
gallery (its own photo) get ``-inf`` and are neither relevant nor counted.

The table (:func:`evaluate_model`), on identities unseen in training:

* text -> face: each test photo's first caption queries every other test photo; the
  relevant items are the other photos of the same person. Rows: X-Modal (shared space),
  the CLIP-style global caption-face cosine head, TGFR's word-region score.
* text + image -> face: each change pair's reference photo and change caption query the
  targets (after photos) and second before photos of all test pairs; the relevant item
  is the pair's target (every copy of that photo: on real data one photo can serve
  several pairs). Rows: X-Modal (fusion), image only (reference embedding, text
  ignored), text only (the change caption alone), the CLIP-style head's late fusion
  (sum of the caption-face and face-face cosines). Each composed row also gives how often
  the pair's after photo scores above the same person's second before photo (``after above
  before``, ties against, 95 % Wilson interval): image-only retrieval, which cannot read
  the change, cannot beat 50 % on it.

Beside the methods, the bounds (:mod:`tgfr.retrieval.oracle`): the attribute oracle
(ranking by what the query caption states, ties against as for every row, and with ties
broken at random), the composed oracle (knows the person and the change) and chance (the
exact expectation of a random ranking, :func:`expected_metrics`).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import gammaln

from ..markdown import table
from ..ops import word_region_scores
from .data import RetrievalSplit, images_to_tensor
from .oracle import composed_oracle_scores, text_oracle_scores

KS = (1, 5, 10)
METRICS = tuple(f"R@{k}" for k in KS) + ("mAP", "median rank")
PAIRWISE = "after above before"
BY_CHANGE = f"{PAIRWISE} by change"
ORACLE = "attribute oracle"
ORACLE_RANDOM_TIES = "attribute oracle, ties at random"
COMPOSED_ORACLE = "oracle (person + change)"
CHANCE = "chance"


def check_retrieval_inputs(scores, relevant) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores`` as float64 and ``relevant`` as bool, both [Q, G], or a ValueError saying what is wrong."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    relevant = torch.as_tensor(relevant, dtype=torch.bool)
    if scores.ndim != 2 or scores.shape != relevant.shape or scores.numel() == 0:
        raise ValueError(f"scores and relevant must be the same non-empty [Q, G] shape, got "
                         f"{tuple(scores.shape)} and {tuple(relevant.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores must not contain NaN")
    missing = (~relevant.any(1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"every query needs a relevant gallery item; queries {missing[:10]} have none")
    return scores, relevant


def retrieval_metrics(scores, relevant, ks=KS) -> dict[str, float]:
    """R@K (fractions), mAP and the median rank of ``scores`` [Q, G] with boolean ``relevant`` [Q, G]."""
    scores, relevant = check_retrieval_inputs(scores, relevant)
    # order: score descending, irrelevant before relevant among equal scores (ties count against)
    order = np.lexsort((relevant.numpy(), -scores.numpy()), axis=1)
    hits = np.take_along_axis(relevant.numpy(), order, axis=1)
    first = hits.argmax(1) + 1
    cumulative = np.cumsum(hits, 1)
    positions = np.arange(1, hits.shape[1] + 1)
    ap = (hits * cumulative / positions).sum(1) / hits.sum(1)
    result = {f"R@{k}": float((first <= k).mean()) for k in ks}
    result["mAP"] = float(ap.mean())
    result["median rank"] = float(np.median(first))
    return result


def _log_choose(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def _harmonic(n):
    """H_n for integer arrays ``n >= 0``."""
    return np.cumsum(np.concatenate([[0.0], 1.0 / np.arange(1, int(np.max(n)) + 1)]))[n]


def expected_metrics(scores, relevant, ks=KS) -> dict[str, float]:
    """The expected R@K, mAP and median rank of ``scores`` [Q, G] when its ties are broken uniformly at
    random (without ties: exactly :func:`~tgfr.retrieval.evaluation.retrieval_metrics`).

    Per query, the items tied at one score form a group; the first relevant item lies in the best group
    holding one (``above`` items before it, ``size`` items, ``hits`` relevant), where it is beyond the
    ``m``-th place with probability ``C(size - hits, m) / C(size, m)``. A relevant item of a group sits at
    each of its places with equal chance and each other relevant item of the group before it with chance
    ``(p - 1) / (size - 1)``, which gives its expected precision in closed form (harmonic numbers). The
    median rank is the median of the first relevant rank's distribution pooled over the queries.
    """
    scores, relevant = check_retrieval_inputs(scores, relevant)
    scores, relevant = scores.numpy(), relevant.numpy()
    count, width = scores.shape
    ranks = np.arange(1, width + 1)
    survival = np.zeros((count, width))  # P(first relevant rank > m), m = 1..G
    recalls, precisions = np.zeros((count, len(ks))), np.zeros(count)
    for q in range(count):
        values, group, size = np.unique(-scores[q], return_inverse=True, return_counts=True)
        hits = np.bincount(group, weights=relevant[q], minlength=values.size).astype(np.int64)
        above = np.concatenate([[0], np.cumsum(size)[:-1]])
        hits_above = np.concatenate([[0], np.cumsum(hits)[:-1]])
        first = int(np.flatnonzero(hits)[0])
        into = ranks - above[first]  # places taken inside the first group with a relevant item
        inside = (into >= 1) & (into <= size[first])
        survival[q] = np.where(into < 1, 1.0, 0.0)
        free = size[first] - hits[first]
        survival[q, inside] = np.where(into[inside] <= free, np.exp(
            _log_choose(free, np.minimum(into[inside], free)) - _log_choose(size[first], into[inside])), 0.0)
        recalls[q] = 1.0 - survival[q, np.minimum(ks, width) - 1]  # a gallery shorter than K: found
        # expected precision at a relevant item of each group, times its relevant items
        used = hits > 0
        a, n, r, before = above[used], size[used], hits[used], hits_above[used]
        inverse = _harmonic(a + n) - _harmonic(a)  # sum over places p of 1 / (a + p)
        later = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0) * (n - (a + 1) * inverse)
        precisions[q] = float(np.sum(r * ((before + 1) * inverse + later) / n)) / r.sum()
    result = {f"R@{k}": float(recalls[:, i].mean()) for i, k in enumerate(ks)}
    result["mAP"] = float(precisions.mean())
    cdf = 1.0 - survival.mean(0)
    tolerance = 1e-12
    low, high = ranks[np.argmax(cdf >= 0.5 - tolerance)], ranks[np.argmax(cdf > 0.5 + tolerance)]
    result["median rank"] = float((low + high) / 2)
    return result


def chance_metrics(relevant, candidates=None, ks=KS) -> dict[str, float]:
    """The expected metrics of a uniformly random ranking of each query's ``candidates`` (bool [Q, G];
    default: the whole gallery), with ``relevant`` [Q, G] the items to find."""
    relevant = torch.as_tensor(relevant, dtype=torch.bool)
    scores = torch.zeros(relevant.shape, dtype=torch.float64)
    if candidates is not None:
        scores = scores.masked_fill(~torch.as_tensor(candidates, dtype=torch.bool), float("-inf"))
    return expected_metrics(scores, relevant, ks)


def after_above_before(scores, changed=None, confidence: float = 0.95) -> dict:
    """How often a composed query scores its pair's after photo above the same person's second before
    photo (ties count against), with the Wilson interval. ``scores`` [P, 2P] has the targets in columns
    ``0..P-1`` and the second before photos in ``P..2P-1``, pair ``p``'s at ``p`` and ``P + p``.
    With ``changed`` (per pair, the attributes its change text changes) the same per attribute too,
    under ``"<PAIRWISE> by change"``: ``{attribute: [accuracy, pairs]}``, which shows what the query
    reads."""
    from scipy.stats import binomtest

    scores = torch.as_tensor(scores, dtype=torch.float64)
    pairs = scores.shape[0]
    if scores.ndim != 2 or scores.shape[1] != 2 * pairs or pairs == 0:
        raise ValueError(f"scores must be [P, 2P] (targets, then second before photos), got {tuple(scores.shape)}")
    rows = torch.arange(pairs)
    above = scores[rows, rows] > scores[rows, rows + pairs]
    count = int(above.sum())
    interval = binomtest(count, pairs).proportion_ci(confidence, method="wilson")
    result = {PAIRWISE: count / pairs, f"{PAIRWISE} low": float(interval.low), f"{PAIRWISE} high": float(interval.high)}
    if changed is not None:
        if len(changed) != pairs:
            raise ValueError(f"changed must name the changed attributes of each of the {pairs} pairs, "
                             f"got {len(changed)}")
        by_change = {}
        for name in sorted({name for change in changed for name in change}):
            has = torch.tensor([name in change for change in changed])
            by_change[name] = [float(above[has].double().mean()), int(has.sum())]
        result[BY_CHANGE] = by_change
    return result


@torch.no_grad()
def embed_images(model, images: np.ndarray, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor]:
    """``(X-Modal embeddings, CLIP-head embeddings, projected regions)`` of uint8 photos."""
    main, clip, regions = [], [], []
    for start in range(0, len(images), batch_size):
        pooled, cells = model.encode_faces(images_to_tensor(images[start:start + batch_size]))
        main.append(model.project_faces(pooled))
        clip.append(model.clip_faces(pooled))
        regions.append(model.regions(cells))
    return torch.cat(main), torch.cat(clip), torch.cat(regions)


@torch.no_grad()
def word_region_retrieval(model, tokens, mask, regions, chunk: int = 64, backend: str = "auto") -> torch.Tensor:
    """TGFR's word-region score of every caption (rows) against every gallery face (columns)."""
    words = model.words(tokens)
    return torch.cat([word_region_scores(words[i:i + chunk], regions, mask[i:i + chunk], backend=backend).T
                      for i in range(0, words.shape[0], chunk)])


@torch.no_grad()
def evaluate_model(model, split: RetrievalSplit, text, backend: str = "auto") -> dict[str, dict[str, dict]]:
    """``{task: {method: metrics}}`` on the test ``split``; ``text`` holds the captions' features."""
    model.eval()
    faces, changes = split.faces, split.changes
    main, clip, regions = embed_images(model, faces.images)
    captions = [c[0] for c in faces.captions]
    queries = text.batch(captions)
    relevant = torch.as_tensor(faces.identities[:, None] == faces.identities[None, :])
    own = torch.eye(len(captions), dtype=torch.bool)
    relevant &= ~own

    def masked(scores):
        return scores.masked_fill(own, float("-inf"))

    oracle = masked(text_oracle_scores(faces))
    text_to_face = {
        "X-Modal": retrieval_metrics(masked(model.embed_texts(queries) @ main.T), relevant),
        "CLIP-style global cosine": retrieval_metrics(masked(model.clip_texts(queries.sentences) @ clip.T),
                                                      relevant),
        "TGFR word-region score": retrieval_metrics(
            masked(word_region_retrieval(model, queries.tokens, queries.mask, regions, backend=backend)), relevant),
        ORACLE: retrieval_metrics(oracle, relevant),
        ORACLE_RANDOM_TIES: expected_metrics(oracle, relevant),
        CHANCE: chance_metrics(relevant, ~own),
    }

    gallery_images = np.concatenate([changes.target, changes.other_before])
    gallery_main, gallery_clip, _ = embed_images(model, gallery_images)
    reference_main, reference_clip, _ = embed_images(model, changes.reference)
    change_captions = text.batch(changes.captions)
    target_keys, other_keys = changes.gallery_keys()
    composed_relevant = torch.as_tensor(target_keys[:, None] == np.concatenate([target_keys, other_keys])[None])
    composed = {
        "X-Modal": model.compose(reference_main, change_captions) @ gallery_main.T,
        "image only": reference_main @ gallery_main.T,
        "text only": model.embed_texts(change_captions) @ gallery_main.T,
        "CLIP-style late fusion": (model.clip_texts(change_captions.sentences) + reference_clip) @ gallery_clip.T,
        COMPOSED_ORACLE: composed_oracle_scores(changes),
    }
    text_and_image = {k: retrieval_metrics(v, composed_relevant) | after_above_before(v, list(changes.changes))
                      for k, v in composed.items()}
    # a random ranking puts the after photo above the before photo half the time, exactly
    text_and_image[CHANCE] = chance_metrics(composed_relevant) | {PAIRWISE: 0.5}
    return {"text -> face": text_to_face, "text + image -> face": text_and_image}


def _pairwise_cell(m: dict) -> str:
    if PAIRWISE not in m:
        return ""
    interval = f" [{100 * m[f'{PAIRWISE} low']:.1f}, {100 * m[f'{PAIRWISE} high']:.1f}]" \
        if f"{PAIRWISE} low" in m else ""
    return f"{100 * m[PAIRWISE]:.1f}{interval}"


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """The results as one markdown table (R@K, mAP and the after-above-before accuracy with its 95 %
    Wilson interval, in percent)."""
    header = ["query", "method", *METRICS, f"{PAIRWISE} [95 % CI]"]
    rows = [[task, method, *(f"{100 * m[k]:.1f}" for k in METRICS[:-1]), f"{m['median rank']:g}", _pairwise_cell(m)]
            for task, methods in results.items() for method, m in methods.items()]
    text = table(header, rows, align=["l", "l"] + ["r"] * (len(header) - 2))
    by_change = {method: m[BY_CHANGE] for methods in results.values() for method, m in methods.items()
                 if BY_CHANGE in m}
    if by_change:
        names = sorted({name for counts in by_change.values() for name in counts})
        pairs = next(iter(by_change.values()))
        rows = [[method, *(f"{100 * counts[n][0]:.1f}" if n in counts else "" for n in names)]
                for method, counts in by_change.items()]
        text += (f"\n\n{PAIRWISE} (%) by what the change text changes (pairs: "
                 + ", ".join(f"{n} {pairs[n][1]}" for n in names if n in pairs) + ")\n\n"
                 + table(["method", *names], rows, align=["l"] + ["r"] * len(names)))
    return text
