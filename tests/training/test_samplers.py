"""ClassBalancedBatchSampler: batch shape, determinism, distributed ranks, small classes, errors."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.samplers import ClassBalancedBatchSampler


def _labels(num_classes: int = 20, per_class: int = 30) -> list[int]:
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    np.random.default_rng(0).shuffle(labels)
    return labels


def test_every_batch_has_classes_times_per_class_distinct_images():
    labels = _labels()
    sampler = ClassBalancedBatchSampler(labels, batch_size=32, per_class=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 32
    for batch in batches:
        assert len(batch) == 32 and len(set(batch)) == 32
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 8 and set(counts.values()) == {4}


def test_epoch_covers_the_data_about_once():
    labels = _labels(num_classes=10, per_class=64)
    sampler = ClassBalancedBatchSampler(labels, batch_size=64, per_class=8, seed=0)
    seen = Counter(i for batch in sampler for i in batch)
    assert len(seen) > 0.8 * len(labels)  # classes drawn in proportion to size, images cycled per class
    assert max(seen.values()) <= 3


def test_deterministic_in_seed_and_epoch():
    labels = _labels()

    def run(seed: int, epoch: int) -> list[list[int]]:
        sampler = ClassBalancedBatchSampler(labels, 16, 4, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert run(0, 0) == run(0, 0)
    assert run(0, 3) == run(0, 3)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)
    # an epoch does not depend on which epochs were iterated before (resume-safe)
    sampler = ClassBalancedBatchSampler(labels, 16, 4, seed=0)
    list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == run(0, 3)


def test_two_ranks_get_distinct_batches():
    labels = _labels(num_classes=12, per_class=40)
    ranks = [ClassBalancedBatchSampler(labels, 16, 4, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(labels) // (16 * 2)
    assert not {tuple(b) for b in b0} & {tuple(b) for b in b1}
    # the two ranks together are the single-process sequence of twice as many batches, interleaved
    single = ClassBalancedBatchSampler(labels, 16, 4, seed=5, drop_last=False)
    single.num_batches = 2 * len(b0)
    single.set_epoch(2)
    assert list(single)[0::2] == b0 and list(single)[1::2] == b1


def test_small_classes_are_kept_and_repeat(caplog):
    labels = [0] * 2 + [1] * 40  # 2 slots, 2 classes: class 0 is in every batch
    sampler = ClassBalancedBatchSampler(labels, batch_size=8, per_class=4, seed=0)
    assert "fewer than 4 images" in caplog.text
    for batch in sampler:
        assert Counter(labels[i] for i in batch) == {0: 4, 1: 4}
        assert {i for i in batch if labels[i] == 0} == {0, 1}  # both images of the class, repeated
        assert len({i for i in batch if labels[i] == 1}) == 4


def test_fewer_classes_than_slots_fills_every_batch(caplog):
    labels = _labels(num_classes=3, per_class=50)
    sampler = ClassBalancedBatchSampler(labels, batch_size=20, per_class=4, seed=0)  # 5 slots, 3 classes
    assert "class slots" in caplog.text
    for batch in sampler:
        counts = Counter(labels[i] for i in batch)
        assert len(batch) == 20 and len(counts) == 3 and all(v % 4 == 0 for v in counts.values())
        assert len(set(batch)) == 20


def test_drop_last_rounds_up_or_down():
    labels = _labels(num_classes=4, per_class=25)  # 100 images
    assert len(ClassBalancedBatchSampler(labels, 16, 4)) == 6
    assert len(ClassBalancedBatchSampler(labels, 16, 4, drop_last=False)) == 7


@pytest.mark.parametrize(
    ("labels", "batch_size", "per_class", "kwargs", "words"),
    [
        (_labels(), 16, 0, {}, "per_class must be at least 1"),
        (_labels(), 18, 4, {}, "not a multiple"),
        (_labels(), 4, 4, {}, "need at least 2"),
        ([3] * 50, 16, 4, {}, "at least 2 classes"),
        ([0, 1] * 4, 16, 4, {}, "no full batch"),
        (_labels(), 16, 4, {"num_replicas": 2, "rank": 2}, "rank 2"),
    ],
)
def test_errors_are_one_line(labels, batch_size, per_class, kwargs, words):
    with pytest.raises(ValueError, match=words) as info:
        ClassBalancedBatchSampler(labels, batch_size, per_class, **kwargs)
    assert "\n" not in str(info.value)


def test_works_as_a_dataloader_batch_sampler():
    labels = _labels(num_classes=6, per_class=10)
    ds = TensorDataset(torch.arange(len(labels)), torch.tensor(labels))
    loader = DataLoader(ds, batch_sampler=ClassBalancedBatchSampler(labels, 12, 3, seed=0))
    batches = list(loader)
    assert len(batches) == len(labels) // 12
    for idx, y in batches:
        assert torch.equal(y, torch.tensor([labels[i] for i in idx.tolist()]))
