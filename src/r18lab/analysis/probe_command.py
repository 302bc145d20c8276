"""`r18lab probe {linear,fewshot,finetune} CKPT DATA [key=value ...]`: the downstream probes of spec 001 §2.3 / §6.8
on any checkpoint — a task (a dataset or a class subset of it), features extracted once and cached, paired episodes.

Options (key=value): classes=[a,b,c] (default: every class), pool=INDEXFILE (rows of the train split the training
images come from; rows of other classes are dropped), shots, episodes, folds, c_grid (linear/fewshot), epochs, lr,
batch_size (finetune); any other key is a source option for the data loader (e.g. image_size=32)."""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, R18Error
from . import probe as P

#: the options each probe kind takes (besides the data source's own)
KIND_OPTIONS = {
    "linear": ("classes", "pool", "folds", "c_grid"),
    "fewshot": ("classes", "pool", "shots", "episodes", "folds", "c_grid"),
    "finetune": ("classes", "pool", "shots", "episodes", "epochs", "lr", "batch_size"),
}
#: finetune defaults: spec 001 §5.3 (30 epochs at tiny scale), §2.3 (batch 32, momentum 0.9, ×0.1 at 50 %/80 %)
FINETUNE = {"epochs": 30, "lr": 0.01, "batch_size": 32, "episodes": 5, "momentum": 0.9, "milestones": (0.5, 0.8),
            "gamma": 0.1}


# -- options ------------------------------------------------------------------------------------------------
def split_options(kind: str, options: dict[str, Any], data: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(probe options, source options); one line for a key that is neither, or that belongs to another kind."""
    from ..data.loading import is_builtin
    from ..data.sources import PATH_OPTIONS, SOURCES
    source_keys = ([p for p in inspect.signature(SOURCES.get(data)).parameters if p != "split"]
                   if is_builtin(data) else list(PATH_OPTIONS))
    mine, source = {}, {}
    every = sorted({k for keys in KIND_OPTIONS.values() for k in keys})
    for key, value in options.items():
        if key in KIND_OPTIONS[kind]:
            mine[key] = value
        elif key in every:
            takers = [k for k, keys in KIND_OPTIONS.items() if key in keys]
            raise ConfigError(f"option {key!r} does not apply to probe {kind} (only to {', '.join(takers)}); "
                              f"probe {kind} takes: {', '.join(KIND_OPTIONS[kind])}")
        elif key in source_keys:
            source[key] = value
        else:
            raise ConfigError(f"unknown option {key!r} for probe {kind}; probe options: "
                              f"{', '.join(KIND_OPTIONS[kind])}; source options of {data}: "
                              f"{', '.join(source_keys) or 'none'}")
    for key in ("shots", "episodes", "epochs", "batch_size"):
        if key in mine and (isinstance(mine[key], bool) or not isinstance(mine[key], int) or mine[key] < 1):
            raise ConfigError(f"{key} must be an integer >= 1, got {mine[key]!r}")
    if "folds" in mine and (isinstance(mine["folds"], bool) or not isinstance(mine["folds"], int) or mine["folds"] < 2):
        raise ConfigError(f"folds must be an integer >= 2, got {mine['folds']!r}")
    if "lr" in mine:
        try:
            mine["lr"] = float(mine["lr"])
            assert 0 < mine["lr"] < float("inf")
        except (TypeError, ValueError, AssertionError):
            raise ConfigError(f"lr must be a positive number, got {options['lr']!r}") from None
    if "c_grid" in mine:
        mine["c_grid"] = P.check_c_grid(mine["c_grid"] if isinstance(mine["c_grid"], list) else [mine["c_grid"]])
    if "classes" in mine and not isinstance(mine["classes"], list):
        raise ConfigError(f"classes must be a list, e.g. classes=[bird,dog,horse], got {mine['classes']!r}")
    return mine, source


# -- the task -----------------------------------------------------------------------------------------------
def task_rows(a: argparse.Namespace, opts: dict[str, Any], source_opts: dict[str, Any]):
    """(train rows, their labels 0..k−1, test rows, their labels, class names) of the task."""
    from ..data import load
    from ..data.indices import read_indices
    train = load(a.data, split=a.split_train, **source_opts)
    test = load(a.data, split=a.split_test, **source_opts)
    if list(train.classes) != list(test.classes):
        raise DataError(f"{a.data}: splits {a.split_train} and {a.split_test} name different classes; "
                        "choose splits of one dataset")
    wanted = opts.get("classes") or list(train.classes)
    pool = read_indices(opts["pool"], len(train)) if opts.get("pool") else np.arange(len(train))
    keep, pool_y = P.select_classes(train.labels[pool], train.classes, wanted)
    test_rows, test_y = P.select_classes(test.labels, test.classes, wanted)
    names = [train.classes[w] if isinstance(w, int) else str(w) for w in wanted]
    if len(names) < 2:
        raise ConfigError(f"a probe needs at least two classes, got {names}; list more classes")
    for what, y in (("training pool", pool_y), (f"{a.split_test} split", test_y)):
        empty = [names[c] for c in range(len(names)) if not (y == c).any()]
        if empty:
            raise DataError(f"the {what} holds no image of class {empty[0]}; choose other classes or another pool")
    return pool[keep], pool_y, test_rows, test_y, names


def checkpoint_of(a: argparse.Namespace):
    """The checkpoint path, or a LoadedModel for foreign weights (--arch); missing file: one line, exit 2."""
    path = Path(a.checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a model.safetensors file")
    if a.arch:
        return P.load_foreign(path, a.arch, stem=a.stem, image_size=a.image_size, width=a.width)
    return path


def extract(ckpt, a, rows, split, source_opts) -> tuple[np.ndarray, float]:
    tic = time.perf_counter()
    x, _ = P.features(ckpt, a.data, split, indices=rows, data_options=source_opts, cache_dir=a.cache, device=a.device)
    return x, time.perf_counter() - tic


# -- the command --------------------------------------------------------------------------------------------
def run_probe(a: argparse.Namespace) -> int:
    from ..config import parse_overrides
    items = [*a.options, *getattr(a, "overrides", [])]  # key=value after an option land in overrides
    opts, source_opts = split_options(a.kind, parse_overrides(items), a.data)
    ckpt = checkpoint_of(a)
    if a.arch and "image_size" not in source_opts:
        source_opts["image_size"] = a.image_size  # foreign weights: the data at the size they were built for
    train_rows, train_y, test_rows, test_y, names = task_rows(a, opts, source_opts)
    task_key = "classes=" + ",".join(names)
    out: dict[str, Any] = {"probe": a.kind, "checkpoint": str(a.checkpoint), "data": a.data,
                           "data_options": source_opts, "split_train": a.split_train, "split_test": a.split_test,
                           "classes": names, "task_key": task_key, "num_pool": len(train_rows),
                           "num_test": len(test_rows), "seed": a.seed}
    if a.kind == "finetune":
        out.update(finetune(a, ckpt, opts, source_opts, train_rows, train_y, names, task_key))
    else:
        px, t_train = extract(ckpt, a, train_rows, a.split_train, source_opts)
        tx, t_test = extract(ckpt, a, test_rows, a.split_test, source_opts)
        out.update(feature_dim=int(px.shape[1]), feature_seconds=t_train + t_test)
        common = {"c_grid": opts.get("c_grid", P.C_GRID), "folds": opts.get("folds", P.FOLDS), "seed": a.seed}
        tic = time.perf_counter()
        if a.kind == "linear":
            out.update(P.full_probe(px, train_y, tx, test_y, **common))
        else:
            res = P.fewshot_probe(px, train_y, tx, test_y, task_key=task_key, shots=opts.get("shots", 5),
                                  episodes=opts.get("episodes", 50), class_names=names, **common)
            res["indices"] = [train_rows[np.asarray(e, dtype=np.int64)].tolist() for e in res["indices"]]
            res["indices_of"] = f"rows of the {a.split_train} split of {a.data}"
            out.update(res)
        out["probe_seconds"] = time.perf_counter() - tic
    if a.out:
        from ..atomic import atomic_write_text
        try:
            atomic_write_text(a.out, json.dumps(out, indent=2, default=str) + "\n")
        except OSError as e:
            raise R18Error(f"cannot write {a.out}: {e.strerror or e}; choose a writable file path for --out") from None
    print(json.dumps(out, indent=2, default=str) if a.json else table(out))
    return 0


def table(out: dict[str, Any]) -> str:
    """A short markdown summary of one probe result."""
    def pct(v):
        return "–" if v is None else f"{v:.2f}"
    head = (f"probe {out['probe']} of {out['checkpoint']} on {out['data']} classes {', '.join(out['classes'])} "
            f"({out['num_pool']} pool / {out['num_test']} test images)")
    if "mean" in out:
        lo, hi = out["ci95"]
        cs = sorted(set(out["C"])) if "C" in out else []
        rows = ["| shots | episodes | mean acc (%) | 95 % CI | std | C chosen |", "|---|---|---|---|---|---|",
                f"| {out.get('shots') or 'all'} | {out['episodes']} | {out['mean']:.2f} | [{pct(lo)}, {pct(hi)}] | "
                f"{out['std']:.2f} | {', '.join(f'{c:g}' for c in cs) or '–'} |"]
    else:
        rows = ["| C | CV acc (%) | test acc (%) |", "|---|---|---|",
                f"| {out['C']:g} | {pct(out['cv_accuracy'])} | {out['accuracy']:.2f} |"]
    svm = out.get("svm")
    tail = (f"LinearSVC ({svm['loss']}, dual={svm['dual']}), C grid {svm['c_grid']}, {svm['folds']}-fold CV, "
            f"{svm['normalization']}" if svm else "")
    return "\n".join([head, *rows, *([tail] if tail else [])])


# -- fine-tuning --------------------------------------------------------------------------------------------
def finetune_config(spec: dict[str, Any], checkpoint: str, data: str, split_train: str, split_test: str,
                    source_opts: dict[str, Any], classes: list[str], indices_file: str, seed: int, epochs: int,
                    lr: float, batch_size: int, device: str):
    """A run config: the checkpoint's architecture with a fresh `main` head, its backbone copied (model.init_from),
    the task's classes (data.task select) and training rows (data.indices), SGD momentum 0.9, multistep ×0.1 at
    50 %/80 % of `epochs` (paper 001 L61)."""
    from ..config import build_config
    arch_keys = ("name", "stem", "width", "transforms", "init")
    skip = {"num_classes", "heads", "gate", "peers", *arch_keys}
    model = {k: spec[k] for k in arch_keys if k in spec}
    model.update(heads=["main"], options={k: v for k, v in spec.items() if k not in skip},
                 init_from={"checkpoint": str(checkpoint)})
    milestones = sorted({max(1, round(f * epochs)) for f in FINETUNE["milestones"]})
    tree = {"seed": seed,
            "data": {"source": data, "train_split": split_train, "test_split": split_test, "options": source_opts,
                     "task": {"name": "select", "classes": classes}, "indices": indices_file},
            "model": model,
            "optim": {"name": "sgd", "lr": lr, "momentum": FINETUNE["momentum"]},
            "schedule": {"name": "multistep", "milestones": milestones, "gamma": FINETUNE["gamma"]},
            "train": {"epochs": epochs, "batch_size": batch_size, "progress": "none", "device": device}}
    return build_config(tree)


def finetune(a, ckpt, opts, source_opts, train_rows, train_y, names, task_key) -> dict[str, Any]:
    """Whole-network fine-tuning on each few-shot episode (shots given; default 5 episodes) or on the full pool;
    test accuracy of each run. Runs live under <cache>/finetune/<config hash> and are reused when finished."""
    from ..atomic import atomic_write_text
    from ..models.io import LoadedModel, model_spec_of
    from ..train.engine import train
    path = ckpt.path if isinstance(ckpt, LoadedModel) else ckpt
    spec = ckpt.spec if isinstance(ckpt, LoadedModel) else model_spec_of(path)
    epochs, lr, bs = (opts.get(k, FINETUNE[k]) for k in ("epochs", "lr", "batch_size"))
    shots = opts.get("shots")
    if shots is None and "episodes" in opts:
        raise ConfigError("episodes applies to few-shot fine-tuning; give shots=K too, or drop episodes for the "
                          "full pool")
    draws = ([train_rows[e] for e in P.fewshot_episodes(train_y, shots, opts.get("episodes", FINETUNE["episodes"]),
                                                         task_key, a.seed, names)]
             if shots is not None else [train_rows])
    root = Path(a.cache) if a.cache else P.default_cache_dir()
    accs, runs = [], []
    for rows in draws:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        digest = hashlib.sha256(rows.tobytes()).hexdigest()[:16]
        index_file = root / "finetune" / "indices" / f"{digest}.json"
        if not index_file.is_file():
            atomic_write_text(index_file, json.dumps(rows.tolist()))
        cfg = finetune_config(spec, str(Path(path).resolve()), a.data, a.split_train, a.split_test, source_opts,
                              names, str(index_file), a.seed, epochs, lr, bs, a.device)
        key = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True, default=str).encode()).hexdigest()[:16]
        out_dir = root / "finetune" / key
        summary = train(cfg, out_dir, resume=True)
        accs.append(float(summary["final"]["eval/main/acc"]))
        runs.append(str(out_dir))
    mean, lo, hi = P.t_interval(accs)
    return {"mean": mean, "ci95": [lo, hi], "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "accuracies": accs, "shots": shots, "episodes": len(draws),
            "indices": [np.sort(r).tolist() for r in draws] if shots is not None else None,
            "indices_of": f"rows of the {a.split_train} split of {a.data}", "runs": runs,
            "finetune": {"epochs": epochs, "lr": lr, "batch_size": bs, "optimizer": "sgd", "momentum":
                         FINETUNE["momentum"], "schedule": f"multistep x{FINETUNE['gamma']} at 50%/80%",
                         "head": "fresh main head, backbone from the checkpoint (model.init_from)",
                         "lr_selection": "fixed (no grid search; spec 001 §2.3 grid not run)",
                         "preprocessing": "the checkpoint's stored normalisation (data statistics when it has none)"}}
