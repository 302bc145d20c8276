"""The active-learning protocol (paper 000 sec. 3.2, LLAL's setup) on tiny synthetic data: pools grow by exactly
the acquired images, acquisitions are the top scores of the saved candidates under the cycle's model, nothing
finished is redone on a rerun, arms sharing a method share cycle 0, and bad settings are one line before any run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from r18lab.cli import main

RECIPE = """
protocol: {{initial: 40, budget: 12, cycles: {cycles}, candidates: 50, seeds: [0], arms: {arms}}}
data: {{source: synthetic, options: {{num_classes: 4, image_size: 8, n: 128}}}}
model: {{width: 0.0625}}
optim: {{lr: 0.05}}
schedule: {{name: constant}}
train: {{batch_size: 32, epochs: 1, progress: none, threads: 1}}
"""


def _run(tmp_path, cycles=2, arms="[resnet18/random, resnet18/entropy, resnet18/coreset]", extra=()):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(cycles=cycles, arms=arms))
    return main(["protocol", "active", str(path), "--out", str(tmp_path / "p"), "--store",
                 str(tmp_path / "store.sqlite"), *extra])


def _pool(tmp_path, arm, cycle, seed=0):
    if cycle == 0:
        return json.loads((tmp_path / "p" / "pools" / "initial" / f"seed{seed}.json").read_text())
    return json.loads((tmp_path / "p" / "pools" / arm.replace("/", "--") / f"seed{seed}" /
                       f"cycle{cycle}.json").read_text())


def test_pools_grow_by_the_acquired_top_scores(tmp_path, capsys):
    assert _run(tmp_path) == 0
    out = capsys.readouterr().out
    assert "Acquired-batch overlap" in out
    first = _pool(tmp_path, "resnet18/random", 0)["indices"]
    assert len(first) == 40
    for arm in ("resnet18/random", "resnet18/entropy", "resnet18/coreset"):
        p = _pool(tmp_path, arm, 1)
        acquired = p["acquired"]
        assert len(acquired) == len(set(acquired)) == 12 and not set(acquired) & set(first)
        assert sorted(p["indices"]) == sorted(first + acquired)
        assert set(acquired) <= set(p["candidates"]) and len(p["candidates"]) == 50
        assert not set(p["candidates"]) & set(first)  # candidates come from the unlabelled pool only
    # entropy: the acquired rows are exactly the 12 highest-entropy candidates under the cycle-0 model
    p = _pool(tmp_path, "resnet18/entropy", 1)
    from r18lab.predict import predict
    from r18lab.protocols.acquisition_inputs import softmax
    from r18lab.data import load
    pred = predict(str(next((tmp_path / "p" / "cycle0").rglob("model.safetensors"))),
                   load("synthetic", split="train", num_classes=4, image_size=8, n=128), indices=p["candidates"])
    q = softmax(pred.logits["main"].astype(np.float64))
    h = -(q * np.log(q)).sum(1)
    assert np.allclose(h, p["candidate_scores"], atol=1e-5)
    top = np.asarray(p["candidates"])[np.argsort(-h, kind="stable")[:12]]
    assert list(top) == p["acquired"]
    # the three resnet18 arms share one cycle-0 run (same config, same initial pool)
    assert len(list((tmp_path / "p" / "cycle0").rglob("model.safetensors"))) == 1
    rows = (tmp_path / "p" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2  # 3 arms × 2 cycles


def test_a_rerun_redoes_nothing_and_more_cycles_continue_from_the_saved_pools(tmp_path, capsys):
    assert _run(tmp_path, cycles=2) == 0
    pools = sorted((tmp_path / "p" / "pools").rglob("*.json"))
    stamps = {f: f.stat().st_mtime_ns for f in pools}
    weights = {f: f.stat().st_mtime_ns for f in (tmp_path / "p").rglob("model.safetensors")}
    capsys.readouterr()
    assert _run(tmp_path, cycles=3) == 0
    err = capsys.readouterr().err
    waves = [line for line in err.splitlines() if "runs already done" in line]
    assert [w.split(";")[0] for w in waves] == ["1 of 1 runs already done", "3 of 3 runs already done",
                                                 "0 of 3 runs already done"]  # only cycle 2 trains
    assert {f: f.stat().st_mtime_ns for f in pools} == stamps
    assert {f: f.stat().st_mtime_ns for f in weights} == weights
    assert len(_pool(tmp_path, "resnet18/coreset", 2)["indices"]) == 40 + 2 * 12


def test_llal_and_bald_arms_acquire(tmp_path):
    assert _run(tmp_path, arms="[llal/llal, resnet18/bald]") == 0
    llal = _pool(tmp_path, "llal/llal", 1)
    assert llal["score"] and llal["scores"] == sorted(llal["scores"], reverse=True)
    bald = _pool(tmp_path, "resnet18/bald", 1)
    assert all(v >= -1e-9 for v in bald["candidate_scores"])  # mutual information is ≥ 0


@pytest.mark.parametrize("arms,extra,message", [
    ("[resnet18/oracle]", (), "unknown acquisition 'oracle'"),
    ("[nonet/random]", (), "unknown method 'nonet'"),
    ("[resnet18/llal]", (), "acquisition llal needs the llal head"),
    ("[resnet18/entropy]", ("protocol.query_head=fr",), "which the method's model lacks"),
    ("[resnet18/random]", ("protocol.cycles=20",), "needs 268 labelled images after 20 cycles"),
    ("[resnet18/random]", ("data.labels=10",), "chooses the labelled pool itself"),
])
def test_bad_settings_are_one_line_before_any_run(tmp_path, capsys, arms, extra, message):
    assert _run(tmp_path, arms=arms, extra=extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "p").rglob("model.safetensors"))
