"""Splits: nested pools, k-shot, class halves, JSON round trip; all pure in (labels, seed)."""
from __future__ import annotations

import numpy as np
import pytest

from r18lab.data.splits import balanced_order, class_halves, k_shot, load_split, nested_pools, save_split
from r18lab.errors import DataError

LABELS = np.repeat(np.arange(5), 40)[np.random.default_rng(0).permutation(200)]  # 5 classes × 40, shuffled


def test_pools_are_nested_balanced_and_sorted():
    pools = nested_pools(LABELS, [5, 23, 100, 200], seed=1)
    assert [len(p) for p in pools] == [5, 23, 100, 200]
    for small, big in zip(pools, pools[1:]):
        assert np.isin(small, big).all()
    for pool in pools:
        assert np.array_equal(pool, np.unique(pool))  # sorted, no duplicates
        counts = np.bincount(LABELS[pool], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.bincount(LABELS[pools[2]]).tolist() == [20] * 5


def test_pools_deterministic_per_seed_and_differ_across_seeds():
    a = nested_pools(LABELS, [10, 50], seed=7)
    b = nested_pools(LABELS, [10, 50], seed=7)
    c = nested_pools(LABELS, [10, 50], seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_uniform_pools_nested_but_not_forced_balanced():
    labels = np.array([0] * 90 + [1] * 10)
    pools = nested_pools(labels, [20, 60, 100], seed=0, balanced=False)
    assert np.isin(pools[0], pools[1]).all() and np.isin(pools[1], pools[2]).all()
    assert len(pools[2]) == 100
    # balanced pools of 60 are impossible here (class 1 has 10); uniform ones follow the 9:1 mix
    assert np.bincount(labels[pools[1]], minlength=2)[0] > 40


@pytest.mark.parametrize(
    ("sizes", "message"),
    [([], "strictly increasing"), ([10, 10], "strictly increasing"), ([0, 3], "positive"), ([50, 201], "exceeds the 200")],
)
def test_pool_sizes_validated(sizes, message):
    with pytest.raises(DataError, match=message):
        nested_pools(LABELS, sizes, seed=0)


def test_impossible_balanced_size():
    labels = np.array([0] * 30 + [1] * 5)
    with pytest.raises(DataError, match=r"class-balanced pool of 11 is impossible: the smallest class has 5.*balanced=False"):
        nested_pools(labels, [11], seed=0)
    assert np.bincount(labels[nested_pools(labels, [10], seed=0)[0]]).tolist() == [5, 5]


def test_balanced_order_prefixes_balanced_with_unequal_classes():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    order = balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(10))
    assert sorted(labels[order[:3]].tolist()) == [0, 1, 2]
    assert sorted(labels[order[3:5]].tolist()) == [0, 1]


def test_k_shot_counts_nesting_and_errors():
    three = k_shot(LABELS, 3, seed=2)
    five = k_shot(LABELS, 5, seed=2)
    assert np.bincount(LABELS[three]).tolist() == [3] * 5
    assert np.isin(three, five).all()
    assert not np.array_equal(k_shot(LABELS, 3, seed=4), three)
    with pytest.raises(DataError, match="class 0 has only 40 examples, fewer than k=41"):
        k_shot(LABELS, 41, seed=0)
    with pytest.raises(DataError, match="k must be >= 1"):
        k_shot(LABELS, 0, seed=0)


def test_class_halves_partition():
    first, second = class_halves(11, seed=5)
    assert len(first) == 5 and len(second) == 6
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(11))
    assert np.array_equal(class_halves(11, seed=5)[0], first)
    assert any(not np.array_equal(class_halves(11, seed=s)[0], first) for s in range(6, 9))
    with pytest.raises(DataError, match="at least 2 classes"):
        class_halves(1, seed=0)


def test_split_json_round_trip_and_errors(tmp_path):
    split = {"pool": np.array([3, 1, 2]), "held_out": np.array([], dtype=np.int64)}
    path = tmp_path / "sub" / "split.json"
    save_split(path, split)
    back = load_split(path)
    assert list(back) == ["pool", "held_out"] and back["pool"].dtype == np.int64
    assert back["pool"].tolist() == [3, 1, 2] and back["held_out"].tolist() == []
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left
    path.write_text('{"pool": [1, "x"]}')
    with pytest.raises(DataError, match="must map names to lists of integer indices"):
        load_split(path)
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "none.json")
