"""The consolidation protocol's measurements (spec 001 §2.3, §5.1): pooled features of every representation on the
downstream pools and test images (cached per model), few-shot and full linear-SVM probes on the related and
unrelated tasks with episodes shared by every model, upstream accuracy on the teachers' classes and the `gen` head's
fidelity to the generalist's coarse labels; and the report written from them."""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from .base import RunContext


def _episode_hash(indices: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:16]


def probe_all(proto, models: dict) -> dict[str, Any]:
    """Probe every model of a `Consolidate` protocol; returns {probes, upstream, settings, timing} (see
    `consolidate_claims.evaluate_checks` for the record shapes)."""
    from ..analysis.probe import features, fewshot_probe, full_probe, select_classes
    from ..data.indices import read_indices
    from ..data.loading import load
    from ..data.training import source_options
    from ..predict import predict

    s, d = proto.settings, proto.data
    p = s.probes
    opts = source_options(d)
    train = load(d.source, split=d.train_split, **opts)
    test = load(d.source, split=d.test_split, **opts)
    down = read_indices(proto.write_pools()["down"], len(train))
    cache = proto.out / "features"
    tasks = {"related": s.related, "unrelated": s.unrelated}
    wanted = [*s.related, *s.unrelated]
    test_rows, _ = select_classes(test.labels, test.classes, wanted)
    rows = {}
    for task, classes in tasks.items():
        pool_at, pool_y = select_classes(train.labels[down], train.classes, classes)
        test_at, test_y = select_classes(test.labels[test_rows], test.classes, classes)
        rows[task] = (pool_at, pool_y, test_at, test_y)
    probes, upstream, timing = [], [], {"features_s": 0.0, "probe_s": 0.0, "episodes": 0, "images": 0}
    for rep in models.values():
        name, seed, weights = rep.name, rep.seed, rep.weights
        tic = time.perf_counter()
        f_pool, _ = features(weights, d.source, split=d.train_split, indices=down, data_options=opts, cache_dir=cache)
        f_test, _ = features(weights, d.source, split=d.test_split, indices=test_rows, data_options=opts,
                             cache_dir=cache)
        timing["features_s"] += time.perf_counter() - tic
        timing["images"] += len(down) + len(test_rows)
        tic = time.perf_counter()
        for task, (pool_at, pool_y, test_at, test_y) in rows.items():
            task_key = f"{task}:{','.join(tasks[task])}"
            few = fewshot_probe(f_pool[pool_at], pool_y, f_test[test_at], test_y, task_key=task_key, shots=p.shots,
                                episodes=p.episodes, seed=p.seed, c_grid=p.c_grid, folds=p.folds,
                                class_names=tasks[task])
            probes.append({"model": name, "seed": seed, "task": task, "kind": "fewshot", "accuracies": few["accuracies"],
                           "episode_indices_hash": _episode_hash(few["indices"]), "C": few["C"]})
            timing["episodes"] += p.episodes
            if p.full:
                full = full_probe(f_pool[pool_at], pool_y, f_test[test_at], test_y, c_grid=p.c_grid, folds=p.folds,
                                  seed=p.seed)
                probes.append({"model": name, "seed": seed, "task": task, "kind": "full",
                               "accuracies": [full["accuracy"]], "episode_indices_hash": "full", "C": [full["C"]]})
        timing["probe_s"] += time.perf_counter() - tic
        upstream.append({"model": name, "seed": seed, **_upstream(proto, rep, test, predict)})
    return {"probes": probes, "upstream": upstream, "timing": timing,
            "svm": {"c_grid": p.c_grid, "folds": p.folds, "shots": p.shots, "episodes": p.episodes, "seed": p.seed},
            "tasks": tasks, "teachers": {t: ts.classes for t, ts in s.teachers.items()}}


def _upstream(proto, rep, test, predict) -> dict[str, Any]:
    """Accuracy (%) on each teacher's classes' test images — the teacher's `main` head, a student's head named after
    the teacher — and the `gen` head's accuracy on the generalist's coarse test labels (fidelity); one prediction
    pass over the test split serves both."""
    from ..analysis.probe import select_classes
    from ..data.tasks import group
    from ..models.io import load_checkpoint
    s = proto.settings
    loaded = load_checkpoint(rep.weights, "cpu")
    heads = list(getattr(loaded.model, "head_classes", {}))
    coarse_head = "main" if rep.role == "generalist" else "gen" if rep.role == "student" and "gen" in heads else None
    wanted = {t: ("main" if rep.teacher == t else t if rep.role == "student" and t in heads else None)
              for t in s.teachers}
    if coarse_head is None and not any(wanted.values()):
        return {"upstream": None, "upstream_per_teacher": {}, "fidelity": None}
    logits = predict(loaded, test).logits
    per_teacher: dict[str, float] = {}
    for t, head in wanted.items():
        if head is not None:
            rows, y = select_classes(test.labels, test.classes, s.teachers[t].classes)
            per_teacher[t] = float(100.0 * (logits[head][rows].argmax(1) == y).mean())
    fidelity = None
    if coarse_head is not None:  # the generalist's label map, as its training task applied it
        coarse = group(test, test, s.generalist_groups)
        rows = coarse.train_source if coarse.train_source is not None else np.arange(len(test))
        fidelity = float(100.0 * (logits[coarse_head][rows].argmax(1) == coarse.train.labels).mean())
    up = float(np.mean(list(per_teacher.values()))) if per_teacher else None
    return {"upstream": up, "upstream_per_teacher": per_teacher, "fidelity": fidelity}


def read_probes(proto) -> dict[str, Any] | None:
    path = proto.probes_path()
    return json.loads(path.read_text()) if path.is_file() else None


def write_protocol_report(proto, ctx: RunContext, title: str) -> str:
    """Tables and plots of a finished protocol (consolidate_report), or what is still missing."""
    from .consolidate_report import write_report
    proto.plan()
    done = [sp for sp in proto.specs if sp.run_id in ctx.done]
    payload = read_probes(proto)
    if payload is None:
        return (f"{len(done)} of {len(proto.specs)} runs finished; the probes run once every run has finished "
                f"(then `{proto.probes_path().name}` appears under {proto.out / 'probes'})")
    s = proto.settings
    seen = {c for members in s.generalist_groups.values() for c in members}
    settings = {"tau_related": s.tau_related, "tau_unrelated": s.tau_unrelated, "bootstrap_resamples": s.bootstrap,
                "bootstrap_seed": 0,
                # the note of spec §7.14 (K2 partly guaranteed) applies when G was trained on the unrelated classes
                "scale": "tiny" if seen & set(s.unrelated) else "custom", "timing": payload.get("timing"), "tasks": payload.get("tasks"),
                "teachers": payload.get("teachers"), "svm": payload.get("svm")}
    text = write_report(payload["probes"], payload["upstream"], settings, proto.out / "report", title)
    t = payload.get("timing") or {}
    if t.get("features_s"):
        text += (f"\n\nProbe cost: feature extraction {t['images']} images in {t['features_s']:.1f} s "
                 f"({t['images'] / max(t['features_s'], 1e-9):.0f} images/s, cached per model afterwards); "
                 f"{t['episodes']} few-shot episodes (+ full-pool probes) in {t['probe_s']:.1f} s "
                 f"({t['probe_s'] / max(t['episodes'], 1):.3f} s per episode incl. the full probes).")
    return text
