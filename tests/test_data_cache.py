"""Decode cache: decode once, mmap after; identity changes, corrupt entries and killed decodes rebuild."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import r18lab.data.cache as cache_mod
import r18lab.data.loading as loading
from r18lab.data import load
from r18lab.data.cache import cache_root
from r18lab.data.fakes import tar_folder, write_image_folder
from r18lab.errors import DataError


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("R18LAB_CACHE", str(root))
    return root


@pytest.fixture
def decodes(monkeypatch):
    """Count calls of the decoder behind load()."""
    calls = []
    real = loading.read_path

    def counting(path, **options):
        calls.append(path)
        return real(path, **options)

    monkeypatch.setattr(loading, "read_path", counting)
    return calls


@pytest.fixture
def archive(tmp_path):
    expected = write_image_folder(tmp_path / "imgs", {"train": 8, "test": 4}, num_classes=2, side=6)
    return tar_folder(tmp_path / "imgs", tmp_path / "data.tar.gz"), expected


def entries(root):
    """Entry and partial folders in the cache root (not the lock folder)."""
    return sorted(p.name for p in root.iterdir() if p.name != ".locks") if root.exists() else []


def test_cache_root_from_env_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "x"
    monkeypatch.delenv("R18LAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "r18lab"


def test_first_load_decodes_all_splits_once_then_mmaps(cache_dir, decodes, archive):
    path, expected = archive
    first = load(path, "train")
    test = load(path, "test")
    again = load(path, "train")
    assert len(decodes) == 1  # one pass filled both splits
    assert isinstance(again.images, np.memmap) and not again.images.flags.writeable
    np.testing.assert_array_equal(again.images, expected["train"].images)
    np.testing.assert_array_equal(test.labels, expected["test"].labels)
    assert first.name == "data.tar.gz:train"
    [entry] = entries(cache_dir)
    assert entry.startswith("data.tar.gz-")
    files = sorted(p.name for p in (cache_dir / entry).iterdir())
    assert files == ["meta.json", "test.images.npy", "test.labels.npy", "train.images.npy", "train.labels.npy"]
    for f in files[1:]:
        np.load(cache_dir / entry / f, allow_pickle=False)  # plain arrays, no pickled objects


def test_changed_source_or_options_get_a_new_entry(cache_dir, decodes, archive, tmp_path):
    path, _ = archive
    load(path)
    load(path, image_size=3)
    assert len(decodes) == 2 and len(entries(cache_dir)) == 2
    assert load(path, image_size=3).images.shape[1:] == (3, 3, 3)
    os.utime(path, ns=(1, 1))  # same bytes, other mtime: a different identity
    load(path)
    assert len(decodes) == 3


def test_corrupt_entry_is_detected_and_rebuilt(cache_dir, decodes, archive):
    path, expected = archive
    load(path)
    [entry] = [cache_dir / e for e in entries(cache_dir)]
    images = entry / "train.images.npy"
    images.write_bytes(images.read_bytes()[:-50])  # truncated array
    np.testing.assert_array_equal(load(path).images, expected["train"].images)
    assert len(decodes) == 2
    (entry / "meta.json").write_text("{not json")
    np.testing.assert_array_equal(load(path, "test").labels, expected["test"].labels)
    assert len(decodes) == 3
    np.save(entry / "test.labels.npy", np.full(4, 7, np.int64))  # labels beyond the 2 classes
    np.testing.assert_array_equal(load(path, "test").labels, expected["test"].labels)
    assert len(decodes) == 4
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["splits"]["train"]["shape"] == [8, 6, 6, 3] and meta["identity"]["path"] == str(path)


def test_interrupted_write_leaves_no_entry(cache_dir, archive, monkeypatch):
    path, expected = archive
    saved = []

    def failing_save(file, arr, allow_pickle):
        saved.append(file)
        if len(saved) == 3:
            raise KeyboardInterrupt  # stands in for a kill in the middle of writing
        np.save(file, arr, allow_pickle=allow_pickle)

    monkeypatch.setattr(cache_mod.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        load(path)
    assert entries(cache_dir) == []  # neither an entry nor a partial folder
    monkeypatch.undo()
    monkeypatch.setenv("R18LAB_CACHE", str(cache_dir))
    np.testing.assert_array_equal(load(path).images, expected["train"].images)


def test_partial_folder_of_a_killed_process_is_swept(cache_dir, archive):
    path, _ = archive
    load(path)
    [entry] = entries(cache_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache_dir / f".partial-{entry}-{int(dead.stdout)}-abcd"
    live = cache_dir / f".partial-{entry}-{os.getpid()}-abcd"
    for p in (stale, live):
        p.mkdir()
        (p / "train.images.npy").write_bytes(b"half")
    (cache_dir / entry / "meta.json").unlink()
    load(path)  # rebuilding the entry sweeps partial folders whose process is gone
    assert not stale.exists() and live.exists()
    assert sorted(entries(cache_dir)) == sorted([entry, live.name])


def test_unwritable_cache_is_a_data_error(tmp_path, monkeypatch, archive):
    path, expected = archive
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("R18LAB_CACHE", str(blocker / "sub"))  # a folder under a regular file cannot exist
    with pytest.raises(DataError, match="cannot write the decode cache.*R18LAB_CACHE.*cache=False"):
        load(path)
    np.testing.assert_array_equal(load(path, cache=False).images, expected["train"].images)


def test_concurrent_first_loads_decode_once(cache_dir, archive, monkeypatch):
    path, expected = archive
    calls = []
    real = loading.read_path

    def slow(path, **options):
        calls.append(path)
        time.sleep(0.3)  # the second loader arrives while the first is decoding
        return real(path, **options)

    monkeypatch.setattr(loading, "read_path", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(load(path, "test"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    for ds in results:
        np.testing.assert_array_equal(ds.images, expected["test"].images)
