"""A run's data, set up once: the labelled pool (a nested balanced pool or an explicit index list), the test
split, normalisation statistics and augmentation, as device tensors and a seeded batch loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, R18Error
from ..models.io import Preprocessing
from .augment import Augment, channel_stats
from .loader import BatchLoader, to_device_tensors
from .loading import is_builtin, load_many
from .splits import nested_pools, save_split
from .tasks import Task, apply_task


@dataclass
class TrainingData:
    """Everything the engine needs from the data: the loader, test tensors, classes and the preprocessing
    that travels with the weights."""

    loader: BatchLoader
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    train_indices: np.ndarray
    preprocessing: Preprocessing
    #: uint8 N×C×H×W images on the device for semi-supervised objectives (`data.unlabelled`), else None
    unlabelled: torch.Tensor | None = None
    #: the training augmentation (the unlabelled stream augments with it too)
    augment: Augment | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_train(self) -> int:
        return len(self.train_indices)


def training_indices(cfg, train_labels: np.ndarray, seed: int, source_rows: np.ndarray | None = None,
                     classes: list[str] | None = None) -> np.ndarray:
    """The labelled pool: `data.indices` (a file of rows of the source's split, mapped through `source_rows` when
    the task keeps only some of them), else a nested pool of `data.labels`, else everything."""
    n = len(train_labels)
    if cfg.indices is not None:
        if cfg.labels is not None:
            raise ConfigError("data.indices and data.labels both choose the training pool; set only one")
        from .indices import read_indices
        if source_rows is None:
            return read_indices(Path(cfg.indices), n)
        wanted = read_indices(Path(cfg.indices), int(source_rows[-1]) + 1 if len(source_rows) else 1)
        pos = np.searchsorted(source_rows, wanted)
        ok = (pos < len(source_rows)) & (source_rows[np.minimum(pos, len(source_rows) - 1)] == wanted)
        if not ok.all():
            raise ConfigError(f"data.indices {cfg.indices}: row {int(wanted[~ok][0])} of the source's split is of a "
                              f"class the task {cfg.task!r} leaves out ({int((~ok).sum())} such rows); list only rows "
                              "of the task's classes")
        return pos
    if cfg.labels is not None:
        check_pool_size(cfg.labels, train_labels, cfg.balanced, classes, "data.labels")
        split_seed = seed if cfg.split_seed is None else cfg.split_seed
        return np.sort(nested_pools(train_labels, [cfg.labels], seed=split_seed, balanced=cfg.balanced)[0])
    return np.arange(n)


def check_pool_size(size: int, labels: np.ndarray, balanced: bool, classes: list[str] | None = None,
                    key: str = "data.labels") -> None:
    """ConfigError (one line) for a labelled pool of `size` the training labels cannot give: more than there
    are, or a class-balanced pool whose short class is named with how many images it lacks."""
    n = len(labels)
    if size > n:
        whole = "protocol.labels accepts all" if key.startswith("protocol") else "drop data.labels"
        raise ConfigError(f"{key}={size} exceeds the {n} training images; use at most {n} ({whole}: the full "
                          "training set)")
    if not balanced:
        return
    present, counts = np.unique(labels, return_counts=True)
    k = len(present)
    need = -(-size // k)  # a balanced pool of `size` takes ceil(size / k) of some classes
    if counts.min() * k >= size:
        return
    short = int(np.argmin(counts))
    name = classes[int(present[short])] if classes else str(int(present[short]))
    lacking = int((counts < need).sum())
    raise ConfigError(f"{key}={size}: a class-balanced pool needs {need} images of each of the {k} classes but class "
                      f"{name!r} has {int(counts[short])} ({need - int(counts[short])} short; {lacking} class(es) "
                      f"short in all); set data.balanced=false for a uniform draw, or use at most "
                      f"{int(counts.min()) * k} labels")


def source_options(d) -> dict:
    """The options `load` gets for `cfg.data`: the source's own, `image_size` when set, and the data keys that
    differ from their defaults (channels and exclude_classes for every source; the resize policy, bad-image
    policy and split reading for paths)."""
    opts = {**d.options, **({"image_size": d.image_size} if d.image_size else {})}
    if d.channels != 3:
        opts["channels"] = d.channels
    if d.exclude_classes:
        opts["exclude_classes"] = list(d.exclude_classes)
    if not is_builtin(d.source):
        for key, value, default in (("resize", d.resize, "squash"), ("on_bad_image", d.on_bad_image, "error"),
                                    ("split_mode", d.split, None), ("test_fraction", d.test_fraction, 0.2),
                                    ("split_seed", d.split_seed, None)):
            if value != default:
                opts[key] = value
    return opts


def load_data(d) -> tuple:
    """(train, test) Datasets of `cfg.data`: every split name and excluded class checked before any decode."""
    return tuple(load_many(d.source, [d.train_split, d.test_split], **source_options(d)))


def input_channels(d) -> int:
    """The channels the data gives the model: data.channels, or for auto the loaded training split's."""
    if d.channels != "auto":
        return int(d.channels)
    return int(load_data(d)[0].images.shape[-1])


def checkpoint_channels(path: str) -> int | None:
    """The input channels a weights file was trained on: its stored preprocessing, else its conv1 (None: unknown)."""
    from ..models.io import preprocessing_of
    if not Path(path).is_file():
        return None
    try:
        stored = preprocessing_of(Path(path))
        if stored is not None:
            return int(stored.input_size[0])
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            if "conv1.weight" in f.keys():
                return int(f.get_slice("conv1.weight").get_shape()[1])
    except Exception:  # unreadable here: init_from's own checks report it
        return None
    return None


def check_init_channels(cfg, channels: int) -> None:
    """ConfigError when model.init_from was trained on another number of input channels than the data has."""
    init = cfg.model.init_from
    if init is None:
        return
    theirs = checkpoint_channels(init.checkpoint)
    if theirs is not None and theirs != channels:
        raise ConfigError(f"data.channels={cfg.data.channels} gives {channels}-channel images but model.init_from "
                          f"{init.checkpoint} was trained on {theirs}-channel inputs; set data.channels={theirs} "
                          f"(greyscale is then repeated to {theirs} channels), or start from a {channels}-channel "
                          "checkpoint")


def run_preprocessing(normalize: str, source_train, classes) -> Preprocessing:
    """A run's input normalisation: per-channel mean/std of the whole training split (whatever the pool or task;
    a constant channel's std clamped to 1e-6), or /255 only for `normalize: none`."""
    n, h, w, c = source_train.images.shape
    if normalize == "dataset":
        mean, std = channel_stats(source_train)
        return Preprocessing.of(mean, [max(float(v), 1e-6) for v in std], (c, h, w), classes)
    return Preprocessing.identity((c, h, w), classes)


def checkpoint_preprocessing(path: str, data_pre: Preprocessing) -> Preprocessing:
    """The run's preprocessing with the normalisation stored in the weights it starts from (what they expect); for a
    file that stores none (plain torchvision/timm ImageNet weights, a .pth) ImageNet's mean/std, which those
    weights were trained with."""
    from ..models.io import IMAGENET_MEAN, IMAGENET_STD, preprocessing_of
    if not Path(path).is_file():
        raise ConfigError(f"model.init_from: {path} does not exist; give a weights file (model.safetensors)")
    stored = None if Path(path).suffix.lower() in (".pth", ".pt", ".bin") else preprocessing_of(Path(path))
    if stored is None:
        if data_pre.input_size[0] != 3:
            raise ConfigError(f"model.init_from: {path} carries no preprocessing and ImageNet's is for 3 channels, "
                              f"but the data has {data_pre.input_size[0]}; set model.init_from.preprocessing=data")
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, data_pre.input_size, data_pre.channel_order,
                             data_pre.classes)
    if tuple(stored.input_size) != tuple(data_pre.input_size):
        raise ConfigError(f"model.init_from: {path} was trained on {'×'.join(map(str, stored.input_size))} inputs but "
                          f"the data gives {'×'.join(map(str, data_pre.input_size))}; set data.image_size="
                          f"{stored.input_size[1]}, or model.init_from.preprocessing=data to ignore the stored one")
    return Preprocessing(stored.mean, stored.std, data_pre.input_size, data_pre.channel_order, data_pre.classes)


def test_points(task: Task, size: int | None, labels: np.ndarray, seed: int) -> np.ndarray | None:
    """The test points: the task's own, else a class-balanced subset of `data.test_size`, else all (None)."""
    if task.test_points is not None:
        if size is not None:
            raise ConfigError("data.task fixes the test points; drop data.test_size")
        return task.test_points
    if size is None:
        return None
    if size > len(labels):
        raise ConfigError(f"data.test_size={size} exceeds the {len(labels)} test images; pass a smaller size")
    return np.sort(nested_pools(labels, [size], seed=seed + 999)[0])


def prepare(cfg, out_dir: Path, device: torch.device, write: bool = True) -> TrainingData:
    """Load the train/test splits of `cfg.data`, choose the pool (saved to out_dir/splits.json unless `write` is
    false: DDP ranks other than 0), build the loader."""
    d, t = cfg.data, cfg.train
    if d.channels != "auto":
        check_init_channels(cfg, int(d.channels))  # before the data is decoded
    source_train, test = load_data(d)
    for key, ds in (("train_split", source_train), ("test_split", test)):
        if len(ds) == 0:
            raise ConfigError(f"data.{key}={getattr(d, key)} of {d.source} holds no images; choose another split "
                              "(an auto split leaves classes of one image out of test: add images or "
                              "data.exclude_classes)")
    channels = int(source_train.images.shape[-1])
    if d.channels == "auto":
        check_init_channels(cfg, channels)
    asked = cfg.model.options.get("in_channels")
    if asked is not None and asked != channels:
        raise ConfigError(f"model.options.in_channels={asked} but the data gives {channels}-channel images; set "
                          f"data.channels={asked} instead (the model's first layer follows the data)")
    if source_train.images.shape[1:] != test.images.shape[1:]:
        raise R18Error(f"train images {source_train.images.shape[1:]} and test images {test.images.shape[1:]} "
                       "differ in shape; set data.image_size")
    task = apply_task(d.task, source_train, test)
    train, test = task.train, task.test
    split_seed = cfg.seed if d.split_seed is None else d.split_seed
    if task.train_points is not None:
        if d.labels is not None or d.indices is not None:
            raise ConfigError(f"data.task {d.task!r} fixes the training points; drop data.labels / data.indices")
        idx = task.train_points
    else:
        idx = training_indices(d, train.labels, cfg.seed, task.train_source, list(train.classes))
    test_idx = test_points(task, d.test_size, test.labels, split_seed)
    if test_idx is not None:
        test = test.subset(test_idx)
    source_idx = idx if task.train_source is None else task.train_source[idx]  # rows of the source's split
    if write:
        save_split(out_dir / "splits.json", {"train": source_idx,
                                             **({"test": test_idx} if test_idx is not None else {})})
    pre = run_preprocessing(d.normalize, source_train, train.classes)
    init = cfg.model.init_from
    if init is not None and init.preprocessing == "checkpoint":
        pre = checkpoint_preprocessing(init.checkpoint, pre)
    x_tr, y_tr = to_device_tensors(train.subset(idx), device)
    x_test, y_test = to_device_tensors(test, device)
    a = d.augment
    crop = x_tr.shape[-1] if a.crop == "auto" else a.crop
    rrc = a.random_resized_crop
    augment = Augment(crop=crop, padding=a.padding, pad_mode=a.pad_mode, flip=a.flip, cutout=a.cutout,
                      mean=list(pre.mean), std=list(pre.std),
                      color_jitter=None if a.color_jitter is None else tuple(a.color_jitter),
                      color_jitter_p=a.color_jitter_p, grayscale_p=a.grayscale_p,
                      random_resized_crop=None if rrc is None else (rrc.scale, rrc.ratio))
    loader = BatchLoader(x_tr, y_tr, batch_size=min(t.batch_size, len(y_tr)), shuffle=True,
                         drop_last=t.drop_last, seed=cfg.seed, augment=augment)
    x_u = None
    if d.unlabelled == "rest":
        from .unlabelled import unlabelled_rows
        x_u = to_device_tensors(train.subset(unlabelled_rows(len(train.labels), idx)), device)[0]
    return TrainingData(loader, x_test, y_test, list(train.classes), idx, pre, x_u, augment)
