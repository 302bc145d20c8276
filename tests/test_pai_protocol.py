"""`r18lab protocol pai`: the sweep's plan, the report (accuracy table, claims C1–C4, plots), resume, bad input."""
from __future__ import annotations

import csv
import json
import math

import pytest

from r18lab.cli import main
from r18lab.config import resolve_tree
from r18lab.protocols.pai import Pai
from r18lab.protocols.pai_report import spearman, verdict

RECIPE = """
protocol: {methods: [random, snip], densities: [0.3], pretrain_steps: [0, 2], seeds: [0, 1],
           prune: {samples_per_class: 4}}
data: {source: synthetic, options: {num_classes: 4, image_size: 8, n: 128}}
model: {width: 0.0625}
optim: {lr: 0.05}
schedule: {name: constant}
train: {batch_size: 32, epochs: 2, progress: none}
"""


def test_plan_is_dense_plus_method_density_mode_seed_with_one_prune_hook_each(tmp_path):
    (tmp_path / "p.yaml").write_text(RECIPE)
    p = Pai("pai", resolve_tree(str(tmp_path / "p.yaml"), ["protocol.densities=[0.1, 0.3]"], None), tmp_path / "o")
    assert len(p.specs) == 2 * (1 + 2 * 2 * 2)
    pruned = [s for s in p.specs if s.tags["method"] != "dense"]
    assert all(len(s.config["hooks"]) == 1 for s in pruned)
    hook = pruned[0].config["hooks"][0]
    assert hook == {"name": "prune", "samples_per_class": 4, "method": "random", "density": 0.1, "pretrain_steps": 0}
    assert len({s.identity for s in p.specs}) == len(p.specs)
    assert {s.config["seed"] for s in p.specs} == {0, 1}


def test_method_defs_name_prune_options_such_as_a_population(tmp_path):
    (tmp_path / "p.yaml").write_text(RECIPE)
    tree = resolve_tree(str(tmp_path / "p.yaml"), ["protocol.methods=[snip, pags-snip]",
                                                   "protocol.method_defs={pags-snip: {method: snip, population: 5}}"],
                        None)
    p = Pai("pai", tree, tmp_path / "o")
    hooks = {s.tags["method"]: s.config["hooks"][0] for s in p.specs if s.tags["method"] != "dense"}
    assert hooks["pags-snip"]["method"] == "snip" and hooks["pags-snip"]["population"] == 5
    assert "population" not in hooks["snip"]


def test_cli_runs_the_sweep_writes_the_report_and_resumes(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["protocol", "pai", str(tmp_path / "p.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "0 of 10 runs already done; 10 to run" in printed.err
    md = printed.out
    for text in ("### Test accuracy (%), mean ± std over seeds", "| dense ", "### C1: each generator − random (paired",
                 "### C2/C3", "std_ratio", "### C4", "distance_all", "accuracy_vs_density.png"):
        assert text in md, text
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 10
    snip = [r for r in rows if r["method"] == "snip"]
    assert all(r["distance"] != "" for r in snip) and all(r["pretrain_steps"] in ("0", "2") for r in snip)
    runs = sorted(out.glob("d0.3/pre2/snip/seed*"))
    assert len(runs) == 2
    meta = json.loads((runs[0] / "config.json").read_text())["hooks"][0]
    assert meta["pretrain_steps"] == 2 and meta["method"] == "snip"
    assert (runs[0] / "masks.safetensors").is_file() and (out / "topology_vs_accuracy.png").is_file()
    assert main(["protocol", "pai", str(tmp_path / "p.yaml"), "--out", str(out)]) == 0
    assert "10 of 10 runs already done; 0 to run" in capsys.readouterr().err


@pytest.mark.parametrize("override, words", [
    ("protocol.methods=[snip, lottery]", ["lottery", "synflow"]),
    ("protocol.densities=[0]", ["density", "(0, 1]"]),
    ("protocol.prune={method: snip}", ["protocol.prune", "method"]),
    ("protocol.pretrain_steps=[-1]", ["pretrain_steps"]),
    ("hooks=[{name: prune}]", ["prune hook", "protocol.prune"]),
    ("protocol.method_defs={pags: {population: 3}}", ["method_defs.pags", "method"]),
    ("protocol.method_defs={snip: {method: snip}}", ["snip-2"]),
])
def test_bad_sweep_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, override, words):
    (tmp_path / "p.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    assert main(["protocol", "pai", str(tmp_path / "p.yaml"), override, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not out.exists()


def test_verdicts_and_spearman():
    assert verdict(1.0, 0.2, 1.8) == "held" and verdict(1.0, -0.2, 2.2) == "direction only"
    assert verdict(-0.5, -1.0, 0.0) == "not held" and verdict(math.nan, math.nan, math.nan) == "not measured"
    rows = [{"distance": d, "acc": a} for d, a in ((1, 10), (2, 30), (3, 20), (4, 40))]
    rho, p, n = spearman(rows, "distance")
    assert n == 4 and rho == pytest.approx(0.8)
    assert math.isnan(spearman(rows[:2], "distance")[0])


def test_the_paired_comparison_uses_the_named_baseline():
    from r18lab.protocols.pai_report import _against_baseline

    rows = [{"method": m, "density": 0.1, "pretrain_steps": 0, "seed": s, "acc": a + s}
            for m, a in (("snip", 30.0), ("pags", 32.0), ("random", 20.0)) for s in (0, 1, 2)]
    text = "\n".join(_against_baseline(rows, "snip"))
    assert "each generator − snip" in text and "| pags " in text and "| snip " not in text
    assert "2.00" in text and "-10.00" in text  # pags − snip and random − snip, constant over seeds
    assert _against_baseline(rows, "erk") == []


def test_population_plot_is_written(tmp_path):
    from r18lab.protocols.pai_plots import plot_population

    path = plot_population([("pags s0", [1.0, 1.5, 3.0]), ("pags s1", [2.0, 2.5])], tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
