"""Corruption-robustness columns of the low-data protocol (paper 000, appendix C): computed once per finished run
on the same seeded test subset, stored beside the run, reused on a rerun, and tabulated with paired tests."""
from __future__ import annotations

import json

import pytest

from r18lab.cli import main
from r18lab.protocols.robustness_columns import RobustnessSettings, evaluated_subset

from helpers import tiny_recipe

ROBUST = "  robustness: {corruptions: [gaussian_noise, contrast], severities: [1, 5], test_images: 40}"


def _recipe(tmp_path, robustness: str = ROBUST) -> str:
    text = tiny_recipe(epochs=1).replace("protocol: {labels: [40], seeds: [0], methods: [resnet18, fr-resnet18]}",
                                         "protocol:\n  labels: [40]\n  seeds: [0, 1]\n"
                                         "  methods: [resnet18, fr-resnet18]\n" + robustness)
    text = text.replace("image_size: 8, n: 128", "image_size: 16, n: 128")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_columns_tables_and_reuse(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["protocol", "lowdata", _recipe(tmp_path), "--out", str(out), "train.threads=1"]) == 0
    text = capsys.readouterr().out
    assert "Corruption robustness" in text and "Corrupted mean: each method against resnet18" in text
    files = sorted(out.rglob("robustness-*.json"))
    assert len(files) == 4  # 2 methods × 2 seeds
    one = json.loads(files[0].read_text())
    assert one["test_images"] == 40 and one["corruptions"] == ["gaussian_noise", "contrast"]
    assert set(one["mean_per_severity"]) == {"1", "5"}
    cells = [one["acc"][c][s] for c in one["corruptions"] for s in ("1", "5")]
    assert one["mean"] == pytest.approx(sum(cells) / 4)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"c_clean", "c_mean", "c_s1", "c_s5"} <= set(header)
    rows = (out / "robustness.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("labels,method,n")
    assert (out / "robustness.png").stat().st_size > 0
    # a rerun trains nothing and evaluates nothing: the stored results are reused as they are
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert main(["protocol", "lowdata", _recipe(tmp_path), "--out", str(out), "train.threads=1"]) == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert "robustness: " not in capsys.readouterr().out
    # other settings are another result, next to the first; `methods` limits who is evaluated
    other = ROBUST.replace("[1, 5]", "[3]").replace("test_images: 40}", "test_images: 40, methods: [fr-resnet18]}")
    assert main(["protocol", "lowdata", _recipe(tmp_path, other), "--out", str(out), "train.threads=1"]) == 0
    new = set(out.rglob("robustness-*.json")) - set(files)
    assert len(new) == 2 and all("fr-resnet18" in str(f) for f in new)


def test_the_subset_is_seeded_sorted_and_the_same_for_every_run():
    s = RobustnessSettings(test_images=5, seed=3)
    a, b = evaluated_subset(100, s), evaluated_subset(100, s)
    assert a == b == sorted(a) and len(set(a)) == 5
    assert evaluated_subset(100, RobustnessSettings(test_images=5, seed=4)) != a
    assert evaluated_subset(4, s) is None  # fewer test images than asked: all of them


def test_the_settings_key_changes_with_what_changes_the_numbers():
    base = RobustnessSettings(corruptions=["contrast"])
    assert base.key() == RobustnessSettings(corruptions=["contrast"]).key()
    for other in (RobustnessSettings(corruptions=["gaussian_noise"]), RobustnessSettings(corruptions=["contrast"],
                  severities=[1]), RobustnessSettings(corruptions=["contrast"], seed=1),
                  RobustnessSettings(corruptions=["contrast"], test_images=10)):
        assert other.key() != base.key()


@pytest.mark.parametrize("robustness,message", [
    ("  robustness: {corruptions: [snowstorm]}", "unknown corruption 'snowstorm'"),
    ("  robustness: {severities: [0, 6]}", "severities must be distinct integers in 1–5"),
    ("  robustness: {corruptions: [frost]}", "corruption frost cannot be generated"),
    ("  robustness: {methods: [kd]}", "names 'kd', which is not in protocol.methods"),
])
def test_bad_settings_are_one_line_errors_before_any_run(tmp_path, capsys, robustness, message):
    out = tmp_path / "p"
    code = main(["protocol", "lowdata", _recipe(tmp_path, robustness), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not list(out.rglob("model.safetensors"))

