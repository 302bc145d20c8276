"""`r18lab analyze ntk CKPT --data SOURCE [--n-train N] [--n-test M] [--k K] [--out DIR] [--against CKPT2]
[--head main] [--route auto|dense|matvec] [--batch B] [--seed S] [--task classes|cifar2]`: the empirical NTK
Θ(x, x') = J(x)·J(x')ᵀ of a one-logit model on N + M images (spec 002d §1, §5, §6).

Points: a class-balanced seeded subset (`splits.nested_pools`, seed S for train, S + 999 for test as a run's
`data.test_size`) of N train and M test images of the task's labels (`--task cifar2` relabels CIFAR-10 first), train
points first, normalised with the checkpoint's stored preprocessing. The maths is `analysis.ntk`'s: the route comes
from `memory_route` — **dense** (K = J Jᵀ in float64, J kept whole or built from row blocks when only those fit;
all eigenpairs by `torch.linalg.eigh`) or **matvec** (K v = J(Jᵀ v), top-k by Lanczos; no K, so no alignment and
no kernel distance). Labels must be binary (alignment A(K, y), energy E_k(y) use ±1 labels).

Writes into DIR (default `<checkpoint folder>/ntk`), each file replaced atomically: eigen.npz (read by the
`eigenfunction` task), eigenvalues.csv, spectrum.png, energy.csv (E_k for k = 1..K, squared and the flagged
non-squared variant, long format), energy.png, summary.json; with --against CKPT2 (same architecture and
preprocessing) also alignment_profile.csv/.png (a_j of K2 along K's eigenvectors) and d(K, K2) in summary.json.
Every input is read and checked before anything is computed or written; a bad one is one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, R18Error
from . import ntk

ROUTES = ("auto", "dense", "matvec")
TASK_CHOICES = ("classes", "cifar2")
DEFAULTS = {"n_train": 1000, "n_test": 500, "k": 100, "route": "auto", "head": "main", "seed": 0,
            "task": "classes", "device": "auto"}
JACOBIAN_CHUNK, MATVEC_CHUNK = 32, 128     # default --batch of the Jacobian rows / of the matvec's vjp and jvp
REPORTED_K = (1, 10, 100)                  # E_k in summary.json and the table (those ≤ K)
PROFILE_COLUMNS = 8                        # eigenvectors per matvec call of the matrix-free alignment profile
TEST_SEED_OFFSET = 999                     # as a run's data.test_size subset (data/training.py, spec §1)


@dataclass
class Points:
    """The n = N + M normalised images (train first) on the device, their task labels and indices."""

    x: Tensor
    labels: np.ndarray
    train_indices: np.ndarray
    test_indices: np.ndarray
    classes: list[str]


def run_ntk(a: argparse.Namespace) -> int:
    from ..models.io import require_preprocessing, teacher_identity
    from ..train.environment import pick_device
    from .commands import checkpoint_inputs, command_options

    opt = command_options(a, DEFAULTS, "ntk")
    for flag in ("csv", "plot"):
        if getattr(a, flag, None):
            raise ConfigError(f"`analyze ntk` writes its CSVs and plots into --out DIR; drop --{flag}")
    _check_options(opt, a)
    paths, source, data_options = checkpoint_inputs(a, "ntk", "compute the kernel on")
    if len(paths) != 1:
        raise ConfigError(f"`analyze ntk` takes one checkpoint, got {len(paths)}; compare two with "
                          "`analyze ntk A.safetensors --against B.safetensors`")
    ckpt = paths[0]
    out = Path(a.out) if a.out else ckpt.parent / "ntk"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (default: ntk/ beside the checkpoint)")

    device = pick_device(opt["device"])
    loaded = _checkpoint(ckpt, device)
    pre = _bad_input(require_preprocessing, loaded)
    other = _against(Path(a.against), loaded, device) if a.against else None
    points = _points(source, data_options, pre, opt)
    points.x = points.x.to(device)
    n = len(points.labels)
    head = opt["head"]
    for lm in [loaded] + ([other] if other is not None else []):
        _check_one_logit(lm, points.x[:1], head)
    y = _binary_labels(points, source, opt["task"])

    model = loaded.model
    num_params = ntk.parameter_count(model)
    dtype = next(iter(ntk.trainable_params(model).values())).dtype
    free = free_memory(device)
    k_given = a.k is not None
    k = min(opt["k"], n)
    if k_given and opt["k"] > n:
        raise ConfigError(f"--k {opt['k']} is larger than the n = {n} points; pass --k ≤ {n} or more points "
                          "(--n-train, --n-test)")
    route, why, plan = _choose_route(opt["route"], n, num_params, dtype.itemsize, k, free)
    if route == "matvec" and k >= n:
        if k_given:
            raise ConfigError(f"--k {k} = n: Lanczos (the matvec route) gives at most n − 1 = {n - 1} eigenpairs; "
                              f"pass --k {n - 1} or --route dense")
        k = n - 1
    print(f"route: {route} — {why}", file=sys.stderr if a.json else sys.stdout)  # --json: stdout is the JSON

    started = time.perf_counter()
    chunk = a.batch_size or (JACOBIAN_CHUNK if route == "dense" else MATVEC_CHUNK)
    kernel = None
    block = plan["block_rows"] if plan["route"] == "blockwise" else n  # J rows per block of the dense route
    if route == "dense":
        kernel = _eigh_ready(_dense_kernel(model, points.x, block, chunk, head, "K"))
        trace = float(kernel.diagonal().sum())
        evals, evecs = ntk.top_eigen(kernel, k)
    else:
        trace = _trace(model, points.x, a.batch_size or JACOBIAN_CHUNK, head)
        bar = Progress(None, "Lanczos on K", "matvecs")

        def matvec(v: Tensor) -> Tensor:
            bar.update(1)
            return ntk.ntk_matvec(model, points.x, v, chunk=chunk, head=head)

        evals, evecs = ntk.top_eigen(matvec, k, n, seed=opt["seed"], device=device, dtype=dtype)
        bar.close()
    evals, evecs = evals.cpu(), evecs.cpu()
    seconds_k = time.perf_counter() - started

    ks = list(range(1, k + 1))
    energy = ntk.energy_concentration(evecs, y, ks).numpy()
    energy_norm = ntk.energy_concentration(evecs, y, ks, squared=False).numpy()
    alignment = ntk.kernel_target_alignment(kernel, y) if kernel is not None else None

    compared: dict[str, Any] | None = None
    if other is not None:
        compared = _compare(other, points.x, kernel, evecs, route, block, a.batch_size, head)
    seconds = time.perf_counter() - started
    del kernel

    summary = _summary(opt, loaded, other, source, data_options, points, route, why, plan, num_params, k,
                       evals, trace, alignment, energy, energy_norm, seconds_k, seconds, compared, device, free,
                       teacher_identity)
    _write(out, points, evals, evecs, energy, energy_norm, compared, summary, ckpt)
    if a.json:
        print(json.dumps(summary, indent=1))
    else:
        _print_table(summary, out)
    return 0


# -- inputs ------------------------------------------------------------------------------------------------
def _check_options(opt: dict, a: argparse.Namespace) -> None:
    if opt["route"] not in ROUTES:
        raise ConfigError(f"--route must be one of {', '.join(ROUTES)}, got {opt['route']!r}")
    if opt["task"] not in TASK_CHOICES:
        raise ConfigError(f"--task must be one of {', '.join(TASK_CHOICES)}, got {opt['task']!r}")
    for name, low in (("n_train", 1), ("n_test", 0), ("k", 1)):
        if opt[name] < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be ≥ {low}, got {opt[name]}")
    if a.batch_size is not None and a.batch_size < 1:
        raise ConfigError(f"--batch must be ≥ 1, got {a.batch_size}")


def _bad_input(fn: Callable, *args: Any, **kw: Any) -> Any:
    """fn(...) with a checkpoint or data problem re-raised as bad input (one line, exit 2)."""
    try:
        return fn(*args, **kw)
    except ConfigError:
        raise
    except R18Error as e:
        raise ConfigError(str(e)) from None


def _checkpoint(path: Path, device: torch.device):
    from ..models.io import load_checkpoint
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a model.safetensors file")
    return _bad_input(load_checkpoint, path, device)


def _against(path: Path, loaded, device: torch.device):
    """The second checkpoint: the same architecture and preprocessing as the first, else one line."""
    other = _checkpoint(path, device)
    if other.spec != loaded.spec:
        keys = [*loaded.spec, *(k for k in other.spec if k not in loaded.spec)]  # name first
        diff = [k for k in keys if other.spec.get(k) != loaded.spec.get(k)]
        raise ConfigError(f"--against {path} is another architecture than {loaded.path} (model "
                          f"{', '.join(f'{k}: {other.spec.get(k)!r} vs {loaded.spec.get(k)!r}' for k in diff[:2])}); "
                          "compare checkpoints of one architecture (e.g. θ0 and θ_end of a run)")
    if other.preprocessing != loaded.preprocessing:
        raise ConfigError(f"--against {path} stores other preprocessing than {loaded.path}; compare checkpoints "
                          "trained on the same data with the same normalisation")
    return other


def _points(source: str, options: dict, pre, opt: dict) -> Points:
    """The class-balanced seeded subset: n_train train then n_test test images, normalised, with task labels."""
    from ..data.loading import load
    from ..data.splits import nested_pools
    from ..data.tasks import cifar2

    train = _bad_input(load, source, "train", **options)
    test = _bad_input(load, source, "test", **options)
    for ds, split in ((train, "train"), (test, "test")):
        n, h, w, c = ds.images.shape
        _bad_input(pre.check_images, (n, c, h, w), f"{source} ({split})")
    if opt["task"] == "cifar2":
        task = cifar2(train, test)
        train, test = task.train, task.test
    picked = []
    for ds, split, size, seed in ((train, "train", opt["n_train"], opt["seed"]),
                                  (test, "test", opt["n_test"], opt["seed"] + TEST_SEED_OFFSET)):
        flag = f"--n-{split}"
        if size > len(ds):
            raise ConfigError(f"{flag} {size} is larger than the {len(ds)} {split} images of {source}; "
                              f"pass {flag} ≤ {len(ds)}")
        if size == 0:
            picked.append(np.zeros(0, np.int64))
            continue
        try:
            picked.append(nested_pools(ds.labels, [size], seed=seed)[0])
        except DataError as e:
            raise ConfigError(f"{flag} {size}: {e}") from None
    tr, te = picked
    images = np.concatenate([train.images[tr], test.images[te]])
    x = pre.normalizer()(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    labels = np.concatenate([train.labels[tr], test.labels[te]]).astype(np.int64)
    return Points(x, labels, tr, te, list(train.classes))


def _binary_labels(points: Points, source: str, task: str) -> Tensor:
    """The labels as a tensor, refused (one line) unless the task has two classes (alignment and energy are ±1)."""
    if len(points.classes) != 2 or not np.isin(points.labels, (0, 1)).all():
        hint = ("pass --task cifar2 (CIFAR-10 → two classes)" if len(points.classes) == 10 and task == "classes"
                else "use data with two classes")
        raise ConfigError(f"alignment and energy need binary labels but {source} under --task {task} has "
                          f"{len(points.classes)} classes; {hint}")
    return torch.from_numpy(points.labels)


def _check_one_logit(loaded, x: Tensor, head: str) -> None:
    """`ntk.scalar_output`'s rule on one image: one logit per sample (of --head), else one line."""
    try:
        with torch.no_grad(), ntk.eval_mode(loaded.model):
            ntk.scalar_output(loaded.model(x), head)
    except ConfigError as e:
        raise ConfigError(f"{loaded.path}: {e} (or pass --head naming a one-logit head)") from None


def free_memory(device: torch.device | str = "cpu") -> float:
    """Bytes free for J and K: the CUDA device's free memory, else psutil's available RAM, else /proc/meminfo's
    MemAvailable, else the free physical pages (os.sysconf)."""
    device = torch.device(device)
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
        return float(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _choose_route(asked: str, n: int, num_params: int, nbytes: int, k: int,
                  free: float) -> tuple[str, str, dict]:
    """(dense | matvec, one-line reason, `memory_route`'s plan) for --route: auto follows the plan (dense when K and
    a block of J rows fit), dense refuses a K that does not fit with the n that would, matvec is taken as asked."""
    try:
        plan = ntk.memory_route(n, num_params, free, dtype_bytes=nbytes, k=k)
    except ConfigError:
        if asked != "dense":
            raise
        plan = None  # not even matrix-free fits: the dense refusal below says what would
    fits = plan is not None and plan["route"] in ("dense", "blockwise")
    if asked == "dense" and not fits:
        p, b = num_params, nbytes
        n_fit = int(math.sqrt(max(free - 2 * p * b, 0) / b))              # K plus two J rows (1-row blocks)
        n_whole = int((-p + math.sqrt(p * p + 4 * free / b)) / 2)          # J whole: n·P·b + n²·b
        raise ConfigError(f"--route dense needs {ntk._fmt(2 * p * b + n * n * b)} (K of n = {n:,} points plus two "
                          f"Jacobian rows of P = {p:,}) but {ntk._fmt(free)} is free; n ≤ {n_fit:,} fits (J whole: "
                          f"n ≤ {n_whole:,}), or use --route matvec")
    assert plan is not None
    if asked == "matvec":
        return "matvec", f"--route matvec (top-k by Lanczos on K v = J(Jᵀ v)); {plan['message']}", plan
    if fits:
        how = "J whole" if plan["route"] == "dense" else f"J in row blocks of {plan['block_rows']}"
        return "dense", f"K = J Jᵀ with {how}, eigh in float64; {plan['message']}", plan
    return "matvec", f"K does not fit, top-k by Lanczos on K v = J(Jᵀ v); {plan['message']}", plan


# -- computing ---------------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar with ETA on a terminal, else a line on stderr at most every 10 s and at the end."""

    def __init__(self, total: int | None, what: str, unit: str) -> None:
        self.total, self.what, self.unit = total, what, unit
        self.done, self.started, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= 10 or (self.total is not None and self.done >= self.total):
            self.last = now
            elapsed = now - self.started
            if self.total:
                eta = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
                print(f"ntk: {self.what} {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
                      f" {elapsed:.0f}s eta {eta:.0f}s", file=sys.stderr, flush=True)
            else:
                print(f"ntk: {self.what} {self.done:,} {self.unit} {elapsed:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total is None:
            print(f"ntk: {self.what} {self.done:,} {self.unit} in {time.perf_counter() - self.started:.0f}s",
                  file=sys.stderr, flush=True)


def _kernel_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _eigh_ready(kernel: Tensor) -> Tensor:
    """K where float64 works (MPS has none: its float32 K moves to the CPU)."""
    return kernel.cpu() if kernel.device.type == "mps" else kernel


def _dense_kernel(model, x: Tensor, block: int, chunk: int, head: str, name: str) -> Tensor:
    """K (float64) = J Jᵀ: J whole, its rows computed `chunk` at a time (`jacobian_rows`), when block ≥ n; else
    `ntk_matrix` on one row block against the points from it on, mirrored — the Jacobian rows counted on a bar."""
    n = x.shape[0]
    dtype = _kernel_dtype(x.device)
    if block >= n:
        bar = Progress(n, f"Jacobian rows of {name}", "rows")
        jac = None
        for s in range(0, n, chunk):
            rows = ntk.jacobian_rows(model, x[s:s + chunk], chunk=chunk, head=head)
            if jac is None:
                jac = torch.empty(n, rows.shape[1], dtype=rows.dtype, device=rows.device)
            jac[s:s + rows.shape[0]] = rows
            bar.update(rows.shape[0])
        bar.close()
        k = ntk._gram(jac, jac, dtype)
        return (k + k.T) / 2
    starts = range(0, n, block)
    bar = Progress(sum(min(block, n - a) + n - a for a in starts), f"Jacobian rows of {name} (row blocks of {block})",
                   "rows")
    k = torch.empty(n, n, dtype=dtype, device=x.device)
    for a in starts:
        b = min(a + block, n)
        rows = ntk.ntk_matrix(model, x[a:b], x[a:], chunk=min(chunk, block), block_rows=block, dtype=dtype,
                              head=head)
        diag = rows[:, :b - a]
        k[a:b, a:b] = (diag + diag.T) / 2
        k[a:b, b:] = rows[:, b - a:]
        k[b:, a:b] = rows[:, b - a:].T
        bar.update((b - a) + (n - a))
    bar.close()
    return k


def _trace(model, x: Tensor, chunk: int, head: str) -> float:
    """tr K = Σ_i ‖J(x_i)‖², from `chunk` Jacobian rows at a time (the matvec route holds no K)."""
    n = x.shape[0]
    bar = Progress(n, "Jacobian rows (trace)", "rows")
    total = 0.0
    for s in range(0, n, chunk):
        rows = ntk.jacobian_rows(model, x[s:s + chunk], chunk=chunk, head=head)
        total += float(rows.to(torch.float64).pow(2).sum())
        bar.update(rows.shape[0])
    bar.close()
    return total


def _compare(other, x: Tensor, kernel: Tensor | None, evecs: Tensor, route: str, block: int, batch: int | None,
             head: str) -> dict[str, Any]:
    """K2 of the second checkpoint on the same points: d(K, K2) (dense only) and a_j = v_jᵀ K2 v_j / ‖v_j‖²."""
    model = other.model
    if route == "dense":
        k2 = _eigh_ready(_dense_kernel(model, x, block, batch or JACOBIAN_CHUNK, head, "K2"))
        profile = ntk.alignment_profile(k2, evecs.to(k2.device))
        distance = ntk.kernel_distance(kernel, k2)
        return {"kernel_distance": distance, "profile": profile.cpu().numpy(), "trace2": float(k2.diagonal().sum()),
                "note": None}
    chunk = batch or MATVEC_CHUNK
    bar = Progress(evecs.shape[1], "alignment profile (K2 matvecs)", "eigenvectors")
    parts = []
    for s in range(0, evecs.shape[1], PROFILE_COLUMNS):
        cols = evecs[:, s:s + PROFILE_COLUMNS]
        parts.append(ntk.alignment_profile(lambda v: ntk.ntk_matvec(model, x, v, chunk=chunk, head=head),
                                           cols.to(x.device)).cpu())
        bar.update(cols.shape[1])
    bar.close()
    return {"kernel_distance": None, "profile": torch.cat(parts).numpy(), "trace2": None,
            "note": "kernel distance unavailable on the matvec route (it needs both K and K2); the profile uses "
                    "K2's matvec"}


# -- outputs -----------------------------------------------------------------------------------------------
def _summary(opt, loaded, other, source, data_options, points, route, why, plan, num_params, k, evals, trace,
             alignment, energy, energy_norm, seconds_k, seconds, compared, device, free, identity) -> dict[str, Any]:
    def at(values: np.ndarray) -> dict[str, float]:
        return {str(j): float(values[j - 1]) for j in REPORTED_K if j <= k}

    return {
        "checkpoint": {"path": str(loaded.path), "identity": identity(loaded.path), "spec": loaded.spec},
        "against": None if other is None else {"path": str(other.path), "identity": identity(other.path)},
        "data": {"source": source, "options": data_options, "task": opt["task"], "classes": points.classes,
                 "seed": opt["seed"], "test_seed": opt["seed"] + TEST_SEED_OFFSET},
        "n": int(len(points.labels)), "n_train": int(len(points.train_indices)),
        "n_test": int(len(points.test_indices)), "P": int(num_params), "k": int(k), "head": opt["head"],
        "route": route, "route_asked": opt["route"], "route_reason": why, "memory_plan": plan["route"],
        "free_bytes": free, "device": str(device), "seconds": seconds, "seconds_kernel_and_eigen": seconds_k,
        "trace": trace, "eigenvalues_top5": [float(v) for v in evals[:5]],
        "alignment": alignment,
        "alignment_note": None if alignment is not None else "A(K, y) needs ‖K‖_F: unavailable on the matvec route",
        "energy": at(energy), "energy_nonsquared": at(energy_norm),
        "energy_note": "E_k(y) = ‖Φ_kᵀ y‖² / ‖y‖² on all n points, y = ±1 labels (spec 002d §1, a reading, "
                       "flagged); energy_nonsquared = ‖Φ_kᵀ y‖ / ‖y‖ (third-party align repo's form, flagged)",
        "kernel_distance": None if compared is None else compared["kernel_distance"],
        "kernel_distance_note": None if compared is None else compared["note"],
        "trace_against": None if compared is None else compared["trace2"],
    }


def _write(out: Path, points: Points, evals: Tensor, evecs: Tensor, energy: np.ndarray, energy_norm: np.ndarray,
           compared: dict | None, summary: dict, ckpt: Path) -> None:
    from ..atomic import atomic_write_text
    from ..data.tasks import save_eigenfunctions
    from ..results.tables import to_csv
    from .ntk_plots import plot_alignment_profile, plot_energy, plot_spectrum

    lam = evals.numpy()
    ks = np.arange(1, len(lam) + 1)
    name = f"{ckpt.parent.name}/{ckpt.name}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_eigenfunctions(out / "eigen.npz", lam, evecs.numpy(), points.train_indices, points.test_indices)
        to_csv([{"index": j, "eigenvalue": float(v)} for j, v in enumerate(lam)], out / "eigenvalues.csv",
               ["index", "eigenvalue"])
        plot_spectrum(lam, out / "spectrum.png", title=f"NTK spectrum of {name} (n = {summary['n']:,})")
        to_csv([{"k": int(kk), "squared": sq, "energy": float(e)}
                for sq, values in ((1, energy), (0, energy_norm)) for kk, e in zip(ks, values)],
               out / "energy.csv", ["k", "squared", "energy"])
        plot_energy(energy, energy_norm, out / "energy.png", title=f"energy of the labels in the top-k eigenvectors "
                                                                   f"of {name}")
        if compared is not None:
            a = compared["profile"]
            to_csv([{"index": j, "eigenvalue": float(v), "a": float(aj), "ratio": float(aj / v) if v else None}
                    for j, (v, aj) in enumerate(zip(lam, a))], out / "alignment_profile.csv",
                   ["index", "eigenvalue", "a", "ratio"])
            plot_alignment_profile(a, lam, out / "alignment_profile.png",
                                   title=f"K of {summary['against']['path']} along the eigenvectors of {name}")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    except OSError as e:
        raise R18Error(f"cannot write into {out}: {e.strerror or e}; choose a writable --out") from None


def _print_table(s: dict, out: Path) -> None:
    from ..results.tables import to_markdown

    def num(v, fmt=".4g"):
        return "unavailable" if v is None else format(v, fmt)

    rows = [("route", s["route"]), ("n (train + test)", f"{s['n']:,} ({s['n_train']:,} + {s['n_test']:,})"),
            ("P", f"{s['P']:,}"), ("seconds", f"{s['seconds']:.1f}"),
            ("top-5 eigenvalues", ", ".join(format(v, ".4g") for v in s["eigenvalues_top5"])),
            ("trace", num(s["trace"])), ("alignment A(K, y)", num(s["alignment"]))]
    rows += [(f"E_{j}(y)", f"{v:.4f}") for j, v in s["energy"].items()]
    if s["against"] is not None:
        rows.append(("kernel distance d(K, K2)", num(s["kernel_distance"])))
    print(to_markdown([{"quantity": q, "value": v} for q, v in rows], ["quantity", "value"]), end="")
    for note in ("alignment_note", "kernel_distance_note"):
        if s.get(note):
            print(f"note: {s[note]}")
    print(f"written to {out}: eigen.npz, eigenvalues.csv, spectrum.png, energy.csv, energy.png, summary.json"
          + (", alignment_profile.csv, alignment_profile.png" if s["against"] is not None else ""))


__all__ = ["run_ntk", "free_memory"]
