"""Sources: CIFAR pickle/binary layouts, image folders (dir and tar), digits, synthetic, bad input."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from r18lab.data import Dataset, load
from r18lab.data.fakes import tar_folder, tar_members, write_cifar_binary, write_cifar_python, write_image_folder
from r18lab.data.safe_pickle import load_cifar_pickle
from r18lab.errors import DataError


@pytest.fixture(autouse=True)
def temp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path / "cache"))


def assert_same(ds: Dataset, expected: Dataset) -> None:
    assert ds.images.dtype == np.uint8 and ds.images.shape == expected.images.shape
    np.testing.assert_array_equal(np.asarray(ds.images), expected.images)
    np.testing.assert_array_equal(ds.labels, expected.labels)
    assert ds.classes == expected.classes


def png(img: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
@pytest.mark.parametrize("writer", [write_cifar_python, write_cifar_binary])
def test_cifar_folder_round_trips_pixels_labels_and_classes(tmp_path, kind, writer):
    folder, expected = writer(tmp_path / "src", kind, n_train=12, n_test=7, num_classes=10 if kind == "cifar10" else 100)
    for split in ("train", "test"):
        assert_same(load(folder, split, cache=False), expected[split])


def test_cifar_python_archive_with_top_folder(tmp_path):
    folder, expected = write_cifar_python(tmp_path / "src", "cifar10", n_train=15, n_test=5)
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    assert_same(load(archive, "train"), expected["train"])
    assert_same(load(archive, "test"), expected["test"])


def test_cifar_train_batches_concatenate_in_numeric_order(tmp_path):
    folder, expected = write_cifar_python(tmp_path / "src", "cifar10", n_train=10, n_test=2)
    # tar them in reverse order: the loader must still give batch 1 first
    members = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in sorted(folder.iterdir(), reverse=True)}
    archive = tar_members(tmp_path / "reversed.tar", members)
    assert_same(load(archive, "train", cache=False), expected["train"])


def test_cifar100_binary_uses_fine_labels(tmp_path):
    folder, expected = write_cifar_binary(tmp_path / "src", "cifar100", n_train=205, n_test=3, num_classes=100)
    ds = load(folder, "train", cache=False)
    assert ds.labels.max() == 99  # coarse labels (label // 5) never exceed 19
    np.testing.assert_array_equal(ds.labels, np.arange(205) % 100)


def test_forbidden_global_in_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    folder, _ = write_cifar_python(tmp_path / "src", "cifar10")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}, protocol=3))
    with pytest.raises(DataError, match=r"data_batch_1.*forbidden global (posix|os|nt)\.system"):
        load(folder, cache=False)
    assert not (tmp_path / "pwned").exists()


def test_restricted_unpickler_admits_modern_numpy_names():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = load_cifar_pickle(pickle.dumps({"data": arr, b"labels": [1, 2]}, protocol=4), "x")
    np.testing.assert_array_equal(out["data"], arr)
    assert out["labels"] == [1, 2]
    with pytest.raises(DataError, match="forbidden global builtins.getattr"):
        load_cifar_pickle(pickle.dumps({"f": getattr}, protocol=4), "x")


def test_truncated_binary_batch_is_reported(tmp_path):
    folder, _ = write_cifar_binary(tmp_path / "src", "cifar10")
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"test_batch\.bin is \d+ bytes.*truncated"):
        load(folder, "test", cache=False)


def test_image_folder_directory_sorted_classes_and_exact_pixels(tmp_path):
    expected = write_image_folder(tmp_path / "imgs", {"train": 9, "val": 4}, num_classes=3, side=8)
    for split in ("train", "val"):
        assert_same(load(tmp_path / "imgs", split, cache=False), expected[split])
    with pytest.raises(DataError, match=r"no split 'test'; available: train, val"):
        load(tmp_path / "imgs", "test", cache=False)


def test_image_folder_tar_gz_with_top_level_folder(tmp_path):
    expected = write_image_folder(tmp_path / "imgs", {"train": 6, "test": 3}, num_classes=2, side=5)
    archive = tar_folder(tmp_path / "imgs", tmp_path / "data.tar.gz", arcname="mydata")
    assert_same(load(archive, "train"), expected["train"])
    assert_same(load(archive, "test"), expected["test"])


def test_class_union_across_splits_keeps_labels_consistent(tmp_path):
    img = np.full((4, 4, 3), 7, np.uint8)
    archive = tar_members(
        tmp_path / "d.tar",
        {"train/cat/a.png": png(img), "train/dog/b.png": png(img), "test/dog/c.png": png(img)},
    )
    test = load(archive, "test", cache=False)
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [1]


def test_grey_and_rgba_become_rgb(tmp_path):
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 50, 10
    archive = tar_members(tmp_path / "d.tar", {"train/a/grey.png": png(grey), "train/b/rgba.png": png(rgba, "RGBA")})
    ds = load(archive, cache=False)
    assert ds.images.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(ds.images[0], np.repeat(grey[..., None], 3, 2))
    np.testing.assert_array_equal(ds.images[1], np.broadcast_to([50, 0, 0], (2, 2, 3)))


def test_mixed_sizes_need_image_size_then_resize(tmp_path):
    archive = tar_members(
        tmp_path / "d.tar",
        {"train/a/small.png": png(np.full((4, 4, 3), 9, np.uint8)), "train/b/big.png": png(np.full((6, 8, 3), 200, np.uint8))},
    )
    with pytest.raises(DataError, match=r"different sizes \(4×4 in train/a/small.png, 8×6 in train/b/big.png\); pass image_size"):
        load(archive, cache=False)
    ds = load(archive, cache=False, image_size=5)
    assert ds.images.shape == (2, 5, 5, 3)
    np.testing.assert_array_equal(ds.images[0], 9)  # a constant image stays constant under bilinear resize
    np.testing.assert_array_equal(ds.images[1], 200)


def test_corrupt_jpeg_inside_tar_names_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    good = buf.getvalue()
    archive = tar_members(
        tmp_path / "d.tar", {"top/train/a/ok.jpg": good, "top/train/a/broken.jpg": good[: len(good) // 2]}
    )
    with pytest.raises(DataError, match=r"cannot decode image top/train/a/broken\.jpg.*corrupt or truncated"):
        load(archive, cache=False)


def test_garbage_jpeg_names_the_file(tmp_path):
    archive = tar_members(tmp_path / "d.tar", {"train/a/noise.jpeg": b"not an image at all"})
    with pytest.raises(DataError, match=r"train/a/noise\.jpeg"):
        load(archive, cache=False)


def test_truncated_tar_gz_names_the_archive(tmp_path):
    write_image_folder(tmp_path / "imgs", {"train": 30}, num_classes=2, side=16)
    archive = tar_folder(tmp_path / "imgs", tmp_path / "data.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read archive .*data\.tar\.gz.*re-download or re-create"):
        load(archive, cache=False)


def test_missing_path_and_unknown_option(tmp_path):
    with pytest.raises(DataError, match=r"dataset path .*nowhere does not exist; pass a folder.*digits, synthetic"):
        load(tmp_path / "nowhere")
    write_image_folder(tmp_path / "imgs", {"train": 2})
    with pytest.raises(DataError, match="no option 'colour'"):
        load(tmp_path / "imgs", colour=True)
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        load(tmp_path / "imgs", image_size=0)


def test_folder_without_dataset_and_images_at_wrong_depth(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no images or CIFAR batches"):
        load(tmp_path / "empty", cache=False)
    archive = tar_members(tmp_path / "d.tar", {"x.png": png(np.zeros((2, 2, 3), np.uint8))})
    with pytest.raises(DataError, match=r"image x\.png is not inside a class folder"):
        load(archive, cache=False)
    archive = tar_members(tmp_path / "e.tar", {"cls/x.png": png(np.zeros((2, 2, 3), np.uint8))})
    assert load(archive, cache=False).classes == ["cls"]  # <class>/<image>: accepted, split by data.split=auto


def test_digits_split_is_deterministic_disjoint_and_sized():
    train, test = load("digits", "train"), load("digits", "test", image_size=8)
    assert train.images.shape == (1438, 16, 16, 3) and test.images.shape == (359, 8, 8, 3)
    assert train.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])  # grey replicated to RGB
    assert np.bincount(test.labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # 20% of each class
    np.testing.assert_array_equal(load("digits", "train").images, train.images)
    with pytest.raises(DataError, match="no split 'val'"):
        load("digits", "val")
    with pytest.raises(DataError, match="no option 'n'"):
        load("digits", n=5)


def test_synthetic_is_seeded_balanced_and_learnable():
    a = load("synthetic", "train", num_classes=4, image_size=8, n=400, seed=3)
    b = load("synthetic", "train", num_classes=4, image_size=8, n=400, seed=3)
    c = load("synthetic", "train", num_classes=4, image_size=8, n=400, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (400, 8, 8, 3) and np.bincount(a.labels).tolist() == [100] * 4
    test = load("synthetic", "test", num_classes=4, image_size=8, n=200, seed=3)
    # nearest class mean on raw pixels: far above chance (0.25)
    x, xt = a.images.reshape(400, -1).astype(float), test.images.reshape(200, -1).astype(float)
    means = np.stack([x[a.labels == k].mean(0) for k in range(4)])
    pred = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), 1)
    assert (pred == test.labels).mean() > 0.8
    with pytest.raises(DataError, match="num_classes must be an integer >= 2"):
        load("synthetic", num_classes=1)
