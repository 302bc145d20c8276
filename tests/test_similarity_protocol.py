"""The similarity protocol and `analyze similarity` end to end on tiny synthetic data: the plan (students shared
between checks, teachers' identities in the students'), the cached analyses, the claims' arithmetic, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from r18lab.cli import main
from r18lab.config import resolve_tree
from r18lab.protocols.similarity import Similarity
from r18lab.protocols.similarity_report import pooled_difference, verdict

DATA = {"source": "synthetic", "options": {"num_classes": 4, "image_size": 16, "n": 192}}
RECIPE = {
    "protocol": {
        "seeds": [0, 1], "images": 40,
        "teachers": {"plain": {"model": {"width": 0.125}}, "color": {"model": {"width": 0.125},
                     "data": {"augment": {"color_jitter": [0.4, 0.4, 0.4, 0.1]}}}},
        "student_base": {"data": {"augment": {"padding": 0}}},
        "students": {"ind": {"objective": ["ce"]},
                     "kl": {"objective": [{"name": "ce", "weight": 0.5},
                                          {"name": "kd", "teacher": "{teacher}", "weight": 0.5}]},
                     "klstar": {"objective": [{"name": "ce", "weight": 0.5},
                                              {"name": "kd_synthetic", "weight": 0.5, "seed": "{seed}"}]}},
        "checks": {
            "A": {"teacher": "plain", "students": ["ind", "kl@plain"], "measures": ["agreement", "cam", "cka"]},
            "B": {"teacher": "color", "students": ["ind", "kl@color", "klstar"], "contrast": ["kl@color", "klstar"],
                  "measures": ["invariance:color", "adv", "adv:foreign"], "foreign": "plain",
                  "expect": {"adv:foreign": "="}},
        },
        "suite": {"triplets": 2, "resolution": 6},
    },
    "data": DATA,
    "model": {"width": 0.0625},
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "train": {"batch_size": 32, "epochs": 1, "progress": "none", "threads": 1},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    rc = main(["protocol", "similarity", str(recipe), "--out", str(tmp / "out"), "--store", str(tmp / "s.db")])
    assert rc == 0
    return tmp, recipe, Similarity("similarity", resolve_tree(recipe, [], None), tmp / "out")


def test_plan_shares_students_and_carries_teacher_identities(finished):
    _, _, p = finished
    assert sorted(p.students) == ["ind#0", "ind#1", "kl@color#0", "kl@color#1", "kl@plain#0", "kl@plain#1",
                                  "klstar#0", "klstar#1"]
    kl = p.students["kl@plain#1"]
    teacher = p.teachers["plain"]
    assert kl.depends == [teacher.run_id] and list(kl.teacher_ids.values()) == [teacher.identity]
    assert kl.config["objective"][1]["teacher"] == str(teacher.out_dir / "model.safetensors")
    assert p.students["klstar#1"].config["objective"][1]["seed"] == 1  # the seed placeholder is filled
    assert p.teachers["color"].config["data"]["augment"]["color_jitter"] == [0.4, 0.4, 0.4, 0.1]
    assert p.students["ind#0"].config["data"]["augment"]["padding"] == 0


def test_checks_are_analysed_cached_and_reported(finished, capsys):
    tmp, recipe, p = finished
    for name in ("A", "B"):
        payload = json.loads(p.check_path(name).read_text())
        assert set(payload["scores"]) == set(p.check_students(name))
    a = json.loads(p.check_path("A").read_text())["scores"]
    assert len(a["ind#0"]["agreement"]["items"]) == 40
    assert math.isnan(a["ind#0"]["cam"]["value"]) is False  # the Ind-vs-Ind row against the second seed
    text = (p.out / "report.md").read_text()
    assert "## A:" in text and "## B:" in text and "kl@color > klstar" in text and "## All claims" in text
    assert (p.out / "claims.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["protocol", "similarity", str(recipe), "--out", str(tmp / "out"), "--store", str(tmp / "s.db")]) == 0
    assert "0 to run" in capsys.readouterr().err


def test_pooled_difference_and_verdicts():
    scores = {k: {"m": {"value": float(np.mean(v)) * 100, "items": v, "scale": 100.0}}
              for k, v in {"a#0": [1, 1, 1, 0] * 5, "a#1": [1, 1, 0, 1] * 5, "b#0": [1, 0, 0, 0] * 5,
                           "b#1": [0, 1, 0, 0] * 5}.items()}
    d = pooled_difference(scores, ["a#0", "a#1"], ["b#0", "b#1"], "m")
    assert d["delta"] == pytest.approx(50.0) and d["per_seed"] == [50.0, 50.0] and d["low"] > 0
    assert verdict(d, ">") == "held"
    assert verdict({**d, "low": -1.0}, ">").startswith("direction only")
    assert verdict({**d, "delta": -3.0}, ">") == "not held"
    assert verdict({**d, "low": -1.0, "high": 2.0}, "=").startswith("held (no gap")
    assert verdict(d, "=").startswith("not held")


@pytest.mark.parametrize("change, message", [
    ({"checks": {"X": {"teacher": "nope", "students": ["ind"], "measures": ["cam"]}}}, "not in protocol.teachers"),
    ({"checks": {"X": {"teacher": "plain", "students": ["ind", "kl"], "measures": ["cam"]}}}, "write kl@<teacher>"),
    ({"checks": {"X": {"teacher": "plain", "students": ["ind"], "measures": ["colour"]}}}, "unknown measure"),
    ({"seeds": [0]}, "at least two seeds"),
])
def test_bad_settings(tmp_path, capsys, change, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "protocol": {**RECIPE["protocol"], **change}}))
    rc = main(["protocol", "similarity", str(recipe), "--out", str(tmp_path / "o"), "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_analyze_similarity_cli(finished, capsys, tmp_path):
    _, _, p = finished
    w = {k: str(s.out_dir / "model.safetensors") for k, s in p.students.items()}
    teacher = str(p.teachers["plain"].out_dir / "model.safetensors")
    args = ["analyze", "similarity", w["ind#0"], w["ind#1"], w["kl@plain#0"], "--teacher", teacher,
            "--data", "synthetic", "num_classes=4", "image_size=16", "n=192", "--baseline", w["ind#0"],
            "--baseline2", w["ind#1"], "--measures", "agreement,cam,boundary", "--n", "24", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    out = json.loads((tmp_path / "o" / "similarity.json").read_text())
    rows = {r["student"]: r for r in out["table"]}
    assert out["images"] == 24 and set(out["seconds"]) == {"agreement", "cam", "boundary"}
    assert "agreement Δ" in rows[next(k for k in rows if k != out["baseline"])]
    capsys.readouterr()
    bad = [*args[:-2], "--measures", "agreement,nope"]
    assert main(bad) == 2 and "unknown measure 'nope'" in capsys.readouterr().err
    too_few = [a if a != "24" else "5" for a in args]
    assert main(too_few) == 2 and "too few images" in capsys.readouterr().err


def test_unknown_tap_names_the_valid_ones(finished, capsys):
    _, _, p = finished
    w = str(p.students["ind#0"].out_dir / "model.safetensors")
    teacher = str(p.teachers["plain"].out_dir / "model.safetensors")
    rc = main(["analyze", "similarity", w, "--teacher", teacher, "--data", "synthetic", "num_classes=4",
               "image_size=16", "n=192", "--measures", "cka", "--taps", "layer2,layer9", "--n", "12"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "'layer9' is not a layer" in err and "layer4" in err and len(err.splitlines()) == 1


def test_cam_without_baseline_and_other_classes_are_one_line(finished, tmp_path, capsys):
    _, _, p = finished
    w = str(p.students["ind#0"].out_dir / "model.safetensors")
    teacher = str(p.teachers["plain"].out_dir / "model.safetensors")
    common = ["--teacher", teacher, "--data", "synthetic", "num_classes=4", "image_size=16", "n=192", "--n", "12"]
    assert main(["analyze", "similarity", w, *common, "--measures", "cam"]) == 2
    assert "pass --baseline" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["train", "--out", str(other), "data.source=synthetic",
                 "data.options={num_classes: 3, image_size: 16, n: 96}", "model.width=0.0625", "train.epochs=1",
                 "train.progress=none"]) == 0
    capsys.readouterr()
    assert main(["analyze", "similarity", str(other / "model.safetensors"), *common, "--measures", "agreement"]) == 2
    assert "same task" in capsys.readouterr().err


def test_invariance_strength_points():
    from r18lab.analysis.similarity_suite import split_measure
    from r18lab.errors import ConfigError

    assert split_measure("invariance:color@0.3") == ("invariance", "color@0.3")
    assert split_measure("invariance:crop@0.5") == ("invariance", "crop@0.5")
    for bad in ("invariance:crop@1.5", "invariance:color@x", "invariance:hue@0.2", "invariance:color@-1"):
        with pytest.raises(ConfigError, match="invariance:<color|crop|shift>@"):
            split_measure(bad)
