"""Active learning (paper 000, sec. 3.2 and appendix A.4, after LLAL's setup): a labelled and an unlabelled pool;
each cycle trains every arm (a method × an acquisition) from scratch on its labelled pool, draws a seeded random
subset of the unlabelled images, scores it with that cycle's model and moves the best `budget` images into the pool.

The plan is dynamic: cycle k+1's runs exist only once cycle k's acquisitions are written. Each pool is a file,
`pools/<arm>/seed<s>/cycle<k>.json` (indices into the training split, and for k > 0 the acquired rows with their
scores, the candidates scored and the run that scored them), written atomically once and never recomputed, so a
killed protocol resumes where it stopped, a choice can be audited, and a cycle can be re-run from its pool.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from pydantic import Field, field_validator

from ..config import Strict, _deep_merge, build_config, config_dict, run_identity
from ..errors import ConfigError
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .spec import RunSpec, external_weight_ids


class ActiveSettings(Strict):
    #: labelled images at cycle 0 (a seeded uniform draw from the training split, the same for every arm)
    initial: int = Field(1000, ge=1)
    #: images moved into the labelled pool per cycle
    budget: int = Field(1000, ge=1)
    #: training cycles (cycle 0 included)
    cycles: int = Field(10, ge=1)
    #: the seeded random subset of the unlabelled pool scored each cycle (LLAL: 10,000)
    candidates: int = Field(10000, ge=1)
    seeds: list[int] = [0, 1, 2, 3, 4]
    #: "<method>/<acquisition>": a method (protocols.methods or method_defs) and an acquisition (ACQUISITIONS)
    arms: list[str] = ["resnet18/random", "resnet18/entropy", "resnet18/coreset", "llal/llal", "fr-resnet18/entropy"]
    method_defs: dict[str, dict[str, Any]] = {}
    #: the head whose softmax entropy / margin / BALD score (paper 000 queries FR models with `main`)
    query_head: str = "main"
    #: BALD: MC-dropout passes and the dropout rate applied to the pooled features before the linear head
    bald_passes: int = Field(20, ge=2)
    bald_dropout: float = Field(0.5, gt=0, lt=1)

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a.count("/") != 1 or not all(a.split("/"))]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"arms must be distinct 'method/acquisition' entries, got {bad or v}")
        return v


def arm_parts(arm: str) -> tuple[str, str]:
    method, acquisition = arm.split("/")
    return method, acquisition


@PROTOCOLS.register("active")
class Active(Protocol):
    """active learning: cycles of train → score a seeded unlabelled subset → acquire, per arm (method ×
    acquisition) and seed (paper 000 sec. 3.2, LLAL's setup)"""

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        from .acquisition import ACQUISITIONS
        from .lowdata import method_overlay

        self.name, self.out = name, Path(out)
        tree = copy.deepcopy(tree)
        self.settings = s = validate_settings(ActiveSettings, tree.pop("protocol", {}) or {})
        self.base = tree
        cfg = build_config(tree)  # validate the base config early, naming any bad key
        if cfg.data.labels is not None or cfg.data.indices is not None:
            raise ConfigError("protocol active chooses the labelled pool itself; drop data.labels / data.indices")
        for arm in s.arms:
            method, acquisition = arm_parts(arm)
            method_overlay(method, s)  # unknown method: one line
            ACQUISITIONS.get(acquisition)  # unknown acquisition: one line listing them
            heads = config_dict(build_config(_deep_merge(tree, method_overlay(method, s))))["model"]["heads"]
            kind_of = {(h if isinstance(h, str) else h.get("name")): (h if isinstance(h, str)
                                                                      else h.get("type", h.get("name"))) for h in heads}
            names, kinds = set(kind_of), set(kind_of.values())
            if acquisition == "llal" and "llal" not in kinds:
                raise ConfigError(f"arm {arm}: acquisition llal needs the llal head; use method llal (heads "
                                  f"[main, llal], objective [ce, llal], hook llal_detach) or add it")
            if acquisition in ("entropy", "margin", "bald") and s.query_head not in names:
                raise ConfigError(f"arm {arm}: acquisition {acquisition} scores protocol.query_head "
                                  f"{s.query_head!r}, which the method's model lacks (heads {sorted(names)})")
            if acquisition == "bald" and kind_of.get(s.query_head) != "main":
                raise ConfigError(f"arm {arm}: bald puts MC dropout before a linear head and "
                                  f"{s.query_head!r} is not one; query the main head")
        self.n_train = self._train_size()
        final = s.initial + (s.cycles - 1) * s.budget
        if final > self.n_train:
            raise ConfigError(f"protocol active needs {final} labelled images after {s.cycles} cycles "
                              f"({s.initial} + {s.cycles - 1} × {s.budget}) but the training split has "
                              f"{self.n_train}; lower cycles, budget or initial")
        self.specs: list[RunSpec] = []
        self._by_identity: dict[str, RunSpec] = {}

    # -- data ------------------------------------------------------------------------------------------------
    def _train_size(self) -> int:
        from .lowdata import pool_labels
        labels, _ = pool_labels(self.base)
        return len(labels)

    def pool_path(self, arm: str, seed: int, cycle: int) -> Path:
        """Cycle 0's pool is one file per seed, shared by every arm (so arms of one method share that run)."""
        if cycle == 0:
            return self.out / "pools" / "initial" / f"seed{seed}.json"
        return self.out / "pools" / arm.replace("/", "--") / f"seed{seed}" / f"cycle{cycle}.json"

    def initial_pool(self, seed: int) -> list[int]:
        """The cycle-0 pool of `seed`: a uniform draw without replacement, identical for every arm."""
        rng = np.random.default_rng([seed, 0xA17])
        return sorted(int(i) for i in rng.permutation(self.n_train)[:self.settings.initial])

    def write_pool(self, path: Path, record: dict[str, Any]) -> None:
        from ..atomic import atomic_write_text
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record) + "\n")

    def read_pool(self, path: Path) -> dict[str, Any]:
        try:
            record = json.loads(path.read_text())
            assert isinstance(record.get("indices"), list)
            return record
        except (OSError, ValueError, AssertionError):
            raise ConfigError(f"pool file {path} is unreadable; delete it (and the later cycles of its arm) to "
                              "recompute it") from None

    # -- runs ------------------------------------------------------------------------------------------------
    def spec(self, arm: str, seed: int, cycle: int) -> RunSpec:
        from .lowdata import method_overlay
        method, _ = arm_parts(arm)
        overlay = method_overlay(method, self.settings)
        eval_head = overlay.pop("eval_head", "main")
        overlay.pop("teacher_method", None)
        pool = self.pool_path(arm, seed, cycle)
        n = len(self.read_pool(pool)["indices"])
        tree = _deep_merge(_deep_merge(self.base, overlay), {"seed": seed, "data": {"indices": str(pool)}})
        cfg = config_dict(build_config(tree))
        weight_ids = external_weight_ids(cfg)  # e.g. model.init_from: a pretrained file
        identity = run_identity(cfg, weight_ids)
        twin = self._by_identity.get(identity)  # e.g. cycle 0 of arms sharing a method: one run
        run_id = twin.run_id if twin else f"{self.name}/{arm}/c{cycle}/s{seed}/{identity}"
        out_dir = twin.out_dir if twin else \
            self.out / f"cycle{cycle}" / arm.replace("/", "--") / f"seed{seed}-{identity[:8]}"
        spec = RunSpec(run_id, cfg, out_dir, {"method": arm, "labels": n, "seed": seed, "cycle": cycle}, eval_head,
                       identity=identity, teacher_ids=weight_ids)
        self._by_identity.setdefault(identity, spec)
        return spec

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        s = self.settings
        for seed in s.seeds:
            path = self.pool_path(s.arms[0], seed, 0)
            if not path.is_file():
                self.write_pool(path, {"cycle": 0, "indices": self.initial_pool(seed)})
        alive = {(arm, seed) for arm in s.arms for seed in s.seeds}
        for cycle in range(s.cycles):
            wave = [self.spec(arm, seed, cycle) for seed in s.seeds for arm in s.arms if (arm, seed) in alive]
            self.specs += wave
            yield wave
            if cycle == s.cycles - 1:
                break
            for spec in wave:
                arm, seed = spec.tags["method"], spec.tags["seed"]
                if spec.run_id not in ctx.done:  # a failed run ends its chain; the others go on
                    alive.discard((arm, seed))
                    continue
                nxt = self.pool_path(arm, seed, cycle + 1)
                if not nxt.is_file():
                    self.write_pool(nxt, self.acquire(spec, arm, seed, cycle))

    # -- acquisition -----------------------------------------------------------------------------------------
    def train_data(self):
        if not hasattr(self, "_train"):
            from ..data.tasks import apply_task
            from ..data.training import load_data
            d = build_config(self.base).data
            train, test = load_data(d)
            self._train = apply_task(d.task, train, test).train
        return self._train

    def acquire(self, spec: RunSpec, arm: str, seed: int, cycle: int) -> dict[str, Any]:
        """Score a seeded random subset of the unlabelled pool with the cycle's model; the next pool record."""
        from ..predict import predict
        from .acquisition import acquire
        from .acquisition_inputs import inputs_for
        s = self.settings
        _, acquisition = arm_parts(arm)
        labelled = self.read_pool(self.pool_path(arm, seed, cycle))["indices"]
        unlabelled = np.setdiff1d(np.arange(self.n_train), np.asarray(labelled, dtype=np.int64))
        rng = np.random.default_rng([seed, cycle, 0x5EED])
        candidates = np.sort(rng.permutation(unlabelled)[:s.candidates])
        if len(candidates) < s.budget:
            raise ConfigError(f"{arm} seed {seed} cycle {cycle}: {len(candidates)} unlabelled candidates for a "
                              f"budget of {s.budget}; lower the budget or the cycles")
        weights = spec.out_dir / "model.safetensors"
        data = self.train_data()
        needs_labelled = acquisition == "coreset"
        rows = np.concatenate([candidates, np.asarray(labelled, dtype=np.int64)]) if needs_labelled else candidates
        pred = predict(str(weights), data, indices=rows)
        inputs = inputs_for(acquisition, pred, len(candidates), head=s.query_head, weights=str(weights),
                            passes=s.bald_passes, dropout=s.bald_dropout, seed=seed * 1000 + cycle)
        chosen = acquire(acquisition, inputs, s.budget, seed * 1000 + cycle)
        picked = candidates[chosen.indices]
        return {"cycle": cycle + 1, "indices": sorted(int(i) for i in [*labelled, *picked]),
                "acquired": [int(i) for i in picked], "scores": [float(v) for v in chosen.pick_scores],
                "score": chosen.score_name, "largest_first": bool(chosen.largest_first), "acquisition": acquisition,
                "candidates": [int(i) for i in candidates],
                "candidate_scores": [float(v) if np.isfinite(v) else None for v in chosen.scores],
                "scored_by": spec.run_id}

    # -- report ----------------------------------------------------------------------------------------------
    def report(self, ctx: RunContext, title: str) -> str:
        from ..results.tables import to_csv, to_markdown
        from .lowdata import LowDataSettings
        from .report import collect_rows, write_report
        rows = collect_rows(self.specs, LowDataSettings(methods=self.settings.arms, labels=[1], seeds=[0]))
        text = write_report(rows, self.out, title)
        overlap = self.overlaps()
        if overlap:
            to_csv(overlap, self.out / "overlap.csv")
            text += ("\n\n### Acquired-batch overlap between arms (|A ∩ B| / budget, mean over seeds), by cycle\n\n"
                     + to_markdown(overlap, None) + "\n")
        return text

    def overlaps(self) -> list[dict[str, Any]]:
        """Per pair of arms, the share of each cycle's acquired images both chose (|A ∩ B| / budget), averaged
        over the seeds where both pools exist: one row per pair, one column per cycle."""
        s = self.settings
        out = []
        for i, a in enumerate(s.arms):
            for b in s.arms[i + 1:]:
                row: dict[str, Any] = {"arm_a": a, "arm_b": b}
                for cycle in range(1, s.cycles):
                    shares = []
                    for seed in s.seeds:
                        pa, pb = self.pool_path(a, seed, cycle), self.pool_path(b, seed, cycle)
                        if pa.is_file() and pb.is_file():
                            x, y = set(self.read_pool(pa)["acquired"]), set(self.read_pool(pb)["acquired"])
                            shares.append(len(x & y) / s.budget)
                    if shares:
                        row[f"cycle {cycle}"] = round(float(np.mean(shares)), 3)
                if len(row) > 2:
                    out.append(row)
        return out
