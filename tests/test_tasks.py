"""Tasks (data.task: classes, binary, cifar2, eigenfunction), data.test_size, one-logit heads (model.num_classes,
objective bce) and their evaluation (spec 002d §1, §3 "Exact (tests)")."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from r18lab.cli import main
from r18lab.data.dataset import Dataset
from r18lab.data.tasks import (apply_task, binary, cifar2, read_eigenfunctions, save_eigenfunctions, sign_labels)
from r18lab.errors import ConfigError, DataError
from r18lab.models.classifier import ModelOutput
from r18lab.models.io import Normalizer, preprocessing_of
from r18lab.train.engine import evaluate

from helpers import tiny

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dataset(n: int, classes: list[str], seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(classes)
    return Dataset(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), labels, list(classes), "test-data")


def run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- classes, binary, cifar2 ------------------------------------------------------------------------------
def test_cifar2_label_map_is_exact():
    train, test = dataset(50, CIFAR10), dataset(20, CIFAR10, seed=1)
    task = cifar2(train, test)
    for src, out in ((train, task.train), (test, task.test)):
        assert np.array_equal(out.labels, (src.labels <= 4).astype(np.int64))
        assert np.array_equal(out.images, src.images)
    first = {int(c): int(task.train.labels[train.labels == c][0]) for c in range(10)}
    assert first == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0, 9: 0}
    assert task.train.classes == ["dog+frog+horse+ship+truck", "airplane+automobile+bird+cat+deer"]
    assert task.test.classes == task.train.classes and task.train_points is None and task.test_points is None
    assert apply_task("cifar2", train, test).train.labels.tolist() == task.train.labels.tolist()


def test_task_errors():
    four = dataset(12, ["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match="task cifar2 groups CIFAR-10's ten classes, but the data has 4"):
        cifar2(four, four)
    task = binary(four, four, positive=["b", 3])
    assert task.train.labels.tolist() == [0, 1, 0, 1] * 3 and task.train.classes == ["a+c", "b+d"]
    assert apply_task({"name": "binary", "positive": [1, "d"]}, four, four).train.labels.tolist() == [0, 1, 0, 1] * 3
    with pytest.raises(ConfigError, match="every class is positive"):
        binary(four, four, positive=[0, 1, "c", 3])
    for bad in ("e", 4, -1, True):
        with pytest.raises(ConfigError, match=r"is not a class of the data \(indices 0–3 or names a, b, c, d\)"):
            binary(four, four, positive=[bad])
    with pytest.raises(ConfigError, match="needs positive"):
        apply_task("binary", four, four)
    with pytest.raises(ConfigError) as e:
        apply_task({"name": "binary", "positive": [0], "negative": [1]}, four, four)
    assert str(e.value) == "unknown option 'negative' for task 'binary'; valid: positive"
    with pytest.raises(ConfigError) as e:
        apply_task({"name": "cifar2", "positive": [0]}, four, four)
    assert str(e.value) == "unknown option 'positive' for task 'cifar2'; valid: none"
    with pytest.raises(ConfigError, match="unknown task 'cifar3'"):
        apply_task("cifar3", four, four)
    same = apply_task("classes", four, four)
    assert same.train is four and same.test is four


# -- eigenfunction tasks ----------------------------------------------------------------------------------
TRAIN_IDX = np.array([7, 2, 5, 0, 9])
TEST_IDX = np.array([4, 1, 3])
PHI = np.array([  # 8 points (5 train then 3 test) × 3 eigenvectors
    [0.5, 1.0, 0.1], [-0.2, 2.0, 0.2], [0.0, 3.0, -0.3], [0.7, 4.0, 0.4], [-0.1, 5.0, 0.5],
    [0.3, 6.0, -0.6], [0.0, -7.0, 0.7], [-0.4, 8.0, -0.8]])


@pytest.fixture
def eigen_file(tmp_path):
    path = tmp_path / "eigen.npz"
    save_eigenfunctions(path, [3.0, 2.0, 1.0], PHI, TRAIN_IDX, TEST_IDX)
    return path


def test_sign_labels_send_zero_to_zero():
    assert sign_labels(np.array([-2.0, -0.0, 0.0, 1e-300, 3.0])).tolist() == [0, 0, 0, 1, 1]


def test_eigenfunction_task_labels_and_points(eigen_file):
    train, test = dataset(10, ["a", "b", "c"]), dataset(6, ["a", "b", "c"], seed=1)
    arrays = read_eigenfunctions(eigen_file)
    assert arrays["eigenvectors"].dtype == np.float64 and arrays["train_indices"].tolist() == TRAIN_IDX.tolist()
    task = apply_task({"name": "eigenfunction", "file": str(eigen_file), "index": 0}, train, test)
    assert task.train_points.tolist() == sorted(TRAIN_IDX.tolist())
    assert task.test_points.tolist() == sorted(TEST_IDX.tolist())
    # φ_0 = [0.5, -0.2, 0.0, 0.7, -0.1 | 0.3, 0.0, -0.4] → train labels [1, 0, 0, 1, 0], test [1, 0, 0]
    assert task.train.labels[TRAIN_IDX].tolist() == [1, 0, 0, 1, 0]
    assert task.test.labels[TEST_IDX].tolist() == [1, 0, 0]
    assert task.train.classes == ["phi0<=0", "phi0>0"] and task.test.classes == task.train.classes
    assert np.array_equal(task.train.images, train.images)
    other = apply_task({"name": "eigenfunction", "file": str(eigen_file), "index": 2}, train, test)
    assert other.train.labels[TRAIN_IDX].tolist() == [1, 1, 0, 1, 1] and other.test.labels[TEST_IDX].tolist() == [0, 1, 0]


def test_eigenfunction_errors(eigen_file, tmp_path):
    train, test = dataset(10, ["a", "b"]), dataset(6, ["a", "b"], seed=1)

    def task(**kw):
        return apply_task({"name": "eigenfunction", "file": str(eigen_file), **kw}, train, test)

    for index in (3, -1, 1.0, True):
        with pytest.raises(ConfigError, match=r"beyond the 3 eigenvectors in .* \(0–2\)"):
            task(index=index)
    with pytest.raises(ConfigError, match="eigenvector 1 has one sign on every training point"):
        task(index=1)  # φ_1 > 0 on every training point (its one negative entry is a test point)
    with pytest.raises(ConfigError, match="needs file"):
        apply_task({"name": "eigenfunction", "file": str(eigen_file)}, train, test)
    with pytest.raises(DataError, match="indexes train image 9 but the data's train split has 9"):
        apply_task({"name": "eigenfunction", "file": str(eigen_file), "index": 0}, dataset(9, ["a", "b"]), test)
    with pytest.raises(DataError, match="indexes test image 4 but the data's test split has 4"):
        apply_task({"name": "eigenfunction", "file": str(eigen_file), "index": 0}, train, dataset(4, ["a", "b"]))
    with pytest.raises(ConfigError, match="does not exist"):
        read_eigenfunctions(tmp_path / "nope.npz")
    np.savez(tmp_path / "partial.npz", eigenvalues=np.ones(3), eigenvectors=PHI, train_indices=TRAIN_IDX)
    with pytest.raises(ConfigError, match="is not an eigenfunction file .*KeyError"):
        read_eigenfunctions(tmp_path / "partial.npz")
    np.savez(tmp_path / "skew.npz", eigenvalues=np.ones(2), eigenvectors=PHI, train_indices=TRAIN_IDX,
             test_indices=TEST_IDX)
    with pytest.raises(ConfigError, match="is inconsistent"):
        read_eigenfunctions(tmp_path / "skew.npz")
    with pytest.raises(ValueError):
        save_eigenfunctions(tmp_path / "bad.npz", [1.0, 2.0], PHI, TRAIN_IDX, TEST_IDX)


class _Payload:
    """Unpickling it creates a file: the proof that pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_eigenfunction_file_is_read_without_pickle(tmp_path):
    marker = tmp_path / "pickle-ran"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    path = tmp_path / "evil.npz"
    np.savez(path, eigenvalues=payload, eigenvectors=PHI, train_indices=TRAIN_IDX, test_indices=TEST_IDX)
    with pytest.raises(ConfigError, match="is not an eigenfunction file"):
        read_eigenfunctions(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # the payload works: pickle would have run it
        z["eigenvalues"]
    assert marker.exists()


# -- through the CLI --------------------------------------------------------------------------------------
def test_test_size_is_a_balanced_subset_and_normalisation_ignores_the_task(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *tiny("data.test_size=40", "train.epochs=1"), "--out", str(a)]) == 0
    assert main(["train", *tiny("data.test_size=40", "train.epochs=1", "data.task={name: binary, positive: [0]}"),
                 "--out", str(b)]) == 0
    from r18lab.data.loading import load
    labels = load("synthetic", split="test", num_classes=4, image_size=8, n=128).labels
    test_a = json.loads((a / "splits.json").read_text())["test"]
    assert len(test_a) == len(set(test_a)) == 40 and max(test_a) < 128
    assert np.bincount(labels[test_a], minlength=4).tolist() == [10, 10, 10, 10]
    test_b = json.loads((b / "splits.json").read_text())["test"]
    assert len(test_b) == 40 and np.bincount(labels[test_b] == 0).tolist() == [20, 20]  # balanced in the task's labels
    pa, pb = preprocessing_of(a / "model.safetensors"), preprocessing_of(b / "model.safetensors")
    assert pa.mean == pb.mean and pa.std == pb.std and pa.mean != (0.0, 0.0, 0.0)
    assert pa.classes == ("class0", "class1", "class2", "class3") and pb.classes == ("class1+class2+class3", "class0")
    rc, err = run(["train", *tiny("data.test_size=500"), "--out", tmp_path / "c"], capsys)
    assert rc == 2
    assert_one_line(err, "data.test_size=500 exceeds the 128 test images")


def test_eigenfunction_task_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tr, te = np.arange(0, 128, 2), np.arange(1, 128, 4)
    phi = rng.normal(size=(len(tr) + len(te), 3))
    path = tmp_path / "eigen.npz"
    save_eigenfunctions(path, [3.0, 2.0, 1.0], phi, tr, te)
    task = f"data.task={{name: eigenfunction, file: {path}, index: 1}}"
    out = tmp_path / "run"
    assert main(["train", *tiny(task, "train.epochs=1"), "--out", str(out)]) == 0
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] == tr.tolist() and splits["test"] == te.tolist()
    pre = preprocessing_of(out / "model.safetensors")
    assert pre.classes == ("phi1<=0", "phi1>0")
    from r18lab.data.augment import channel_stats
    from r18lab.data.loading import load
    mean, std = channel_stats(load("synthetic", split="train", num_classes=4, image_size=8, n=128))
    assert pre.mean == tuple(mean) and pre.std == tuple(std)  # the whole training split's, not the task's points
    for extra, words in (("data.labels=20", "fixes the training points"), ("data.test_size=10", "fixes the test points")):
        rc, err = run(["train", *tiny(task, extra), "--out", tmp_path / extra], capsys)
        assert rc == 2
        assert_one_line(err, words)


@pytest.mark.parametrize("extra,words", [
    (["model.num_classes=3"], ["model.num_classes=3 does not fit the task's 4 classes", "drop it, or use 1"]),
    (["model.num_classes=1"], ["model.num_classes=1 does not fit the task's 4 classes"]),
    (["data.task={name: binary, positive: [0, 1]}", "model.num_classes=1", "objective=[ce]"],
     ["objective ce on a one-logit model", "objective=[bce]"]),
    (["objective=[bce]"], ["objective bce needs a one-logit model, but the model has 4 outputs"]),
    (["data.task={name: binary, positive: [0, 1]}", "objective=[bce]"], ["model has 2 outputs",
                                                                         "set model.num_classes=1"]),
])
def test_output_units_and_objective_mismatches_exit_2(tmp_path, capsys, extra, words):
    rc, err = run(["train", *tiny(*extra), "--out", tmp_path / "r"], capsys)
    assert rc == 2
    assert_one_line(err, *words)


# -- evaluation of a one-logit head -----------------------------------------------------------------------
class FixedLogit(nn.Module):
    """Logit z_i = TABLE[i] for the image whose pixels all hold i."""

    TABLE = torch.tensor([2.0, -1.0, 0.0, 3.0])

    def forward(self, x):
        idx = torch.round(x[:, 0, 0, 0] * 255).long()
        z = self.TABLE[idx].unsqueeze(1)
        return ModelOutput({"main": z}, torch.zeros(len(x), 1))


@pytest.mark.parametrize("batch_size", [512, 3, 1])
def test_one_logit_evaluation_thresholds_at_zero_and_reports_bce(batch_size):
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    labels = torch.tensor([1, 0, 1, 0])  # predictions [1, 0, 0, 1]: z = 0 predicts 0
    model = FixedLogit().train()
    res = evaluate(model, images, labels, Normalizer([0.0] * 3, [1.0] * 3), batch_size=batch_size)
    assert model.training  # the mode is restored
    assert res["eval/main/acc"] == 50.0
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    want = (softplus(-2.0) + softplus(-1.0) + softplus(-0.0) + softplus(3.0)) / 4  # −log σ(z) for y=1, −log(1−σ(z)) for y=0
    assert math.isclose(res["eval/main/loss"], want, rel_tol=1e-6)
    assert set(res) == {"eval/main/acc", "eval/main/balanced_acc", "eval/main/loss"}
    assert res["eval/main/balanced_acc"] == 50.0  # one of two right in each class
