"""Retrieval data: faces with captions, change pairs, and negatives graded by attribute overlap.

The embedded synthetic set (:mod:`tgfr.data.synthetic`) gives the photos and captions;
:mod:`tgfr.data.changes` the change pairs. Identities are split as the synthetic set
splits them, so the test people never appear in training.

On CelebA-Dialog (:func:`build_celeba_dialog_splits`) the photos and captions come from
:func:`tgfr.data.readers.read_celeba_dialog`, split as the TGFR trainer splits them
(:func:`tgfr.data.sources.split_dataset`), and a change pair is two photos of one person
whose attribute levels (:func:`tgfr.data.readers.read_celeba_dialog_levels`) differ, with
a caption built from the difference (:func:`describe_change`).

Difficulty of a negative is how many of the described attributes it shares with the
positive (``attribute_overlap``): among the other identities (or, for change pairs, other
people's after-states), the most similar 5 % are the hard pool, the 25-50 % band of the
similarity order the semi-hard pool, and anyone the easy pool.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import read_cache, save_tensors
from ..data.captions import UNSPOKEN
from ..data.changes import make_change_pair
from ..data.dataset import crop_and_resize
from ..data.identities import ATTRIBUTE_VALUES
from ..data.readers import CELEBA_DIALOG_LEVELS, read_celeba_dialog_levels
from ..data.sources import DataError, read_dataset, split_dataset
from ..data.synthetic import SyntheticConfig, generate_synthetic, identity_profiles, split_identities

#: Attributes captions speak of: what a negative may share with the description.
DESCRIBED = tuple(a for a in ATTRIBUTE_VALUES if a not in UNSPOKEN)
HARD_FRACTION = 0.05
SEMI_HARD_BAND = (0.25, 0.5)


@dataclass
class FaceSet:
    """Photos of some identities: ``images`` uint8 [N, S, S, 3], ``identities`` int [N], per photo its
    ``captions`` (the first is its test query), true ``attributes``, and ``statements``: what its
    first caption states, ``{attribute: value}`` (wrong values included), for the attribute oracle."""

    images: np.ndarray
    identities: np.ndarray
    captions: list[tuple[str, ...]]
    attributes: list[dict]
    statements: list[dict]


@dataclass
class ChangeSet:
    """Change pairs: reference (before), target (after) and a second before photo, per pair, with the
    attributes of the target (``after_attributes``) and of the second before photo (``before_attributes``)."""

    identities: np.ndarray
    reference: np.ndarray
    target: np.ndarray
    other_before: np.ndarray
    captions: list[str]
    after_attributes: list[dict]
    before_attributes: list[dict]
    changes: list[dict]
    # photo keys of the targets and second before photos: on real data one photo can serve several
    # pairs, and a gallery item is relevant when it is the pair's target photo (None: all distinct)
    target_keys: np.ndarray | None = None
    other_keys: np.ndarray | None = None

    def gallery_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys of the targets and of the second before photos (equal keys: the same photo)."""
        count = len(self.captions)
        if self.target_keys is None:
            return np.arange(count), np.arange(count, 2 * count)
        return self.target_keys, self.other_keys


@dataclass
class RetrievalSplit:
    faces: FaceSet
    changes: ChangeSet
    described: tuple[str, ...] = DESCRIBED  # attributes compared to grade negatives
    source: str = "synthetic"


def attribute_overlap(first: list[dict], second: list[dict], names=DESCRIBED) -> np.ndarray:
    """Fraction of the attributes ``names`` on which each of ``first`` equals each of ``second``."""
    vocabulary = {}

    def codes(attributes):
        return np.array([[vocabulary.setdefault((name, a[name]), len(vocabulary)) for name in names]
                         for a in attributes]).reshape(len(attributes), len(names))
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


_CHANGE_PHOTOS = ("reference", "target", "other_before")
_CHANGE_LABELS = ("captions", "after_attributes", "before_attributes", "changes")  # kept as JSON


def _changes_of(config: SyntheticConfig, members: np.ndarray, pairs_per_identity: int, cache_dir=None) -> ChangeSet:
    """The change pairs of the people ``members``, rendered, or read from ``cache_dir`` where an earlier run
    (or ``tgfr xmodal train`` before its ``eval``) left them."""
    path = None
    if cache_dir is not None:
        key = json.dumps([config.cache_key(), members.tolist(), pairs_per_identity])
        path = Path(cache_dir) / f"tgfr_changes_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        state = read_cache(path, ("identities", *_CHANGE_PHOTOS, "labels"))
        labels = json.loads(state["labels"]) if state is not None else {}
        if set(labels) == set(_CHANGE_LABELS):
            labels["changes"] = [{name: tuple(values) for name, values in change.items()}  # JSON made them lists
                                 for change in labels["changes"]]
            return ChangeSet(identities=state["identities"].numpy(),
                             **{name: state[name].numpy() for name in _CHANGE_PHOTOS}, **labels)
    profiles = identity_profiles(config)
    pairs = [make_change_pair(profiles[k], config.seed, j, config.image_size, config.occlusion_probability)
             for k in members for j in range(pairs_per_identity)]
    changes = ChangeSet(identities=np.array([p.identity for p in pairs], dtype=np.int64),
                        reference=np.stack([p.reference for p in pairs]), target=np.stack([p.target for p in pairs]),
                        other_before=np.stack([p.other_before for p in pairs]), captions=[p.caption for p in pairs],
                        after_attributes=[dict(p.after.attributes) for p in pairs],
                        before_attributes=[dict(p.before.attributes) for p in pairs],
                        changes=[dict(p.changes) for p in pairs])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = {name: getattr(changes, name) for name in _CHANGE_LABELS}
        save_tensors({"identities": torch.from_numpy(changes.identities), "labels": json.dumps(labels),
                      **{name: torch.from_numpy(getattr(changes, name)) for name in _CHANGE_PHOTOS}}, path)
    return changes


def build_retrieval_splits(config: SyntheticConfig, pairs_per_identity: int = 2, cache_dir=None,
                           train_pairs_per_identity: int | None = None) -> dict[str, RetrievalSplit]:
    """Train and test splits (disjoint identities) of the synthetic faces and their change pairs:
    ``pairs_per_identity`` per test person, ``train_pairs_per_identity`` (None: as many) per training person."""
    if train_pairs_per_identity is None:
        train_pairs_per_identity = pairs_per_identity
    for name, value in (("pairs_per_identity", pairs_per_identity),
                        ("train_pairs_per_identity", train_pairs_per_identity)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    faces = generate_synthetic(config, cache_dir)
    splits = {}
    for name, members in split_identities(config).items():
        if name == "valid" or members.size == 0:
            continue
        rows = np.flatnonzero(np.isin(faces.identities, members))
        face_set = FaceSet(faces.images[rows], faces.identities[rows], [faces.captions[i] for i in rows],
                           [faces.attributes[i] for i in rows], [faces.statements[i][0] for i in rows])
        pairs = train_pairs_per_identity if name == "train" else pairs_per_identity
        splits[name] = RetrievalSplit(face_set, _changes_of(config, members, pairs, cache_dir))
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
        described = split.described
        self.face_pools = NegativePools(attribute_overlap(person_attributes, person_attributes, described),
                                        self.people, seed)
        self.change_pools = NegativePools(
            attribute_overlap(changes.after_attributes, changes.after_attributes, described),
            changes.identities, seed + 1)

    def text_batch(self, rng: np.random.Generator, size: int, grades, views: int = 1) -> dict:
        """Text queries: ``photos`` (positives), ``captions`` (``views`` lists: a random caption of each photo,
        then its next ones in turn) and ``negatives[grade]`` photo rows."""
        people = rng.choice(len(self.people), size=min(size, len(self.people)), replace=False)
        photos = np.array([rng.choice(self.photos_of[p]) for p in people])
        own = [self.split.faces.captions[p] for p in photos]
        first = [int(rng.integers(len(c))) for c in own]
        negatives = {g: np.array([rng.choice(self.photos_of[self.face_pools.sample(p, g, rng)]) for p in people])
                     for g in grades}
        captions = [[c[(i + view) % len(c)] for c, i in zip(own, first)] for view in range(views)]
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


# CelebA-Dialog level changes in words: (appears from level 0, disappears to level 0, grows, shrinks);
# age has no absent level (0 is a child), so it only grows or shrinks.
CHANGE_PHRASES = {
    "Eyeglasses": ("now wears glasses", "no longer wears glasses", "now wears heavier glasses",
                   "now wears lighter glasses"),
    "No_Beard": ("has grown a beard", "has shaved off the beard", "has grown a fuller beard",
                 "has trimmed the beard"),
    "Bangs": ("now has bangs", "no longer has bangs", "has grown longer bangs", "has cut the bangs shorter"),
    "Smiling": ("is now smiling", "no longer smiles", "smiles more broadly", "smiles less"),
    "Young": (None, None, "looks older", "looks younger"),
}
SUNGLASSES_LEVEL = 4  # Eyeglasses levels 4-5 are sunglasses


def describe_change(before: dict[str, int], after: dict[str, int]) -> str:
    """One sentence for the level differences between two photos of a person."""
    phrases = []
    for name in CELEBA_DIALOG_LEVELS:
        old, new = before[name], after[name]
        if old == new:
            continue
        appears, disappears, grows, shrinks = CHANGE_PHRASES[name]
        if appears and old == 0:
            phrase = "now wears sunglasses" if name == "Eyeglasses" and new >= SUNGLASSES_LEVEL else appears
        elif disappears and new == 0:
            phrase = disappears
        else:
            phrase = grows if new > old else shrinks
        phrases.append(phrase)
    if not phrases:
        raise ValueError("describe_change: the two photos have the same levels")
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"The person {listed}."


def _real_changes(faces: FaceSet, levels: list[dict], pairs_per_identity: int, rng) -> ChangeSet:
    """Up to ``pairs_per_identity`` pairs per person of two photos whose levels differ (distinct
    targets first); the second before photo is another photo of the person not at the target's
    levels, or the reference itself when the person has none."""
    chosen = []
    for person in np.unique(faces.identities):
        photos = np.flatnonzero(faces.identities == person)
        candidates = [(a, b) for a in photos for b in photos if a != b and levels[a] != levels[b]]
        order = rng.permutation(len(candidates))
        taken, targets = [], set()
        for fresh_only in (True, False):
            for k in order:
                a, b = candidates[k]
                if len(taken) < pairs_per_identity and (a, b) not in taken and not (fresh_only and b in targets):
                    taken.append((a, b))
                    targets.add(b)
        for a, b in taken:
            others = [c for c in photos if c not in (a, b) and levels[c] != levels[b]]
            chosen.append((a, b, others[rng.integers(len(others))] if others else a))
    if not chosen:
        raise ValueError("no change pairs: no person has two photos with different attribute levels")
    reference, target, other = (np.array(column) for column in zip(*chosen))
    return ChangeSet(identities=faces.identities[reference], reference=faces.images[reference],
                     target=faces.images[target], other_before=faces.images[other],
                     captions=[describe_change(levels[a], levels[b]) for a, b, _ in chosen],
                     after_attributes=[levels[b] for b in target], before_attributes=[levels[c] for c in other],
                     changes=[{n: (levels[a][n], levels[b][n]) for n in CELEBA_DIALOG_LEVELS
                               if levels[a][n] != levels[b][n]} for a, b, _ in chosen],
                     target_keys=target, other_keys=other)


def build_celeba_dialog_splits(root, image_size: int, pairs_per_identity: int = 2, seed: int = 0,
                               skip_bad: bool = False, log=print) -> dict[str, RetrievalSplit]:
    """Train and test splits of CelebA-Dialog under ``root``: photos at ``image_size``, text queries
    from the captions (first: the attribute-wise captions joined into one description, the test
    query; then each attribute-wise caption and the overall caption, for training), graded
    negatives by equal attribute levels, change pairs from level differences."""
    name = "celeba-dialog"
    skipped = []
    records = read_dataset(name, root, skip_bad, skipped)
    try:
        levels = read_celeba_dialog_levels(root)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from error
    unlevelled = [r.name for r in records if r.name not in levels]
    if unlevelled and not skip_bad:
        raise DataError(f"{name} at {root}: no attribute levels for image {unlevelled[0]!r} "
                        f"(pass --skip-bad to skip such images)")
    records = [r for r in records if r.name in levels]
    split = split_dataset(name, records, root, seed, skip_bad, skipped)
    for note in split.notes:
        log(note)
    if skipped:
        log(f"{name}: skipped {len(skipped)} image(s), e.g. {skipped[0]}")
    people = {identity: k for k, identity in enumerate(sorted({r.identity for r in records},
                                                                key=lambda i: (str(type(i)), i)))}
    rng = np.random.default_rng([seed, 23])
    splits = {}
    for side, side_records in (("train", split.train), ("test", split.test)):
        photo_levels = [levels[r.name] for r in side_records]
        captions = [(" ".join(r.captions[1:]) or r.captions[0],) + r.captions[1:] + r.captions[:1]
                    if len(r.captions) > 1 else r.captions for r in side_records]
        faces = FaceSet(images=np.stack([crop_and_resize(r.load_image(image_size), image_size) for r in side_records]),
                        identities=np.array([people[r.identity] for r in side_records], dtype=np.int64),
                        captions=captions, attributes=photo_levels,
                        statements=photo_levels)  # the query caption is the attribute-wise captions of all levels
        changes = _real_changes(faces, photo_levels, pairs_per_identity, rng)
        if len(np.unique(changes.identities)) < 2:
            raise DataError(f"{name} at {root}: the {side} split needs change pairs of at least two people "
                            f"(two photos of a person with different attribute levels); it has "
                            f"{len(np.unique(changes.identities))}")
        splits[side] = RetrievalSplit(faces, changes, CELEBA_DIALOG_LEVELS, name)
    return splits
