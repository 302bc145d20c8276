"""Representation consolidation, end to end (paper 001; spec 001 §5): a generalist on coarse labels, task teachers
started from it on their own classes, then students on unlabelled proxy images — traditional distillation (task
teachers only), consolidation (generalist + task teachers), soft labels (the generalist only) and weight variants —
over seeds; then every representation is probed on downstream classes no teacher was trained on, some in the
teachers' domain (related) and some outside it (unrelated), with few-shot episodes shared by all models.

Images come from disjoint per-class pools of the source's train split, fixed by (data, split seed) only: `gen`
(the generalist's training set and the proxy), `teach` (the teachers' classes) and `down` (the probes' training
pools); the probes test on every test image of their classes."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pydantic import Field

from ..config import Strict, _deep_merge, build_config, config_dict, run_identity
from ..errors import ConfigError
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .spec import RunSpec


class TeacherSettings(Strict):
    classes: list[str]  # the teacher's classes (a t-split); its student head gets as many outputs
    overlay: dict[str, Any] = {}
    checkpoint: str | None = None  # load this teacher instead of training it (its `main` head has len(classes))


@dataclass(frozen=True)
class Representation:
    """One model the probes read: its name in the tables (G, T, TD, ...), seed (None: trained once), the run that
    writes it (None: a loaded checkpoint), its weights and role (generalist, teacher, student)."""

    name: str
    seed: int | None
    spec: RunSpec | None
    weights: Path
    role: str
    teacher: str | None = None  # a teacher's own name


class StudentKind(Strict):
    """Which teachers a kind of student distils (spec 001 §1.4) and their weights λ (None: the objective's default,
    generalist 1 and each of N task teachers 1/N)."""

    generalist: bool = True
    task_teachers: bool = True
    generalist_weight: float | None = Field(None, ge=0)
    task_weight: float | None = Field(None, ge=0)
    seeds: list[int] | None = None  # None: protocol.seeds
    overlay: dict[str, Any] = {}


class ProbeSettings(Strict):
    shots: int = Field(5, ge=1)
    episodes: int = Field(50, ge=1)
    folds: int = Field(5, ge=2)
    c_grid: list[float] = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    full: bool = True  # also one probe on the whole downstream pool
    seed: int = 0


class ConsolidateSettings(Strict):
    seeds: list[int] = [0, 1, 2]
    teacher_seed: int = 0  # generalist and teachers are trained once
    split_seed: int = 0
    generalist_groups: dict[str, list[str]]  # the generalist's label map (coarse classes)
    generalist_checkpoint: str | None = None  # load a generalist instead of training one (its classes must match)
    teachers: dict[str, TeacherSettings]
    related: list[str]  # downstream classes in the teachers' domain
    unrelated: list[str]  # downstream classes outside it
    pools: dict[str, int] = {"gen": 1000, "teach": 1000, "down": 1000}  # images per class
    generalist: dict[str, Any] = {}  # config overlays
    teacher: dict[str, Any] = {}
    student: dict[str, Any] = {}
    students: dict[str, StudentKind] = {"TD": StudentKind(generalist=False), "RC": StudentKind(),
                                        "SL": StudentKind(task_teachers=False)}
    probes: ProbeSettings = ProbeSettings()
    tau_related: float = Field(1.25, ge=0)
    tau_unrelated: float = Field(5.0, ge=0)
    bootstrap: int = Field(2000, ge=100)


def parse_settings(tree: dict) -> tuple[ConsolidateSettings, dict]:
    tree = copy.deepcopy(tree)
    s = validate_settings(ConsolidateSettings, tree.pop("protocol", {}) or {})
    if set(s.pools) != {"gen", "teach", "down"}:
        raise ConfigError(f"protocol.pools needs exactly gen, teach and down (images per class), got {sorted(s.pools)}")
    empty = [k for k, n in s.pools.items() if n < 1]
    if empty:
        raise ConfigError(f"protocol.pools.{empty[0]} is {s.pools[empty[0]]}: that pool (the proxy, for gen) would hold no "
                          "images; give it at least 1 image per class")
    if not s.teachers:
        raise ConfigError("protocol.teachers needs at least one teacher, e.g. {t1: {classes: [cat, deer, frog]}}")
    taught = [c for t in s.teachers.values() for c in t.classes]
    for name, group in (("related", s.related), ("unrelated", s.unrelated)):
        if len(group) < 2:
            raise ConfigError(f"protocol.{name} needs at least two classes (a downstream task), got {group}")
        overlap = set(group) & set(taught)
        if overlap:
            raise ConfigError(f"protocol.{name} class {sorted(overlap)[0]!r} is also a teacher's class; downstream "
                              "classes must be classes no teacher was trained on")
    if set(s.related) & set(s.unrelated):
        raise ConfigError("protocol.related and protocol.unrelated share a class; keep them disjoint")
    for kind, k in s.students.items():
        if not (k.generalist or k.task_teachers):
            raise ConfigError(f"protocol.students.{kind} distils no teacher; set generalist or task_teachers")
    build_config(tree)
    return s, tree


def class_pools(labels: np.ndarray, classes: list[str], sizes: dict[str, int], wanted: dict[str, list[str]],
                seed: int) -> dict[str, np.ndarray]:
    """Disjoint per-class pools of rows: for each class, a permutation seeded by (seed, class index) split in the
    order gen, teach, down; `wanted[pool]` names the classes the pool draws from. Depends on (labels, seed) only."""
    out: dict[str, list[int]] = {p: [] for p in sizes}
    for c, name in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        rows = rows[np.random.default_rng([seed, c]).permutation(len(rows))]
        start = 0
        for pool, n in sizes.items():
            if name not in wanted[pool]:
                continue
            if start + n > len(rows):
                raise ConfigError(f"protocol.pools: class {name!r} has {len(rows)} training images, fewer than the "
                                  f"{sum(sizes[p] for p in sizes if name in wanted[p])} its pools need; make "
                                  "protocol.pools smaller")
            out[pool] += rows[start:start + n].tolist()
            start += n
    return {p: np.sort(np.asarray(v, np.int64)) for p, v in out.items()}


class Consolidate(Protocol):
    """generalist on coarse labels, task teachers from it, TD / RC / SL students on the unlabelled proxy over seeds,
    few-shot and full linear-SVM probes on related and unrelated downstream classes, paired by episode (paper 001)"""

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        self.name, self.out = name, Path(out)
        self.settings, self.base = parse_settings(tree)
        self.data = build_config(self.base).data
        self.generalist: RunSpec | None = None
        self.teachers: dict[str, RunSpec] = {}
        self.students: dict[str, RunSpec] = {}  # "kind#seed" → spec
        self._pool_files: dict[str, Path] = {}

    # -- data --------------------------------------------------------------------------------------------------
    def _source_train(self):
        from ..data.loading import load
        from ..data.training import source_options
        return load(self.data.source, split=self.data.train_split, **source_options(self.data))

    def write_pools(self) -> dict[str, Path]:
        """The pools as index files under out/pools (rows of the source's train split); written once."""
        from ..atomic import atomic_write_text
        if self._pool_files:
            return self._pool_files
        s = self.settings
        train = self._source_train()
        every = list(train.classes)
        for c in [*s.related, *s.unrelated, *(c for t in s.teachers.values() for c in t.classes),
                  *(c for g in s.generalist_groups.values() for c in g)]:
            if c not in every:
                raise ConfigError(f"protocol: class {c!r} is not in {self.data.source} (its classes: {', '.join(every)})")
        taught = [c for t in s.teachers.values() for c in t.classes]
        wanted = {"gen": every, "teach": taught, "down": [*s.related, *s.unrelated]}
        pools = class_pools(train.labels, every, s.pools, wanted, s.split_seed)
        folder = self.out / "pools"
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for pool, rows in pools.items():
            files[pool] = folder / f"{pool}.json"
            text = json.dumps(rows.tolist())
            if not files[pool].is_file() or files[pool].read_text() != text:
                atomic_write_text(files[pool], text)
        for t, ts in s.teachers.items():
            mine = [train.classes.index(c) for c in ts.classes]
            rows = pools["teach"][np.isin(train.labels[pools["teach"]], mine)]
            files[f"teach:{t}"] = folder / f"teach-{t}.json"
            atomic_write_text(files[f"teach:{t}"], json.dumps(rows.tolist()))
        self._pool_files = files
        return files

    # -- the runs ----------------------------------------------------------------------------------------------
    def _spec(self, role: str, label: str, overlay: dict, seed: int, ids: dict[str, str], deps: list[str],
              tags: dict[str, Any]) -> RunSpec:
        cfg = config_dict(build_config(_deep_merge(self.base, {**overlay, "seed": seed})))
        identity = run_identity(build_config(cfg), ids)
        return RunSpec(f"{self.name}/{role}/{label}/{seed}/{identity}", cfg,
                       self.out / role / f"{label}-seed{seed}-{identity[:8]}", {"role": role, **tags, "seed": seed},
                       depends=deps, identity=identity, teacher_ids=ids)

    def coarse_task(self) -> dict[str, Any]:
        return {"name": "group", "groups": self.settings.generalist_groups}

    def plan(self) -> None:
        if self.generalist is not None or self.settings.generalist_checkpoint:
            if self.teachers:
                return
        s, files = self.settings, self.write_pools()
        gen_path, gen_ids, gen_deps = self._generalist()
        for t, ts in s.teachers.items():
            if ts.checkpoint:
                continue
            overlay = _deep_merge(s.teacher, ts.overlay)
            overlay = _deep_merge(overlay, {
                "data": {"task": {"name": "select", "classes": ts.classes}, "indices": str(files[f"teach:{t}"])},
                "model": {"heads": ["main"], "init_from": {"checkpoint": gen_path}}})
            self.teachers[t] = self._spec("teacher", t, overlay, s.teacher_seed, gen_ids, gen_deps, {"name": t})
        for kind, k in s.students.items():
            for seed in (k.seeds if k.seeds is not None else s.seeds):
                self.students[f"{kind}#{seed}"] = self._student(kind, k, seed, gen_path, gen_ids, gen_deps)

    def _generalist(self) -> tuple[str, dict[str, str], list[str]]:
        s = self.settings
        if s.generalist_checkpoint:
            from ..models.io import teacher_identity
            path = s.generalist_checkpoint
            return path, {path: teacher_identity(path)}, []
        overlay = _deep_merge(s.generalist, {"data": {"task": self.coarse_task(),
                                                      "indices": str(self._pool_files["gen"])},
                                             "model": {"heads": ["main"]}})
        self.generalist = self._spec("generalist", "G", overlay, s.teacher_seed, {}, [], {"name": "G"})
        path = str(self.generalist.out_dir / "model.safetensors")
        return path, {path: self.generalist.identity}, [self.generalist.run_id]

    def _student(self, kind: str, k: StudentKind, seed: int, gen_path: str, gen_ids: dict[str, str],
                 gen_deps: list[str]) -> RunSpec:
        s = self.settings
        heads: list[Any] = []
        entries: list[dict[str, Any]] = []
        ids, deps = dict(gen_ids), list(gen_deps)  # every student starts from the generalist (§1.3, L43)
        init: dict[str, Any] = {"checkpoint": gen_path}
        if k.generalist:
            heads.append({"name": "gen", "type": "main", "classes": len(s.generalist_groups)})
            init["heads"] = {"gen": "main"}
            entries.append({"checkpoint": gen_path, "head": "gen", "generalist": True,
                            **({"weight": k.generalist_weight} if k.generalist_weight is not None else {})})
        if k.task_teachers:
            for t, ts in s.teachers.items():
                path = self.teacher_weights(t)
                heads.append({"name": t, "type": "main", "classes": len(ts.classes)})
                entries.append({"checkpoint": path, "head": t,
                                **({"weight": k.task_weight} if k.task_weight is not None else {})})
                if t in self.teachers:
                    ids[path] = self.teachers[t].identity
                    deps.append(self.teachers[t].run_id)
                else:
                    from ..models.io import teacher_identity
                    ids[path] = teacher_identity(path)
        overlay = _deep_merge(_deep_merge(s.student, k.overlay), {
            "data": {"task": self.coarse_task(), "indices": str(self._pool_files["gen"])},
            "model": {"heads": heads, "init_from": init},
            "objective": [{"name": "consolidate", "teachers": entries}]})
        return self._spec("student", kind, overlay, seed, ids, deps, {"kind": kind})

    @property
    def specs(self) -> list[RunSpec]:
        return [*([self.generalist] if self.generalist else []), *self.teachers.values(), *self.students.values()]

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        from .runner import dependency_waves
        self.plan()
        yield from dependency_waves(self.specs)
        self.run_probes(ctx)

    # -- probes ------------------------------------------------------------------------------------------------
    def teacher_weights(self, t: str) -> str:
        ts = self.settings.teachers[t]
        return ts.checkpoint or str(self.teachers[t].out_dir / "model.safetensors")

    def models(self) -> dict[str, Representation]:
        """Every representation probed, by key: the generalist `G`, each teacher `T:<name>` (named `T` in the tables
        when there is one), each student `<kind>#<seed>`."""
        s = self.settings
        gen = Path(s.generalist_checkpoint) if s.generalist_checkpoint else self.generalist.out_dir / "model.safetensors"
        out = {"G": Representation("G", None, self.generalist, gen, "generalist")}
        for t in s.teachers:
            out[f"T:{t}"] = Representation("T" if len(s.teachers) == 1 else f"T:{t}", None, self.teachers.get(t),
                                           Path(self.teacher_weights(t)), "teacher", t)
        for key, spec in self.students.items():
            out[key] = Representation(spec.tags["kind"], spec.tags["seed"], spec, spec.out_dir / "model.safetensors",
                                      "student")
        return out

    def probes_path(self) -> Path:
        ids = sorted(r.spec.identity if r.spec else str(r.weights) for r in self.models().values())
        key = json.dumps([ids, self.settings.probes.model_dump(), self.settings.related, self.settings.unrelated,
                          self.settings.pools, self.settings.split_seed], sort_keys=True)
        return self.out / "probes" / f"probes-{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"

    def run_probes(self, ctx: RunContext) -> Path | None:
        """Features of every finished model (cached per model), then the few-shot and full probes and the upstream
        accuracies; written once to probes/probes-<key>.json."""
        from ..atomic import atomic_write_text
        from .consolidate_probes import probe_all
        path = self.probes_path()
        if path.is_file():
            return path
        models = self.models()
        missing = [k for k, r in models.items() if r.spec is not None and r.spec.run_id not in ctx.done]
        if missing:
            print(f"{self.name}: probes wait for {len(missing)} unfinished run(s), e.g. {missing[0]}", flush=True)
            return None
        payload = probe_all(self, models)
        atomic_write_text(path, json.dumps(payload))
        return path

    def report(self, ctx: RunContext, title: str) -> str:
        from .consolidate_probes import write_protocol_report
        return write_protocol_report(self, ctx, title)


PROTOCOLS.register("consolidate")(Consolidate)
