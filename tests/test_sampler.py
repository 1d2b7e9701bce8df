"""Two views per subject: the batch sampler of the paper's IMCL (eq. 7) and the second views it implies."""
from __future__ import annotations

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


@pytest.mark.parametrize("seed, batch_size", [(0, 8), (1, 16), (2, 6)])
def test_every_batch_holds_two_samples_of_each_of_its_distinct_subjects(seed, batch_size):
    labels = _labels(seed)
    sizes = Counter(labels.tolist())
    sampler = SubjectPairBatchSampler(labels, batch_size, torch.Generator().manual_seed(seed))
    anchors = []
    announced = len(sampler)
    batches = list(sampler)
    assert batches and len(batches) == announced  # the length is that of the epoch drawn next
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
    assert len(anchors) == len(set(anchors))  # each sample anchors at most once per epoch
    # only the tail of one subject can be left without a partner subject
    assert len(anchors) >= len(labels) - max(sizes.values())


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


def test_drop_last_keeps_only_full_batches():
    labels = _labels(4)
    full = list(SubjectPairBatchSampler(labels, 8, torch.Generator().manual_seed(0), drop_last=True))
    kept = list(SubjectPairBatchSampler(labels, 8, torch.Generator().manual_seed(0)))
    assert full and all(len(batch) == 8 for batch in full)
    assert full == kept[:len(full)] and len(kept) > len(full)
