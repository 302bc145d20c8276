"""BatchLoader: epoch order and augmentation depend only on (seed, epoch); resumes replay exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r18lab.data import Dataset
from r18lab.data.augment import Augment
from r18lab.data.loader import BatchLoader, to_device_tensors
from r18lab.errors import DataError

N = 50


@pytest.fixture
def data():
    imgs = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    images, labels = to_device_tensors(Dataset(imgs, np.arange(N), [str(i) for i in range(N)]), "cpu")
    return imgs, images, labels


def epoch(loader, e, start=0):
    loader.set_epoch(e, start)
    return list(loader)


def test_to_device_tensors_layout(data):
    imgs, images, labels = data
    assert images.dtype == torch.uint8 and images.shape == (N, 3, 8, 8) and images.is_contiguous()
    assert np.array_equal(images.numpy(), imgs.transpose(0, 3, 1, 2))
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(N))


def test_len_and_each_example_once_per_epoch(data):
    _, images, labels = data
    keep = BatchLoader(images, labels, batch_size=16, seed=1)
    drop = BatchLoader(images, labels, batch_size=16, seed=1, drop_last=True)
    assert len(keep) == 4 and len(drop) == 3
    batches = epoch(keep, 0)
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(N))
    assert [len(y) for _, y in epoch(drop, 0)] == [16, 16, 16]


def test_without_augment_batches_are_pixels_over_255_in_order(data):
    _, images, labels = data
    batches = epoch(BatchLoader(images, labels, batch_size=20, shuffle=False), 3)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(N))
    x, _ = batches[0]
    assert x.dtype == torch.float32 and torch.equal(x, images[:20].float() / 255)


def test_order_depends_only_on_seed_and_epoch(data):
    _, images, labels = data
    order = lambda seed, e: torch.cat([y for _, y in epoch(BatchLoader(images, labels, 8, seed=seed), e)])  # noqa: E731
    assert torch.equal(order(3, 2), order(3, 2))
    assert not torch.equal(order(3, 2), order(3, 1))
    assert not torch.equal(order(3, 2), order(4, 2))


def test_augmented_epochs_are_bit_identical_and_resume_mid_epoch(data):
    _, images, labels = data
    make = lambda: BatchLoader(images, labels, 8, seed=9, augment=Augment(crop=8, padding=2, cutout=2))  # noqa: E731
    first, again = make(), make()
    epoch(first, 0)  # history must not matter
    full = epoch(first, 4)
    fresh = epoch(again, 4)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, fresh))
    resumed = epoch(make(), 4, start=3)
    assert len(resumed) == len(full) - 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], resumed))
    other = epoch(make(), 5)
    assert not torch.equal(full[0][0], other[0][0])


def test_views_pass_through(data):
    _, images, labels = data
    loader = BatchLoader(images, labels, 10, seed=0, augment=Augment(crop=8, padding=2), views=2)
    (v1, v2), y = next(iter(loader))
    assert v1.shape == v2.shape == (10, 3, 8, 8) and len(y) == 10 and not torch.equal(v1, v2)


def test_bad_arguments(data):
    _, images, labels = data
    with pytest.raises(DataError, match="uint8 N×C×H×W"):
        BatchLoader(images.float(), labels, 4)
    with pytest.raises(DataError, match="50 images but 49 labels"):
        BatchLoader(images, labels[:-1], 4)
    with pytest.raises(DataError, match="batch_size 64 exceeds the 50 examples with drop_last"):
        BatchLoader(images, labels, 64, drop_last=True)
    with pytest.raises(DataError, match="start in 0..13"):
        BatchLoader(images, labels, 4).set_epoch(0, start=14)
