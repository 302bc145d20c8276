"""inspect / prepare: what the `r18lab data` commands report."""
from __future__ import annotations

from pathlib import Path

import pytest

from r18lab.data.fakes import write_image_folder
from r18lab.data.info import inspect, prepare
from r18lab.errors import DataError


@pytest.fixture(autouse=True)
def temp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path / "cache"))


def test_inspect_path_source(tmp_path):
    write_image_folder(tmp_path / "imgs", {"train": 7, "test": 2}, num_classes=3, side=4)
    info = inspect(tmp_path / "imgs", "train")
    cache_path = Path(info.pop("cache_path"))
    assert {k: info[k] for k in ("source", "split", "n", "image_shape", "classes", "class_counts")} == {
        "source": str(tmp_path / "imgs"),
        "split": "train",
        "n": 7,
        "image_shape": [4, 4, 3],
        "classes": ["c000", "c001", "c002"],
        "class_counts": {"c000": 3, "c001": 2, "c002": 2},
    }
    assert cache_path.parent == tmp_path / "cache" and (cache_path / "meta.json").is_file()
    assert info["layout"] == "split folders" and info["splits"] == ["test", "train"] and info["channels"] == 3
    assert info["resize"].startswith("none: images are kept at their size")
    with pytest.raises(DataError, match="no split 'val'; available: test, train"):
        inspect(tmp_path / "imgs", "val")


def test_inspect_builtin_has_no_cache():
    info = inspect("synthetic", "test", num_classes=2, n=6, image_size=5)
    assert info["n"] == 6 and info["image_shape"] == [5, 5, 3] and info["cache_path"] is None
    assert info["class_counts"] == {"class0": 3, "class1": 3}


def test_prepare_decodes_once(tmp_path):
    write_image_folder(tmp_path / "imgs", {"train": 5, "test": 3}, num_classes=2, side=4)
    first = prepare(tmp_path / "imgs")
    second = prepare(tmp_path / "imgs")
    assert first["decoded"] is True and second["decoded"] is False
    assert first["splits"] == {"test": {"n": 3, "image_shape": [4, 4, 3]}, "train": {"n": 5, "image_shape": [4, 4, 3]}}
    assert first["cache_path"] == second["cache_path"] and first["classes"] == 2
    assert isinstance(first["seconds"], float) and first["seconds"] >= 0
    assert prepare("digits", image_size=8)["splits"]["train"] == {"n": 1438, "image_shape": [8, 8, 3]}
