"""The real CIFAR-10 JPEG archive in shared/data: cold decode, then a warm load well under a second."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from r18lab.data import load

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.exists(), reason="shared/data/cifar10-jpeg.tar.gz not present")
def test_real_cifar10_jpeg_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path))
    test = load(ARCHIVE, "test")  # cold: one pass decodes both splits (~7 s on 1 core)
    start = time.perf_counter()
    train = load(ARCHIVE, "train")
    warm = time.perf_counter() - start
    assert warm < 1.0
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.bincount(train.labels).tolist() == [5000] * 10 and np.bincount(test.labels).tolist() == [1000] * 10
    assert 100 < float(np.asarray(train.images[:1000]).mean()) < 150  # real photos, not blank decodes
