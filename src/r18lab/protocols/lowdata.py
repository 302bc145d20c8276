"""The low-data protocol (paper 000, sec. 3.1): nested labelled pools, re-initialised model per cycle,
N seeds, a list of methods on identical splits; tables with paired tests and an accuracy-vs-labels plot."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

from pydantic import Field, field_validator

from ..config import TEACHER_OBJECTIVES, Strict, _deep_merge, build_config, config_dict, resolve_tree, run_identity
from ..errors import ConfigError
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .methods import METHODS
from .robustness_columns import RobustnessSettings
from .spec import RunSpec, external_weight_ids

__all__ = ["LowData", "LowDataSettings", "RunSpec", "load_protocol", "plan"]


ALL = "all"
"""A label budget meaning the full training set (data.labels unset; the runs are tagged with its size)."""


class LowDataSettings(Strict):
    #: label budgets, strictly increasing; `all` (alone or last) = the full training set
    labels: list[Union[int, Literal["all"]]] = Field(default_factory=lambda: list(range(1000, 10001, 1000)))
    seeds: list[int] = [0, 1, 2, 3, 4]
    methods: list[str] = ["resnet18", "fr-resnet18"]
    method_defs: dict[str, dict[str, Any]] = {}
    #: corruption-robustness columns (paper 000, appendix C): each finished run's eval head on CIFAR-10-C
    #: corruptions × severities generated on a seeded test subset; null = none
    robustness: Optional[RobustnessSettings] = None

    @field_validator("labels", mode="before")
    @classmethod
    def _all_alone(cls, v: Any) -> Any:
        return [v] if v == ALL else v


class CompareSettings(LowDataSettings):
    """compare's settings: by default the full training set (one budget, `all`)."""

    labels: list[Union[int, Literal["all"]]] = Field(default_factory=lambda: [ALL])


def parse_settings(tree: dict, kind: type[LowDataSettings] = LowDataSettings) -> tuple[LowDataSettings, dict]:
    """A resolved recipe tree → (protocol settings, base run-config tree), both validated (one-line errors)."""
    tree = copy.deepcopy(tree)
    settings = validate_settings(kind, tree.pop("protocol", {}) or {})
    numbers = [n for n in settings.labels if n != ALL]
    if sorted(numbers) != numbers or len(set(settings.labels)) != len(settings.labels):
        raise ConfigError(f"protocol.labels must be strictly increasing, got {settings.labels}")
    if (ALL in settings.labels and settings.labels[-1] != ALL) or any(n < 1 for n in numbers):
        raise ConfigError(f"protocol.labels must be positive label counts, with all (the full training set) last, "
                          f"got {settings.labels}")
    unknown = [m for m in (settings.robustness.methods or []) if m not in settings.methods] \
        if settings.robustness is not None else []
    if unknown:
        raise ConfigError(f"protocol.robustness.methods names {unknown[0]!r}, which is not in protocol.methods "
                          f"{settings.methods}")
    build_config(tree)  # validate the base config early, naming any bad key
    return settings, tree


def pool_labels(base: dict) -> tuple[Any, list[str]]:
    """(labels, class names) of the training images label budgets draw from, for the base config's data (its
    task applied): read once before planning, so that budgets the data cannot give fail before any run."""
    from ..data.tasks import apply_task
    from ..data.training import load_data
    d = build_config(base).data
    train, test = load_data(d)
    task = apply_task(d.task, train, test)
    return task.train.labels, list(task.train.classes)


def check_budgets(settings: LowDataSettings, base: dict) -> int:
    """The number of training images; ConfigError (one line) for a budget larger than it, or a class-balanced
    budget a class is too small for (named, with how many it lacks, and data.balanced=false offered)."""
    from ..data.training import check_pool_size
    labels, classes = pool_labels(base)
    balanced = build_config(base).data.balanced
    for n in settings.labels:
        if n != ALL:
            check_pool_size(int(n), labels, balanced, classes, key="protocol.labels")
    return len(labels)


def load_protocol(path: str | Path, overrides: list[str], scale: str | None) -> tuple[LowDataSettings, dict]:
    """Recipe file → (protocol settings, base run-config tree) with the scale overlay and overrides applied."""
    return parse_settings(resolve_tree(path, overrides, scale))


def method_overlay(name: str, settings: LowDataSettings) -> dict[str, Any]:
    defs = {**METHODS, **settings.method_defs}
    if name not in defs:
        raise ConfigError(f"unknown method {name!r}; choose from: {', '.join(sorted(defs))}")
    return copy.deepcopy(defs[name])


def with_teacher(objective: list, path: str) -> list:
    """Each entry of an objective that takes a teacher (e.g. kd) and names none gets `teacher: path`."""
    out = []
    for e in objective:
        name = e if isinstance(e, str) else e.get("name") if isinstance(e, dict) else None
        if name in TEACHER_OBJECTIVES and not (isinstance(e, dict) and e.get("teacher")):
            e = {**(e if isinstance(e, dict) else {"name": e}), "teacher": path}
        out.append(e)
    return out


def plan(settings: LowDataSettings, base: dict, out_root: Path, protocol: str = "lowdata",
         num_train: int | None = None) -> list[RunSpec]:
    """All runs, teachers first: cycle × seed × method, each on the pool (labels, split_seed = seed); the budget
    `all` trains on the full set (data.labels unset), tagged with `num_train` when given (else "all").
    A run's folder and store id carry its run identity, so runs of other overrides never share a folder;
    methods whose configs are identical (e.g. `fr-head` and `fr-resnet18`) share one run."""
    specs: dict[str, RunSpec] = {}
    by_identity: dict[str, RunSpec] = {}

    def add(method: str, budget: int | str, seed: int) -> str:
        """Plan one run (and its teacher first); returns its key in `specs`."""
        n = (num_train if num_train is not None else ALL) if budget == ALL else budget
        key = f"{method}/n{n}/s{seed}"
        if key in specs:
            return key
        overlay = method_overlay(method, settings)
        eval_head = overlay.pop("eval_head", "main")
        teacher_method = overlay.pop("teacher_method", None)
        tree = _deep_merge(base, overlay)
        tree = _deep_merge(tree, {"seed": seed, "data": {"labels": None if budget == ALL else n, "split_seed": seed}})
        teacher = specs[add(teacher_method, budget, seed)] if teacher_method else None
        teacher_ids: dict[str, str] = {}
        if teacher:
            path = str(teacher.out_dir / "model.safetensors")
            tree["objective"] = with_teacher(tree.get("objective", ["ce"]), path)
            teacher_ids[path] = teacher.identity
        cfg = config_dict(build_config(tree))
        teacher_ids = external_weight_ids(cfg, teacher_ids)  # e.g. model.init_from: a pretrained file
        identity = run_identity(cfg, teacher_ids)
        twin = by_identity.get(identity)
        run_id = twin.run_id if twin else f"{protocol}/{key}/{identity}"
        out_dir = twin.out_dir if twin else out_root / f"n{n}" / method / f"seed{seed}-{identity[:8]}"
        teacher_id = teacher.run_id if teacher else None
        specs[key] = RunSpec(run_id, cfg, out_dir, {"method": method, "labels": n, "seed": seed}, eval_head,
                             teacher_id, [teacher_id] if teacher_id else [], identity, teacher_ids)
        by_identity.setdefault(identity, specs[key])
        return key

    for n in settings.labels:
        for seed in settings.seeds:
            for method in settings.methods:
                add(method, n, seed)
    return list(specs.values())


@PROTOCOLS.register("lowdata")
class LowData(Protocol):
    """nested labelled pools × seeds × methods on identical splits (paper 000, sec. 3.1)"""

    settings_kind: type[LowDataSettings] = LowDataSettings

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        self.name, self.out = name, Path(out)
        self.settings, self.base = parse_settings(tree, self.settings_kind)
        num_train = check_budgets(self.settings, self.base)  # before any run: budgets the data cannot give
        self.specs = plan(self.settings, self.base, self.out, protocol=name, num_train=num_train)

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        from .runner import dependency_waves

        yield from dependency_waves(self.specs)  # teachers (wave 0) before their students

    def report(self, ctx: RunContext, title: str) -> str:
        from .report import collect_rows, write_report

        if self.settings.robustness is not None:
            from .robustness_columns import evaluate_runs
            chosen = self.settings.robustness.methods or self.settings.methods
            evaluate_runs([s for s in self.specs if s.tags["method"] in self.settings.methods
                           and s.tags["method"] in chosen], self.settings.robustness)
        return write_report(collect_rows(self.specs, self.settings), self.out, title)


@PROTOCOLS.register("compare")
class Compare(LowData):
    """methods side by side over seeds with the lowdata runner and report (default: the full training set)"""

    settings_kind = CompareSettings
