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
  (sum of the caption-face and face-face cosines).
"""
from __future__ import annotations

import numpy as np
import torch

from ..markdown import table
from ..ops import word_region_scores
from .data import RetrievalSplit, images_to_tensor

KS = (1, 5, 10)
METRICS = tuple(f"R@{k}" for k in KS) + ("mAP", "median rank")


def retrieval_metrics(scores, relevant, ks=KS) -> dict[str, float]:
    """R@K (fractions), mAP and the median rank of ``scores`` [Q, G] with boolean ``relevant`` [Q, G]."""
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
    sentences = text.sentence(captions)
    relevant = torch.as_tensor(faces.identities[:, None] == faces.identities[None, :])
    own = torch.eye(len(captions), dtype=torch.bool)
    relevant &= ~own

    def masked(scores):
        return scores.masked_fill(own, float("-inf"))

    tokens, mask = text.words(captions)
    text_to_face = {
        "X-Modal": retrieval_metrics(masked(model.embed_texts(sentences) @ main.T), relevant),
        "CLIP-style global cosine": retrieval_metrics(masked(model.clip_texts(sentences) @ clip.T), relevant),
        "TGFR word-region score": retrieval_metrics(
            masked(word_region_retrieval(model, tokens, mask, regions, backend=backend)), relevant),
    }

    gallery_images = np.concatenate([changes.target, changes.other_before])
    gallery_main, gallery_clip, _ = embed_images(model, gallery_images)
    reference_main, reference_clip, _ = embed_images(model, changes.reference)
    change_sentences = text.sentence(changes.captions)
    target_keys, other_keys = changes.gallery_keys()
    composed_relevant = torch.as_tensor(target_keys[:, None] == np.concatenate([target_keys, other_keys])[None])
    composed = {
        "X-Modal": model.compose(reference_main, change_sentences) @ gallery_main.T,
        "image only": reference_main @ gallery_main.T,
        "text only": model.embed_texts(change_sentences) @ gallery_main.T,
        "CLIP-style late fusion": (model.clip_texts(change_sentences) + reference_clip) @ gallery_clip.T,
    }
    return {"text -> face": text_to_face,
            "text + image -> face": {k: retrieval_metrics(v, composed_relevant) for k, v in composed.items()}}


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """The results as one markdown table (R@K and mAP in percent)."""
    rows = [[task, method, *(f"{100 * m[k]:.1f}" for k in METRICS[:-1]), f"{m['median rank']:g}"]
            for task, methods in results.items() for method, m in methods.items()]
    return table(["query", "method", *METRICS], rows, align=["l", "l"] + ["r"] * len(METRICS))
