"""Batches of two views per subject, for the paper's intra-modal contrastive loss (eq. 7).

``SubjectPairBatchSampler`` yields index lists ``[a_1 .. a_K, b_1 .. b_K]``: ``K``
distinct subjects, ``a_i`` and ``b_i`` two samples of subject ``i``. Two different
samples are drawn whenever the subject has two; a subject with one sample is paired
with itself, and the step then uses an augmented view (a horizontal flip) and a
different caption for ``b_i`` when there is one. Every sample is an anchor ``a`` once
per epoch. It is a ``torch.utils.data`` batch sampler: pass it as ``batch_sampler=``.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils.data import Sampler


class SubjectPairBatchSampler(Sampler):
    """Index batches of ``batch_size`` (even) samples, two per subject, ``batch_size // 2`` subjects.

    Args:
        labels: the subject of each sample (``[N]`` integers).
        batch_size: samples per batch, even and at least 4 (two subjects, so that each
            contrastive term has a negative).
        generator: the ``torch.Generator`` of the shuffles (one epoch per ``__iter__``).
        drop_last: drop batches with fewer subjects than ``batch_size // 2``. A batch of a single
            subject is always dropped: it has no negative.
    """

    def __init__(self, labels, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False):
        super().__init__()
        if batch_size < 4 or batch_size % 2:
            raise ValueError(f"batch_size must be even and at least 4 (two views of two subjects), got {batch_size}")
        self.labels = torch.as_tensor(labels).long()
        if self.labels.ndim != 1 or self.labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(self.labels.shape)}")
        self.subjects_per_batch = batch_size // 2
        self.generator = generator
        self.drop_last = drop_last
        members = defaultdict(list)
        for index, label in enumerate(self.labels.tolist()):
            members[label].append(index)
        if len(members) < 2:
            raise ValueError("SubjectPairBatchSampler needs at least two subjects")
        self.members = [torch.tensor(members[label]) for label in sorted(members)]
        self._drawn: list[list[int]] | None = None

    def _pairs(self) -> list[tuple[int, int, int]]:
        """(subject, anchor, second view) for every sample as anchor, in a shuffled order."""
        pairs = []
        for subject, members in enumerate(self.members):
            count = len(members)
            for position in range(count):
                # a uniformly drawn *other* member, or the sample itself when it is alone
                other = (position + 1 + int(torch.randint(count - 1, (), generator=self.generator))) % count \
                    if count > 1 else position
                pairs.append((subject, int(members[position]), int(members[other])))
        order = torch.randperm(len(pairs), generator=self.generator).tolist()
        return [pairs[i] for i in order]

    def _batches(self):
        pending = self._pairs()
        while pending:
            batch, used, deferred = [], set(), []
            for pair in pending:
                if len(batch) < self.subjects_per_batch and pair[0] not in used:
                    batch.append(pair)
                    used.add(pair[0])
                else:
                    deferred.append(pair)
            pending = deferred
            # a short batch means fewer distinct subjects are left than a batch holds, so every later one is short
            # too; a single subject has no negatives
            if len(batch) < 2 or (self.drop_last and len(batch) < self.subjects_per_batch):
                break
            yield [a for _, a, _ in batch] + [b for _, _, b in batch]

    def _epoch(self) -> list[list[int]]:
        # an epoch is drawn when first asked for (its length or its batches) and handed out once
        if self._drawn is None:
            self._drawn = list(self._batches())
        return self._drawn

    def __iter__(self):
        batches, self._drawn = self._epoch(), None
        return iter(batches)

    def __len__(self) -> int:
        """The number of batches of the epoch the next ``iter`` yields (packing depends on its shuffle)."""
        return len(self._epoch())
