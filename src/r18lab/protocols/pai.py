"""The pruning-at-initialisation sweep (paper 002, first work; spec 002a §2, §4): generator × density ×
pretraining steps × seed, each run one config with a `prune` hook, plus a dense baseline per seed; runs are
shared by identity (a rerun skips what is done) and reported by `pai_report`."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

from ..config import Strict, _deep_merge, build_config, config_dict, run_identity
from ..errors import ConfigError
from ..pruning.scores import SCORES
from ..pruning.select import check_density
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .spec import RunSpec

DENSE = "dense"


class PaiSettings(Strict):
    """methods: prune generators (`random`, `magnitude`, `snip`, `grasp`, `synflow`, `iter_snip`, `erk`) or names
    of `method_defs` (name → prune options with a `method`, e.g. `pags-snip: {method: snip, population: 20}`);
    densities: kept fractions; pretrain_steps: the pretraining modes N (0 = prune at θ0); prune: options given to
    every prune hook (scope, rounds, restart_from, samples_per_class, include, …); dense: a dense run per seed;
    baseline: the method the others are tested against (default random)."""

    methods: list[str] = ["random", "magnitude", "snip", "grasp", "synflow"]
    method_defs: dict[str, dict[str, Any]] = {}
    densities: list[float] = [0.01, 0.05, 0.1, 0.2, 0.4]
    pretrain_steps: list[int] = [0, 100]
    seeds: list[int] = [0, 1, 2]
    dense: bool = True
    prune: dict[str, Any] = {}
    baseline: str = "random"  # the method every other is compared with, paired over seeds (C1)


def parse_settings(tree: dict) -> tuple[PaiSettings, dict]:
    tree = copy.deepcopy(tree)
    settings = validate_settings(PaiSettings, tree.pop("protocol", {}) or {})
    for name, options in settings.method_defs.items():
        if name in SCORES:
            raise ConfigError(f"protocol.method_defs names {name!r}, a generator's own name; call it e.g. {name}-2")
        if "method" not in options:
            raise ConfigError(f"protocol.method_defs.{name} needs a `method` (the generator it runs)")
        SCORES.get(options["method"])
    for m in settings.methods:
        if m not in settings.method_defs and m not in SCORES:
            raise ConfigError(f"unknown pruning method {m!r}; choose one of: {', '.join(SCORES.names())} or a "
                              "name from protocol.method_defs")
    for d in settings.densities:
        check_density(d)
    if any(n < 0 for n in settings.pretrain_steps):
        raise ConfigError(f"protocol.pretrain_steps must be ≥ 0, got {settings.pretrain_steps}")
    reserved = {"method", "density", "pretrain_steps"} & set(settings.prune)
    reserved |= {k for d in settings.method_defs.values() for k in d} & {"density", "pretrain_steps"}
    if reserved:
        raise ConfigError(f"protocol.prune or method_defs sets {sorted(reserved)[0]!r}, which the sweep itself "
                          "varies; use protocol.methods / densities / pretrain_steps instead")
    if any((h if isinstance(h, str) else h.get("name")) == "prune" for h in tree.get("hooks", []) or []):
        raise ConfigError("the recipe's hooks already hold a prune hook; the pai protocol adds one per run: "
                          "remove it and put its options under protocol.prune")
    build_config(tree)  # validate the base config early, naming any bad key
    return settings, tree


def plan(settings: PaiSettings, base: dict, out_root: Path, protocol: str = "pai") -> list[RunSpec]:
    """Every run: per seed the dense baseline, then method × density × pretraining steps."""
    specs: list[RunSpec] = []
    seen: set[str] = set()

    def add(tags: dict[str, Any], overlay: dict[str, Any], folder: Path) -> None:
        cfg = config_dict(build_config(_deep_merge(base, {**overlay, "seed": tags["seed"]})))
        identity = run_identity(build_config(cfg), {})
        if identity in seen:
            return
        seen.add(identity)
        key = "/".join(str(tags[k]) for k in ("method", "density", "pretrain_steps", "seed"))
        specs.append(RunSpec(f"{protocol}/{key}/{identity}", cfg, folder / f"seed{tags['seed']}-{identity[:8]}",
                             tags, identity=identity))

    hooks = list(base.get("hooks", []) or [])
    for seed in settings.seeds:
        if settings.dense:
            add({"method": DENSE, "density": 1.0, "pretrain_steps": 0, "seed": seed}, {}, out_root / DENSE)
        for d in settings.densities:
            for n in settings.pretrain_steps:
                for m in settings.methods:
                    own = settings.method_defs.get(m, {"method": m})
                    hook = {"name": "prune", **settings.prune, **own, "density": d, "pretrain_steps": n}
                    add({"method": m, "density": d, "pretrain_steps": n, "seed": seed},
                        {"hooks": [*hooks, hook]}, out_root / f"d{d:g}" / f"pre{n}" / m)
    return specs


@PROTOCOLS.register("pai")
class Pai(Protocol):
    """pruning-at-initialisation sweep: generator × density × pretraining steps × seed, dense baseline, mask
    topology beside accuracy (paper 002, first work)"""

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        self.name, self.out = name, Path(out)
        self.settings, self.base = parse_settings(tree)
        self.specs = plan(self.settings, self.base, self.out, protocol=name)

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        yield self.specs

    def report(self, ctx: RunContext, title: str) -> str:
        from .pai_report import collect_rows, write_report

        return write_report(collect_rows(self.specs, self.out), self.settings, self.out, title)
