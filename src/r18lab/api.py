"""The Python API: `r18lab.train`, `r18lab.load_model`, `r18lab.evaluate` (and `r18lab.predict`, in predict.py).

The same machinery as the command line — a run trained here is the run `r18lab train` would write (folder, store
record, weights with their preprocessing) — and the same errors: a bad input raises an `r18lab.errors.R18Error`
(`ConfigError` for a bad argument or config) whose message is one line naming the problem and the fix.
Importing this module imports no training engine; each function imports what it needs.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .config import RunConfig, _deep_merge, _set_path, build_config, config_dict, parse_overrides, read_yaml
from .errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from .data import Dataset
    from .models.io import LoadedModel

ConfigLike = Union[RunConfig, Mapping[str, Any], str, os.PathLike]
Overrides = Union[Sequence[str], Mapping[str, Any], None]


def resolve_config(config: ConfigLike, overrides: Overrides = None, scale: str | None = None) -> RunConfig:
    """A validated `RunConfig` from a dict (a recipe's tree, `scales` allowed), a YAML path or a `RunConfig`, then
    the named `scale` (a dict's or file's `scales[scale]`), then `overrides`: `["train.epochs=5", ...]` (values
    parsed as YAML, as on the command line) or `{"train.epochs": 5, "model": {"width": 0.5}}` (dotted keys or
    nested mappings; values taken as they are). A `protocol` section is ignored, as `r18lab train` does."""
    if isinstance(config, RunConfig):
        if scale is not None:
            raise ConfigError(f"scale {scale!r} given with a RunConfig, which has no scales; pass the recipe's "
                              "YAML path or dict instead, or apply the scale before building the RunConfig")
        tree = config_dict(config)
    elif isinstance(config, Mapping):
        tree = copy.deepcopy(dict(config))
    elif isinstance(config, (str, os.PathLike)):
        tree = read_yaml(config)
    else:
        raise ConfigError(f"config must be a dict, a YAML file path or a RunConfig, got {type(config).__name__}; "
                          "e.g. r18lab.train({'data': {'source': 'digits'}}, out='runs/x')")
    scales = tree.pop("scales", None) or {}
    if scale is not None and not isinstance(config, RunConfig):
        if not isinstance(scales, Mapping) or scale not in scales:
            names = ", ".join(scales) if isinstance(scales, Mapping) else ""
            raise ConfigError(f"unknown scale {scale!r}; the config defines: {names or 'none'}")
        tree = _deep_merge(tree, scales[scale])
    tree = _deep_merge(tree, _override_tree(overrides))
    tree.pop("protocol", None)
    return build_config(tree)


def _override_tree(overrides: Overrides) -> dict:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        tree: dict = {}
        for key, value in overrides.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"override key {key!r} is not a dotted config key, e.g. 'train.epochs'")
            _set_path(tree, key, copy.deepcopy(value))
        return tree
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence) \
            or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides must be a list of key=value strings or a dict, got {overrides!r}; "
                          "e.g. overrides=['train.epochs=5'] or overrides={'train.epochs': 5}")
    return parse_overrides(list(overrides))


def train(config: ConfigLike, out: str | os.PathLike, *, overrides: Overrides = None, scale: str | None = None,
          resume: bool = False, overwrite: bool = False, store: bool | str | os.PathLike | None = True
          ) -> dict[str, Any]:
    """Train one configuration into the run folder `out`; returns the summary (also `out/summary.json`).

    config: a dict, a YAML path or a `RunConfig` (see `resolve_config` for `scale` and `overrides`).
    resume: continue an interrupted run in `out` (same config); overwrite: replace a run already there — as
    `train --resume` / `--overwrite`: a finished run is never replaced silently.
    store: record the run in the results store (`runs list`): True = $R18LAB_STORE or runs/index.sqlite,
    a path = that store, False/None = none.
    The summary: {"status", "identity", "steps", "train_seconds", "num_train", "num_classes", "device", "params",
    "final": {"eval/<head>/acc": %, ...}}.
    """
    cfg = resolve_config(config, overrides, scale)
    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise ConfigError(f"out must be the run folder's path, got {out!r}; e.g. out='runs/my-run'")
    for name, flag in (("resume", resume), ("overwrite", overwrite)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name} must be True or False, got {flag!r}")
    from .train.distributed import world_from_env
    from .train.run import execute, open_store
    if store and not world_from_env().is_main:  # under torchrun only rank 0 writes the store
        store = None
    if store is True:
        run_store = open_store()
    elif store is None or store is False:
        run_store = None
    elif isinstance(store, (str, os.PathLike)):
        run_store = open_store(store)
    else:
        raise ConfigError(f"store must be True, False or a path, got {store!r}")
    return execute(cfg, Path(out), resume=resume, overwrite=overwrite, store=run_store)


def _weights_path(path: Any) -> Path:
    """A model.safetensors path; a run folder stands for the model.safetensors in it."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"weights must be a path (a model.safetensors file or a run folder) or a loaded model, "
                          f"got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(f"{p} holds no model.safetensors (the run has not finished); give a finished "
                                  "run folder or a weights file")
        return p / "model.safetensors"
    return p


def load_model(path: str | os.PathLike, device: str = "cpu") -> "LoadedModel":
    """Saved weights (a model.safetensors or a run folder) rebuilt: a `LoadedModel` named tuple with `.model` (the
    torch module, in eval mode), `.preprocessing` (the stored normalisation, input size and class names),
    `.identity` (the run identity), `.spec` (the architecture) and `.path`. `device`: cpu, auto, cuda, ...
    `r18lab.evaluate` and `r18lab.predict` take it as it is."""
    from .models.io import load_checkpoint
    from .train.environment import pick_device
    loaded = load_checkpoint(_weights_path(path), pick_device(device))
    loaded.model.eval()
    return loaded


def evaluate(model_or_path: "LoadedModel | str | os.PathLike", data: "str | os.PathLike | Dataset",
             split: str = "test", *, batch_size: int = 512, device: str = "auto", **source_options: Any
             ) -> dict[str, float]:
    """Accuracy of every head on one split, with the weights' STORED preprocessing (never the data's statistics).

    model_or_path: a `load_model` result, a model.safetensors path or a run folder.
    data: a source name or path, loaded as `r18lab.data.load(data, split=split, **source_options)` (e.g.
      `image_size=32`, or the synthetic source's `num_classes=4`), or an `r18lab.data.Dataset` (split ignored).
    device: auto keeps a loaded model where it is (a path is loaded on the best device); any other moves it.
    Returns the engine's evaluation, as `r18lab eval --json` prints it: `eval/<head>/acc` (%), `eval/<head>/loss`
    and whatever else the engine reports per head.
    """
    from .data import Dataset, load
    from .data.loader import to_device_tensors
    from .models.io import LoadedModel
    from .train.engine import evaluate as engine_evaluate
    from .train.environment import pick_device

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(model_or_path, LoadedModel):
        loaded = model_or_path
        param = next(iter(loaded.model.parameters()), None)
        dev = param.device if device == "auto" and param is not None else pick_device(device)
    else:
        loaded = load_model(model_or_path, device)
        dev = next(iter(loaded.model.parameters())).device
    pre = loaded.preprocessing
    if pre is None:
        raise CheckpointError(f"{loaded.path} carries no preprocessing (written before r18lab stored it); re-train "
                              "it, or use `r18lab eval --normalize dataset` to recompute mean/std from the data")
    if isinstance(data, Dataset):
        if source_options:
            raise ConfigError(f"source options {sorted(source_options)} apply only when data is a source name or "
                              "path; load the Dataset with them instead")
        test, name = data, data.name or "the dataset"
    elif isinstance(data, (str, os.PathLike)):
        test = load(data, split=split, **source_options)
        name = f"{data} ({split})"
    else:
        raise ConfigError(f"data must be a source name or path, or an r18lab.data.Dataset, got {type(data).__name__}")
    model = loaded.model
    if model.num_classes != test.num_classes:
        raise ConfigError(f"model has {model.num_classes} classes but {name} has {test.num_classes}; "
                          "evaluate on the data it was trained on")
    if pre.classes and list(pre.classes) != list(test.classes):
        raise ConfigError(f"{name} names its classes {list(test.classes)[:4]}… but the model was trained on "
                          f"{list(pre.classes)[:4]}…; evaluate on data with the same classes in the same order")
    model.to(dev)
    x, y = to_device_tensors(test, dev)
    pre.check_images(x.shape, name)
    return engine_evaluate(model, x, y, pre.normalizer().to(dev), batch_size)


__all__ = ["evaluate", "load_model", "resolve_config", "train"]
