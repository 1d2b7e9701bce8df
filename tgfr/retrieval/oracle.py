"""Ceilings and floors of the X-Modal evaluation: what the queries allow, and what chance gives.

* **Attribute oracle** (text -> face): scores each gallery photo by how many of the
  attributes the query caption states it truly has. It reads what the caption *says*
  (:attr:`FaceSet.statements`, contradictions included: it cannot know a statement is
  wrong), so it is the best ranking that uses the caption's content alone. On
  CelebA-Dialog the query is the attribute-wise captions of all five levels, so the
  oracle reads the query photo's levels.
* **Composed oracle** (text + image -> face): knows the reference's person and the state
  after the change (the reference's attributes with the change applied): the person's
  gallery items come first, ordered by agreement with that state.

Chance and the oracles with ties broken at random come from
:func:`tgfr.retrieval.evaluation.expected_metrics`.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import ChangeSet, FaceSet


def agreement(stated: list[dict], truth: list[dict]) -> np.ndarray:
    """``[Q, G]``: how many of the attributes ``stated[q]`` names have that value in ``truth[g]``."""
    counts = np.zeros((len(stated), len(truth)), dtype=np.int64)
    for name in sorted({name for s in stated for name in s}):
        vocabulary = {}
        said = np.array([vocabulary.setdefault(s[name], len(vocabulary)) if name in s else -1 for s in stated])
        has = np.array([vocabulary.get(t[name], -2) if name in t else -2 for t in truth])
        counts += said[:, None] == has[None, :]
    return counts


def text_oracle_scores(faces: FaceSet) -> torch.Tensor:
    """Attribute-oracle scores of each photo's query caption (rows) against every photo (columns)."""
    return torch.as_tensor(agreement(faces.statements, faces.attributes), dtype=torch.float64)


def composed_oracle_scores(changes: ChangeSet) -> torch.Tensor:
    """Composed-oracle scores of each pair's query (rows) against the composed gallery (columns: the
    targets, then the second before photos): the same person first, then agreement with the after state."""
    gallery_people = np.concatenate([changes.identities, changes.identities])
    agree = agreement(changes.after_attributes, changes.after_attributes + changes.before_attributes)
    same_person = changes.identities[:, None] == gallery_people[None, :]
    return torch.as_tensor(agree + (agree.max() + 1) * same_person, dtype=torch.float64)
