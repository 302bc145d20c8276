"""`r18lab report DIR` on run and protocol directories: it writes what it lists, and draws only what the run logged;
spectrum tables flag fits on too few tail eigenvalues and print every file they write."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from r18lab.analysis.spectrum import MIN_TAIL, UNRELIABLE, spectrum_row, unreliable_note
from r18lab.cli import main
from r18lab.results.report import group_and_seed

from helpers import tiny, tiny_recipe


def _written(printed: str) -> list[str]:
    return [ln.split(": ", 1)[1] for ln in printed.splitlines() if ln.startswith(("plot: ", "table: ", "report: "))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *tiny(), "--out", str(root / "plain")]) == 0
    assert main(["train", *tiny("hooks=[tempbalance]"), "--out", str(root / "tb")]) == 0
    return root


def test_run_report_draws_alpha_only_with_tempbalance(runs, capsys):
    capsys.readouterr()
    assert main(["report", str(runs / "plain")]) == 0
    files = _written(capsys.readouterr().out)
    names = sorted(p.rsplit("/", 1)[1] for p in files)
    assert names == ["confusion.png", "learning_curves.png", "per_class.csv"]
    assert not (runs / "plain" / "alpha_by_epoch.png").exists()
    assert all(open(p, "rb").read(1) for p in files)  # every listed file exists

    assert main(["report", str(runs / "tb")]) == 0
    names = {p.rsplit("/", 1)[1] for p in _written(capsys.readouterr().out)}
    assert {"alpha_by_epoch.png", "lr_scale_by_epoch.png", "confusion.png"} <= names


def test_report_on_a_protocol_directory_writes_its_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("R18LAB_STORE", str(tmp_path / "store.sqlite"))
    (tmp_path / "p.yaml").write_text(tiny_recipe(1).replace("seeds: [0]", "seeds: [0, 1]"))
    out = tmp_path / "proto"
    assert main(["protocol", "lowdata", "p.yaml", "--out", str(out)]) == 0
    assert json.loads((out / "protocol.json").read_text())["name"] == "lowdata"
    for name in ("summary.md", "per_class.csv", "balanced.csv"):
        (out / name).unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # rebuilt from protocol.json; nothing is trained
    printed = capsys.readouterr().out
    assert "### Balanced accuracy (mean per-class accuracy, %), mean ± std over seeds" in printed
    assert "### Worst classes" in printed and f"plot: {out / 'accuracy_vs_labels.png'}" in printed
    for name in ("summary.md", "per_class.csv", "balanced.csv", "results.csv"):
        assert (out / name).is_file(), name
    per_class = list(csv.DictReader((out / "per_class.csv").open()))
    assert len(per_class) == 2 * 4 and {r["n"] for r in per_class} == {"2"}  # 2 methods × 4 classes, 2 seeds each
    results = list(csv.DictReader((out / "results.csv").open()))
    assert all(0 <= float(r["balanced_acc"]) <= 100 for r in results)

    (out / "protocol.json").unlink()  # a directory from before protocol.json: its runs, grouped over seeds
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| n40/resnet18    |   2 |" in printed and "| n40/fr-resnet18 |   2 |" in printed
    for path in _written(printed):
        assert Path(path).is_file(), path
    summary = {r["group"]: r for r in csv.DictReader((out / "runs_summary.csv").open())}
    accs = [float(r["acc"]) for r in csv.DictReader((out / "runs.csv").open()) if r["group"] == "n40/resnet18"]
    assert float(summary["n40/resnet18"]["acc"]) == pytest.approx(sum(accs) / 2)
    assert float(summary["n40/resnet18"]["acc_std"]) == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))


def test_report_of_a_folder_without_runs_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a run" in err


def test_group_and_seed_from_folder_names():
    from pathlib import PurePosixPath as P
    assert group_and_seed(P("n40/ce/seed3-ab12cd34")) == ("n40/ce", 3)
    assert group_and_seed(P("teachers/t0-seed1-0123abcd")) == ("teachers/t0", 1)
    assert group_and_seed(P("dense")) == ("dense", None)


# -- spectrum -----------------------------------------------------------------------------------------------------


def test_spectrum_flags_fits_on_few_tail_eigenvalues():
    small = spectrum_row("fc", "linear", (10, 32), torch.linspace(0.1, 3.0, 10).double() ** 2)  # median: n_tail 5
    assert small["n_tail"] == 5 and small["reliable"] is False and small["warning"] == UNRELIABLE
    assert UNRELIABLE == f"n_tail < {MIN_TAIL}: unreliable"
    evals = torch.sort((torch.distributions.Pareto(1.0, 1.0).sample((400,)))).values.double()
    big = spectrum_row("conv", "conv", (400, 400), evals)
    assert big["n_tail"] == 200 and big["reliable"] is True and big["warning"] != UNRELIABLE
    note = unreliable_note([small, big])
    assert note.startswith(f"warning: 1 of 2 layers fit α on fewer than {MIN_TAIL}") and "fc (5)" in note


def test_spectrum_command_shows_n_tail_and_prints_every_written_file(runs, tmp_path, capsys):
    capsys.readouterr()
    ckpt = runs / "plain" / "model.safetensors"
    assert main(["analyze", "spectrum", str(ckpt), "--plot", str(tmp_path / "a.png"), "--csv", str(tmp_path / "t.csv"),
                 "--esd-plot", str(tmp_path / "esd.png"), "--esd-layer", "fc"]) == 0
    printed = capsys.readouterr().out
    header = next(ln for ln in printed.splitlines() if ln.startswith("| name"))
    assert "n_tail" in header and "reliable" in header
    fc_line = next(ln for ln in printed.splitlines() if ln.startswith("| fc "))
    assert "n_tail < 50: unreliable" in fc_line and "over-trained" not in fc_line
    assert "warning: " in printed and "tail eigenvalues (n_tail)" in printed
    assert f"plot: {tmp_path / 'a.png'}" in printed and f"plot: {tmp_path / 'esd.png'}" in printed
    assert f"table: {tmp_path / 't.csv'}" in printed
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    fc = next(r for r in rows if r["name"] == "fc")
    assert fc["reliable"] == "False" and fc["warning"] == UNRELIABLE
