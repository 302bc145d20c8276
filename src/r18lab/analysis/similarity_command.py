"""`r18lab analyze similarity STUDENT... --teacher T --data SOURCE [key=value ...] --baseline S_ind [--baseline2 S_ind2]
[--foreign F] [--measures m1,m2,...] [--n N] [--split test] [--seed S] [--out DIR] [--json] [--csv FILE]`: what a
student inherits from its teacher (paper 002c, spec §2) — one table, rows = students (the baseline included), columns
= measures, each value with its 95 % interval (Wilson for per-image 0/1 outcomes, percentile bootstrap otherwise) and
the paired difference from the baseline student with its paired-bootstrap interval; seconds per measure; JSON with
the details (ε of the attack, the CKA matrices). Every input is read and checked before anything is written."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .nets import Net, to_unit
from .similarity import min_n
from .similarity_suite import (Suite, SuiteOptions, interval, measure_names, paired_difference, run_suite,
                               split_measure)

DEFAULT_MEASURES = "agreement,cka,cam,adv,invariance:color,invariance:crop,invariance:shift,consensus:grayscale,boundary"


def parse_measures(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--measures is empty; choose from {', '.join(measure_names())}")
    for n in names:
        split_measure(n)
    if len(set(names)) != len(names):
        raise ConfigError(f"--measures names a measure twice: {text}")
    return names


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A class-balanced seeded subset of n indices (all when n ≥ len)."""
    from ..data.splits import nested_pools
    if n >= len(labels):
        return np.arange(len(labels))
    return np.sort(nested_pools(labels, [n], seed=seed)[0])


def score_table(result: dict[str, Any], baseline: str | None, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Rows = students; per measure the value, its interval and the paired difference from the baseline."""
    rows = []
    for student, scores in result["scores"].items():
        row: dict[str, Any] = {"student": student}
        for m, sc in scores.items():
            iv = interval(sc, confidence)
            row[m] = sc.value
            row[f"{m} CI"] = f"[{iv.low:.3g}, {iv.high:.3g}]" if iv else "—"
            if baseline is not None and student != baseline:
                d = paired_difference(sc, result["scores"][baseline][m], confidence)
                row[f"{m} Δ"] = d.estimate if d else math.nan
                row[f"{m} Δ CI"] = f"[{d.low:.3g}, {d.high:.3g}]" if d else "—"
        rows.append(row)
    return rows


def _jsonable(result: dict[str, Any], table: list[dict]) -> dict[str, Any]:
    return {"seconds": result["seconds"], "table": table,
            "details": {s: {m: sc.extra for m, sc in scores.items()} for s, scores in result["scores"].items()}}


def run_similarity(a: argparse.Namespace) -> int:
    from .. import data as data_mod
    from ..results.tables import to_csv, to_markdown
    from ..train.checkpoint import atomic_write_text
    from ..train.environment import pick_device
    from .commands import checkpoint_inputs

    if not a.teacher:
        raise ConfigError("`analyze similarity` needs --teacher T.safetensors (the students are the positionals)")
    paths, source, data_options = checkpoint_inputs(a, "similarity", "compare the models on")
    measures = parse_measures(a.measures or DEFAULT_MEASURES)
    device = pick_device(a.device or "auto")
    names = _names(a.labels, paths)
    by_path = {Path(p).resolve(): n for p, n in zip(paths, names)}
    teacher = Net.load(a.teacher, device, name="teacher")
    students = {n: Net.load(p, device, name=n) for n, p in zip(names, paths)}
    baseline = _pick(a.baseline, by_path, students, "--baseline")
    baseline2 = _pick(a.baseline2, by_path, students, "--baseline2") if a.baseline2 else None
    if baseline2 is not None and baseline2 is baseline:
        raise ConfigError("--baseline2 must be another independent student than --baseline")
    foreign = Net.load(a.foreign, device, name="foreign") if a.foreign else None
    ds = data_mod.load(source, split=a.split or "test", **data_options)
    n, h, w, c = ds.images.shape
    teacher.preprocessing.check_images((n, c, h, w), f"{source}")
    if teacher.classes and list(ds.classes) != list(teacher.classes):
        raise ConfigError(f"{source} names its classes {list(ds.classes)[:4]}… but the teacher was trained on "
                          f"{list(teacher.classes)[:4]}…; use the teacher's data")
    idx = balanced_subset(ds.labels, a.n or 2000, a.seed or 0)
    if len(idx) < min_n():
        raise ConfigError(f"too few images ({len(idx)}) for a 95% interval; pass --n {min_n()} or more")
    x01 = to_unit(torch.from_numpy(ds.images[idx]).permute(0, 3, 1, 2).contiguous())
    labels = torch.from_numpy(ds.labels[idx])
    if "cam" in measures and baseline is None:
        raise ConfigError("measure cam compares each student with the baseline student: pass --baseline PATH")
    taps = tuple(t.strip() for t in a.taps.split(",") if t.strip()) if a.taps else None
    if taps and "cka" in measures:  # a tap missing in any model is one line naming the valid taps, before any work
        from .similarity import tap_names
        for net in [teacher, *students.values()]:
            missing = [t for t in taps if t not in tap_names(net.model)]
            if missing:
                raise ConfigError(f"--taps {missing[0]!r} is not a layer of {net.name}; valid taps: "
                                  f"{', '.join(tap_names(net.model))}")
    options = SuiteOptions(seed=a.seed or 0, batch_size=a.batch_size or 256, taps=taps)
    suite = Suite(teacher, x01, labels, baseline, baseline2, foreign, options)
    out = Path(a.out) if a.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    result = run_suite(suite, students, measures, log=lambda s: print(s, file=sys.stderr, flush=True))
    base_name = next((n for n, s in students.items() if s is baseline), None)
    table = score_table(result, base_name)
    payload = _jsonable(result, table)
    payload.update({"teacher": str(a.teacher), "data": source, "images": len(idx), "measures": measures,
                    "baseline": base_name})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "similarity.json", json.dumps(payload, indent=2, default=float))
        to_csv(table, out / "similarity.csv")
        _plot_cka(result, out)
    if a.csv:
        to_csv(table, a.csv)
    if a.json:
        print(json.dumps(payload, indent=2, default=float))
    else:
        cols = ["student"] + [c for m in measures for c in (m, f"{m} CI", f"{m} Δ", f"{m} Δ CI")
                              if any(c in r for r in table)]
        print(to_markdown(table, cols, floatfmt=".3g"))
        print("seconds per measure: " + ", ".join(f"{m} {s:.1f}" for m, s in result["seconds"].items()))
    return 0


def _names(labels: str | None, paths: list[Path]) -> list[str]:
    from .commands import _label
    if labels is None:
        return [_label(p, paths) for p in paths]
    names = [t.strip() for t in labels.split(",")]
    if len(names) != len(paths) or not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"--labels must give {len(paths)} distinct names, one per student in order")
    return names


def _pick(path: str | None, by_path: dict[Path, str], students: dict[str, Net], flag: str) -> Net | None:
    if path is None:
        return None
    name = by_path.get(Path(path).resolve())
    if name is None:
        raise ConfigError(f"{flag} {path} is not one of the students; list it among the positional checkpoints too")
    return students[name]


def _plot_cka(result: dict[str, Any], out: Path) -> None:
    """A CKA heat-map (teacher taps × student taps) per student, side by side (Fig. 9)."""
    mats = [(s, sc["cka"].extra) for s, sc in result["scores"].items() if "cka" in sc]
    if not mats:
        return
    from matplotlib.figure import Figure

    from ..results.plots import save_png
    fig = Figure(figsize=(4 * len(mats), 3.8))
    for i, (student, d) in enumerate(mats):
        ax = fig.add_subplot(1, len(mats), i + 1)
        im = ax.imshow(np.asarray(d["matrix"]), vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_xticks(range(len(d["taps_student"])), d["taps_student"], rotation=60, fontsize=7)
        ax.set_yticks(range(len(d["taps_teacher"])), d["taps_teacher"], fontsize=7)
        ax.set_title(f"teacher vs {student}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_png(fig, out / "cka.png")
