"""The low-data protocol (paper 000, sec. 3.1): methods as configs, nested identical splits, skip/resume, report, CLI."""
import csv
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

import r18lab
from r18lab.cli import main
from r18lab.config import build_config, parse_overrides
from r18lab.data.splits import load_split
from r18lab.errors import ConfigError
from r18lab.protocols import lowdata, runner
from r18lab.protocols.methods import METHODS
from r18lab.protocols.report import collect_rows, write_report
from r18lab.registry import OBJECTIVES
from r18lab.results.store import RunStore
from r18lab.train.engine import build_from_spec, model_spec

from helpers import tiny_recipe, tiny

SYNTH = {"num_classes": 4, "image_size": 8, "n": 128}


def settings(**kw) -> lowdata.LowDataSettings:
    return lowdata.LowDataSettings(**{"labels": [40, 80], "seeds": [0, 1], "methods": ["resnet18", "fr-resnet18"],
                                      **kw})


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a: dict, b: dict) -> dict:
    """Dotted keys whose value in `b` differs from `a`, with b's value."""
    fa, fb = flat(a), flat(b)
    return {k: fb.get(k) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


# -- methods → run configs ------------------------------------------------------------------------------


def test_every_method_plans_a_valid_run_config(tmp_path):
    specs = lowdata.plan(settings(labels=[40], seeds=[3], methods=list(METHODS)), parse_overrides(tiny()), tmp_path)
    by_method = {s.tags["method"]: s for s in specs}
    assert len(specs) == len(METHODS) and set(by_method) == set(METHODS)  # the kd teacher is resnet50's run, once
    for s in specs:
        cfg = build_config(s.config)
        assert cfg.seed == 3 and cfg.data.labels == 40 and cfg.data.split_seed == 3
        owner = "fr-resnet18" if s.tags["method"] == "fr-head" else s.tags["method"]  # identical configs share a run
        assert s.out_dir == tmp_path / "n40" / owner / f"seed3-{s.identity[:8]}"  # folders keyed by identity
        assert s.tags == {"method": s.tags["method"], "labels": 40, "seed": 3}
        model = build_from_spec(model_spec(cfg, 4))  # the architecture exists and has the planned heads
        logits = model(torch.zeros(2, 3, 32, 32)).logits
        assert s.eval_head in logits and all(v.shape == (2, 4) for v in logits.values())
        for o in cfg.objective:
            assert OBJECTIVES.get(o if isinstance(o, str) else o["name"])

    assert by_method["fr-head"].run_id == by_method["fr-resnet18"].run_id
    assert by_method["fr-head"].eval_head == "fr" and by_method["fr-resnet18"].eval_head == "main"
    assert len({s.run_id for s in specs}) == len(specs) - 1
    assert all(s.run_id.startswith("lowdata/") for s in specs)
    assert lowdata.plan(settings(labels=[40], seeds=[0], methods=["resnet18"]), parse_overrides(tiny()),
                        tmp_path, protocol="compare")[0].run_id.startswith("compare/resnet18/n40/s0/")

    teacher, student = by_method["resnet50"], by_method["kd"]
    assert specs.index(teacher) < specs.index(student)
    assert teacher.config["model"]["name"] == "resnet50" and teacher.config.get("teacher") is None
    kd_entry = student.config["objective"][1]  # the teacher is a parameter of the kd objective entry
    assert kd_entry["teacher"] == str(teacher.out_dir / "model.safetensors") and student.config.get("teacher") is None
    assert student.depends == [teacher.run_id] and student.teacher_of == teacher.run_id
    assert student.config["objective"][0] == "ce" and kd_entry["name"] == "kd"
    assert student.config["model"]["name"] == "resnet18"

    fr = by_method["fr-resnet18"].config
    base = by_method["resnet18"].config
    assert config_diff(base, fr) == {"model.heads": ["main", "fr"]}
    expected = {
        "fr-512x512-noact": {"model.options": None, "model.options.fr_dim": 512, "model.options.fr_depth": 0,
                             "model.options.fr_layernorm": False},
        "fr-512x64-noact": {"model.options": None, "model.options.fr_dim": 64, "model.options.fr_depth": 0,
                            "model.options.fr_layernorm": False},
        "fr-noln": {"model.options": None, "model.options.fr_layernorm": False},
        **{f"fr-depth{k}": {"model.options": None, "model.options.fr_depth": k} for k in range(2, 6)},
        "fr-nogate": {"model.gate": 1.0},
        "fr-head": {},
    }
    for method, diff in expected.items():
        assert config_diff(fr, by_method[method].config) == diff, method
    assert by_method["fr-head"].eval_head == "fr" and by_method["fr-resnet18"].eval_head == "main"
    for method, objective in [("dml", "dml"), ("kdcl", "kdcl")]:
        assert config_diff(base, by_method[method].config) == {"model.peers": 2, "objective": ["ce", objective]}


def test_method_defs_add_methods_and_unknown_methods_name_the_choices(tmp_path):
    s = settings(labels=[40], seeds=[0], methods=["resnet18", "tb"],
                 method_defs={"tb": {"hooks": [{"name": "tempbalance"}]}})
    specs = lowdata.plan(s, parse_overrides(tiny()), tmp_path)
    assert [sp.config["hooks"] for sp in specs] == [[], [{"name": "tempbalance"}]]
    with pytest.raises(ConfigError, match=r"unknown method 'nosuch'; choose from: .*fr-resnet18.*kd.*resnet18"):
        lowdata.plan(settings(methods=["resnet18", "nosuch"]), parse_overrides(tiny()), tmp_path)


# -- a whole small protocol, run once for the tests below ----------------------------------------------


@pytest.fixture(scope="module")
def proto(tmp_path_factory):
    """labels [40, 80] × seeds [0, 1] × methods [resnet18, fr-resnet18], 2 epochs each: 8 runs, one store."""
    root = tmp_path_factory.mktemp("proto")
    s = settings()
    specs = lowdata.plan(s, parse_overrides(tiny()), root / "out")
    store = root / "store" / "index.sqlite"
    log: list[str] = []
    with pytest.MonkeyPatch.context() as mp:  # module scope: set up before the per-test isolation fixture
        mp.setenv("R18LAB_CACHE", str(root / "cache"))
        assert runner.run_all(specs, store, log=log.append) == {}
    assert log[0].startswith("0 of 8 runs already done; 8 to run")
    return s, specs, store, root


def spec_of(specs, method: str, labels: int, seed: int):
    return next(s for s in specs if s.tags == {"method": method, "labels": labels, "seed": seed})


def test_pools_are_nested_over_cycles_shared_by_methods_and_differ_by_seed(proto):
    _, specs, _, _ = proto
    train_labels = r18lab.data.load("synthetic", split="train", **SYNTH).labels
    pool = {tuple(s.tags.values()): load_split(s.out_dir / "splits.json")["train"] for s in specs}
    for seed in (0, 1):
        small, large = pool[("resnet18", 40, seed)], pool[("resnet18", 80, seed)]
        assert len(small) == 40 and len(large) == 80 and len(set(small.tolist())) == 40
        assert set(small.tolist()) < set(large.tolist())
        assert np.bincount(train_labels[small], minlength=4).tolist() == [10] * 4  # class-balanced
        for n in (40, 80):
            assert np.array_equal(pool[("resnet18", n, seed)], pool[("fr-resnet18", n, seed)])
            summary = json.loads((spec_of(specs, "fr-resnet18", n, seed).out_dir / "summary.json").read_text())
            assert summary["num_train"] == n
    assert set(pool[("resnet18", 40, 0)].tolist()) != set(pool[("resnet18", 40, 1)].tolist())


def test_report_tables_tests_and_plot(proto, tmp_path):
    s, specs, _, _ = proto
    rows = collect_rows(specs, s)
    assert [(r["labels"], r["method"], r["seed"]) for r in rows] == [
        (n, m, seed) for n in (40, 80) for m in ("resnet18", "fr-resnet18") for seed in (0, 1)]
    md = write_report(rows, tmp_path, "tiny")
    for name in ("summary.md", "summary.csv", "tests.csv", "results.csv", "accuracy_vs_labels.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "accuracy_vs_labels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "summary.md").read_text() == md + "\n"
    assert "| labels | method" in md and "against resnet18" in md

    acc = {(r["labels"], r["method"], r["seed"]): r["acc"] for r in rows}
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [(int(r["labels"]), r["method"], int(r["n"])) for r in summary] == [
        (40, "resnet18", 2), (40, "fr-resnet18", 2), (80, "resnet18", 2), (80, "fr-resnet18", 2)]
    for r in summary:
        values = [acc[(int(r["labels"]), r["method"], seed)] for seed in (0, 1)]
        assert float(r["mean"]) == pytest.approx(statistics.mean(values))
        assert float(r["std"]) == pytest.approx(statistics.stdev(values))
        assert f"| {int(r['labels']):>6} | {r['method']:<11} |   2 | {float(r['mean']):.2f} ± {float(r['std']):.2f}" in md

    tests = list(csv.DictReader((tmp_path / "tests.csv").open()))
    assert [(int(t["labels"]), t["method"], t["baseline"], int(t["n_pairs"])) for t in tests] == [
        (40, "fr-resnet18", "resnet18", 2), (80, "fr-resnet18", "resnet18", 2)]
    for t in tests:
        diffs = [acc[(int(t["labels"]), "fr-resnet18", seed)] - acc[(int(t["labels"]), "resnet18", seed)]
                 for seed in (0, 1)]
        assert float(t["diff"]) == pytest.approx(statistics.mean(diffs))
        if diffs[0] != diffs[1]:  # a 95 % CI around the mean paired difference
            assert float(t["ci_low"]) < float(t["diff"]) < float(t["ci_high"])
        assert "p_welch" in t and "p_paired" in t


def test_a_second_invocation_runs_nothing(proto, monkeypatch):
    _, specs, store, _ = proto
    monkeypatch.setattr(runner, "_run_one", lambda *a: pytest.fail(f"re-ran {a[0].run_id}"))
    log: list[str] = []
    assert runner.run_all(specs, store, log=log.append) == {}
    assert log == ["8 of 8 runs already done; 0 to run with 1 worker(s) × 1 thread(s)"]


def recording_run_one(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = runner._run_one

    def run_one(spec, *args):
        calls.append(spec.run_id)
        return real(spec, *args)

    monkeypatch.setattr(runner, "_run_one", run_one)
    return calls


def test_a_run_whose_summary_is_gone_is_run_again(proto, monkeypatch):
    _, specs, store, _ = proto
    victim = spec_of(specs, "fr-resnet18", 80, 1)
    (victim.out_dir / "summary.json").unlink()
    calls = recording_run_one(monkeypatch)
    assert runner.run_all(specs, store, log=lambda s: None) == {}
    assert calls == [victim.run_id]
    assert json.loads((victim.out_dir / "summary.json").read_text())["status"] == "done"
    assert RunStore(store).done(victim.run_id)


def test_an_interrupted_run_resumes_from_its_checkpoint_and_others_still_run(proto, monkeypatch):
    _, specs, store, _ = proto
    killed, other = spec_of(specs, "resnet18", 40, 1), spec_of(specs, "fr-resnet18", 40, 0)
    for s in (killed, other):
        (s.out_dir / "summary.json").unlink()
    shutil.rmtree(killed.out_dir / "checkpoint")  # so it trains from the start, and dies after epoch 1
    from r18lab.train import checkpoint as ckpt
    real_save = ckpt.save_training_state

    def save_then_die(folder, **kw):  # the process dies right after epoch 1's checkpoint
        real_save(folder, **kw)
        if folder == killed.out_dir / "checkpoint":
            raise RuntimeError("killed")

    monkeypatch.setattr(ckpt, "save_training_state", save_then_die)
    failures = runner.run_all(specs, store, log=lambda s: None)
    assert list(failures) == [killed.run_id] and "killed" in failures[killed.run_id]
    assert RunStore(store).done(other.run_id) and (other.out_dir / "summary.json").is_file()
    monkeypatch.undo()

    state_path = killed.out_dir / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    assert state["epoch"] == 1 and state["step"] == 2 and not (killed.out_dir / "summary.json").exists()
    RunStore(store).start(killed.run_id, config=killed.config, out_dir=killed.out_dir)  # as `kill -9` leaves it
    state_path.write_text(json.dumps({**state, "elapsed": 1000.0}))  # only a resumed run can report this

    calls = recording_run_one(monkeypatch)
    assert runner.run_all(specs, store, log=lambda s: None) == {}
    assert calls == [killed.run_id]
    summary = json.loads((killed.out_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 4 and summary["train_seconds"] >= 1000
    epochs = [json.loads(line)["epoch"] for line in (killed.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert RunStore(store).done(killed.run_id)


def test_a_run_folder_of_another_config_is_neither_resumed_nor_reported(tmp_path):
    """Other options (here 3 epochs) get their own folder (keyed by run identity), so neither run touches the
    other's files; a folder holding another configuration's run anyway (copied there) is neither resumed,
    reported nor replaced."""
    s = settings(labels=[40], seeds=[0], methods=["resnet18"])
    store = tmp_path / "store.sqlite"
    first = lowdata.plan(s, parse_overrides(tiny()), tmp_path / "out")
    assert runner.run_all(first, store, log=lambda m: None) == {}
    weights = (first[0].out_dir / "model.safetensors").read_bytes()
    longer = lowdata.plan(s, parse_overrides(tiny("train.epochs=3")), tmp_path / "out")
    assert longer[0].out_dir != first[0].out_dir and longer[0].run_id != first[0].run_id
    assert runner.run_all(longer, store, log=lambda m: None) == {}
    assert json.loads((longer[0].out_dir / "summary.json").read_text())["steps"] == 6
    assert json.loads((first[0].out_dir / "summary.json").read_text())["steps"] == 4
    assert (first[0].out_dir / "model.safetensors").read_bytes() == weights  # the first run's weights untouched
    assert [r["seed"] for r in collect_rows(first, s)] == [0] and [r["seed"] for r in collect_rows(longer, s)] == [0]

    wider = lowdata.plan(s, parse_overrides(tiny("model.width=0.125")), tmp_path / "out")
    shutil.copytree(first[0].out_dir, wider[0].out_dir)  # another configuration's run in wider's folder
    assert collect_rows(wider, s) == []
    failures = runner.run_all(wider, store, log=lambda m: None)
    assert "holds another configuration's run" in failures[wider[0].run_id]
    assert (wider[0].out_dir / "model.safetensors").read_bytes() == weights  # neither resumed nor replaced
    assert json.loads((wider[0].out_dir / "summary.json").read_text())["steps"] == 4
    log: list[str] = []
    assert runner.run_all(first, store, log=log.append) == {}
    assert log[0].startswith("1 of 1 runs already done")


def test_runner_threads_follow_omp_num_threads_and_are_given_back(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert runner.threads_per_worker(1) == 4 and runner.threads_per_worker(2) == 2
    assert runner.threads_per_worker(8) == 1
    seen: list[int] = []

    def run_one(spec, store_path, threads):  # what the real one does to the process, without training
        torch.set_num_threads(threads)
        seen.append(torch.get_num_threads())
        return spec.run_id, {}, ""

    monkeypatch.setattr(runner, "_run_one", run_one)
    specs = lowdata.plan(settings(labels=[40], seeds=[0]), parse_overrides(tiny()), tmp_path)
    before = torch.get_num_threads()
    assert runner.run_all(specs, tmp_path / "store.sqlite", log=lambda m: None) == {}
    assert seen == [4, 4] and torch.get_num_threads() == before


def test_two_spawned_workers(tmp_path):
    s = settings(labels=[40], seeds=[0])
    specs = lowdata.plan(s, parse_overrides(tiny("train.epochs=1")), tmp_path / "out")
    store = tmp_path / "store.sqlite"
    log: list[str] = []
    assert runner.run_all(specs, store, workers=2, log=log.append) == {}
    assert log[0] == "0 of 2 runs already done; 2 to run with 2 worker(s) × 1 thread(s)"
    assert sorted(line.split()[1] for line in log[1:]) == sorted(sp.run_id for sp in specs)
    assert all(RunStore(store).done(sp.run_id) for sp in specs)
    assert [r["method"] for r in collect_rows(specs, s)] == ["resnet18", "fr-resnet18"]


# -- the command line -----------------------------------------------------------------------------------


RECIPE = tiny_recipe(3, "scales:\n  tiny: {train: {epochs: 2}}\n")


def test_cli_runs_the_protocol_and_prints_the_table(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(RECIPE)
    out = tmp_path / "proto"
    assert main(["protocol", "lowdata", str(tmp_path / "p.yaml"), "--scale", "tiny", "--out", str(out),
                 "train.epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "### Test accuracy (%), mean ± std over seeds" in printed
    assert "| labels | method      |   n | mean ± std   |" in printed
    assert "|     40 | resnet18    |   1 |" in printed and "|     40 | fr-resnet18 |   1 |" in printed
    assert "|     40 | fr-resnet18 |       1 |" in printed  # the paired test with one pair
    assert f"plot: {out / 'accuracy_vs_labels.png'}" in printed
    [run_dir] = (out / "n40" / "fr-resnet18").glob("seed0-*")  # seed0-<identity[:8]>
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["model"]["heads"] == ["main", "fr"]
    assert (out / "summary.md").is_file() and (out / "tests.csv").is_file()


@pytest.mark.parametrize("override, message", [
    ("protocol.methods=[resnet18, nosuch]",
     "error: unknown method 'nosuch'; choose from: " + ", ".join(sorted(METHODS))),
    ("protocol.labels=[80, 40]", "error: protocol.labels must be strictly increasing, got [80, 40]"),
    ("protocol.labels=[40, 40]", "error: protocol.labels must be strictly increasing, got [40, 40]"),
])
def test_cli_bad_protocol_is_one_line_exit_2(tmp_path, capsys, override, message):
    (tmp_path / "p.yaml").write_text(RECIPE)
    out = tmp_path / "proto"
    assert main(["protocol", "lowdata", str(tmp_path / "p.yaml"), override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert not out.exists()


def test_students_of_a_failed_teacher_are_reported_not_dropped(tmp_path):
    s = settings(labels=[40], seeds=[0], methods=["kd"],
                 method_defs={"kd": {"objective": ["ce", "kd"], "teacher_method": "broken"},
                              "broken": {"model": {"options": {"no_such_option": 1}}}})
    specs = lowdata.plan(s, parse_overrides(tiny()), tmp_path / "out")
    teacher, student = specs
    log: list[str] = []
    failures = runner.run_all(specs, tmp_path / "store.sqlite", log=log.append)
    assert list(failures) == [teacher.run_id, student.run_id]
    assert "no_such_option" in failures[teacher.run_id]
    assert failures[student.run_id] == f"not run: its teacher {teacher.run_id} failed"
    assert f"{student.run_id} skipped: its teacher {teacher.run_id} failed" in log
    assert not student.out_dir.exists() and collect_rows(specs, s) == []


def test_dependency_waves_order_teachers_of_teachers():
    from r18lab.protocols.lowdata import RunSpec
    from r18lab.protocols.runner import dependency_waves

    def spec(run_id, *deps):
        return RunSpec(run_id, {}, Path("/x") / run_id, {}, depends=list(deps))

    specs = [spec("student", "teacher"), spec("teacher", "grand"), spec("grand"), spec("solo"),
             spec("orphan", "already-done")]
    waves = [[s.run_id for s in w] for w in dependency_waves(specs)]
    assert waves == [["grand", "solo", "orphan"], ["teacher"], ["student"]]
