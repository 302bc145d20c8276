"""benchmarks/grouped_convs.py at a tiny size: the table's structure, FLOP ratios equal to count_flops ratios
(exactly), the efficiency formula, the profile's groups, the CLI's --json and its one-line error for a width
that g16 cannot divide. Speeds themselves are not asserted (they depend on the machine)."""
import json

import pytest

from r18lab.analysis.cost import count_flops
from r18lab.models.classifier import create_model

from helpers import load_benchmark



@pytest.fixture(scope="module")
def gc():
    return load_benchmark("grouped_convs")


@pytest.fixture(scope="module")
def result(gc):
    return gc.run(device="cpu", steps=1, batch_size=4, width=0.25, threads=1, profile_steps_=1, top=5, rounds=1)


def test_rows_and_exact_flop_ratios(gc, result):
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["R-g1", "R-g16", "R-G1"] == list(gc.MODELS)
    flops = {name: count_flops(create_model("resnet18", num_classes=10, stem="cifar", width=0.25, transforms=t),
                               (3, 32, 32)) for name, t in gc.MODELS.items()}
    for r in rows:
        assert r["flops"] == flops[r["model"]]
        assert r["flop_ratio"] == flops[r["model"]] / flops["R-g1"]  # exact, not approximate
        assert r["images_per_s"] > 0 and r["params"] > 0
        assert r["speed_ratio"] == pytest.approx(r["images_per_s"] / rows[0]["images_per_s"], rel=1e-12)
        assert r["efficiency"] == pytest.approx(r["speed_ratio"] * r["flop_ratio"], rel=1e-12)
    assert rows[0]["speed_ratio"] == rows[0]["flop_ratio"] == rows[0]["efficiency"] == 1.0
    assert rows[0]["flops"] > rows[1]["flops"] > rows[2]["flops"]  # g16 and depthwise cost fewer MACs
    assert result["meta"]["reference"] == "R-g1" and result["meta"]["threads"] == 1


def test_flops_by_group_adds_up_to_count_flops(gc):
    for t in gc.MODELS.values():
        model = create_model("resnet18", num_classes=10, stem="cifar", width=0.25, transforms=t)
        by_group = gc.flops_by_group(model)
        assert sum(by_group.values()) == count_flops(model, (3, 32, 32))
        assert (by_group["conv grouped/depthwise"] > 0) == bool(t)


def test_profile_groups_and_top_ops(gc, result):
    for name, p in result["profiles"].items():
        assert list(p["groups_pct"]) == list(gc.GROUPS)
        assert sum(p["groups_pct"].values()) == pytest.approx(100.0)
        assert p["ms_per_step"] > 0 and 1 <= len(p["top"]) <= 5
        assert p["groups_pct"]["conv standard/1×1"] > 0 and p["groups_pct"]["batchnorm"] > 0
        grouped = p["groups_pct"]["conv grouped/depthwise"]
        assert grouped == 0 if name == "R-g1" else grouped > 0  # grouped convs are recognised by their weights
    # a conv op carries the weight shape it was classified by; R-G1's grouped weights are depthwise (C×1×3×3)
    depthwise = [op for op in result["profiles"]["R-G1"]["top"] if op["group"] == "conv grouped/depthwise"]
    assert all(op["weight"][1] == 1 for op in depthwise)


def test_table_text(gc, result):
    text = gc.format_table(result)
    header = "| model | params | FLOPs (MACs) | train images/s | speed ratio | FLOP ratio | efficiency |"
    assert header in text
    lines = text.splitlines()
    start = lines.index(header)
    assert [line.split("|")[1].strip() for line in lines[start + 2:start + 5]] == ["R-g1", "R-g16", "R-G1"]
    assert "| R-g1 | 701,466 |" in text  # quarter-width ResNet-18 with a 10-class fc
    for group in gc.GROUPS:
        assert group in text
    assert "Top ops of R-G1 by self time:" in text


def test_cli_writes_json_and_refuses_a_width_g16_cannot_divide(gc, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert gc.main(["--device", "cpu", "--steps", "1", "--batch-size", "2", "--threads", "1", "--rounds", "1",
                    "--profile-steps", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["rows"]] == ["R-g1", "R-g16", "R-G1"]
    assert "| R-g16 |" in capsys.readouterr().out
    assert gc.main(["--device", "cpu", "--width", "0.125", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not divisible by groups=16" in err[0]
    assert gc.main(["--device", "cpu", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
