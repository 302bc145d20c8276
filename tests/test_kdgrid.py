"""The KD grid protocol of paper 003 (specs/003-kd-residual.md §2.1, §2.2, §3.2, §5, §6): planning, the paper's own
derived rows and summary facts, the claims check, an end-to-end tiny grid through the CLI with resume, bad inputs."""
import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from r18lab.cli import main
from r18lab.config import build_config, parse_overrides, resolve_tree
from r18lab.errors import ConfigError
from r18lab.protocols import kdgrid, runner
from r18lab.protocols import kdgrid_claims as cl
from r18lab.protocols import kdgrid_report as rep
from r18lab.protocols.runner import dependency_waves
from r18lab.reference import p003_accuracy as ref

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"model": {"name": "resnet18", "width": 0.0625}}


def planned(protocol: dict | None = None, tree: dict | None = None, out: Path = Path("/out")):
    s, fams = kdgrid.parse_settings({**(tree or TINY_MODEL), "protocol": protocol or {}})
    specs, cells = kdgrid.plan(s, fams, out)
    return s, fams, specs, cells


def of(specs, network: str, seed: int = 0):
    [spec] = [s for s in specs if s.tags["network"] == network and s.tags["seed"] == seed]
    return spec


# -- planning (specs/003 §2.1) --------------------------------------------------------------------------------
def test_a_full_family_is_53_runs_teachers_first_with_the_teacher_wired_into_kd():
    _, _, specs, cells = planned()
    roles = Counter(c.role for c in cells)
    assert len(specs) == 53 and roles == {"teacher": 9, "R": 8, "NR": 8, "KD": 36}
    nets = Counter(s.tags["network"].split("_from_")[0] for s in specs)
    assert sum(v for k, v in nets.items() if k.startswith("R-")) == 9  # 8 baselines are also teachers: 9 R runs
    assert sum(v for k, v in nets.items() if k.startswith("NR-")) == 8 + 36
    waves = dependency_waves(specs)
    assert [len(w) for w in waves] == [17, 36]  # every CE run (teachers) first, then the KD students
    kd = of(specs, "NR-g8_from_R-G4")
    teacher = of(specs, "R-G4")
    path = str(teacher.out_dir / "model.safetensors")
    assert kd.config["objective"] == [{"name": "ce", "weight": 0.1},
                                      {"name": "kd", "weight": 0.9, "temperature": 4.0, "teacher": path}]
    assert kd.depends == [teacher.run_id] and kd.teacher_of == teacher.run_id and kd.teacher_ids == {
        path: teacher.identity}
    assert kd.config["model"]["transforms"] == ["no_residual", {"name": "grouped", "groups": 8}]
    assert teacher.config["model"]["transforms"] == [{"name": "grouped", "group_width": 4}]
    assert teacher.config["objective"] == ["ce"]
    assert teacher.out_dir == Path("/out/resnet18/R-G4") / f"seed0-{teacher.identity[:8]}"
    assert kd.out_dir == Path("/out/resnet18/NR-g8_from_R-G4") / f"seed0-{kd.identity[:8]}"
    assert all(s.run_id.startswith("kdgrid/resnet18/") for s in specs)
    # other_type pairing: constant-g students ← constant-G teachers and vice versa, never the residual twin
    pairs = {(c.student, c.teacher) for c in cells if c.role == "KD"}
    assert pairs == {(s, t) for s in ("g2", "g4", "g8", "g16") for t in ("G1", "G2", "G4", "G8", "G16")} | {
        (s, t) for s in ("G2", "G4", "G8", "G16") for t in ("g2", "g4", "g8", "g16")}


def test_seeds_and_teacher_seed():
    _, _, specs, cells = planned({"seeds": [0, 1, 2]})
    assert len(specs) == 9 + 8 * 2 + 8 * 3 + 36 * 3  # teachers once (seed 0), students at every seed
    kd1 = of(specs, "NR-g8_from_R-G4", seed=1)
    assert kd1.depends == [of(specs, "R-G4", 0).run_id] and kd1.config["seed"] == 1
    _, _, specs, _ = planned({"seeds": [0, 1], "teacher_seed": "same", "students": ["g8"], "teachers": ["G4"]})
    assert of(specs, "NR-g8_from_R-G4", 1).depends == [of(specs, "R-G4", 1).run_id]
    with pytest.raises(ConfigError, match=r"protocol.seeds must list distinct seeds"):
        planned({"seeds": [1, 1]})


def test_a_teacher_that_is_also_a_baseline_is_one_run_and_pairing_all():
    _, _, specs, cells = planned({"students": ["g8"], "teachers": ["G4", "g8"], "pairing": "all"})
    assert sorted(s.tags["network"] for s in specs) == ["NR-g8", "NR-g8_from_R-G4", "NR-g8_from_R-g8", "R-G4",
                                                      "R-g8"]
    shared = [c for c in cells if c.student == "g8" and c.role in ("R", "teacher")]
    assert len(shared) == 2 and {c.run_id for c in shared} == {of(specs, "R-g8").run_id}  # one run, two roles
    assert of(specs, "NR-g8_from_R-g8").depends == [of(specs, "R-g8").run_id]
    with pytest.raises(ConfigError, match=r"gives student NR-std of family resnet18 no teacher.*pairing=all"):
        planned({"students": ["std"], "teachers": ["std"]})
    with pytest.raises(ConfigError, match=r"gives teacher R-g2 of family resnet18 no student among \['g8'\]"):
        planned({"students": ["g8"], "teachers": ["G4", "g2"]})


def test_per_role_epochs_per_epoch_decay_kd_options_and_families():
    _, fams, specs, cells = planned(
        {"students": ["g8"], "teachers": ["G4"], "student_epochs": 5, "lr_decay_per_epoch": 0.98,
         "kd": {"temperature": 2, "alpha": 0.5, "until_epoch": 2},
         "families": {"a": {}, "b": {"model": {"width": 0.125}, "student_epochs": 4, "depth": 40}}},
        {**TINY_MODEL, "train": {"epochs": 3}})
    assert [f.name for f in fams] == ["a", "b"] and fams[1].depth == 40 and fams[0].depth == 18
    for s in specs:
        epochs = s.config["train"]["epochs"]
        is_kd = "_from_" in s.tags["network"]
        assert epochs == ((5 if s.tags["family"] == "a" else 4) if is_kd else 3)
        assert s.config["schedule"]["name"] == "multistep" and s.config["schedule"]["gamma"] == 0.98
        assert s.config["schedule"]["milestones"] == list(range(1, epochs))
        assert s.config["model"]["width"] == (0.125 if s.tags["family"] == "b" else 0.0625)
    kd = of([s for s in specs if s.tags["family"] == "a"], "NR-g8_from_R-G4")
    # T5's form: the CE/KD mix for the first 2 epochs, then CE alone at full weight (not 1 − α)
    assert kd.config["objective"][0] == {"name": "ce", "weight": 0.5, "until_epoch": 2}
    assert {k: v for k, v in kd.config["objective"][1].items() if k != "teacher"} == {
        "name": "kd", "weight": 0.5, "temperature": 2.0, "until_epoch": 2}
    assert kd.config["objective"][2] == {"name": "ce", "tag": "after_kd", "from_epoch": 2}
    _, _, specs, _ = planned({"students": ["g8"], "teachers": ["G4"], "kd": {"form": "moonshine"}})
    ce, kd = of(specs, "NR-g8_from_R-G4").config["objective"]  # AT/Moonshine: (1 − α)·CE + 2α·T²·KL/C (§8.2)
    assert ce == {"name": "ce", "weight": 0.1} and (kd["weight"], kd["reduction"]) == (1.8, "elementwise_mean")
    with pytest.raises(ConfigError, match=r"protocol.kd.teacher is set by kdgrid"):
        planned({"kd": {"teacher": "x"}})
    with pytest.raises(ConfigError, match=r"kdgrid sets each run's objective"):
        planned(tree={**TINY_MODEL, "objective": ["ce"]})
    with pytest.raises(ConfigError, match=r"protocol.families.b: unknown config key 'model.nosuch'"):
        planned({"families": {"b": {"model": {"nosuch": 1}}}})
    with pytest.raises(ConfigError, match=r"invalid 'protocol.student_epochs'"):
        planned({"student_epochs": 0})


def test_recipes_plan_the_tiny_checks_and_the_paper_grid():
    def load(path, scale):
        return kdgrid.parse_settings(resolve_tree(ROOT / "recipes" / path, [], scale))

    counts = {}
    for scale in ("tiny", "tiny-trend", "tiny-depth"):
        proto = kdgrid.KDGrid("kdgrid", resolve_tree(ROOT / "recipes/kdgrid_cifar10.yaml", [], scale), Path("/o"))
        counts[scale] = len(proto.specs)  # building every model (meta device) passes: groupings divide
    assert counts == {"tiny": 10, "tiny-trend": 13, "tiny-depth": 6}  # specs/003 §6 T1, T2, T3
    s, fams = load("kdgrid_cifar10.yaml", "tiny")
    cfg = build_config(fams[0].tree)
    assert (s.seeds, s.teacher_seed, s.kd.temperature, s.kd.alpha) == ([0, 1, 2], 0, 4, 0.9)
    assert [v.name for v in fams[0].students] == ["g8"] and [v.name for v in fams[0].teachers] == ["G4"]
    assert (cfg.model.name, cfg.model.stem, cfg.model.width, cfg.train.epochs, cfg.train.batch_size) == (
        "resnet18", "cifar", 0.25, 12, 128)
    assert (cfg.data.labels, cfg.data.balanced, cfg.data.source) == (5000, True, "../shared/data/cifar10-jpeg.tar.gz")
    assert (cfg.data.augment.padding, cfg.data.augment.pad_mode, cfg.data.augment.crop, cfg.data.augment.flip) == (
        4, "reflect", 32, True)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 5e-4)
    assert (cfg.schedule.name, cfg.schedule.milestones, cfg.schedule.gamma) == ("multistep", [4, 7, 10], 0.2)
    s, fams = load("kdgrid_cifar10.yaml", "tiny-depth")
    assert [(f.name, f.depth, f.tree["model"]["options"]["dropout"]) for f in fams] == [
        ("wrn16_1", 16, 0.3), ("wrn40_1", 40, 0.3)]
    s, fams = load("kdgrid_cifar100.yaml", "paper")
    specs, cells = kdgrid.plan(s, fams, Path("/o"))
    assert len(specs) == 318 and [f.name for f in fams] == list(ref.FAMILY_NAMES)  # 6 × 53 (specs/003 §2.1)
    mb = [sp for sp in specs if sp.tags["family"] == "mobilenet_v2"]
    assert {sp.config["train"]["epochs"] for sp in mb if "_from_" in sp.tags["network"]} == {300}
    assert {sp.config["train"]["epochs"] for sp in mb if "_from_" not in sp.tags["network"]} == {200}
    assert all(sp.config["schedule"]["gamma"] == 0.98 for sp in mb)
    wrn = [sp for sp in specs if sp.tags["family"] == "wrn22_10"]
    assert {json.dumps(sp.config["schedule"]) for sp in wrn} == {json.dumps(
        {"name": "multistep", "milestones": [60, 120, 160], "gamma": 0.2, "warmup_epochs": 0.0, "min_lr": 0.0})}


def test_cost_table_counts_the_paper_configurations_and_puts_the_printed_values_beside():
    from r18lab.models.io import model_spec

    s, fams = kdgrid.parse_settings(resolve_tree(ROOT / "recipes/kdgrid_cifar100.yaml", [], "paper"))
    specs, _ = kdgrid.plan(s, fams, Path("/o"))
    exact = {("resnet18", "R-g2"): (6_567_716, 328_452_096), ("mobilenet_v2", "R-G1"): (2_369_380, 64_947_264),
             ("wrn22_10", "NR-G8"): (3_475_668, 531_380_736), ("wrn40_2", "R-g16"): (418_020, 58_110_464)}
    rows = []
    for (family, network), (params, flops) in exact.items():
        [spec] = [sp for sp in specs if sp.tags["family"] == family and sp.tags["network"] == network]
        row = kdgrid.model_cost(family, network, model_spec(build_config(spec.config), 100), (3, 32, 32))
        assert (row["params"], row["flops"]) == (params, flops) and row["paper_key"] == (family, *network.split("-"))
        rows.append(row)
    paper, available = rep.with_paper_costs(rows)
    if available:  # reference.p003_costs (Tables 8/9) is another module; the column is skipped without it
        assert all(r["params match"] and r["FLOPs match"] for r in paper)
        assert paper[0]["paper params (M)"] == "6.57"
    tiny = model_spec(build_config({**TINY_MODEL, "model": {**TINY_MODEL["model"], "transforms": ["no_residual"]}}), 4)
    assert kdgrid.model_cost("f", "NR-std", tiny, (3, 8, 8))["paper_key"] is None


# -- the paper's own numbers (specs/003 §3.2) -----------------------------------------------------------------
def paper_families() -> list[rep.FamilyGrids]:
    out = []
    for key in ref.FAMILY_NAMES:
        grids = tuple(rep.grid_from_reference(h, ref.teacher_accuracy(key)) for h in ref.halves_of(key))
        model = {"name": key}
        out.append(rep.FamilyGrids(key, grids, kdgrid.model_depth(model), kdgrid.depth_group(model),
                                   kdgrid.KNOWN_DEPTHS.get(key, (0, False))[1]))
    return out


def test_reference_has_the_twelve_halves_of_tables_1_to_6():
    assert len(ref.HALVES) == 12 and ref.MAPPING_INFERRED
    assert [(h.table, h.side) for h in ref.HALVES] == [(t, s) for t in range(1, 7) for s in ("left", "right")]
    for h in ref.HALVES:
        assert len(h.kd) == len(h.teachers) == (5 if h.side == "left" else 4) and len(h.students) == 4
        assert all(len(row) == 4 for row in h.kd)
    assert ref.HALVES[0].kd[2][3] == 73.79 and ref.HALVES[-1].nr_baseline == (38.47, 45.88, 47.55, 49.49)
    assert "G1" not in ref.teacher_accuracy("resnet18") and ref.teacher_accuracy("resnet18")["G4"] == 71.18


def test_derived_rows_reproduce_the_48_printed_numbers():
    checked = 0
    for h in ref.HALVES:
        grid = rep.grid_from_reference(h, ref.teacher_accuracy(h.family))
        for d, drop, gain in zip(rep.derived(grid), h.acc_drop, h.distil_gain):
            assert d["acc_drop"] == pytest.approx(drop, abs=0.01), (h.family, d["student"])
            assert d["distil_gain"] == pytest.approx(gain, abs=0.01), (h.family, d["student"])
            checked += 2
    assert checked == 96  # 12 halves × 4 students: every printed Acc. drop and Distil. gain
    r18 = rep.derived(rep.grid_from_reference(ref.HALVES[0], {}))  # ResNet-18 NR-g2: 71.93 − 73.47 = −1.54
    assert r18[0]["best_teacher"] == "G1" and r18[0]["distil_gain"] == pytest.approx(-1.54)


def test_the_paper_summary_facts():
    fams = {f.family: f for f in paper_families()}
    grids = [g for f in fams.values() for g in f.grids]
    r = rep.kd_vs_nr(grids)
    assert (r["above"], r["cells"]) == (216, 216) and r["min_margin"] == pytest.approx(0.37)
    assert r["at"][0] == "wrn28_2"
    assert rep.gain_count(grids, 0) == (18, 48) and rep.gain_count(grids, -1) == (25, 48)
    by_family = {"resnet18": (6, 7), "wrn22_10": (6, 7), "wrn22_2": (4, 6), "wrn28_2": (2, 3),
                 "mobilenet_v2": (0, 2), "wrn40_2": (0, 0)}
    for key, (ge0, ge1) in by_family.items():
        assert (rep.gain_count(fams[key].grids, 0)[0], rep.gain_count(fams[key].grids, -1)[0]) == (ge0, ge1), key
    above = {"resnet18": (10, 12), "wrn22_10": (11, 14), "wrn22_2": (10, 4), "wrn28_2": (2, 0),
             "mobilenet_v2": (0, 0), "wrn40_2": (0, 0)}
    for key, (left, right) in above.items():
        assert [rep.above_teacher(g) for g in fams[key].grids] == [(left, 16), (right, 16)], key  # R-G1 excluded
    rho = {"resnet18": (0.79, 3.13), "wrn22_2": (0.38, 2.03), "wrn22_10": (0.79, 4.27), "wrn28_2": (0.44, 1.09),
           "mobilenet_v2": (0.71, 0.95), "wrn40_2": (0.48, 0.87)}
    for key, (lo, hi) in rho.items():
        got = rep.rho_range(fams[key].grids)
        assert got == pytest.approx((lo, hi), abs=0.005), key
    assert rep.rho_range(fams["wrn40_2"].grids)[1] < 1  # never ≥ 1


def test_claims_on_the_paper_numbers_all_hold_and_the_grid_table_has_the_paper_shape():
    table = cl.claims(paper_families())
    assert [c["id"] for c in table] == [f"C{k}" for k in range(1, 10)]
    assert {c["id"]: c["status"] for c in table} == {f"C{k}": cl.HELD for k in range(1, 10)}
    ev = {c["id"]: c["evidence"] for c in table}
    assert "216/216" in ev["C3"] and "+0.37" in ev["C3"] and "16/24" in ev["C4"]
    assert "wrn22_2 (depth 22) 3.76 → wrn28_2 (depth 28) 7.23 → wrn40_2 (depth 40) 26.00" in ev["C2"]
    rows = rep.grid_table(paper_families()[0].grids[0])
    labels = [r["teacher ↓ · student →"] for r in rows]
    assert labels[:7] == ["R-G1", "R-G2", "R-G4", "R-G8", "R-G16", "Baseline (R, CE)", "NR-baseline (NR, CE)"]
    assert rows[7]["NR-g8"] == "2.40" and rows[8]["NR-g2"] == "-1.54" and rows[1]["teacher acc"] == "71.08"


def grid(kd: dict, base: dict, nr: dict, family="f", kind="g", tacc=None) -> rep.Grid:
    students = tuple(dict.fromkeys([*(s for _, s in kd), *base]))
    teachers = tuple(dict.fromkeys(t for t, _ in kd))
    return rep.Grid(family, kind, teachers, students, kd, base, nr, tacc or {})


def test_claims_computed_from_constructed_numbers():
    # T1-like: three seeds; KD above NR and near R
    g = grid({("G4", "g8"): {0: 70.0, 1: 71.0, 2: 70.5}}, {"g8": {0: 70.5, 1: 70.6, 2: 70.4}},
             {"g8": {0: 68.0, 1: 68.5, 2: 68.2}}, tacc={"G4": {0: 69.0}})
    ok = {c["id"]: c["status"] for c in cl.claims([rep.FamilyGrids("f", (g,), 18, "r")])}
    assert ok["C1"] == ok["C3"] == ok["C4"] == ok["C6"] == cl.HELD
    assert ok["C2"] == ok["C5"] == ok["C7"] == ok["C8"] == ok["C9"] == cl.NOT_MEASURED
    # KD below NR in one cell, NR above R: C1 and C3 must fail; KD far below R in a shallow net: C4 fails
    bad = grid({("G4", "g8"): {0: 60.0, 1: 61.0}}, {"g8": {0: 70.0, 1: 70.2}}, {"g8": {0: 71.0, 1: 71.0}},
               tacc={"G4": {0: 75.0}})
    status = {c["id"]: c["status"] for c in cl.claims([rep.FamilyGrids("f", (bad,), 18, "r")])}
    assert status["C1"] == status["C3"] == status["C4"] == status["C6"] == cl.NOT_HELD
    # T1 as measured: KD − NR +0.29 on average but −2.0 at one seed → the direction holds, a paired CI spans 0
    noisy = grid({("G4", "g8"): {0: 38.48, 1: 37.92, 2: 39.26}}, {"g8": {0: 45.6, 1: 45.3, 2: 44.74}},
                 {"g8": {0: 37.59, 1: 39.9, 2: 37.29}})
    c = {c["id"]: c for c in cl.claims([rep.FamilyGrids("f", (noisy,), 18, "r")])}
    assert c["C3"]["status"] == cl.DIRECTION_ONLY and "paired 95 % CI above 0 in 0/1" in c["C3"]["evidence"]
    assert c["C1"]["status"] == cl.HELD and "paired 95 % CI above 0 in 1/1" in c["C1"]["evidence"]
    assert c["C4"]["status"] == cl.NOT_HELD  # KD − R about −6.7 at every seed: the CI excludes 0
    wide = grid({("G4", "g2"): {0: 33.6, 1: 32.2}}, {"g2": {0: 42.2, 1: 39.3}}, {"g2": {0: 30.0, 1: 35.8}})
    c = {c["id"]: c for c in cl.claims([rep.FamilyGrids("f", (wide,), 18, "r")])}
    assert c["C4"]["status"] == cl.NOT_REFUTED  # mean gain −7.85, but 2 seeds give a CI up to +1.7
    # T2-like trend: gain(g16) − gain(g2) > 0 on average but not at seed 1 → C7 not held; both seeds → held
    def trend(kd16_seed1: float) -> str:
        g2 = grid({("G4", "g2"): {0: 70.0, 1: 70.0}, ("G4", "g16"): {0: 72.0, 1: kd16_seed1}},
                  {"g2": {0: 71.0, 1: 71.0}, "g16": {0: 70.0, 1: 70.0}}, {"g2": {0: 65.0, 1: 65.0},
                                                                      "g16": {0: 67.0, 1: 67.0}})
        return {c["id"]: c["status"] for c in cl.claims([rep.FamilyGrids("f", (g2,), 18, "r")])}["C7"]
    assert trend(71.0) == cl.HELD and trend(68.0) == cl.NOT_HELD
    # depth: drop and ρ computed per family; deeper with a smaller drop → C2 not held
    def fam(name, depth, r, nr, kd):
        return rep.FamilyGrids(name, (grid({("std", "std"): {0: kd}}, {"std": {0: r}}, {"std": {0: nr}},
                                           kind="std"),), depth, "wrn×1")
    deep_ok = cl.claims([fam("w16", 16, 70, 68, 69.5), fam("w40", 40, 70, 50, 60)])
    assert {c["id"]: c["status"] for c in deep_ok}["C2"] == cl.HELD
    assert {c["id"]: c["status"] for c in deep_ok}["C5"] == cl.HELD  # gain < 0, ρ 0.5 < 0.75
    flipped = {c["id"]: c["status"] for c in cl.claims([fam("w16", 16, 70, 50, 60), fam("w40", 40, 70, 68, 71)])}
    assert flipped["C2"] == flipped["C5"] == cl.NOT_HELD


def test_networks_near_chance_are_flagged():
    rows = [{"family": "w40", "role": "NR", "student": "std", "teacher": None, "seed": k, "acc": a, "chance": 10.0}
            for k, a in enumerate((11.0, 14.0))]
    rows += [{**rows[0], "role": "R", "acc": 60.0}]
    assert rep.near_chance(rows) == ["w40 NR-std: 12.50 % is within 5 points of chance (10.00 %); a check on it is "
                                     "dominated by non-convergence"]


def test_recovery_ratio_and_gains_are_plain_formulas():
    assert rep.acc_drop(73.47, 66.14) == pytest.approx(7.33)
    assert rep.distil_gain([70.0, 72.5, float("nan")], 71.0) == pytest.approx(1.5)
    assert rep.mean_gain([70.0, 72.0], 71.0) == pytest.approx(0.0)
    assert rep.recovery_ratio(69.0, 70.0, 66.0) == pytest.approx(0.75)
    assert math.isnan(rep.recovery_ratio(69.0, 70.0, 70.0))
    assert rep.depth_class(18) == "shallow" and rep.depth_class(28) == "between" and rep.depth_class(53) == "deep"


# -- end to end through the CLI (tiny synthetic data) ---------------------------------------------------------
RECIPE = """
protocol:
  students: [g2]
  teachers: [G2, g2]
  pairing: all
  seeds: [0, 1]
data: {source: synthetic, options: {num_classes: 4, image_size: 8, n: 128}}
model: {name: resnet18, width: 0.0625}
optim: {lr: 0.05}
schedule: {name: multistep, milestones: [1], gamma: 0.2}
train: {batch_size: 32, epochs: 2, eval_every: 1, progress: none}
"""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("kdgrid")
    (root / "g.yaml").write_text(RECIPE)
    return root


def test_cli_runs_the_grid_writes_the_report_and_resumes(e2e, capsys, monkeypatch):
    out = e2e / "out"
    assert main(["protocol", "kdgrid", str(e2e / "g.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    # 2 teachers at seed 0 (R-g2 is also the seed-0 baseline) + R-g2 s1 + NR-g2 × 2 + KD 2 teachers × 2 seeds = 9
    assert "0 of 4 runs already done; 4 to run" in printed.err and "0 of 5 runs already done; 5 to run" in printed.err
    assert len(list((out / "resnet18" / "R-g2").glob("seed0-*"))) == 1
    assert {p.parent.name for p in out.glob("resnet18/*/seed1-*")} == {"R-g2", "NR-g2", "NR-g2_from_R-G2",
                                                                      "NR-g2_from_R-g2"}
    md = printed.out
    for text in ("| teacher ↓ · student → | NR-g2", "Baseline (R, CE)", "**Acc. drop**", "**Distil. gain**",
                 "ρ recovery", "mean-over-teachers gain", "Distil. gain, best epoch", "KD student − teacher", "Paired t-tests",
                 "(Hinton form, specs/003 §8.2), T = 4.0, α = 0.9", "seeds: [0, 1] (teacher seed: 0)", "### Claims",
                 "| C3 ", "Parameters and FLOPs"):
        assert text in md, text
    for name in ("report.md", "runs.csv", "grid.csv", "tests.csv", "claims.csv", "costs.csv", "heatmap_resnet18.png"):
        assert (out / name).is_file(), name
    assert (out / "heatmap_resnet18.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert Counter(r["role"] for r in runs) == {"teacher": 2, "R": 2, "NR": 2, "KD": 4}
    assert all(r["best_acc"] != "" for r in runs)  # evaluated every epoch: the best epoch is recorded
    claims = {r["id"]: r["status"] for r in csv.DictReader((out / "claims.csv").open())}
    assert set(claims) == {f"C{k}" for k in range(1, 10)} and claims["C5"] == cl.NOT_MEASURED
    tests = list(csv.DictReader((out / "tests.csv").open()))
    assert {(t["teacher"], t["comparison"], t["n_pairs"]) for t in tests} == {
        (t, c, "2") for t in ("R-G2", "R-g2") for c in ("KD − R", "KD − NR")}
    costs = {r["network"]: r for r in csv.DictReader((out / "costs.csv").open())}
    assert set(costs) == {"R-G2", "R-g2", "NR-g2"}
    from r18lab.analysis.cost import count_params
    from r18lab.models.io import load_model
    r_g2 = next((out / "resnet18" / "R-g2").glob("seed0-*"))
    assert int(costs["R-g2"]["params"]) == count_params(load_model(r_g2 / "model.safetensors"))
    assert int(costs["R-g2"]["params"]) > int(costs["NR-g2"]["params"])  # the projection shortcuts are gone

    monkeypatch.setattr(runner, "_run_one", lambda *a: pytest.fail(f"re-ran {a[0].run_id}"))
    assert main(["protocol", "kdgrid", str(e2e / "g.yaml"), "--out", str(out)]) == 0
    again = capsys.readouterr()
    assert "4 of 4 runs already done; 0 to run" in again.err and "5 of 5 runs already done; 0 to run" in again.err
    assert (out / "report.md").read_text().rstrip() in again.out


@pytest.mark.parametrize("override, message", [
    ("protocol.teachers=[X4]", "error: unknown grouping variant 'X4' in protocol.teachers; use std (standard convs), "
                               "gK (K groups, e.g. g8) or GK (K channels per group, e.g. G4; G1 = depthwise)"),
    ("protocol.teachers=[g3]", "error: family resnet18, R-g3: transform grouped: layer layer1.0.conv1 has 4 input "
                               "channels, not divisible by groups=3"),
    ("protocol.students=[g2, g2]", "error: protocol.students lists a variant twice: ['g2', 'g2']"),
    ("protocol.pairing=some", "error: invalid 'protocol.pairing'"),
])
def test_bad_grids_are_one_line_exit_2(e2e, tmp_path, capsys, override, message):
    out = tmp_path / "never"
    assert main(["protocol", "kdgrid", str(e2e / "g.yaml"), override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_override_parsing_keeps_variant_names_as_strings():
    assert parse_overrides(["protocol.students=[g8, G4]"]) == {"protocol": {"students": ["g8", "G4"]}}
