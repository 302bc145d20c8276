"""The low-data protocol (paper 000, sec. 3.1): nested labelled pools, re-initialised model per cycle,
N seeds, a list of methods on identical splits; tables with paired tests and an accuracy-vs-labels plot."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from ..config import Strict, _deep_merge, build_config, config_dict, resolve_tree
from ..errors import ConfigError
from ..results.store import config_hash
from .methods import METHODS


class LowDataSettings(Strict):
    labels: list[int] = Field(default_factory=lambda: list(range(1000, 10001, 1000)))
    seeds: list[int] = [0, 1, 2, 3, 4]
    methods: list[str] = ["resnet18", "fr-resnet18"]
    method_defs: dict[str, dict[str, Any]] = {}


@dataclass
class RunSpec:
    """One run of a protocol: its config tree, where it goes, its store id, and what it depends on."""

    run_id: str
    config: dict[str, Any]
    out_dir: Path
    tags: dict[str, Any]
    eval_head: str = "main"
    teacher_of: str | None = None  # run_id whose model.safetensors becomes this run's teacher
    depends: list[str] = field(default_factory=list)


def load_protocol(path: str | Path, overrides: list[str], scale: str | None) -> tuple[LowDataSettings, dict]:
    """Recipe file → (protocol settings, base run-config tree) with the scale overlay and overrides applied."""
    tree = resolve_tree(path, overrides, scale)
    try:
        settings = LowDataSettings.model_validate(tree.pop("protocol", {}) or {})
    except Exception as e:  # pydantic ValidationError → one line
        errs = getattr(e, "errors", lambda: [{"loc": ("protocol",), "msg": str(e)}])()
        loc = "protocol." + ".".join(str(x) for x in errs[0]["loc"])
        raise ConfigError(f"invalid {loc!r}: {errs[0]['msg']}") from None
    if sorted(settings.labels) != settings.labels or len(set(settings.labels)) != len(settings.labels):
        raise ConfigError(f"protocol.labels must be strictly increasing, got {settings.labels}")
    build_config(tree)  # validate the base config early, naming any bad key
    return settings, tree


def method_overlay(name: str, settings: LowDataSettings) -> dict[str, Any]:
    defs = {**METHODS, **settings.method_defs}
    if name not in defs:
        raise ConfigError(f"unknown method {name!r}; choose from: {', '.join(sorted(defs))}")
    return copy.deepcopy(defs[name])


def plan(settings: LowDataSettings, base: dict, out_root: Path, protocol: str = "lowdata") -> list[RunSpec]:
    """All runs, teachers first: cycle × seed × method, each on the pool (labels, split_seed = seed).
    Methods whose configs are identical (e.g. `fr-head` and `fr-resnet18`) share one run."""
    specs: dict[str, RunSpec] = {}
    by_hash: dict[str, RunSpec] = {}

    def add(method: str, n: int, seed: int) -> str:
        """Plan one run (and its teacher first); returns its key in `specs`."""
        overlay = method_overlay(method, settings)
        eval_head = overlay.pop("eval_head", "main")
        teacher_method = overlay.pop("teacher_method", None)
        tree = _deep_merge(base, overlay)
        tree = _deep_merge(tree, {"seed": seed, "data": {"labels": n, "split_seed": seed}})
        teacher = specs[add(teacher_method, n, seed)] if teacher_method else None
        teacher_id = teacher.run_id if teacher else None
        if teacher:
            tree["teacher"] = str(teacher.out_dir / "model.safetensors")
        cfg = config_dict(build_config(tree))
        chash = config_hash(cfg)
        key = f"{method}/n{n}/s{seed}"
        if key not in specs:
            twin = by_hash.get(chash)
            run_id = twin.run_id if twin else f"{protocol}/{key}/{chash}"
            out_dir = twin.out_dir if twin else out_root / f"n{n}" / method / f"seed{seed}"
            specs[key] = RunSpec(run_id, cfg, out_dir, {"method": method, "labels": n, "seed": seed}, eval_head,
                                 teacher_id, [teacher_id] if teacher_id else [])
            by_hash.setdefault(chash, specs[key])
        return key

    for n in settings.labels:
        for seed in settings.seeds:
            for method in settings.methods:
                add(method, n, seed)
    return list(specs.values())
