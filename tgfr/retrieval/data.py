"""Retrieval data: faces with captions, change pairs, and negatives graded by attribute overlap.

The embedded synthetic set (:mod:`tgfr.data.synthetic`) gives the photos and captions;
:mod:`tgfr.data.changes` the change pairs. Identities are split as the synthetic set
splits them, so the test people never appear in training.

Difficulty of a negative is how many of the described attributes it shares with the
positive (``attribute_overlap``): among the other identities (or, for change pairs, other
people's after-states), the most similar 5 % are the hard pool, the 25-50 % band of the
similarity order the semi-hard pool, and anyone the easy pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.captions import UNSPOKEN
from ..data.changes import make_change_pair
from ..data.identities import ATTRIBUTE_VALUES
from ..data.synthetic import SyntheticConfig, generate_synthetic, identity_profiles, split_identities

#: Attributes captions speak of: what a negative may share with the description.
DESCRIBED = tuple(a for a in ATTRIBUTE_VALUES if a not in UNSPOKEN)
HARD_FRACTION = 0.05
SEMI_HARD_BAND = (0.25, 0.5)


@dataclass
class FaceSet:
    """Photos of some identities: ``images`` uint8 [N, S, S, 3], ``identities`` int [N]."""

    images: np.ndarray
    identities: np.ndarray
    captions: list[tuple[str, ...]]
    attributes: list[dict]


@dataclass
class ChangeSet:
    """Change pairs: reference (before), target (after) and a second before photo, per pair."""

    identities: np.ndarray
    reference: np.ndarray
    target: np.ndarray
    other_before: np.ndarray
    captions: list[str]
    after_attributes: list[dict]
    changes: list[dict]


@dataclass
class RetrievalSplit:
    faces: FaceSet
    changes: ChangeSet


def attribute_overlap(first: list[dict], second: list[dict]) -> np.ndarray:
    """Fraction of :data:`DESCRIBED` attributes on which each of ``first`` equals each of ``second``."""
    def codes(attributes):
        return np.array([[ATTRIBUTE_VALUES[name].index(a[name]) for name in DESCRIBED] for a in attributes])
    return (codes(first)[:, None, :] == codes(second)[None, :, :]).mean(-1)


class NegativePools:
    """Per item, the other-class items of each grade, from a similarity matrix."""

    def __init__(self, similarity: np.ndarray, classes: np.ndarray, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.pools = []
        for i in range(len(classes)):
            others = np.flatnonzero(classes != classes[i])
            if others.size == 0:
                raise ValueError("graded negatives need at least two classes")
            # most similar first; a random order among equals so ties do not favour low indices
            order = others[np.lexsort((rng.random(others.size), -similarity[i, others]))]
            n = order.size
            hard = order[:max(1, int(np.ceil(HARD_FRACTION * n)))]
            lo, hi = int(SEMI_HARD_BAND[0] * n), max(int(SEMI_HARD_BAND[1] * n), int(SEMI_HARD_BAND[0] * n) + 1)
            self.pools.append({"easy": order, "semi_hard": order[lo:hi], "hard": hard})

    def sample(self, item: int, grade: str, rng: np.random.Generator) -> int:
        pool = self.pools[item][grade]
        return int(pool[rng.integers(pool.size)])


def _changes_of(config: SyntheticConfig, members: np.ndarray, pairs_per_identity: int) -> ChangeSet:
    profiles = identity_profiles(config)
    pairs = [make_change_pair(profiles[k], config.seed, j, config.image_size, config.occlusion_probability)
             for k in members for j in range(pairs_per_identity)]
    return ChangeSet(identities=np.array([p.identity for p in pairs], dtype=np.int64),
                     reference=np.stack([p.reference for p in pairs]), target=np.stack([p.target for p in pairs]),
                     other_before=np.stack([p.other_before for p in pairs]), captions=[p.caption for p in pairs],
                     after_attributes=[dict(p.after.attributes) for p in pairs],
                     changes=[dict(p.changes) for p in pairs])


def build_retrieval_splits(config: SyntheticConfig, pairs_per_identity: int = 2,
                           cache_dir=None) -> dict[str, RetrievalSplit]:
    """Train and test splits (disjoint identities) of the synthetic faces and their change pairs."""
    if pairs_per_identity < 1:
        raise ValueError(f"pairs_per_identity must be >= 1, got {pairs_per_identity}")
    faces = generate_synthetic(config, cache_dir)
    splits = {}
    for name, members in split_identities(config).items():
        if name == "valid" or members.size == 0:
            continue
        rows = np.flatnonzero(np.isin(faces.identities, members))
        face_set = FaceSet(faces.images[rows], faces.identities[rows], [faces.captions[i] for i in rows],
                           [faces.attributes[i] for i in rows])
        splits[name] = RetrievalSplit(face_set, _changes_of(config, members, pairs_per_identity))
    for name in ("train", "test"):
        if name not in splits or len(np.unique(splits[name].faces.identities)) < 2:
            raise ValueError(f"the {name} split needs at least two identities: raise num_identities "
                             f"({config.num_identities}) or its split fraction")
    return splits


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1], contiguous.

    Transposed in NumPy: a permuted (channels-last strided) input sends the CPU convolution
    backward down a path that corrupts the heap in this torch build.
    """
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    chw /= 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


class GradedBatches:
    """Random training batches of both query kinds with their graded negatives (indices only)."""

    def __init__(self, split: RetrievalSplit, seed: int = 0):
        self.split = split
        faces, changes = split.faces, split.changes
        self.people, first_photo = np.unique(faces.identities, return_index=True)
        self.photos_of = [np.flatnonzero(faces.identities == k) for k in self.people]
        person_attributes = [faces.attributes[i] for i in first_photo]
        self.face_pools = NegativePools(attribute_overlap(person_attributes, person_attributes),
                                        self.people, seed)
        self.change_pools = NegativePools(attribute_overlap(changes.after_attributes, changes.after_attributes),
                                          changes.identities, seed + 1)

    def text_batch(self, rng: np.random.Generator, size: int, grades) -> dict:
        """Text queries: ``photos`` (positives), ``captions``, ``ids`` and ``negatives[grade]`` photo rows."""
        people = rng.choice(len(self.people), size=min(size, len(self.people)), replace=False)
        photos = np.array([rng.choice(self.photos_of[p]) for p in people])
        captions = [self.split.faces.captions[p][rng.integers(len(self.split.faces.captions[p]))] for p in photos]
        negatives = {g: np.array([rng.choice(self.photos_of[self.face_pools.sample(p, g, rng)]) for p in people])
                     for g in grades}
        return {"photos": photos, "captions": captions, "negatives": negatives}

    def composed_batch(self, rng: np.random.Generator, size: int, grades) -> dict:
        """Composed queries: ``pairs`` (reference + caption -> target) and ``negatives[grade]`` pair rows
        (easy / semi-hard: other people's after photos; hard: the same pair's other before photo)."""
        count = len(self.split.changes.identities)
        pairs = rng.choice(count, size=min(size, count), replace=False)
        negatives = {g: pairs.copy() if g == "hard" else
                     np.array([self.change_pools.sample(p, g, rng) for p in pairs]) for g in grades}
        return {"pairs": pairs, "negatives": negatives}


def state_ids(identities: np.ndarray, after: bool) -> torch.Tensor:
    """Classes of composed retrieval: a person after a change is not the same target as before it."""
    return torch.as_tensor(2 * identities + int(after), dtype=torch.long)
