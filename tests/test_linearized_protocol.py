"""The linearized protocol end to end on tiny synthetic data: its plan, that the eigenfunction kernel is taken at the
very θ0 the runs start from, the L5 references, the report's checks, resuming, and bad settings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from r18lab.cli import main
from r18lab.config import ScheduleConfig, resolve_tree
from r18lab.models.io import load_checkpoint
from r18lab.protocols.linearized import Linearized
from r18lab.train.optim import lr_factor

RECIPE = {
    "protocol": {
        "seeds": [0, 1],
        "architectures": {"resnet18": {"name": "resnet18", "width": 0.0625, "init": "flax_lecun",
                                       "options": {"zero_init_residual": True}},
                          "mlp": {"name": "mlp", "options": {"image_size": 8}}},
        "cifar2": {"labels": 60, "test_size": 40, "epochs": 2, "architectures": ["mlp"]},
        "probe": {"size": 16, "epochs": [0, 2], "ks": [1, 4]},
        "eigen": {"architecture": "resnet18", "n_train": 40, "n_test": 20, "indices": [1, 3], "epochs": 2,
                  "rotation": [3], "pretrained": 3},
    },
    "data": {"source": "synthetic", "options": {"num_classes": 10, "image_size": 8, "n": 200},
             "augment": {"crop": None, "flip": False}, "split_seed": 0},
    "model": {"num_classes": 1},
    "objective": ["bce"],
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "schedule": {"name": "linear"},
    "train": {"batch_size": 16, "drop_last": True, "progress": "none", "threads": 1},
}


def _write(tmp: Path, recipe: dict) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lin")
    recipe = _write(tmp, RECIPE)
    rc = main(["protocol", "linearized", str(recipe), "--out", str(tmp / "out"), "--store", str(tmp / "store.db")])
    assert rc == 0
    protocol = Linearized("linearized", resolve_tree(recipe, [], None), tmp / "out")
    list(protocol.waves(_Done()))  # re-plan every wave (everything is cached now)
    return tmp, recipe, protocol


class _Done:
    """A RunContext that says every run is finished (to re-plan the waves of a finished protocol)."""

    def __init__(self):
        self.done = _All()


class _All:
    def __contains__(self, _):
        return True


def test_linear_schedule_is_one_minus_s_over_S():
    cfg = ScheduleConfig(name="linear")
    assert [lr_factor(cfg, e, 4) for e in (0, 1, 2.5, 4)] == [1.0, 0.75, 0.375, 0.0]


def test_plan(finished):
    _, _, protocol = finished
    tags = [(s.tags["family"], s.tags["arch"], s.tags["model"], s.tags.get("index")) for s in protocol.specs]
    assert tags.count(("cifar2", "mlp", "nn", None)) == 2 and tags.count(("cifar2", "mlp", "lin", None)) == 2
    for j in (1, 3):
        for m in ("nn", "lin"):
            assert tags.count(("eigen", "resnet18", m, j)) == 2
    assert tags.count(("eigen", "resnet18", "lin0-nobias", 3)) == 2
    assert tags.count(("eigen", "resnet18", "linend-nobias", 3)) == 2
    for s in protocol.specs:
        hooks = [h["name"] if isinstance(h, dict) else h for h in s.config["hooks"]]
        transforms = [t["name"] if isinstance(t, dict) else t for t in s.config["model"]["transforms"]]
        assert ("linearize" in transforms) == (s.tags["model"] != "nn")
        assert ("ntk_probe" in hooks) == (s.tags["family"] == "cifar2" and s.tags["model"] == "nn")


def test_kernel_is_taken_at_the_runs_theta0(finished):
    """The lin run stores its θ0; the eigen.npz kernel must be the NTK of exactly those weights."""
    from r18lab.analysis.ntk import ntk_matrix
    from r18lab.data.tasks import read_eigenfunctions

    _, _, protocol = finished
    lin = next(s for s in protocol.specs if s.tags["family"] == "eigen" and s.tags["model"] == "lin"
               and s.tags["seed"] == 1)
    stored = load_checkpoint(lin.out_dir / "model.safetensors").model.reference.params()
    from r18lab.config import build_config
    rebuilt = dict(protocol.initial_model(build_config(lin.config)).named_parameters())
    assert set(stored) == set(rebuilt)
    for name, value in stored.items():
        assert torch.equal(value, rebuilt[name].detach()), name
    x, tr, te, _ = protocol._points(1)
    arrays = read_eigenfunctions(protocol.out / "kernels" / "seed1" / "eigen.npz")
    assert np.array_equal(arrays["train_indices"], tr) and np.array_equal(arrays["test_indices"], te)
    kernel = ntk_matrix(protocol.initial_model(build_config(lin.config)), x, dtype=torch.float64)
    top = torch.linalg.eigvalsh(kernel).flip(0)[:5]
    assert torch.allclose(torch.from_numpy(arrays["eigenvalues"][:5]), top, rtol=1e-6)
    # the run trained on the eigen file's train points, labelled by the sign of φ_index
    split = json.loads((lin.out_dir / "splits.json").read_text())
    assert split["train"] == sorted(tr.tolist()) and split["test"] == sorted(te.tolist())


def test_pretrained_linearisation_starts_at_the_trained_network(finished):
    _, _, protocol = finished
    nn_run = next(s for s in protocol.specs if s.tags["family"] == "eigen" and s.tags["model"] == "nn"
                  and s.tags["index"] == 3 and s.tags["seed"] == 0)
    end = next(s for s in protocol.specs if s.tags["model"] == "linend-nobias" and s.tags["seed"] == 0)
    zero = next(s for s in protocol.specs if s.tags["model"] == "lin0-nobias" and s.tags["seed"] == 0)
    trained = load_checkpoint(nn_run.out_dir / "model.safetensors").model
    lin_end = load_checkpoint(end.out_dir / "model.safetensors").model
    ref = lin_end.reference.params()
    for name, p in trained.named_parameters():
        assert torch.equal(ref[name], p.detach()), name
    bn = lin_end.reference.buffers_at_reference()
    assert torch.all(bn["bn1.running_var"] == 1) and torch.all(bn["bn1.running_mean"] == 0)  # reset to θ0's
    assert not torch.all(trained.bn1.running_var == 1)
    assert not lin_end.with_bias and not load_checkpoint(zero.out_dir / "model.safetensors").model.with_bias


def test_report_and_checks(finished):
    tmp, _, protocol = finished
    text = (protocol.out / "report.md").read_text()
    for heading in ("(L1)", "(L2)", "(L3)", "(L4)", "(L5)", "## Checks"):
        assert heading in text
    for png in ("eigen_accuracy.png", "kernel_dynamics.png", "alignment_profiles.png"):
        assert (protocol.out / png).stat().st_size > 1000
    profile = json.loads((protocol.out / "kernels" / "seed0" / "profile_index3.json").read_text())
    assert len(profile["profile"]) == 60 and 0 < profile["kernel_distance"] < 1
    from r18lab.protocols.linearized_report import collect_rows, probe_table
    rows = collect_rows(protocol)
    probe = probe_table(rows)
    assert [r["epoch"] for r in probe] == [0, 2] and probe[0]["distance"] == 0 and probe[1]["distance"] > 0
    lin = [r for r in rows if r["family"] == "cifar2" and r["model"] == "lin"]
    assert all(r["distance"] > 0 for r in lin)


def test_rerun_runs_nothing(finished, capsys):
    tmp, recipe, _ = finished
    capsys.readouterr()
    rc = main(["protocol", "linearized", str(recipe), "--out", str(tmp / "out"), "--store", str(tmp / "store.db")])
    err = capsys.readouterr().err
    assert rc == 0 and "0 to run" in err and " to run" in err and "1 to run" not in err


@pytest.mark.parametrize("change, message", [
    ({"eigen": {**RECIPE["protocol"]["eigen"], "rotation": [2]}}, "among eigen.indices"),
    ({"cifar2": {**RECIPE["protocol"]["cifar2"], "architectures": ["vgg"]}}, "not in protocol.architectures"),
    ({"architectures": {"mlp": {"name": "mlp", "transforms": ["linearize"]}}}, "adds it to the lin runs"),
    ({"eigen": {**RECIPE["protocol"]["eigen"], "indices": [1, 60]}}, "must lie in 0–59"),
    ({"models": ["nn", "kernel"]}, "protocol.models"),
])
def test_bad_settings_one_line_exit_2(tmp_path, capsys, change, message):
    recipe = {**RECIPE, "protocol": {**RECIPE["protocol"], **change}}
    rc = main(["protocol", "linearized", str(_write(tmp_path, recipe)), "--out", str(tmp_path / "out"),
               "--store", str(tmp_path / "s.db")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
