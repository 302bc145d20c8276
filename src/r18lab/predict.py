"""Predictions are data: per-sample logits of every head, pooled features and (optionally) stage maps of a
saved model on a dataset, as numpy arrays that acquisition functions, probes and similarity measures consume.

The model's STORED preprocessing (mean/std, input size) feeds it — never statistics of the data at hand.
`Predictions.save` writes one `.npz` (read back with allow_pickle=False):

    logits/<head>     float32 N×K for every head (a peer group's `peer1/main` becomes `logits/peer1/main`)
    aux/<name>        float32 N×… for each per-sample auxiliary output (ModelOutput.aux), if any
    features          float32 N×F pooled features
    stages/0 … /3     float32 N×C×H×W stage maps (only with stages=True)
    labels            int64 N (only when the data has labels)
    indices           int64 N: the rows of the data split that were predicted, in order
    meta              a 0-d string array holding JSON: identity, classes, weights, data, split, spec, heads, …
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_target
from .errors import CheckpointError, ConfigError, DataError, R18Error

FORMAT = "r18lab.predictions"
VERSION = 1


@dataclass
class Predictions:
    """Per-sample outputs of one model on one set of images; row i is data row `indices[i]`."""

    logits: dict[str, np.ndarray]
    features: np.ndarray
    indices: np.ndarray
    labels: np.ndarray | None = None
    stages: list[np.ndarray] = field(default_factory=list)
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def heads(self) -> list[str]:
        return list(self.logits)

    @property
    def identity(self) -> str | None:
        """Run identity of the weights that produced these predictions."""
        return self.meta.get("identity")

    @property
    def classes(self) -> list[str]:
        """The model's class names (its output units, in order)."""
        return list(self.meta.get("classes") or [])

    def accuracy(self) -> dict[str, float]:
        """Top-1 accuracy (%) per head; empty when the data has no labels."""
        if self.labels is None:
            return {}
        return {h: float((_predicted(v) == self.labels).mean() * 100) for h, v in self.logits.items()}

    def summary(self, path: str | os.PathLike[str] | None = None) -> str:
        """One line: samples, heads, accuracy per head (when labels fit the model's classes), output path."""
        parts = [f"{len(self)} samples from {self.meta.get('data') or 'images'}", f"heads {', '.join(self.heads)}"]
        acc = self.accuracy()
        data_classes, classes = self.meta.get("data_classes") or [], self.classes
        if acc and data_classes and classes and list(data_classes) != classes:
            parts.append("no accuracy (the data's classes differ from the model's)")
        elif acc:
            parts.append("accuracy " + ", ".join(f"{h} {a:.2f}%" for h, a in acc.items()))
        if self.stages:
            parts.append(f"{len(self.stages)} stage maps")
        if path is not None:
            parts.append(f"wrote {path}")
        return "; ".join(parts)

    # -- files ---------------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The `.npz` entries (see the module docstring), metadata included."""
        out: dict[str, np.ndarray] = {f"logits/{h}": v for h, v in self.logits.items()}
        out.update({f"aux/{k}": v for k, v in self.aux.items()})
        out["features"] = self.features
        out.update({f"stages/{i}": v for i, v in enumerate(self.stages)})
        if self.labels is not None:
            out["labels"] = self.labels
        out["indices"] = self.indices
        meta = {**self.meta, "format": FORMAT, "version": VERSION, "heads": self.heads, "aux": list(self.aux),
                "num_stages": len(self.stages)}
        out["meta"] = np.array(json.dumps(meta, default=str))
        return out

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the `.npz` atomically; an existing file is kept unless `overwrite`."""
        path = Path(path)
        check_output(path, overwrite)
        try:
            with atomic_target(path) as tmp, open(tmp, "wb") as fh:  # a handle: savez would append .npz to a name
                np.savez(fh, **self.arrays())
        except OSError as e:
            raise R18Error(f"cannot write {path}: {e.strerror or e}; free disk space or choose a writable --out "
                           "(the previous file, if any, is unchanged)") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Predictions":
        """Read a file written by `save` (allow_pickle=False)."""
        path = Path(path)
        if not path.is_file():
            raise R18Error(f"predictions file {path} does not exist; write it with `r18lab predict ... --out {path}`")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise R18Error(f"{path} is not a readable predictions .npz ({e}); re-create it with `r18lab predict`") \
                from None
        try:
            meta = json.loads(str(arrays.pop("meta")[()]))
            assert meta.get("format") == FORMAT
            logits = {h: arrays[f"logits/{h}"] for h in meta["heads"]}
            aux = {k: arrays[f"aux/{k}"] for k in meta.get("aux", [])}
            stages = [arrays[f"stages/{i}"] for i in range(int(meta.get("num_stages", 0)))]
            features, indices = arrays["features"], arrays["indices"]
        except (KeyError, ValueError, TypeError, AssertionError):
            raise R18Error(f"{path} is not an r18lab predictions file (missing or corrupt entries); "
                           "re-create it with `r18lab predict`") from None
        for k in ("format", "version", "heads", "aux", "num_stages"):
            meta.pop(k, None)
        return cls(logits, features, indices, arrays.get("labels"), stages, aux, meta)


def check_output(path: str | os.PathLike[str], overwrite: bool) -> None:
    """One line if `path` exists (and `overwrite` is off) or is a folder."""
    path = Path(path)
    if path.is_dir():
        raise R18Error(f"{path} is a folder; give a file path for the predictions, e.g. --out preds.npz")
    if path.exists() and not overwrite:
        raise R18Error(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                       "or choose another --out")


# -- prediction --------------------------------------------------------------------------------------------
def predict(weights, data, *, split: str = "test", indices=None, stages: bool = False, batch_size: int = 512,
            device: str | torch.device = "auto", data_options: dict[str, Any] | None = None) -> Predictions:
    """Run saved weights over data in eval mode, batched on the device, and return every per-sample output.

    weights: a model.safetensors path or a `LoadedModel` (with device="auto" it stays on its current device;
      any other device moves it there). The model's stored preprocessing normalises the images.
    data: a source name or path (loaded with `r18lab.data.load(data, split=split, **data_options)`), a
      `Dataset` (split ignored), a uint8 numpy array N×H×W×C (the Dataset layout) or a uint8 torch tensor
      N×C×H×W (the `to_device_tensors` layout); arrays carry no labels.
    indices: None (all rows), an index file (see `r18lab.data.indices.read_indices`) or a sequence of ints;
      the rows are predicted in the given order and recorded in `Predictions.indices`.
    stages: also keep the per-stage feature maps. When no head consumes them the model does not return them,
      so the backbone (a Classifier's `_backbone`; peer 0's for a PeerGroup, as for `features`) is run a
      second time with `forward_features(x, stages=True)`.
    """
    from .data.indices import check_indices, read_indices
    from .models.io import LoadedModel, load_checkpoint

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    dev = _pick_device(device, weights if isinstance(weights, LoadedModel) else None)
    loaded = weights if isinstance(weights, LoadedModel) else load_checkpoint(weights, "cpu")
    pre = loaded.preprocessing
    if pre is None:  # not require_preprocessing: its fix (--normalize dataset) is eval's, not predict's
        raise CheckpointError(f"{loaded.path} carries no preprocessing (written before r18lab stored it); re-train "
                              "it, or re-save it with save_model(..., preprocessing=Preprocessing.of(mean, std, "
                              "input_size, classes)) using the training data's statistics")
    images, labels, data_classes, name = _images(data, split, data_options)
    n = len(images)
    if n == 0:
        raise DataError(f"{name} holds no images; choose another split or source")
    pre.check_images(_nchw_shape(images), name)
    if indices is None:
        idx = np.arange(n, dtype=np.int64)
    elif isinstance(indices, (str, os.PathLike)):
        idx = read_indices(indices, n)
    else:
        idx = check_indices(indices, n, "indices")

    model = loaded.model
    try:
        model.to(dev)
    except (RuntimeError, AssertionError) as e:
        raise R18Error(f"device {dev} is not usable here ({str(e).splitlines()[0]}); use --device auto or cpu") \
            from None
    normalize = pre.normalizer().to(dev)
    backbone = _stage_backbone(model) if stages else None
    collected: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(idx), batch_size):
                x = normalize(_batch(images, idx[start:start + batch_size], dev))
                out = model(x)
                for h, v in out.logits.items():
                    _add(collected, f"logits/{h}", v)
                for k, v in (getattr(out, "aux", None) or {}).items():
                    if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == x.shape[0]:  # per-sample outputs only
                        _add(collected, f"aux/{k}", v)
                _add(collected, "features", out.features)
                if stages:
                    maps = out.stages or backbone.forward_features(x, stages=True)[1]
                    for i, m in enumerate(maps):
                        _add(collected, f"stages/{i}", m)
    finally:
        model.train(was_training)

    cat = {k: np.concatenate(v) for k, v in collected.items()}
    meta = {"identity": loaded.identity, "classes": list(pre.classes), "weights": str(loaded.path),
            "spec": loaded.spec, "data": name, "split": split if isinstance(data, (str, os.PathLike)) else None,
            "data_classes": data_classes, "preprocessing": json.loads(pre.to_json())}
    return Predictions(
        logits={k.split("/", 1)[1]: v for k, v in cat.items() if k.startswith("logits/")},
        features=cat["features"],
        indices=idx,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64)[idx],
        stages=[cat[f"stages/{i}"] for i in range(sum(k.startswith("stages/") for k in cat))],
        aux={k.split("/", 1)[1]: v for k, v in cat.items() if k.startswith("aux/")},
        meta=meta,
    )


def _add(collected: dict[str, list[np.ndarray]], key: str, value: torch.Tensor) -> None:
    collected.setdefault(key, []).append(value.detach().float().cpu().numpy())


def _pick_device(name: str | torch.device, loaded) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto" and loaded is not None:
        param = next(iter(loaded.model.parameters()), None)
        if param is not None:
            return param.device
    from .train.environment import pick_device
    return pick_device(name)


def _images(data, split: str, options: dict[str, Any] | None):
    """(images: numpy N×H×W×C or torch N×C×H×W uint8, labels | None, class names, description)."""
    from .data.dataset import Dataset

    if isinstance(data, (str, os.PathLike)):
        from .data import load
        ds = load(data, split=split, **(options or {}))
        return ds.images, ds.labels, list(ds.classes), ds.name or f"{data}:{split}"
    if options:
        raise ConfigError(f"data options {sorted(options)} apply only when data is a source name or path; "
                          "load the data yourself with those options or pass its name")
    if isinstance(data, Dataset):
        return data.images, data.labels, list(data.classes), data.name or "the dataset"
    if isinstance(data, (np.ndarray, torch.Tensor)):
        layout = "N×H×W×C numpy array" if isinstance(data, np.ndarray) else "N×C×H×W torch tensor"
        if data.dtype not in (np.uint8, torch.uint8) or data.ndim != 4:
            raise DataError(f"images must be a uint8 {layout} (raw 0..255 pixels; the stored preprocessing "
                            f"normalises them), got {data.dtype} {tuple(data.shape)}")
        return data, None, [], "the images"
    raise DataError(f"cannot predict on {type(data).__name__}; pass a source name or path, a Dataset, "
                    "or uint8 images")


def _nchw_shape(images) -> tuple[int, int, int, int]:
    if isinstance(images, np.ndarray):
        n, h, w, c = images.shape
        return n, c, h, w
    return tuple(images.shape)


def _batch(images, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N×C×H×W batch of `rows` on `device` (copied per batch: the whole set need not fit on it)."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images[rows].transpose(0, 3, 1, 2))).to(device)
    return images[torch.as_tensor(rows, device=images.device)].to(device).contiguous()


def _stage_backbone(model: torch.nn.Module):
    """The module whose `forward_features(x, stages=True)` gives stage maps (peer 0 for a PeerGroup)."""
    base = model.peers[0] if hasattr(model, "peers") else model
    backbone = getattr(base, "_backbone", base)
    if not callable(getattr(backbone, "forward_features", None)):
        raise R18Error(f"{type(backbone).__name__} has no forward_features(x, stages=True); "
                       "predict without --stages")
    return backbone


__all__ = ["Predictions", "check_output", "predict"]


def _predicted(logits):
    """argmax per row; one logit: 1 iff z > 0 (as `objectives.supervised.predicted_labels`, on arrays)."""
    return (logits[:, 0] > 0).astype("int64") if logits.shape[1] == 1 else logits.argmax(1)
