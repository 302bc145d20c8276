"""What students inherit from their teachers (paper 002c, spec §4 K1–K8): teachers trained with their own
augmentations, students of each kind (independent, KL, Hint, KL* …) per seed, then per check the similarity suite on
the same test images, and each claim judged as a paired difference with its interval.

`students` are kinds: a config overlay in which the string `{teacher}` is replaced by the teacher's weights and
`{seed}` by the seed; a check names them as `kind@teacher` (or `kind` for a kind that has no teacher). Runs are
shared by identity (the same independent students serve every check); the analyses are cached per check under
the protocol folder, keyed by the identities they read."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import Field

from ..config import Strict, _deep_merge, build_config, config_dict, run_identity
from ..errors import ConfigError
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .spec import RunSpec


class Check(Strict):
    """One claim family: a teacher, the students compared (the baseline first), the measures, what is expected of
    each compared student's paired difference from the baseline (`>`: larger; `=`: no gap, the control), and an
    optional contrast [A, B]: A's difference larger than B's (e.g. KL of a jittered teacher vs of a plain one)."""

    teacher: str
    students: list[str]
    baseline: str = "ind"
    measures: list[str]
    expect: dict[str, Literal[">", "="]] = {}  # per measure; default ">"
    contrast: list[str] = []
    foreign: str | None = None  # a teacher name: the unrelated net adv:foreign attacks
    statement: str = ""
    paper: str = ""


class SimilaritySettings(Strict):
    seeds: list[int] = [0, 1]
    teacher_seed: int = 0
    teachers: dict[str, dict[str, Any]]
    students: dict[str, dict[str, Any]]
    student_base: dict[str, Any] = {}
    checks: dict[str, Check]
    images: int = Field(2000, ge=10)
    suite: dict[str, Any] = {}  # SuiteOptions overrides (e.g. {triplets: 20, eps: 0.03})


def _refs(check: Check) -> list[tuple[str, str | None]]:
    out = []
    for ref in dict.fromkeys([check.baseline, *check.students, *check.contrast]):
        kind, _, teacher = ref.partition("@")
        out.append((kind, teacher or None))
    return out


def parse_settings(tree: dict) -> tuple[SimilaritySettings, dict]:
    tree = copy.deepcopy(tree)
    settings = validate_settings(SimilaritySettings, tree.pop("protocol", {}) or {})
    from ..analysis.similarity_suite import SuiteOptions, split_measure
    try:
        SuiteOptions(**settings.suite)
    except TypeError as e:
        raise ConfigError(f"protocol.suite: {e}; valid keys: {', '.join(SuiteOptions.__dataclass_fields__)}") from None
    for name, check in settings.checks.items():
        for m in check.measures:
            split_measure(m)
        if check.teacher not in settings.teachers:
            raise ConfigError(f"protocol.checks.{name}.teacher {check.teacher!r} is not in protocol.teachers "
                              f"({', '.join(settings.teachers)})")
        if check.foreign is not None and check.foreign not in settings.teachers:
            raise ConfigError(f"protocol.checks.{name}.foreign {check.foreign!r} is not in protocol.teachers")
        for kind, teacher in _refs(check):
            if kind not in settings.students:
                raise ConfigError(f"protocol.checks.{name} names student kind {kind!r}, not in protocol.students "
                                  f"({', '.join(settings.students)})")
            if teacher is not None and teacher not in settings.teachers:
                raise ConfigError(f"protocol.checks.{name}: {kind}@{teacher} names an unknown teacher")
            needs = "{teacher}" in json.dumps(settings.students[kind])
            if needs and teacher is None:
                raise ConfigError(f"protocol.checks.{name}: student kind {kind!r} learns from a teacher; write "
                                  f"{kind}@<teacher>")
        if len(check.contrast) not in (0, 2):
            raise ConfigError(f"protocol.checks.{name}.contrast must name two students, got {check.contrast}")
    if len(settings.seeds) < 2:
        raise ConfigError("protocol.seeds needs at least two seeds (the paired intervals and the Ind-vs-Ind row)")
    build_config(tree)
    return settings, tree


def _fill(tree: Any, values: dict[str, Any]) -> Any:
    """Replace the placeholders `{teacher}` / `{seed}` in every string of a config overlay."""
    if isinstance(tree, dict):
        return {k: _fill(v, values) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fill(v, values) for v in tree]
    if isinstance(tree, str) and tree in values:
        return values[tree]
    return tree


class Similarity(Protocol):
    """teachers with their own augmentations, independent / distilled students per seed, the similarity suite per
    check (Grad-CAM, adversarial transfer, invariances, boundaries, CKA) with paired intervals (paper 002c)"""

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        self.name, self.out = name, Path(out)
        self.settings, self.base = parse_settings(tree)
        self.teachers: dict[str, RunSpec] = {}
        self.students: dict[str, RunSpec] = {}  # "kind@teacher#seed" → spec
        self._plan()

    @property
    def specs(self) -> list[RunSpec]:
        return [*self.teachers.values(), *self.students.values()]

    def _plan(self) -> None:
        s = self.settings
        needed = {t for c in s.checks.values() for t in [c.teacher, *([c.foreign] if c.foreign else [])]}
        needed |= {t for c in s.checks.values() for _, t in _refs(c) if t}
        for t in [t for t in s.teachers if t in needed]:
            cfg = config_dict(build_config(_deep_merge(self.base, {**s.teachers[t], "seed": s.teacher_seed})))
            identity = run_identity(build_config(cfg), {})
            self.teachers[t] = RunSpec(f"{self.name}/teacher/{t}/{identity}", cfg,
                                       self.out / "teachers" / f"{t}-{identity[:8]}", {"role": "teacher", "name": t},
                                       identity=identity)
        for check in s.checks.values():
            for kind, teacher in _refs(check):
                for seed in s.seeds:
                    self._student(kind, teacher, seed)

    def _student(self, kind: str, teacher: str | None, seed: int) -> RunSpec:
        key = student_key(kind, teacher, seed)
        if key in self.students:
            return self.students[key]
        values: dict[str, Any] = {"{seed}": seed}
        ids, deps = {}, []
        if teacher is not None:
            t = self.teachers[teacher]
            path = str(t.out_dir / "model.safetensors")
            values["{teacher}"] = path
            ids[path], deps = t.identity, [t.run_id]
        overlay = _deep_merge(self.settings.student_base, _fill(self.settings.students[kind], values))
        cfg = config_dict(build_config(_deep_merge(self.base, {**overlay, "seed": seed})))
        identity = run_identity(build_config(cfg), ids)
        label = f"{kind}@{teacher}" if teacher else kind
        spec = RunSpec(f"{self.name}/student/{label}/{seed}/{identity}", cfg,
                       self.out / "students" / label / f"seed{seed}-{identity[:8]}",
                       {"role": "student", "kind": kind, "teacher": teacher, "seed": seed},
                       teacher_of=deps[0] if deps else None, depends=deps, identity=identity, teacher_ids=ids)
        self.students[key] = spec
        return spec

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        from .runner import dependency_waves
        yield from dependency_waves(self.specs)
        for name in self.settings.checks:
            self.run_check(name, ctx)

    # -- analyses ------------------------------------------------------------------------------------------
    def check_path(self, name: str) -> Path:
        check = self.settings.checks[name]
        ids = [self.teachers[check.teacher].identity] + [self.students[k].identity for k in self.check_students(name)]
        if check.foreign:
            ids.append(self.teachers[check.foreign].identity)
        key = json.dumps([ids, check.measures, self.settings.images, self.settings.suite], sort_keys=True)
        return self.out / "checks" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"

    def check_students(self, name: str) -> list[str]:
        check = self.settings.checks[name]
        return [student_key(kind, teacher, seed) for kind, teacher in _refs(check) for seed in self.settings.seeds]

    def run_check(self, name: str, ctx: RunContext) -> Path | None:
        """The suite for one check (cached): every student of every seed against the check's teacher."""
        import torch

        from ..analysis.nets import Net, to_unit
        from ..analysis.similarity_command import balanced_subset
        from ..analysis.similarity_suite import Suite, SuiteOptions, run_suite
        from ..atomic import atomic_write_text
        from ..data.loading import load
        from ..data.training import source_options

        path = self.check_path(name)
        if path.is_file():
            return path
        check = self.settings.checks[name]
        keys = self.check_students(name)
        runs = [self.teachers[check.teacher], *(self.students[k] for k in keys)]
        if check.foreign:
            runs.append(self.teachers[check.foreign])
        if any(r.run_id not in ctx.done for r in runs):
            return None
        teacher = Net.load(runs[0].out_dir / "model.safetensors", name=check.teacher)
        nets = {k: Net.load(self.students[k].out_dir / "model.safetensors", name=k) for k in keys}
        foreign = Net.load(self.teachers[check.foreign].out_dir / "model.safetensors") if check.foreign else None
        d = build_config(self.base).data
        ds = load(d.source, split=d.test_split, **source_options(d))
        idx = balanced_subset(ds.labels, self.settings.images, 0)
        x01 = to_unit(torch.from_numpy(ds.images[idx]).permute(0, 3, 1, 2).contiguous())
        seeds = self.settings.seeds
        base = [student_key(*_split_ref(check.baseline), s) for s in seeds]
        suite = Suite(teacher, x01, torch.from_numpy(ds.labels[idx]), nets[base[0]], nets[base[1]], foreign,
                      SuiteOptions(**self.settings.suite))
        result = run_suite(suite, nets, check.measures, log=lambda m: print(f"{name}: {m}", flush=True))
        payload = {"check": name, "seconds": result["seconds"], "images": len(idx),
                   "scores": {k: {m: {"value": sc.value, "items": None if sc.items is None else sc.items.tolist(),
                                      "binary": sc.binary, "scale": sc.scale,
                                      "extra": _plain(sc.extra)} for m, sc in v.items()}
                              for k, v in result["scores"].items()}}
        atomic_write_text(path, json.dumps(payload))
        return path

    def report(self, ctx: RunContext, title: str) -> str:
        from .similarity_report import write_report
        return write_report(self, ctx, title)


def _plain(extra: dict) -> dict:
    out = {}
    for k, v in extra.items():
        if isinstance(v, (int, float, str, bool, list, type(None))):
            out[k] = v
        elif isinstance(v, dict):
            out[k] = _plain(v)
        elif isinstance(v, np.ndarray):
            out[k] = v.tolist()
    return out


def _split_ref(ref: str) -> tuple[str, str | None]:
    kind, _, teacher = ref.partition("@")
    return kind, teacher or None


def student_key(kind: str, teacher: str | None, seed: int) -> str:
    return f"{kind}@{teacher}#{seed}" if teacher else f"{kind}#{seed}"


PROTOCOLS.register("similarity")(Similarity)
