"""The ntk_probe hook (spec 002d §4 L3): K_t on a fixed probe set during training — distance, alignment, energy, the
saved kernels, the constant kernel of a linearised model, no effect on training, resume, bad input — and the
benchmarks/linearized_costs.py smoke test."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from r18lab.analysis.ntk import energy_concentration, kernel_target_alignment, top_eigen
from r18lab.cli import main
from r18lab.config import load_config
from r18lab.errors import ConfigError
from r18lab.models.classifier import PeerGroup, create_model
from r18lab.models.io import Normalizer
from r18lab.train.engine import train
from r18lab.train.hooks import build_hook, overrides

from helpers import interrupt_at, load_benchmark, tiny

BINARY = ["data.task={name: binary, positive: [0, 1]}", "model.num_classes=1", "objective=[bce]",
          "train.epochs=3", "train.threads=1"]
PROBE = "hooks=[{name: ntk_probe, size: 32, epochs: [0, 1, 3, 7], ks: [1, 4, 100]}]"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def probes(run: Path) -> list[dict]:
    return [r for r in records(run) if "ntk/distance" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ntk_probe")
    for name, extra in (("net", [PROBE]), ("plain", []), ("lin", [PROBE, "model.transforms=[linearize]"])):
        assert main(["train", "--out", str(root / name), *tiny(*BINARY, *extra)]) == 0
    return root


def test_distance_is_zero_at_start_and_grows_for_the_network(runs):
    rows = probes(runs / "net")
    assert rows[0]["epoch"] == 0 and rows[0]["ntk/distance"] == 0.0
    assert all(r["ntk/distance"] > 1e-4 for r in rows[1:])
    assert all(r["ntk/trace"] > 0 and r["ntk/seconds"] > 0 and -1 <= r["ntk/alignment"] <= 1 for r in rows)


def test_the_linearised_models_kernel_stays_the_same(runs):
    rows = probes(runs / "lin")
    assert len(rows) == 3 and all(0 <= r["ntk/distance"] < 1e-6 for r in rows)
    assert len({round(r["ntk/alignment"], 12) for r in rows}) == 1
    # θ0 is the network's initialisation, so its kernel at epoch 0 is the network's
    folder = "ntk_probe/kernel_epoch0000.npy"
    np.testing.assert_allclose(np.load(runs / "lin" / folder), np.load(runs / "net" / folder), rtol=1e-5)


def test_only_the_asked_epochs_within_the_run_are_probed(runs):
    assert [r["epoch"] for r in probes(runs / "net")] == [0, 1, 3]  # 7 is beyond the 3 epochs: skipped silently
    files = sorted(p.name for p in (runs / "net" / "ntk_probe").iterdir())
    assert files == ["kernel_epoch0000.npy", "kernel_epoch0001.npy", "kernel_epoch0003.npy", "points.json"]
    assert all("ntk/energy@1" in r and "ntk/energy@4" in r and "ntk/energy@100" not in r
               for r in probes(runs / "net"))  # k = 100 > 32 points: skipped


def test_logged_measures_match_the_saved_kernel_and_points(runs):
    points = json.loads((runs / "net" / "ntk_probe" / "points.json").read_text())
    assert points["split"] == "train" and len(points["indices"]) == 32 == len(set(points["indices"]))
    y = torch.tensor(points["labels"])
    assert int(y.sum()) == 16  # class-balanced
    splits = json.loads((runs / "net" / "splits.json").read_text())
    assert points["dataset_indices"] == [splits["train"][i] for i in points["indices"]]
    for r in probes(runs / "net"):
        k = torch.from_numpy(np.load(runs / "net" / f"ntk_probe/kernel_epoch{r['epoch']:04d}.npy")).double()
        assert k.shape == (32, 32) and torch.allclose(k, k.T)
        assert r["ntk/alignment"] == pytest.approx(kernel_target_alignment(k, y), rel=1e-5)
        assert r["ntk/trace"] == pytest.approx(float(k.trace()), rel=1e-5)
        e = energy_concentration(top_eigen(k, 4)[1], y, [1, 4])
        assert [r["ntk/energy@1"], r["ntk/energy@4"]] == pytest.approx(e.tolist(), rel=1e-4, abs=1e-6)


def test_the_probe_does_not_change_training(runs):
    a, b = load_file(runs / "net" / "model.safetensors"), load_file(runs / "plain" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [r["train/loss"] for r in records(run) if "train/loss" in r]  # noqa: E731
    assert losses(runs / "net") == losses(runs / "plain")


def test_resume_keeps_the_first_kernel_and_the_points(tmp_path, monkeypatch):
    args = tiny(*BINARY, PROBE, "train.deterministic=true")
    train(load_config(None, args), tmp_path / "full")
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at(m, 6)
        train(load_config(None, args), tmp_path / "cut")
    train(load_config(None, args), tmp_path / "cut", resume=True)
    full, cut = probes(tmp_path / "full"), probes(tmp_path / "cut")
    assert [r["epoch"] for r in cut] == [0, 1, 3]
    for a, b in zip(full, cut):
        assert {k: v for k, v in a.items() if k.startswith("ntk/") and k != "ntk/seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k.startswith("ntk/") and k != "ntk/seconds"}, rel=1e-9, abs=1e-12)


# -- the hook alone ----------------------------------------------------------------------------------------


def fake_ctx(tmp_path, model, num_classes=2, n=24):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % num_classes
    logged = []
    return SimpleNamespace(model=model, loader=SimpleNamespace(images=images, labels=labels),
                           x_test=images.flip(0), y_test=labels.flip(0), normalizer=Normalizer([0.5] * 3, [0.25] * 3),
                           cfg=SimpleNamespace(seed=3), device=torch.device("cpu"), out=tmp_path,
                           num_classes=num_classes, data=SimpleNamespace(train_indices=np.arange(100, 100 + n)),
                           log=logged.append, logged=logged)


def test_probe_leaves_weights_statistics_modes_and_rng_untouched(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1, width=0.0625)
    model.train()
    model.layer1[0].bn1.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    hook = build_hook("ntk_probe", {"size": 8, "split": "test", "epochs": [0, 2], "ks": [2]})
    ctx = fake_ctx(tmp_path, model)
    hook.on_fit_start(ctx)
    record: dict = {}
    hook.on_epoch_end(ctx, 1, record)
    hook.on_epoch_end(ctx, 2, {})  # epoch 3 is not asked for
    assert [r["epoch"] for r in ctx.logged] == [0] and "ntk/energy@2" in record
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not overrides(hook, "before_step") and not overrides(hook, "after_step")  # epoch boundaries only
    points = json.loads((tmp_path / "ntk_probe" / "points.json").read_text())
    assert points["split"] == "test" and points["dataset_indices"] == points["indices"]
    assert sorted(p.name for p in (tmp_path / "ntk_probe").glob("*.npy")) == ["kernel_epoch0000.npy",
                                                                              "kernel_epoch0002.npy"]
    state = hook.state_dict()
    assert state["reference"].shape == (8, 8) and state["indices"].tolist() == points["indices"]
    fresh = build_hook("ntk_probe", {"size": 8, "split": "test", "epochs": [0, 2], "ks": [2]})
    fresh.load_state_dict(state)  # as after a resume: K_0 and the points come from the checkpoint
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    later, again = {}, {}
    hook.on_epoch_end(ctx, 1, later)
    fresh.on_epoch_end(ctx, 1, again)
    assert again["ntk/distance"] == later["ntk/distance"] > 1e-4


def test_bad_models_and_tasks_are_refused_at_fit_start(tmp_path):
    hook = build_hook("ntk_probe", {"size": 8})
    with pytest.raises(ConfigError, match="peer group"):
        hook.on_fit_start(fake_ctx(tmp_path, PeerGroup([create_model("resnet18", num_classes=1, width=0.0625)
                                                        for _ in range(2)])))
    with pytest.raises(ConfigError, match="num_classes: 1"):
        hook.on_fit_start(fake_ctx(tmp_path, create_model("resnet18", num_classes=3, width=0.0625)))
    with pytest.raises(ConfigError, match="head 'aux'"):
        build_hook("ntk_probe", {"size": 8, "head": "aux"}).on_fit_start(
            fake_ctx(tmp_path, create_model("resnet18", num_classes=1, width=0.0625)))
    with pytest.raises(ConfigError, match="size=30 exceeds the 24"):
        build_hook("ntk_probe", {"size": 30}).on_fit_start(
            fake_ctx(tmp_path, create_model("resnet18", num_classes=1, width=0.0625)))


@pytest.mark.parametrize("params, words", [
    ({"epochs": [0, -1]}, "epochs must be ≥ 0"), ({"size": 1}, "size"), ({"split": "val"}, "split"),
    ({"ks": [0]}, "ks must be ≥ 1"), ({"chunk": 0}, "chunk"), ({"epochs": 5}, "list"), ({"bins": 3}, "unknown")])
def test_bad_options_are_one_line_config_errors(params, words):
    with pytest.raises(ConfigError, match=words):
        build_hook("ntk_probe", params)


def test_multiclass_task_exits_2_with_one_line(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "mc"), *tiny("train.threads=1", "hooks=[ntk_probe]")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "two-class" in err[0] and "cifar2" in err[0]
    assert main(["train", "--out", str(tmp_path / "neg"),
                 *tiny(*BINARY, "hooks=[{name: ntk_probe, epochs: [-2]}]")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# -- benchmarks/linearized_costs.py -----------------------------------------------------------------------


def test_benchmark_prints_positive_ratios(capsys):
    module = load_benchmark("linearized_costs")
    assert module.main(["--n", "8", "--batch", "8", "--width", "0.0625", "--image-size", "8", "--repeats", "1",
                        "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    ratios = result["ratios"]
    assert set(ratios) == {"linearized_step", "jacobian_rows_vs_train_images", "matvec_training_passes"}
    assert all(isinstance(v, float) and v > 0 for v in ratios.values())
    table = [line for line in out if line.startswith("| (")]
    assert [float(line.rstrip(" |").rsplit("|", 1)[1]) for line in table] == pytest.approx(
        list(ratios.values()), abs=5.01e-4)  # printed with 3 decimals: off by at most half a unit of the last
    assert module.main(["--repeats", "0"]) == 2
