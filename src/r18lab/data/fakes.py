"""Small fake datasets on disk in the official layouts, for tests and demos (no download needed)."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import Dataset

# folder name, meta name, label key, class-name key per layout (as in the official archives)
_PYTHON_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", "meta", b"fine_labels", b"fine_label_names"),
}
_BINARY_LAYOUT = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}


def random_images(n: int, num_classes: int, seed: int, side: int = 32) -> Dataset:
    """n random uint8 side×side RGB images with labels cycling through num_classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % num_classes
    return Dataset(images, labels, [f"c{k:03d}" for k in range(num_classes)], f"fake:{seed}")


def legacy_pickle(obj: object) -> bytes:
    """Pickle obj naming numpy.core.multiarray._reconstruct, as the official (Python 2 era) CIFAR files do."""
    return pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _flat(ds: Dataset) -> np.ndarray:
    """N×3072 rows: 1024 red, 1024 green, 1024 blue bytes per image."""
    return np.ascontiguousarray(ds.images.transpose(0, 3, 1, 2).reshape(len(ds), -1))


def write_cifar_python(
    root: Path, kind: str = "cifar10", n_train: int = 10, n_test: int = 6, num_classes: int = 10, seed: int = 0
) -> tuple[Path, dict[str, Dataset]]:
    """Write a CIFAR python-pickle folder under root; return it and the expected train/test Datasets."""
    folder_name, meta_name, label_key, names_key = _PYTHON_LAYOUT[kind]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    expected = {"train": random_images(n_train, num_classes, seed), "test": random_images(n_test, num_classes, seed + 1)}
    names = [f"class{k}".encode() for k in range(num_classes)]
    (folder / meta_name).write_bytes(legacy_pickle({names_key: names, b"num_vis": 3072}))
    files = {"train": ["train"], "test": ["test"]} if kind == "cifar100" else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]
    }
    for split, names_ in files.items():
        ds = expected[split]
        for part, name in zip(np.array_split(np.arange(len(ds)), len(names_)), names_):
            batch = {b"batch_label": name.encode(), label_key: ds.labels[part].tolist(), b"data": _flat(ds)[part]}
            if kind == "cifar100":
                batch[b"coarse_labels"] = (ds.labels[part] // 5).tolist()
            (folder / name).write_bytes(legacy_pickle(batch))
        expected[split].classes = [n.decode() for n in names]
    return folder, expected


def write_cifar_binary(
    root: Path, kind: str = "cifar10", n_train: int = 10, n_test: int = 6, num_classes: int = 10, seed: int = 0
) -> tuple[Path, dict[str, Dataset]]:
    """Write a CIFAR binary-record folder under root; return it and the expected train/test Datasets."""
    folder = Path(root) / _BINARY_LAYOUT[kind]
    folder.mkdir(parents=True, exist_ok=True)
    expected = {"train": random_images(n_train, num_classes, seed), "test": random_images(n_test, num_classes, seed + 1)}
    names = [f"class{k}" for k in range(num_classes)]
    if kind == "cifar100":
        (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
        (folder / "coarse_label_names.txt").write_text("\n".join(f"super{k}" for k in range(20)) + "\n")
        files = {"train": ["train.bin"], "test": ["test.bin"]}
    else:
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
        files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    for split, file_names in files.items():
        ds = expected[split]
        ds.classes = list(names)
        label_cols = [ds.labels // 5, ds.labels] if kind == "cifar100" else [ds.labels]
        rows = np.concatenate([np.stack(label_cols, 1).astype(np.uint8), _flat(ds)], axis=1)
        for part, name in zip(np.array_split(rows, len(file_names)), file_names):
            (folder / name).write_bytes(part.tobytes())
    return folder, expected


def write_image_folder(
    root: Path, splits: dict[str, int], num_classes: int = 3, side: int = 8, fmt: str = "png", seed: int = 0
) -> dict[str, Dataset]:
    """Write root/<split>/c<k>/<i>.<fmt> images; return the expected Datasets (exact for png)."""
    expected = {}
    for offset, (split, n) in enumerate(sorted(splits.items())):
        ds = random_images(n, num_classes, seed + offset, side)
        order = np.argsort(ds.labels, kind="stable")  # loaders sort by (class, file name)
        ds = ds.subset(order)
        for i, (img, label) in enumerate(zip(ds.images, ds.labels)):
            path = Path(root) / split / ds.classes[label] / f"{i:05d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
        expected[split] = ds
    return expected


def tar_folder(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    """Pack folder into archive (.tar or .tar.gz by suffix) under the top-level name arcname."""
    mode = "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname if arcname is not None else folder.name)
    return archive


def tar_members(archive: Path, members: dict[str, bytes]) -> Path:
    """Write a tar (.gz by suffix) holding the given name -> bytes files."""
    mode = "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive
