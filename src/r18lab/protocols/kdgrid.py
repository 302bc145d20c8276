"""The teacher × student KD grid of paper 003 (specs/003-kd-residual.md §2.1): per network family, residual CE
runs R-x (the "Baseline" rows and the teachers), plain CE runs NR-s ("NR-baseline") and KD runs NR-s ← R-t with
the frozen final weights of R-t; teachers first, runs shared by run identity, resumable through the runner."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import Strict, _deep_merge, build_config, config_dict, run_identity
from ..errors import ConfigError, R18Error
from ..reference.p003_costs import variant_transforms
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .lowdata import with_teacher
from .spec import RunSpec, read_summary

__all__ = ["Cell", "Family", "KDGrid", "KDGridSettings", "Variant", "halves", "parse_settings", "parse_variant",
           "plan"]

#: the paper's grid (specs/003 §2.1): 8 NR students, 9 residual teachers
PAPER_STUDENTS = ["g2", "g4", "g8", "g16", "G2", "G4", "G8", "G16"]
PAPER_TEACHERS = ["G1", "G2", "G4", "G8", "G16", "g2", "g4", "g8", "g16"]
_VARIANT = re.compile(r"(std|g[1-9][0-9]*|G[1-9][0-9]*)")
_FAMILY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# -- grouping variants ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A grouping variant: `std` (standard convs), `gK` (K groups per conv), `GK` (K channels per group)."""

    name: str

    @property
    def kind(self) -> str:
        return "std" if self.name == "std" else self.name[0]

    @property
    def k(self) -> int | None:
        return None if self.name == "std" else int(self.name[1:])


#: pairing rule → does student s distil from teacher t? (`other_type`: constant-g ← constant-G and vice versa,
#: as in every table of paper 003, specs/003 §2.1; `all`: every teacher × every student)
PAIRINGS: dict[str, Callable[[Variant, Variant], bool]] = {
    "other_type": lambda s, t: {s.kind, t.kind} == {"g", "G"},
    "all": lambda s, t: True,
}


def parse_variant(name: Any, where: str) -> Variant:
    """A variant name → Variant, or a one-line ConfigError naming `where` it was given."""
    if not isinstance(name, str) or not _VARIANT.fullmatch(name):
        raise ConfigError(f"unknown grouping variant {name!r} in {where}; use std (standard convs), gK (K groups, "
                          "e.g. g8) or GK (K channels per group, e.g. G4; G1 = depthwise)")
    return Variant(name)


# -- settings -------------------------------------------------------------------------------------------------
#: KD loss form → (ce entry, kd entry) overlays at α (specs/003 §8.2): `hinton` = (1 − α)·CE + α·T²·KL(batchmean);
#: `moonshine` = the AT/Moonshine code's (1 − α)·CE + 2α·T²·KL/C (old PyTorch element-wise mean over C classes)
KD_FORMS: dict[str, Callable[[float], tuple[dict[str, Any], dict[str, Any]]]] = {
    "hinton": lambda a: ({"weight": round(1.0 - a, 12)}, {"weight": a}),
    "moonshine": lambda a: ({"weight": round(1.0 - a, 12)}, {"weight": 2 * a, "reduction": "elementwise_mean"}),
}


class KDOptions(BaseModel):
    """KD objective (specs/003 §2, §8.2): T, α and the loss form; extra keys (e.g. `until_epoch`) go to kd."""

    model_config = ConfigDict(extra="allow")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    form: Literal["hinton", "moonshine"] = "hinton"


class FamilySettings(Strict):
    """The protocol keys of one `protocol.families.<name>` entry; its other keys overlay the run config."""

    students: list[str] | None = None
    teachers: list[str] | None = None
    pairing: Literal["other_type", "all"] | None = None
    student_epochs: int | None = Field(None, ge=1)
    lr_decay_per_epoch: float | None = Field(None, gt=0, le=1)
    depth: int | None = Field(None, ge=1)
    over_regularised: bool | None = None


class KDGridSettings(Strict):
    families: dict[str, dict[str, Any] | None] = {}  # {}: one family named after model.name, no overlay
    students: list[str] = PAPER_STUDENTS
    teachers: list[str] = PAPER_TEACHERS
    pairing: Literal["other_type", "all"] = "other_type"
    seeds: list[int] = [0]
    teacher_seed: int | Literal["same"] = 0  # "same": each student seed distils from the teacher of that seed
    kd: KDOptions = KDOptions()
    student_epochs: int | None = Field(None, ge=1)  # KD runs only (paper: MobileNet-V2 students 300 vs 200)
    lr_decay_per_epoch: float | None = Field(None, gt=0, le=1)  # lr ×γ after every epoch (multistep, every epoch)


_KD_RESERVED = ("name", "weight", "teacher", "tag")


@dataclass(frozen=True)
class Family:
    """One network family of the grid: its run-config tree (base + overlay) and its resolved protocol keys."""

    name: str
    tree: dict[str, Any]
    students: tuple[Variant, ...]
    teachers: tuple[Variant, ...]
    pairing: str
    student_epochs: int | None
    lr_decay_per_epoch: float | None
    depth: int | None
    over_regularised: bool

    def teachers_of(self, student: Variant) -> list[Variant]:
        return [t for t in self.teachers if PAIRINGS[self.pairing](student, t)]


def _variants(names: list[str], where: str) -> tuple[Variant, ...]:
    if not names:
        raise ConfigError(f"{where} is empty; list at least one grouping variant, e.g. [g8]")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} lists a variant twice: {names}")
    return tuple(parse_variant(n, where) for n in names)


#: backbone name → (depth, over-regularised) where the name alone says it (specs/003 §1.3–1.6, §5)
KNOWN_DEPTHS: dict[str, tuple[int, bool]] = {"resnet18": (18, False), "resnet34": (34, False),
                                             "resnet50": (50, False), "mobilenet_v2": (53, True)}


def model_depth(model: dict[str, Any]) -> int | None:
    """Depth of a model tree: `wrnD_K` / `wrn` with options.depth, or a known backbone name; None if unknown."""
    name = str(model.get("name", ""))
    m = re.fullmatch(r"wrn(\d+)_(\d+)", name)
    if m:
        return int(m.group(1))
    if name == "wrn":
        return model.get("options", {}).get("depth")
    return KNOWN_DEPTHS.get(name, (None, False))[0]


def _family(name: str, entry: Any, settings: KDGridSettings, base: dict) -> Family:
    where = f"protocol.families.{name}"
    if not _FAMILY.fullmatch(name):
        raise ConfigError(f"family name {name!r} is not a folder name; use letters, digits, '_', '.', '-'")
    entry = {} if entry is None else entry
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping (run-config overlay and protocol keys), got {entry!r}")
    keys = {k: v for k, v in entry.items() if k in FamilySettings.model_fields}
    fs: FamilySettings = validate_settings(FamilySettings, keys, where)
    overlay = {k: v for k, v in entry.items() if k not in FamilySettings.model_fields}
    if "objective" in overlay:
        raise ConfigError(f"{where}.objective: kdgrid sets each run's objective; put KD options under protocol.kd")
    tree = _deep_merge(base, overlay)
    try:
        build_config(tree)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None

    def listed(own: list[str] | None, key: str) -> tuple[Variant, ...]:
        return _variants(own, f"{where}.{key}") if own is not None else _variants(getattr(settings, key),
                                                                                f"protocol.{key}")

    students, teachers = listed(fs.students, "students"), listed(fs.teachers, "teachers")
    model = tree.get("model", {}) or {}
    known = KNOWN_DEPTHS.get(str(model.get("name", "")), (None, False))
    fam = Family(name, tree, students, teachers, fs.pairing or settings.pairing,
                 fs.student_epochs or settings.student_epochs,
                 fs.lr_decay_per_epoch or settings.lr_decay_per_epoch,
                 fs.depth or model_depth(model),
                 known[1] if fs.over_regularised is None else fs.over_regularised)
    for s in students:
        if not fam.teachers_of(s):
            raise ConfigError(f"protocol.pairing {fam.pairing} gives student NR-{s.name} of family {name} no teacher "
                              f"among {[t.name for t in teachers]}; list a teacher of the other grouping type "
                              "(gK ↔ GK) or set protocol.pairing=all")
    for t in teachers:  # a listed teacher that teaches nobody is a mistake, not something to skip silently
        if not any(PAIRINGS[fam.pairing](s, t) for s in students):
            raise ConfigError(f"protocol.pairing {fam.pairing} gives teacher R-{t.name} of family {name} no student "
                              f"among {[s.name for s in students]}; drop it from the teachers or set "
                              "protocol.pairing=all")
    return fam


def parse_settings(tree: dict) -> tuple[KDGridSettings, list[Family]]:
    """A resolved recipe tree → (protocol settings, families with their run-config trees), validated (one line)."""
    tree = copy.deepcopy(tree)
    settings: KDGridSettings = validate_settings(KDGridSettings, tree.pop("protocol", {}) or {}, "protocol")
    if "objective" in tree:
        raise ConfigError("kdgrid sets each run's objective (CE, or (1 − α)·CE + α·KD); remove `objective` from "
                          "the recipe and put KD options under protocol.kd")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise ConfigError(f"protocol.seeds must list distinct seeds, got {settings.seeds}")
    bad = [k for k in (settings.kd.model_extra or {}) if k in _KD_RESERVED]
    if bad:
        raise ConfigError(f"protocol.kd.{bad[0]} is set by kdgrid; give only temperature, alpha and kd options")
    build_config(tree)  # the base config, naming any bad key
    entries = settings.families or {str((tree.get("model") or {}).get("name", "resnet18")): {}}
    return settings, [_family(name, entry, settings, tree) for name, entry in entries.items()]


# -- planning -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One role a run plays in a family's grid: `teacher`, `R` (baseline), `NR` (NR-baseline) or `KD`."""

    family: str
    role: str
    student: str  # the variant of the trained network
    teacher: str | None
    seed: int
    run_id: str


def kd_objective(kd: KDOptions) -> list[dict[str, Any]]:
    """[ce, kd] entries of the KD loss form at (T, α) (`KD_FORMS`, specs/003 §2, §8.2); extra kd options passed.
    With `until_epoch` N (T5) the mix applies for the first N epochs, then CE alone at weight 1."""
    ce, term = KD_FORMS[kd.form](kd.alpha)
    extra = dict(kd.model_extra or {})
    entries = [{"name": "ce", **ce}, {"name": "kd", **term, "temperature": kd.temperature, **extra}]
    if extra.get("until_epoch") is not None:
        entries[0]["until_epoch"] = extra["until_epoch"]
        entries.append({"name": "ce", "tag": "after_kd", "from_epoch": extra["until_epoch"]})
    return entries


def run_tree(fam: Family, variant: Variant, residual: bool, seed: int, objective: list,
             epochs: int | None = None) -> dict[str, Any]:
    """The run config of R-x (residual) or NR-x of one family at one seed (NR-x: `no_residual` prepended)."""
    tree = _deep_merge(fam.tree, {"seed": seed, "objective": objective})
    model = tree.setdefault("model", {})
    model["transforms"] = [*model.get("transforms", []), *variant_transforms(variant.name, residual)]
    if epochs is not None:
        tree.setdefault("train", {})["epochs"] = epochs
    if fam.lr_decay_per_epoch is not None:  # ×γ after every epoch = multistep with a milestone at every epoch
        n = tree.get("train", {}).get("epochs", build_config(tree).train.epochs)
        tree["schedule"] = {**tree.get("schedule", {}), "name": "multistep", "gamma": fam.lr_decay_per_epoch,
                            "milestones": list(range(1, max(n, 2)))}
    return tree


def plan(settings: KDGridSettings, families: list[Family], out_root: Path,
         protocol: str = "kdgrid") -> tuple[list[RunSpec], list[Cell]]:
    """Every run, teachers first, and the grid cells they fill. Runs with the same run identity (a teacher that
    is also a baseline) are one run; folders `<family>/<network>/seed<k>-<identity[:8]>`."""
    specs: dict[str, RunSpec] = {}  # run_id → spec, in plan order
    by_key: dict[tuple, RunSpec] = {}
    by_identity: dict[str, RunSpec] = {}
    cells: list[Cell] = []

    def add(fam: Family, network: str, tree: dict, seed: int, teacher: RunSpec | None = None) -> RunSpec:
        key = (fam.name, network, seed)
        if key in by_key:
            return by_key[key]
        teacher_ids: dict[str, str] = {}
        if teacher is not None:
            path = str(teacher.out_dir / "model.safetensors")
            tree["objective"] = with_teacher(tree["objective"], path)
            teacher_ids[path] = teacher.identity
        cfg = config_dict(build_config(tree))
        identity = run_identity(cfg, teacher_ids)
        twin = by_identity.get(identity)
        if twin is None:
            deps = [teacher.run_id] if teacher else []
            twin = RunSpec(f"{protocol}/{fam.name}/{network}/s{seed}/{identity}", cfg,
                           out_root / fam.name / network / f"seed{seed}-{identity[:8]}",
                           {"family": fam.name, "network": network, "seed": seed}, "main",
                           teacher.run_id if teacher else None, deps, identity, teacher_ids)
            by_identity[identity] = specs[twin.run_id] = twin
        by_key[key] = twin
        return twin

    ce = ["ce"]
    for fam in families:
        def residual(v: Variant, seed: int) -> RunSpec:
            return add(fam, f"R-{v.name}", run_tree(fam, v, True, seed, ce), seed)

        teacher_seeds = settings.seeds if settings.teacher_seed == "same" else [settings.teacher_seed]
        for t in fam.teachers:  # teachers first (also the order of the dependency waves)
            for ts in teacher_seeds:
                cells.append(Cell(fam.name, "teacher", t.name, None, ts, residual(t, ts).run_id))
        for seed in settings.seeds:
            ts = seed if settings.teacher_seed == "same" else settings.teacher_seed
            for s in fam.students:
                cells.append(Cell(fam.name, "R", s.name, None, seed, residual(s, seed).run_id))
                nr = add(fam, f"NR-{s.name}", run_tree(fam, s, False, seed, ce), seed)
                cells.append(Cell(fam.name, "NR", s.name, None, seed, nr.run_id))
                for t in fam.teachers_of(s):
                    teacher = residual(t, ts)
                    tree = run_tree(fam, s, False, seed, kd_objective(settings.kd), fam.student_epochs)
                    kd = add(fam, f"NR-{s.name}_from_R-{t.name}", tree, seed, teacher)
                    cells.append(Cell(fam.name, "KD", s.name, t.name, seed, kd.run_id))
    return list(specs.values()), cells


def halves(fam: Family) -> list[tuple[str, list[str], list[str]]]:
    """The family's grid halves as (student kind, students, their teachers): constant-g students (the paper's left
    halves), constant-G (right), standard; teachers in recipe order."""
    out = []
    for kind in ("g", "G", "std"):
        students = [s for s in fam.students if s.kind == kind]
        if students:
            teachers = [t.name for t in fam.teachers if any(PAIRINGS[fam.pairing](s, t) for s in students)]
            out.append((kind, [s.name for s in students], teachers))
    return out


def check_models(specs: list[RunSpec]) -> None:
    """Build every planned architecture once on the meta device (no memory, no compute): a grouping that does
    not divide a layer's channels, or a transform the models lack, is one ConfigError before anything runs."""
    import torch

    from ..models.io import build_from_spec, model_spec

    seen: set[str] = set()
    for spec in specs:
        cfg = build_config(spec.config)
        arch = model_spec(cfg, 10)
        key = json.dumps(arch, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        where = f"family {spec.tags['family']}, {spec.tags['network'].split('_from_')[0]}"
        try:
            with torch.device("meta"):
                build_from_spec(arch)
        except R18Error as e:
            raise ConfigError(f"{where}: {e}") from None
        except Exception as e:  # e.g. torch: in_channels must be divisible by groups
            raise ConfigError(f"{where} cannot be built ({type(e).__name__}: {e}); choose a grouping that divides "
                              "every layer's channels (or a larger model.width)") from None


# -- results --------------------------------------------------------------------------------------------------
def best_accuracy(out_dir: Path, head: str = "main") -> float | None:
    """The best test accuracy over the epochs a run evaluated (metrics.jsonl), None when it evaluated only once."""
    try:
        lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    values = []
    for line in lines:
        try:
            v = json.loads(line).get(f"eval/{head}/acc")
        except ValueError:
            continue
        if isinstance(v, (int, float)):
            values.append(float(v))
    return max(values) if len(values) >= 2 else None


def collect_rows(cells: list[Cell], specs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per grid cell whose run finished: family, role, student, teacher, seed, acc (final), best_acc,
    epochs, chance (100 / classes), folder."""
    by_id = {s.run_id: s for s in specs}
    summaries: dict[str, dict | None] = {}
    rows = []
    for c in cells:
        spec = by_id[c.run_id]
        if c.run_id not in summaries:
            summaries[c.run_id] = read_summary(spec)
        summary = summaries[c.run_id]
        if not summary or summary.get("status") != "done":
            continue
        rows.append({"family": c.family, "role": c.role, "student": c.student, "teacher": c.teacher,
                     "seed": c.seed, "acc": summary["final"][f"eval/{spec.eval_head}/acc"],
                     "best_acc": best_accuracy(spec.out_dir, spec.eval_head),
                     "epochs": spec.config["train"]["epochs"], "chance": 100.0 / summary["num_classes"],
                     "folder": str(spec.out_dir)})
    return rows


def depth_group(model: dict[str, Any]) -> str:
    """Families of one group differ only in depth (claim C2): WRNs by widening factor, others by name and width."""
    name = str(model.get("name", ""))
    m = re.fullmatch(r"wrn(\d+)_(\d+)", name)
    widen = int(m.group(2)) if m else model.get("options", {}).get("widen", 1) if name == "wrn" else None
    kind = f"wrn×{widen}" if widen is not None else name
    return f"{kind}, width {model.get('width', 1.0)}"


def paper_key(arch: dict[str, Any], input_size: tuple[int, ...], network: str) -> tuple[str, str, str] | None:
    """(family, "R"|"NR", variant) when the built model is one of paper 003's Tables 8/9 (CIFAR-100 head, 3×32×32,
    full width, plain classifier, only the grid's transforms), else None; `wrn` with depth/widen is its shortcut."""
    from ..reference.p003_costs import paper_key as p003_key

    name = str(arch.get("name"))
    if name == "wrn":
        name = f"wrn{arch.get('depth', 28)}_{arch.get('widen', 10)}"
    size = tuple(input_size)
    if len(size) != 3 or size[0] != 3 or size[1] != size[2] or arch.get("peers", 1) != 1:
        return None
    key = p003_key(name, list(arch.get("transforms", [])), num_classes=arch.get("num_classes"),
                   width=arch.get("width", 1.0), stem=arch.get("stem", "cifar"), image_size=size[1],
                   heads=list(arch.get("heads", ["main"])))
    return key if key and f"{key[1]}-{key[2]}" == network else None


def model_cost(family: str, network: str, arch: dict[str, Any], input_size: tuple[int, ...]) -> dict[str, Any]:
    """Exact parameters and FLOPs (multiply–accumulates of conv + linear) of one architecture, built on the meta
    device (no memory, no compute; specs/003 §3.1, §7.1), with its paper 003 key when it is one of the paper's."""
    import torch

    from ..analysis.cost import count_flops, count_params
    from ..models.io import build_from_spec

    with torch.device("meta"):
        model = build_from_spec(arch)
    return {"family": family, "network": network, "params": count_params(model),
            "flops": count_flops(model, tuple(input_size)), "num_classes": arch.get("num_classes"),
            "input": "×".join(map(str, input_size)), "paper_key": paper_key(arch, input_size, network)}


def cost_rows(specs: list[RunSpec]) -> list[dict[str, Any]]:
    """`model_cost` of every network trained (R-x, NR-x per family), from its weights' stored architecture and
    input size."""
    from ..models.io import model_spec_of, preprocessing_of

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for spec in specs:
        network = spec.tags["network"].split("_from_")[0]
        key = (spec.tags["family"], network)
        weights = spec.out_dir / "model.safetensors"
        if key in out or not weights.is_file() or read_summary(spec) is None:
            continue
        pre = preprocessing_of(weights)
        if pre is not None:
            out[key] = model_cost(key[0], network, model_spec_of(weights), tuple(int(v) for v in pre.input_size))
    return list(out.values())


def _epochs(specs: list[RunSpec], cells: list[Cell], family: str, roles: tuple[str, ...]) -> str:
    by_id = {s.run_id: s for s in specs}
    values = sorted({by_id[c.run_id].config["train"]["epochs"] for c in cells if c.family == family
                     and c.role in roles})
    return "/".join(map(str, values)) or "–"


def _schedule(cfg: dict[str, Any]) -> str:
    s, o = cfg["schedule"], cfg["optim"]
    m = s["milestones"]
    steps = (f"×{s['gamma']} after every epoch" if len(m) > 6 and m == list(range(1, len(m) + 1))
             else f"×{s['gamma']} at epochs {m}" if s["name"] == "multistep" else s["name"])
    return (f"{o['name']} lr {o['lr']}, momentum {o['momentum']}, wd {o['weight_decay']}, batch "
            f"{cfg['train']['batch_size']}; lr {steps}")


def run_meta(settings: KDGridSettings, families: list[Family], specs: list[RunSpec],
             cells: list[Cell]) -> dict[str, Any]:
    """The conditions the report states (specs/003 §7.6): seeds, epochs per role, T, α, schedule, data, metric."""
    kd = settings.kd
    extra = ", ".join(f"{k} = {v}" for k, v in (kd.model_extra or {}).items())
    meta: dict[str, Any] = {
        "seeds": f"{settings.seeds} (teacher seed: {settings.teacher_seed})",
        "KD objective": {"hinton": "(1 − α)·CE + α·T²·KL(batchmean) (Hinton form",
                         "moonshine": "(1 − α)·CE + 2α·T²·KL/C (AT/Moonshine form"}[kd.form]
                        + f", specs/003 §8.2), T = {kd.temperature}, α = {kd.alpha}" + (f", {extra}" if extra else ""),
    }
    for f in families:
        cfg = build_config(f.tree)
        d = cfg.data
        opts = f" {cfg.model.options}" if cfg.model.options else ""
        meta[f"{f.name}"] = (f"model {cfg.model.name}{opts} width {cfg.model.width}, pairing {f.pairing}; "
                             f"epochs: CE runs {_epochs(specs, cells, f.name, ('teacher', 'R', 'NR'))}, KD students "
                             f"{_epochs(specs, cells, f.name, ('KD',))}"
                             + (" (per-role epochs, specs/003 §8.4)" if f.student_epochs else ""))
        first = next((s for s in specs if s.tags["family"] == f.name), None)
        if first is not None:
            meta[f"{f.name} schedule"] = _schedule(first.config)
        pool = ("all training images" if d.labels is None else
                f"{d.labels} training images{' (class-balanced)' if d.balanced else ''}, split seed "
                f"{'= run seed' if d.split_seed is None else d.split_seed}")
        meta[f"{f.name} data"] = f"{d.source}, {pool}"
    meta["metric"] = ("top-1 test accuracy at the final epoch; where runs evaluated more than once, best-epoch drop "
                      "and gain rows and runs.csv's best_acc too (specs/003 §8.3)")
    return meta


@PROTOCOLS.register("kdgrid")
class KDGrid(Protocol):
    """teacher × student KD grid over grouping variants, residual teachers → plain students (paper 003, §2.1)"""

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        self.name, self.out = name, Path(out)
        self.settings, self.families = parse_settings(tree)
        self.specs, self.cells = plan(self.settings, self.families, self.out, protocol=name)
        check_models(self.specs)

    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        from .runner import dependency_waves

        yield from dependency_waves(self.specs)  # teachers (wave 0) before their students

    def report(self, ctx: RunContext, title: str) -> str:
        from .kdgrid_report import FamilyGrids, grid_from_rows, write_report

        rows = collect_rows(self.cells, self.specs)
        fams = [FamilyGrids(f.name, tuple(grid_from_rows(f.name, kind, ss, ts, rows) for kind, ss, ts in halves(f)),
                            f.depth, depth_group(f.tree.get("model", {})), f.over_regularised)
                for f in self.families]
        return write_report(fams, rows, cost_rows(self.specs), run_meta(self.settings, self.families, self.specs,
                                                                         self.cells), self.out, title)
