"""A researcher's own image folders (issue 10, items 1–7): folders without a split (auto split), several training
splits (leave-one-domain-out), layout errors before any decode, the resize policy, channels, bad images by
policy, and the visible decode cache. Every image is a few pixels; every folder a handful of files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import r18lab
from r18lab.cli import main
from r18lab.config import load_config
from r18lab.data import load
from r18lab.data import loading
from r18lab.data.fakes import tar_folder
from r18lab.data.info import inspect
from r18lab.data.loading import load_many
from r18lab.data.training import load_data
from r18lab.errors import ConfigError, DataError
from r18lab.models import io as model_io


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("R18LAB_CACHE", str(root))
    return root


def entries(root: Path) -> list[str]:
    """Decode entries in the cache root (not the lock folder)."""
    return sorted(p.name for p in root.iterdir() if p.name != ".locks") if root.exists() else []


def save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def value_image(value: int, side: int = 4, grey: bool = False) -> np.ndarray:
    """A constant image whose value identifies it (grey: one channel)."""
    return np.full((side, side) if grey else (side, side, 3), value, np.uint8)


def flat_folder(root: Path, counts: dict[str, int], top: str | None = None) -> Path:
    """[top/]<class>/<i>.png, each image constant with a value unique in the folder."""
    base = root / top if top else root
    value = 0
    for cls, n in counts.items():
        for i in range(n):
            value += 1
            save(base / cls / f"{i:02d}.png", value_image(value))
    return root


def one_line(capsys, argv: list) -> tuple[int, str]:
    """Exit code and the stderr of main(argv), asserting the stderr is at most one line with no traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 1, err
    return rc, err.strip()


def values(ds) -> list[int]:
    return sorted(int(v) for v in np.asarray(ds.images)[:, 0, 0, 0])


# -- 1. folders without a split --------------------------------------------------------------------------------
def test_auto_split_is_stratified_saved_reused_and_seeded(tmp_path, cache, monkeypatch):
    root = flat_folder(tmp_path / "flat", {"a": 10, "b": 5, "BACKGROUND_Google": 3})
    train, test = load_many(root, ["train", "test"])
    assert train.classes == test.classes == ["BACKGROUND_Google", "a", "b"]
    # stratified: round(n · 0.2) of each class in test, at least one
    assert np.bincount(test.labels, minlength=3).tolist() == [1, 2, 1]
    assert np.bincount(train.labels, minlength=3).tolist() == [2, 8, 4]
    assert sorted(values(train) + values(test)) == list(range(1, 19))  # disjoint, and together every image
    [entry] = entries(cache)
    saved = json.loads((cache / entry / "auto_split-f0.2-s0.json").read_text())
    assert len(saved["test"]) == 4 and len(saved["train"]) == 14 and not set(saved["test"]) & set(saved["train"])
    assert sorted(n.split("/")[0] for n in saved["test"]) == ["BACKGROUND_Google", "a", "a", "b"]
    assert all(name.count("/") == 1 for name in saved["train"] + saved["test"])  # <class>/<file>

    def no_new_split(*a, **k):
        raise AssertionError("the saved split should be reused")

    monkeypatch.setattr("r18lab.data.autosplit.auto_split", no_new_split)
    again = load(root, "test")
    assert values(again) == values(test)
    monkeypatch.undo()
    monkeypatch.setenv("R18LAB_CACHE", str(cache))
    other = load(root, "test", split_seed=1)
    assert values(other) != values(test) and np.bincount(other.labels, minlength=3).tolist() == [1, 2, 1]
    half = load(root, "test", test_fraction=0.5)
    assert np.bincount(half.labels, minlength=3).tolist()[1] == 5
    assert sorted(p.name for p in (cache / entry).iterdir() if p.name.startswith("auto_split")) == [
        "auto_split-f0.2-s0.json", "auto_split-f0.2-s1.json", "auto_split-f0.5-s0.json"]
    assert len(entries(cache)) == 1  # one decode serves every split seed and fraction


def test_auto_split_through_the_run_config(tmp_path, cache):
    root = flat_folder(tmp_path / "flat", {"a": 6, "b": 6})
    cfg = load_config(None, [f"data.source={root}", "data.test_fraction=0.5", "data.split_seed=3"])
    train, test = load_data(cfg.data)
    assert len(train) == len(test) == 6 and np.bincount(test.labels).tolist() == [3, 3]
    assert values(test) == values(load(root, "test", test_fraction=0.5, split_seed=3))


def test_which_level_is_read_as_splits(tmp_path, cache):
    flat_folder(tmp_path / "top", {"x": 3, "y": 3}, top="caltech")  # one other folder on top: a top folder
    assert inspect(tmp_path / "top", "train")["layout"].startswith("no split level: auto split")
    only_train = tmp_path / "only_train"
    flat_folder(only_train, {"x": 2, "y": 2}, top="train")  # one folder named like a split: a split level
    assert load(only_train, "train").classes == ["x", "y"] and len(load(only_train, "train")) == 4
    with pytest.raises(DataError, match="no split 'test'; available: train"):
        load(only_train, "test")
    # data.split forces the reading: the single top folder as a split, or the split level as a top folder
    assert len(load(tmp_path / "top", "caltech", split_mode="folders")) == 6
    assert len(load_many(only_train, ["train", "test"], split_mode="auto")[1]) == 2
    tar = tar_folder(tmp_path / "top", tmp_path / "top.tar.gz")  # the same rules inside an archive
    assert len(load(tar, "train")) + len(load(tar, "test")) == 6


def test_exclude_classes_drops_and_reindexes(tmp_path, cache, capsys):
    root = flat_folder(tmp_path / "flat", {"BACKGROUND_Google": 4, "a": 5, "b": 5})
    train, test = load_many(root, ["train", "test"], exclude_classes=["BACKGROUND_Google"])
    assert train.classes == test.classes == ["a", "b"]
    assert len(train) + len(test) == 10 and set(train.labels.tolist()) == {0, 1}
    assert min(values(train) + values(test)) == 5  # the four BACKGROUND images (values 1–4) are gone
    with pytest.raises(ConfigError, match=r"'nope' is not a class of .*; its classes: BACKGROUND_Google, a, b"):
        load(root, exclude_classes=["nope"])
    rc, err = one_line(capsys, ["data", "inspect", root, "data.exclude_classes=[nope]"])
    assert rc == 2 and err.startswith("error: data.exclude_classes: 'nope' is not a class")


# -- 2. several training splits: leave-one-domain-out ------------------------------------------------------------
DOMAINS = {"art_painting": 10, "cartoon": 20, "photo": 30, "sketch": 40}


def domain_folder(root: Path, lacking: tuple[str, str] | None = None) -> Path:
    """<domain>/<class>/<i>.png; an image's value is its domain's base + class + index."""
    for domain, base in DOMAINS.items():
        for k, cls in enumerate(("dog", "horse")):
            if (domain, cls) == lacking:
                continue
            for i in range(2):
                save(root / domain / cls / f"{i}.png", value_image(base + 3 * k + i))
    return root


def test_leave_one_domain_out_loads_the_right_images(tmp_path, cache):
    root = domain_folder(tmp_path / "pacs")
    cfg = load_config(None, [f"data.source={root}", "data.train_split=[art_painting, cartoon, photo]",
                             "data.test_split=sketch"])
    train, test = load_data(cfg.data)
    assert values(train) == [10, 11, 13, 14, 20, 21, 23, 24, 30, 31, 33, 34]
    assert values(test) == [40, 41, 43, 44] and test.classes == train.classes == ["dog", "horse"]
    assert train.labels.tolist() == [0, 0, 1, 1] * 3  # each domain's labels, in the listed order
    assert train.name.endswith(":art_painting+cartoon+photo")
    assert load(root, "photo").images.shape == (4, 4, 4, 3)  # the plain string form still works


def test_concatenated_splits_must_hold_the_same_classes(tmp_path, cache, capsys):
    root = domain_folder(tmp_path / "pacs", lacking=("cartoon", "horse"))
    with pytest.raises(ConfigError, match=r"split 'cartoon' .* has no images of class horse"):
        load(root, ["art_painting", "cartoon"])
    rc, err = one_line(capsys, ["train", f"data.source={root}", "data.train_split=[art_painting, cartoon]",
                                "data.test_split=sketch", "--out", tmp_path / "run"])
    assert rc == 2 and "class horse" in err


# -- 3. layout errors before any decode ----------------------------------------------------------------------------
@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
def test_wrong_split_fails_fast_without_a_cache_entry(tmp_path, cache, monkeypatch, capsys, archive):
    root = domain_folder(tmp_path / "pacs")
    source = tar_folder(root, tmp_path / "pacs.tar.gz") if archive else root

    def no_decode(*a, **k):
        raise AssertionError("nothing may be decoded before the split names are checked")

    monkeypatch.setattr(loading, "read_path", no_decode)
    with pytest.raises(ConfigError, match="has no split 'skecth'; available: art_painting, cartoon, photo, sketch"):
        load_many(source, [["art_painting", "photo"], "skecth"])
    rc, err = one_line(capsys, ["train", f"data.source={source}", "data.train_split=[art_painting, photo]",
                                "data.test_split=skecth", "--out", tmp_path / "run"])
    assert rc == 2 and "no split 'skecth'" in err and "available: art_painting, cartoon, photo, sketch" in err
    assert not cache.exists() or entries(cache) == []  # no cache entry left behind
    monkeypatch.undo()
    monkeypatch.setenv("R18LAB_CACHE", str(cache))
    load(source, "sketch")  # decoded now; a wrong name is then checked against the entry
    with pytest.raises(ConfigError, match="no split 'skecth'"):
        load(source, "skecth")


def test_data_inspect_takes_the_data_keys_of_train(tmp_path, cache, capsys):
    root = tmp_path / "mixed"
    save(root / "a" / "small.png", value_image(9, side=4))
    save(root / "b" / "big.png", np.full((6, 8, 3), 200, np.uint8))
    save(root / "b" / "other.png", np.full((5, 5, 3), 100, np.uint8))
    rc, err = one_line(capsys, ["data", "inspect", root])
    assert rc != 0 and "data.image_size=N" in err  # the fix it names ...
    assert main(["data", "inspect", str(root), "data.image_size=4", "--split", "train"]) == 0  # ... is accepted
    out = json.loads(capsys.readouterr().out)
    assert out["image_shape"] == [4, 4, 3] and "squash" in out["resize"] and "default" in out["resize"]
    assert main(["data", "inspect", str(root), "image_size=4", "data.resize=shorter_side"]) == 0
    assert json.loads(capsys.readouterr().out)["resize"].startswith("shorter_side")
    rc, err = one_line(capsys, ["data", "inspect", root, "data.imagesize=4"])
    assert rc == 2 and "unknown config key 'data.imagesize'" in err
    rc, err = one_line(capsys, ["data", "inspect", root, "data.resize=crop"])
    assert rc == 2 and "data.resize" in err


# -- 4. the resize policy --------------------------------------------------------------------------------------------
def test_resize_squash_or_shorter_side_then_centre_crop(tmp_path, cache):
    wide = np.zeros((4, 8, 3), np.uint8)  # H 4 × W 8: columns valued 0, 30, ..., 210
    wide[:] = (np.arange(8) * 30)[None, :, None]
    save(tmp_path / "f" / "a" / "wide.png", wide)
    save(tmp_path / "f" / "a" / "square.png", value_image(50, side=4))
    crop = load(tmp_path / "f", "train", image_size=4, resize="shorter_side", test_fraction=0.5)
    squash = load(tmp_path / "f", "train", image_size=4, test_fraction=0.5)
    both = np.concatenate([np.asarray(crop.images), np.asarray(load(tmp_path / "f", "test", image_size=4,
                                                                     resize="shorter_side", test_fraction=0.5).images)])
    assert any(np.array_equal(img, wide[:, 2:6]) for img in both)  # the centre 4 × 4 of the shorter-side image
    squashed = np.concatenate([np.asarray(squash.images), np.asarray(load(tmp_path / "f", "test", image_size=4,
                                                                          test_fraction=0.5).images)])
    assert not any(np.array_equal(img, wide[:, 2:6]) for img in squashed)  # squash keeps the whole width
    assert any(img[0, 0, 0] < 30 and img[0, -1, 0] > 180 for img in squashed)


# -- 5. channels --------------------------------------------------------------------------------------------------------
def test_channels_one_auto_and_three(tmp_path, cache):
    grey = tmp_path / "grey"
    for k, cls in enumerate(("0", "1")):
        for i in range(3):
            save(grey / cls / f"{i}.png", value_image(40 * k + 10 * i, grey=True))
    assert load(grey, "train").images.shape[-1] == 3  # the default: RGB, grey repeated
    assert load(grey, "train", channels="auto").images.shape[-1] == 1
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200
    save(grey / "1" / "colour.png", colour)
    assert load(grey, "train", channels="auto").images.shape[-1] == 3  # one colour image: all stay RGB
    one = load_many(grey, ["train", "test"], channels=1)
    luma = np.asarray(Image.fromarray(colour).convert("L"))
    assert any(np.array_equal(np.asarray(img)[..., 0], luma) for ds in one for img in ds.images)  # PIL's weights
    assert load("digits", "test", channels="auto").images.shape == (359, 16, 16, 1)  # built-in sources too
    with pytest.raises(ConfigError, match="data.channels must be 1, 3 or auto"):
        load(grey, channels=2)


def test_greyscale_single_channel_training_end_to_end(tmp_path, cache, capsys):
    root = tmp_path / "digits"
    rng = np.random.default_rng(0)
    for k in range(2):
        for i in range(6):
            save(root / str(k) / f"{i}.png", (rng.integers(0, 60, (6, 6)) + 150 * k).astype(np.uint8))
    out = tmp_path / "run"
    argv = ["train", f"data.source={root}", "data.channels=1", "model.width=0.0625", "train.epochs=1",
            "train.batch_size=8", "train.progress=none", "optim.lr=0.05", "--out", str(out)]
    assert main(argv) == 0
    loaded = model_io.load_checkpoint(out / "model.safetensors")
    assert loaded.spec["in_channels"] == 1 and tuple(loaded.preprocessing.input_size) == (1, 6, 6)
    assert loaded.model.conv1.weight.shape[1] == 1
    capsys.readouterr()
    assert main(["eval", str(out / "model.safetensors"), str(root), "channels=1", "--json"]) == 0  # eval reads it too


def test_channels_1_with_an_rgb_checkpoint_is_one_line_before_the_decode(tmp_path, cache, capsys):
    spec = {"name": "resnet18", "num_classes": 2, "width": 0.0625, "heads": ["main"]}
    rgb = tmp_path / "rgb.safetensors"
    model_io.save_model(r18lab.create_model(**spec), rgb, spec,
                        preprocessing=model_io.Preprocessing.identity((3, 6, 6)))
    plain = tmp_path / "plain.safetensors"  # torchvision-style weights: no stored preprocessing, conv1 says 3
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in r18lab.create_model(**spec).state_dict().items()}, str(plain))
    root = flat_folder(tmp_path / "f", {"a": 3, "b": 3})
    for weights in (rgb, plain):
        rc, err = one_line(capsys, ["train", f"data.source={root}", "data.channels=1", "model.width=0.0625",
                                    f"model.init_from={weights}", "--out", tmp_path / f"run-{weights.stem}"])
        assert rc == 2 and "data.channels=1" in err and "3-channel inputs" in err and "data.channels=3" in err
    assert entries(cache) == []  # refused before any decode


# -- 6. bad images by policy ------------------------------------------------------------------------------------------
def bad_folder(root: Path) -> Path:
    flat_folder(root, {"a": 4, "b": 4})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "labels.csv").write_text("x")
    return root


def test_bad_image_is_one_line_by_default_and_skipped_and_listed_on_request(tmp_path, cache, capsys):
    root = bad_folder(tmp_path / "f")
    rc, err = one_line(capsys, ["data", "inspect", root])
    assert rc == 2 and "b/broken.png" in err and "data.on_bad_image=skip" in err
    assert entries(cache) == []
    train, test = load_many(root, ["train", "test"], on_bad_image="skip")
    assert len(train) + len(test) == 8
    err = capsys.readouterr().err
    assert "skipped 1 image(s)" in err and "b/broken.png" in err and "bad_images.txt" in err
    assert "2 file(s)" in err and "a/notes.txt" in err  # not images: reported, not silently ignored
    [entry] = entries(cache)
    assert (cache / entry / "bad_images.txt").read_text() == "b/broken.png\n"
    assert main(["data", "inspect", str(root), "data.on_bad_image=skip"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["skipped_images"] == {"count": 1, "examples": ["b/broken.png"]}
    assert info["not_images"] == {"count": 2, "examples": ["a/notes.txt", "b/labels.csv"]}
    with pytest.raises(ConfigError, match=r"cannot decode image b/broken\.png .*data\.on_bad_image=skip"):
        load(root)  # the error policy on the skip-built entry still reports the file


# -- 7. the cache is visible --------------------------------------------------------------------------------------
def test_cache_list_and_clear(tmp_path, cache, capsys):
    one = flat_folder(tmp_path / "one", {"a": 2, "b": 2})
    two = domain_folder(tmp_path / "two")
    load(one)
    load(one, image_size=2)
    load(two, "sketch")
    capsys.readouterr()
    assert main(["data", "cache", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache: {cache} ") and "3 entries" in out
    assert out.count(str(one)) == 2 and out.count(str(two)) == 1 and '"image_size": 2' in out
    assert main(["data", "cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["root"] == str(cache) and all(e["size_bytes"] > 0 for e in listed["entries"])
    assert listed["total_bytes"] == sum(e["size_bytes"] for e in listed["entries"])
    assert main(["data", "cache", "clear", str(one)]) == 0  # without --yes: nothing deleted
    assert "nothing deleted: add --yes" in capsys.readouterr().out and len(entries(cache)) == 3
    assert main(["data", "cache", "clear", str(one), "--yes"]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    assert [json.loads((cache / e / "meta.json").read_text())["identity"]["path"] for e in entries(cache)] == [str(two)]
    rc, err = one_line(capsys, ["data", "cache", "clear", tmp_path / "nope", "--yes"])
    assert rc == 2 and "no cache entry of" in err and str(two) in err
    rc, err = one_line(capsys, ["data", "cache", "wipe"])
    assert rc == 2 and "list or clear" in err
    assert main(["data", "cache", "clear", "--yes"]) == 0 and entries(cache) == []


def test_a_long_decode_prints_progress_lines(tmp_path, capsys):
    """Issue 10 item 14: a decode that takes longer than 30 s says so, with a count and an ETA (a fake clock)."""
    from r18lab.data import sources
    ticks = iter(range(0, 10_000, 40))
    progress = sources.DecodeProgress("my_images", 3, clock=lambda: next(ticks))
    for _ in range(3):
        progress.step()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("decoding my_images: 1 of 3 files in 40 s, eta 80 s")
    quiet = sources.DecodeProgress("x", 3, clock=lambda: 0.0)
    quiet.step()
    assert capsys.readouterr().err == ""
