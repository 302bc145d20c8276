"""`r18lab analyze ntk` end to end (spec 002d §5, §6): the files, eigenvalues against an explicit autograd J Jᵀ, the
matvec and blockwise routes against the dense one, --against, bad inputs, and eigen.npz feeding a training run's
`eigenfunction` task."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from helpers import tiny
from r18lab.analysis import ntk_command
from r18lab.analysis.ntk import kernel_target_alignment, scalar_output
from r18lab.cli import main
from r18lab.data.loading import load
from r18lab.data.splits import nested_pools
from r18lab.data.tasks import read_eigenfunctions
from r18lab.models import create_model
from r18lab.models.io import Preprocessing, load_model, save_model

DATA = ["--data", "synthetic", "num_classes=2", "image_size=8", "n=64"]
DATA_OPTIONS = {"num_classes": 2, "image_size": 8, "n": 64}
PRE = Preprocessing.of([0.5, 0.45, 0.4], [0.25, 0.2, 0.3], (3, 8, 8), ["class0", "class1"])
MLP = {"name": "mlp", "num_classes": 1, "image_size": 8}
RESNET = {"name": "resnet18", "num_classes": 1, "stem": "cifar", "width": 0.0625, "heads": ["main"], "gate": None,
          "peers": 1}


def checkpoint(path, spec, seed=0, pre=PRE):
    torch.manual_seed(seed)
    model = create_model(**spec)
    if spec["name"] == "resnet18":  # non-trivial BN running statistics: the kernel uses them (eval mode)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    save_model(model, path, {k: v for k, v in spec.items()}, preprocessing=pre)
    return path


@pytest.fixture
def ckpts(tmp_path):
    return {"mlp": checkpoint(tmp_path / "mlp" / "model.safetensors", MLP),
            "mlp2": checkpoint(tmp_path / "mlp2" / "model.safetensors", MLP, seed=1)}


def ntk_run(capsys, ckpt, *args):
    capsys.readouterr()
    rc = main(["analyze", "ntk", str(ckpt), *DATA, *map(str, args)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out, err


def points(eigen):
    """The normalised images of eigen.npz's train then test indices (rebuilt independently of the command)."""
    train, test = load("synthetic", "train", **DATA_OPTIONS), load("synthetic", "test", **DATA_OPTIONS)
    images = np.concatenate([train.images[eigen["train_indices"]], test.images[eigen["test_indices"]]])
    x = PRE.normalizer()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    y = np.concatenate([train.labels[eigen["train_indices"]], test.labels[eigen["test_indices"]]])
    return x, torch.from_numpy(y)


def explicit_kernel(model, x):
    """J Jᵀ in float64 from one torch.autograd.grad per sample, the model in eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar_output(model(xi[None]), "main")[0],
                                                                   params)]) for xi in x]
    j = torch.stack(rows).double()
    return j @ j.T


def test_files_and_eigenvalues_match_explicit_jacobian(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "run" / "model.safetensors", RESNET)
    out_dir = ckpt.parent / "ntk"
    out_dir.mkdir()
    (out_dir / "summary.json").write_text("old")  # replaced atomically
    out, err = ntk_run(capsys, ckpt, "--n-train", 16, "--n-test", 8, "--k", 12)
    for text in ("route: dense", "| route", "| P ", "top-5 eigenvalues", "alignment A(K, y)", "E_1(y)", "E_10(y)",
                 "seconds"):
        assert text in out, text
    assert "E_100" not in out and "ntk: Jacobian rows of K 24/24" in err  # lines mode: stderr is not a TTY
    names = {"eigen.npz", "eigenvalues.csv", "spectrum.png", "energy.csv", "energy.png", "summary.json"}
    assert {p.name for p in out_dir.iterdir()} == names  # no temporary files left
    assert all((out_dir / f).stat().st_size > 1000 for f in ("spectrum.png", "energy.png"))

    eigen = read_eigenfunctions(out_dir / "eigen.npz")
    train_labels = load("synthetic", "train", **DATA_OPTIONS).labels
    assert np.array_equal(eigen["train_indices"], nested_pools(train_labels, [16], seed=0)[0])
    assert np.bincount(train_labels[eigen["train_indices"]]).tolist() == [8, 8]
    assert eigen["eigenvectors"].shape == (24, 12)

    x, y = points(eigen)
    k_ref = explicit_kernel(load_model(ckpt), x)
    lam, vec = torch.linalg.eigh(k_ref)
    lam, vec = lam.flip(0)[:12], vec.flip(1)[:, :12]
    np.testing.assert_allclose(eigen["eigenvalues"], lam.numpy(), rtol=1e-6, atol=1e-6 * float(lam[0]))
    overlap = np.abs(np.sum(eigen["eigenvectors"][:, :4] * vec[:, :4].numpy(), axis=0))
    np.testing.assert_allclose(overlap, 1, atol=1e-4)  # the well-separated top eigenvectors, up to sign
    big = np.abs(eigen["eigenvectors"]).argmax(0)
    assert (eigen["eigenvectors"][big, np.arange(12)] > 0).all()  # fix_signs

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n"] == 24 and summary["P"] == sum(p.numel() for p in load_model(ckpt).parameters())
    assert summary["route"] == "dense" and summary["k"] == 12 and set(summary["energy"]) == {"1", "10"}
    assert summary["trace"] == pytest.approx(float(k_ref.trace()), rel=1e-6)
    assert summary["alignment"] == pytest.approx(kernel_target_alignment(k_ref, y), rel=1e-5)
    assert summary["checkpoint"]["identity"].startswith("sha256:") and summary["kernel_distance"] is None
    with open(out_dir / "eigenvalues.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(12))
    np.testing.assert_allclose([float(r["eigenvalue"]) for r in rows], eigen["eigenvalues"])
    with open(out_dir / "energy.csv", newline="") as fh:
        energy = list(csv.DictReader(fh))
    sq = [float(r["energy"]) for r in energy if r["squared"] == "1"]
    ns = [float(r["energy"]) for r in energy if r["squared"] == "0"]
    ys = 2 * y.double() - 1
    ref = np.cumsum((vec.T @ ys).numpy() ** 2) / float(ys @ ys)
    np.testing.assert_allclose(sq, ref, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ns, np.sqrt(sq), rtol=1e-12)
    assert summary["energy"]["10"] == pytest.approx(sq[9])


def test_matvec_and_blockwise_routes_match_dense_and_against_itself(ckpts, tmp_path, capsys, monkeypatch):
    ckpt = ckpts["mlp"]
    ntk_run(capsys, ckpt, "--n-train", 24, "--n-test", 8, "--k", 10, "--out", tmp_path / "dense",
            "--against", ckpt)
    dense = read_eigenfunctions(tmp_path / "dense" / "eigen.npz")
    summary = json.loads((tmp_path / "dense" / "summary.json").read_text())
    assert abs(summary["kernel_distance"]) < 1e-12
    with open(tmp_path / "dense" / "alignment_profile.csv", newline="") as fh:
        profile = list(csv.DictReader(fh))
    np.testing.assert_allclose([float(r["a"]) for r in profile], dense["eigenvalues"], rtol=1e-9)
    assert (tmp_path / "dense" / "alignment_profile.png").stat().st_size > 1000

    out, err = ntk_run(capsys, ckpt, "--n-train", 24, "--n-test", 8, "--k", 3, "--route", "matvec",
                       "--out", tmp_path / "mv", "--against", ckpt, "--json")
    summary = json.loads(out)
    assert "route: matvec" in err
    assert summary["route"] == "matvec" and summary["kernel_distance"] is None and summary["alignment"] is None
    assert "unavailable" in summary["kernel_distance_note"] and "matvecs" in err
    mv = read_eigenfunctions(tmp_path / "mv" / "eigen.npz")
    np.testing.assert_allclose(mv["eigenvalues"], dense["eigenvalues"][:3], rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(mv["eigenvectors"] * dense["eigenvectors"][:, :3], 0)), 1, atol=1e-4)
    with open(tmp_path / "mv" / "alignment_profile.csv", newline="") as fh:
        np.testing.assert_allclose([float(r["a"]) for r in csv.DictReader(fh)], mv["eigenvalues"], rtol=1e-5)

    p = 3 * 64 * 100 + 100 + 100 * 100 + 100 + 101  # MLP 100-100 on 8×8×3, one logit
    monkeypatch.setattr(ntk_command, "free_memory", lambda device: 10 * p * 4 + 32 * 32 * 4)  # 5 rows a block
    out, _ = ntk_run(capsys, ckpt, "--n-train", 24, "--n-test", 8, "--k", 10, "--out", tmp_path / "blocks")
    assert "row blocks of 5" in out
    blocks = read_eigenfunctions(tmp_path / "blocks" / "eigen.npz")
    np.testing.assert_allclose(blocks["eigenvalues"], dense["eigenvalues"], rtol=1e-6)


def test_eigen_npz_drives_an_eigenfunction_training_run(ckpts, tmp_path, capsys):
    ntk_run(capsys, ckpts["mlp"], "--n-train", 40, "--n-test", 16, "--k", 4)
    file = ckpts["mlp"].parent / "ntk" / "eigen.npz"
    eigen = read_eigenfunctions(file)
    run = tmp_path / "train"
    assert main(["train", *tiny("data.options={num_classes: 2, image_size: 8, n: 64}",
                                f"data.task={{name: eigenfunction, file: '{file}', index: 1}}"),
                 "--out", str(run)]) == 0
    splits = json.loads((run / "splits.json").read_text())
    assert splits["train"] == sorted(eigen["train_indices"].tolist())
    assert splits["test"] == sorted(eigen["test_indices"].tolist())


def one_line_error(capsys, argv, *words):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("case", ["missing", "shape", "k", "n_train", "against_arch", "against_missing",
                                  "non_binary", "ten_logits", "cifar2_on_two_classes"])
def test_bad_inputs_exit_2_and_write_nothing(case, ckpts, tmp_path, capsys):
    ckpt, out = ckpts["mlp"], tmp_path / "out"
    base = ["analyze", "ntk", str(ckpt), *DATA, "--n-train", "8", "--n-test", "4", "--out", str(out)]
    if case == "missing":
        argv, words = ["analyze", "ntk", str(tmp_path / "nope.safetensors"), *base[3:]], ("does not exist",)
    elif case == "shape":
        argv, words = [*base, "image_size=16"], ("16×16", "3×8×8")
    elif case == "k":
        argv, words = [*base, "--k", "13"], ("--k 13", "n = 12")
    elif case == "n_train":
        argv, words = [*base, "--n-train", "65"], ("--n-train 65", "64 train images")
    elif case == "against_arch":
        other = checkpoint(tmp_path / "r" / "model.safetensors", RESNET)
        argv, words = [*base, "--against", str(other)], ("another architecture", "name")
    elif case == "against_missing":
        argv, words = [*base, "--against", str(tmp_path / "gone.safetensors")], ("gone.safetensors",)
    elif case == "non_binary":
        argv, words = [*base, "num_classes=4"], ("binary labels", "4 classes")
    elif case == "ten_logits":
        wide = checkpoint(tmp_path / "w" / "model.safetensors", {**MLP, "num_classes": 2})
        argv, words = ["analyze", "ntk", str(wide), *base[3:]], ("one-logit", "--head")
    else:
        argv, words = [*base, "--task", "cifar2"], ("cifar2",)
    one_line_error(capsys, argv, *words)
    assert not out.exists()


def test_forced_dense_route_too_large_names_memory_and_fit(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ntk_command, "free_memory", lambda device: 700_000)  # K of 400 points does not fit
    argv = ["analyze", "ntk", str(ckpts["mlp"]), "--data", "synthetic", "num_classes=2", "image_size=8", "n=256",
            "--n-train", "256", "--n-test", "144", "--out", str(tmp_path / "out")]
    one_line_error(capsys, [*argv, "--route", "dense"], "--route dense needs", "MB", "n ≤ 340 fits",
                   "--route matvec")
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert main([*argv, "--k", "3"]) == 0  # auto: the matrix-free route fits
    assert "route: matvec — K does not fit" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["route"] == "matvec"


def test_cifar2_relabels_before_choosing_points(ckpts, capsys):
    data = ["--data", "synthetic", "num_classes=10", "image_size=8", "n=60"]
    capsys.readouterr()
    assert main(["analyze", "ntk", str(ckpts["mlp"]), *data, "--n-train", "10", "--n-test", "0", "--task", "cifar2",
                 "--seed", "3"]) == 0
    eigen = read_eigenfunctions(ckpts["mlp"].parent / "ntk" / "eigen.npz")
    binary = (load("synthetic", "train", num_classes=10, image_size=8, n=60).labels <= 4).astype(np.int64)
    assert np.array_equal(eigen["train_indices"], nested_pools(binary, [10], seed=3)[0])
    assert len(eigen["test_indices"]) == 0 and eigen["eigenvectors"].shape == (10, 10)
    summary = json.loads((ckpts["mlp"].parent / "ntk" / "summary.json").read_text())
    assert summary["data"]["task"] == "cifar2" and summary["k"] == 10  # default k = min(100, n)
