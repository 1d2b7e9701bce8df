"""Two views per subject: the batch sampler of the paper's IMCL (eq. 7) and the second views it implies."""
from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

from tgfr.training.objectives import flipped_rows, second_view_captions
from tgfr.training.sampler import SubjectPairBatchSampler


def _labels(seed):
    """Subjects with 1 to 6 samples each (singletons included), in a shuffled order."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 7, (23,), generator=generator).tolist()
    counts[:3] = [1, 1, 6]  # always some singletons and a large subject
    labels = torch.tensor([subject for subject, count in enumerate(counts) for _ in range(count)])
    return labels[torch.randperm(len(labels), generator=generator)]


def _check_epoch(labels, batches, batch_size):
    """Two views of distinct subjects per batch; returns the anchors in order."""
    sizes = Counter(labels.tolist())
    anchors = []
    for batch in batches:
        count = len(batch) // 2
        first, second = torch.tensor(batch[:count]), torch.tensor(batch[count:])
        assert len(batch) % 2 == 0 and 2 <= count <= batch_size // 2
        assert torch.equal(labels[first], labels[second])  # row K+i is the subject of row i
        assert len(set(labels[first].tolist())) == count  # distinct subjects: one positive per row
        for a, b in zip(first.tolist(), second.tolist()):
            # two different samples whenever the subject has two
            assert (a != b) == (sizes[int(labels[a])] > 1)
        anchors += first.tolist()
    return anchors


@pytest.mark.parametrize("seed, batch_size", [(0, 8), (1, 16), (2, 6), (5, 4)])
def test_every_sample_anchors_once_in_batches_of_two_views_of_distinct_subjects(seed, batch_size):
    labels = _labels(seed)
    if batch_size == 4 and len(labels) % 2:  # two subjects per batch leave one anchor of an odd count out
        labels = labels[1:]
    sampler = SubjectPairBatchSampler(labels, batch_size, torch.Generator().manual_seed(seed))
    announced = len(sampler)
    batches = list(sampler)
    assert batches and len(batches) == announced  # the length is that of the epoch drawn next
    anchors = _check_epoch(labels, batches, batch_size)
    assert sorted(anchors) == list(range(len(labels)))  # every sample anchors exactly once
    # the batches fill evenly: anchor counts differ by at most one
    assert max(map(len, batches)) - min(map(len, batches)) <= 2


def test_a_subject_with_more_than_half_the_samples_anchors_as_often_as_others_allow():
    labels = torch.tensor([0] * 9 + [1, 2, 3, 4])  # subject 0 can meet another subject in 4 batches only
    batches = list(SubjectPairBatchSampler(labels, 8, torch.Generator().manual_seed(0)))
    anchors = _check_epoch(labels, batches, 8)
    assert len(batches) == 4 and sorted(labels[anchors].tolist()) == [0] * 4 + [1, 2, 3, 4]


def test_batches_of_two_subjects_leave_one_anchor_of_an_odd_count_out():
    labels = torch.arange(5)
    batches = list(SubjectPairBatchSampler(labels, 4, torch.Generator().manual_seed(0)))
    assert len(_check_epoch(labels, batches, 4)) == 4 and len(batches) == 2


def test_an_epoch_of_24000_photos_costs_linear_python_work():
    """MM-CelebA-HQ's training split: ~6,000 identities of ~4 photos, some of one. Building the epoch
    makes O(N) Python-level calls (counted by a profile hook, which stops a run at 20 per photo): a
    loop that rescans the pending photos for each batch makes ~N^2 / K of them and fails here at once."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(4, 6, (6000,), generator=generator)
    counts[:500] = 1
    labels = torch.repeat_interleave(torch.arange(6000), counts)[:24000]
    labels = labels[torch.randperm(len(labels), generator=generator)]
    sampler = SubjectPairBatchSampler(labels, 32, torch.Generator().manual_seed(1))
    budget, calls = 20 * len(labels), 0

    def count_calls(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1
            if calls > budget:
                raise RuntimeError(f"more than {budget} Python-level calls for an epoch of {len(labels)} photos")

    sys.setprofile(count_calls)
    try:
        batches = list(sampler)
    finally:
        sys.setprofile(None)
    anchors = _check_epoch(labels, batches, 32)
    assert sorted(anchors) == list(range(len(labels)))


def test_sampler_epochs_differ_and_repeat_with_the_seed():
    labels = _labels(3)
    one = list(SubjectPairBatchSampler(labels, 8, torch.Generator().manual_seed(5)))
    again = list(SubjectPairBatchSampler(labels, 8, torch.Generator().manual_seed(5)))
    other = list(SubjectPairBatchSampler(labels, 8, torch.Generator().manual_seed(6)))
    assert one == again and one != other


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be even and at least 4"):
        SubjectPairBatchSampler(torch.tensor([0, 0, 1, 1]), 5)
    with pytest.raises(ValueError, match="at least two subjects"):
        SubjectPairBatchSampler(torch.tensor([3, 3, 3]), 4)


def test_a_one_sample_subject_gets_a_flipped_view_and_another_caption():
    index = torch.tensor([7, 2, 4, 7, 5, 4])  # subjects of rows 0 and 2 were seen through one sample
    assert flipped_rows(index).tolist() == [False, False, False, True, False, True]
    captions = {7: ("a", "b", "c"), 2: ("d",), 4: ("e",), 5: ("f", "g")}
    table = [captions.get(i, ("x",)) for i in range(8)]
    for seed in range(20):
        drawn = second_view_captions([table[i] for i in index.tolist()], index, torch.Generator().manual_seed(seed))
        assert drawn[0] != drawn[3] and drawn[0] in captions[7] and drawn[3] in captions[7]
        assert drawn[2] == drawn[5] == "e"  # one caption only: it is repeated
