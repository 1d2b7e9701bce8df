"""Batches of two views per subject, for the paper's intra-modal contrastive loss (eq. 7).

``SubjectPairBatchSampler`` yields index lists ``[a_1 .. a_K, b_1 .. b_K]``: ``K``
distinct subjects, ``a_i`` and ``b_i`` two samples of subject ``i``. Two different
samples are drawn whenever the subject has two; a subject with one sample is paired
with itself, and the step then uses an augmented view (a horizontal flip) and a
different caption for ``b_i`` when there is one. Every sample is an anchor ``a``
exactly once per epoch, except where no layout allows it: a subject holding more than
half of all samples cannot meet another subject in every batch it anchors (its anchors
beyond the other subjects' count are left out), and batches of two subjects
(``batch_size`` 4) leave one anchor out of an odd count. It is a ``torch.utils.data``
batch sampler: pass it as ``batch_sampler=``.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class SubjectPairBatchSampler(Sampler):
    """Index batches of at most ``batch_size`` (even) samples, two per subject.

    An epoch has ``max(ceil(N / K), largest subject)`` batches (``N`` samples, ``K = batch_size // 2``)
    whose anchor counts differ by at most one (so none exceeds ``K``). A batch left with a single
    subject (it has no negative) is dropped; that happens only in the cases the module docstring names.

    Args:
        labels: the subject of each sample (``[N]`` integers).
        batch_size: samples per batch, even and at least 4 (two subjects, so that each
            contrastive term has a negative).
        generator: the ``torch.Generator`` of the shuffles (one epoch per ``__iter__``).
    """

    def __init__(self, labels, batch_size: int, generator: torch.Generator | None = None):
        super().__init__()
        if batch_size < 4 or batch_size % 2:
            raise ValueError(f"batch_size must be even and at least 4 (two views of two subjects), got {batch_size}")
        self.labels = torch.as_tensor(labels).long()
        if self.labels.ndim != 1 or self.labels.numel() == 0:
            raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(self.labels.shape)}")
        self.subjects_per_batch = batch_size // 2
        self.generator = generator
        # samples grouped by subject: subject s owns by_subject[start[s] : start[s] + count[s]]
        _, subject, self.count = torch.unique(self.labels, return_inverse=True, return_counts=True)
        if len(self.count) < 2:
            raise ValueError("SubjectPairBatchSampler needs at least two subjects")
        self.by_subject = torch.argsort(subject, stable=True)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.subject = subject
        self.num_batches = max(math.ceil(len(self.labels) / self.subjects_per_batch), int(self.count.max()))
        self._drawn: list[list[int]] | None = None

    def _second_views(self) -> torch.Tensor:
        """For every sample, a uniformly drawn *other* sample of its subject (itself when it is alone)."""
        count = self.count[self.subject]
        position = torch.empty_like(self.by_subject)
        position[self.by_subject] = torch.arange(len(self.by_subject))
        position -= self.start[self.subject]
        step = 1 + (torch.rand(len(count), generator=self.generator) * (count - 1)).long()
        other = torch.where(count > 1, (position + step) % count, position)
        return self.by_subject[self.start[self.subject] + other]

    def _anchor_batches(self) -> list[list[int]]:
        """Every sample placed as an anchor into one of ``num_batches`` batches, a subject's anchors into
        distinct batches.

        Subjects come in a random order and each anchor goes to a random batch among those with the
        most room left that its subject is not in yet. Room then never differs by more than one between
        batches (a subject takes at most ``num_batches`` of them, from the fullest level down), so the
        batches fill evenly and none overflows; an epoch costs one sort in torch and O(N) Python steps.
        """
        # samples shuffled, then grouped by subject (a stable sort keeps the shuffle within a subject)
        shuffled = torch.randperm(len(self.labels), generator=self.generator)
        grouped = shuffled[torch.argsort(self.subject[shuffled], stable=True)].tolist()
        order = torch.randperm(len(self.count), generator=self.generator).tolist()
        starts, counts = self.start.tolist(), self.count.tolist()
        draws = torch.rand(len(self.labels), generator=self.generator).tolist()
        batches: list[list[int]] = [[] for _ in range(self.num_batches)]
        roomiest, next_level = list(range(self.num_batches)), []  # batches with `room` and `room - 1` places left
        for subject in order:
            from_roomiest, from_next = [], []
            for anchor in grouped[starts[subject]:starts[subject] + counts[subject]]:
                level, taken = (roomiest, from_roomiest) if roomiest else (next_level, from_next)
                pick = int(draws[anchor] * len(level))
                level[pick], level[-1] = level[-1], level[pick]  # remove a random member in O(1)
                taken.append(level.pop())
                batches[taken[-1]].append(anchor)
            # a batch rejoins the levels only after its subject is placed, so it never takes that subject twice
            if roomiest:
                next_level += from_roomiest
            else:  # the fullest level ran out: one place less everywhere
                roomiest, next_level = next_level + from_roomiest, from_next
        return [batch for batch in batches if len(batch) > 1]

    def _epoch(self) -> list[list[int]]:
        # an epoch is drawn when first asked for (its length or its batches) and handed out once
        if self._drawn is None:
            second = self._second_views().tolist()
            self._drawn = [anchors + [second[a] for a in anchors] for anchors in self._anchor_batches()]
        return self._drawn

    def __iter__(self):
        batches, self._drawn = self._epoch(), None
        return iter(batches)

    def __len__(self) -> int:
        """The number of batches of the epoch the next ``iter`` yields."""
        return len(self._epoch())
