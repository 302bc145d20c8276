"""Downstream probes (spec 001 §2.3, §7.7–7.8): paired few-shot episodes, LinearSVC with C by stratified CV,
L2 normalisation, the feature cache, foreign weights, class subsets, and the `r18lab probe` command."""
import importlib
import json
import time
import traceback

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from r18lab.analysis import probe as P
from r18lab.cli import main
from r18lab.errors import CheckpointError, ConfigError
from r18lab.models import create_model
from r18lab.models.io import Preprocessing, save_model

OPTS = {"num_classes": 4, "image_size": 8, "n": 64}  # 16 images per class in each split
SRC = [f"{k}={v}" for k, v in OPTS.items()]
SPEC = {"name": "resnet18", "num_classes": 4, "stem": "cifar", "width": 0.0625, "heads": ["main"], "gate": None,
        "peers": 1}
CLASSES = [f"class{k}" for k in range(4)]


def blobs(n_per_class, k=3, d=128, sep=8.0, seed=0):
    """Gaussian blobs with unit noise and class means `sep` apart: linearly separable for large sep."""
    means = np.random.default_rng(123).normal(size=(k, d)) * sep / np.sqrt(2 * d)  # the same classes for every seed
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    return means[y] + rng.normal(size=(len(y), d)) / np.sqrt(d), y


# -- episodes -------------------------------------------------------------------------------------------------
def test_episodes_are_paired_balanced_and_differ_by_index():
    y = np.repeat(np.arange(3), 20)[np.random.default_rng(1).permutation(60)]
    a = P.fewshot_episodes(y, shots=5, episodes=4, task_key="classes=a,b,c", seed=0)
    b = P.fewshot_episodes(y.copy(), shots=5, episodes=4, task_key="classes=a,b,c", seed=0)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))  # a function of (labels, task, episode, seed) only
    assert not np.array_equal(a[0], a[1])  # episode index matters
    assert not np.array_equal(a[0], P.fewshot_episodes(y, 5, 1, "classes=a,b,c", seed=1)[0])
    assert not np.array_equal(a[0], P.fewshot_episodes(y, 5, 1, "classes=x,y,z", seed=0)[0])
    assert np.array_equal(a[2], P.fewshot_episodes(y, 5, 3, "classes=a,b,c", seed=0)[2])  # not the episode count
    for e in a:
        assert len(set(e.tolist())) == 15 and np.bincount(y[e], minlength=3).tolist() == [5, 5, 5]


def test_too_few_images_for_shots_names_the_class():
    y = np.array([0] * 6 + [1] * 3)
    with pytest.raises(ConfigError, match=r"fewer images per class than shots: class dog has 3"):
        P.fewshot_episodes(y, shots=5, episodes=2, task_key="t", class_names=["cat", "dog"])


def test_cv_folds_adapt_to_the_smallest_class():
    assert len(P.cv_folds(np.repeat([0, 1], 5))) == 5
    folds = P.cv_folds(np.array([0, 0, 0, 1, 1, 1, 1, 1]))
    assert len(folds) == 3 and all(set(np.array([0, 0, 0, 1, 1, 1, 1, 1])[va]) == {0, 1} for _, va in folds)
    assert P.cv_folds(np.array([0, 1, 1])) == []
    x, y = blobs(1, k=3, seed=2)
    res = P.linear_svm_probe(x, y, *blobs(5, k=3, seed=2))
    assert res["c_selection"] == "fixed" and res["C"] == 1.0 and res["cv_accuracy"] is None


# -- the SVM --------------------------------------------------------------------------------------------------
def _thin_margin(n0, n1, seed):
    """Two classes on the unit circle at angles −(0.02…0.2) and +(0.02…0.2) rad: separable, but with a tiny C the
    (regularised) intercept of the majority class outweighs w, so every image gets the majority label."""
    rng = np.random.default_rng(seed)
    theta = np.concatenate([-rng.uniform(0.02, 0.2, n0), rng.uniform(0.02, 0.2, n1)])
    return np.stack([np.cos(theta), np.sin(theta)], 1), np.repeat([0, 1], [n0, n1])


def test_cv_picks_the_c_the_data_needs_and_the_grid_matters():
    (x, y), (tx, ty) = _thin_margin(16, 4, 0), _thin_margin(100, 100, 1)
    res = P.linear_svm_probe(x, y, tx, ty)
    curve = {float(k): v for k, v in res["cv_curve"].items()}
    assert res["c_selection"] == "cv4"  # min(5 folds, 4 images of the small class)
    assert curve[1e-3] == 80 and max(curve.values()) == 100  # tiny C: the majority label everywhere
    assert res["C"] == min(c for c, v in curve.items() if v == 100)  # ties go to the smaller C
    assert res["C"] >= 1 and res["accuracy"] >= 90
    small = P.linear_svm_probe(x, y, tx, ty, c_grid=[1e-3, 1e-2])
    assert small["C"] == 1e-3 and small["accuracy"] == 50  # the grid is used, not ignored
    assert P.linear_svm_probe(x, y, tx, ty, c_grid=[100.0])["C"] == 100.0


def test_separable_features_are_probed_perfectly():
    (px, py), (tx, ty) = blobs(40, seed=3), blobs(100, seed=4)
    tic = time.perf_counter()
    res = P.fewshot_probe(px, py, tx, ty, task_key="blobs", shots=5, episodes=10)
    print(f"\n{(time.perf_counter() - tic) / 10:.3f} s per 5-shot episode (3 classes, 128-d, 7 C x 5 folds)")
    assert res["mean"] >= 99 and len(res["accuracies"]) == 10 and len(res["indices"]) == 10
    assert res["ci95"][0] <= res["mean"] <= res["ci95"][1]
    assert res["svm"]["estimator"] == "sklearn.svm.LinearSVC" and res["svm"]["loss"] == "squared_hinge"
    assert res["svm"]["c_grid"] == list(P.C_GRID) and res["svm"]["folds"] == 5
    assert P.full_probe(px, py, tx, ty)["accuracy"] >= 99


def test_features_are_l2_normalised():
    (x, y), (tx, ty) = blobs(6, sep=3.0, seed=5), blobs(30, sep=3.0, seed=6)
    rng = np.random.default_rng(7)
    scaled = [v * rng.uniform(0.01, 100, (len(v), 1)) for v in (x, tx)]
    ref = P.linear_svm_probe(P.l2_normalize(x), y, P.l2_normalize(tx), ty, normalize=False)
    assert P.linear_svm_probe(scaled[0], y, scaled[1], ty) == ref  # per-image scale cannot change anything
    assert P.linear_svm_probe(x, y, tx, ty) == ref
    np.testing.assert_allclose(np.linalg.norm(P.l2_normalize(scaled[0]), axis=1), 1.0)


def test_bad_c_grid():
    with pytest.raises(ConfigError, match="positive"):
        P.check_c_grid([0.1, -1])
    with pytest.raises(ConfigError, match="non-empty"):
        P.check_c_grid([])
    assert P.check_c_grid(["1e-3", 10, 1]) == (1e-3, 1.0, 10.0)  # YAML reads 1e-3 as a string


def test_select_classes_keeps_the_given_order():
    rows, y = P.select_classes(np.array([0, 1, 2, 3, 2, 0]), ["a", "b", "c", "d"], ["c", "a"])
    assert rows.tolist() == [0, 2, 4, 5] and y.tolist() == [1, 0, 0, 1]
    with pytest.raises(ConfigError, match="'cat' is not in the dataset; available: a, b, c, d"):
        P.select_classes(np.array([0, 1]), ["a", "b", "c", "d"], ["a", "cat"])


# -- features -------------------------------------------------------------------------------------------------
def _save(path, seed, identity):
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=4, width=0.0625)
    with torch.no_grad():
        model(torch.randn(16, 3, 8, 8))  # non-trivial BN statistics
    save_model(model, path, SPEC, preprocessing=Preprocessing.of((0.5,) * 3, (0.25,) * 3, (3, 8, 8), CLASSES),
               identity=identity)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return _save(root / "a.safetensors", 0, "run-a"), _save(root / "b.safetensors", 1, "run-b")


def test_feature_cache_hit_does_not_run_the_model(ckpts, tmp_path, monkeypatch):
    rows = np.arange(0, 64, 3)
    x, y = P.features(ckpts[0], "synthetic", "train", indices=rows, data_options=OPTS, cache_dir=tmp_path)
    assert x.dtype == np.float32 and x.shape == (len(rows), 32) and y.shape == (len(rows),)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("the model ran on a cache hit")
    monkeypatch.setattr(importlib.import_module("r18lab.predict"), "predict", boom)
    x2, y2 = P.features(ckpts[0], "synthetic", "train", indices=rows, data_options=OPTS, cache_dir=tmp_path)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    for other in ({"checkpoint": ckpts[1]}, {"indices": rows[:-1]}, {"split": "test"}):  # other keys: a miss
        kw = {"checkpoint": ckpts[0], "data": "synthetic", "split": "train", "indices": rows,
              "data_options": OPTS, "cache_dir": tmp_path, **other}
        with pytest.raises(AssertionError, match="cache hit"):
            P.features(**kw)


def test_foreign_torchvision_layout_weights(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, width=0.0625).eval()
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))  # no metadata
    loaded = P.load_foreign(path, "resnet18", stem="cifar", image_size=8, width=0.0625)
    assert loaded.spec["num_classes"] == 10 and loaded.preprocessing.input_size == (3, 8, 8)
    assert loaded.preprocessing.mean == P.IMAGENET_MEAN and loaded.identity.startswith("sha256:")
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x).features, model(x).features)
    feats, labels = P.features(loaded, "synthetic", "test", data_options=OPTS, cache_dir=tmp_path / "c")
    assert feats.shape == (64, 32) and labels.shape == (64,)
    backbone = tmp_path / "backbone.safetensors"  # no fc: a headless model
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}, str(backbone))
    assert P.load_foreign(backbone, "resnet18", stem="cifar", image_size=8, width=0.0625).spec["heads"] == []
    with pytest.raises(CheckpointError, match="does not fit resnet18"):
        P.load_foreign(path, "resnet18", stem="cifar", image_size=8, width=0.125)


# -- the command ----------------------------------------------------------------------------------------------
def probe_json(capsys, *argv):
    assert main(["probe", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_fewshot_contract_and_paired_episodes(ckpts, tmp_path, capsys):
    args = ["synthetic", *SRC, "classes=[class2,class0,class3]", "shots=5", "episodes=4", "--cache", tmp_path]
    a = probe_json(capsys, "fewshot", ckpts[0], *args)
    b = probe_json(capsys, "fewshot", ckpts[1], *args)
    assert a["classes"] == ["class2", "class0", "class3"] and a["num_pool"] == 48 and a["num_test"] == 48
    assert len(a["accuracies"]) == 4 and a["ci95"][0] <= a["mean"] <= a["ci95"][1]
    assert a["mean"] == pytest.approx(np.mean(a["accuracies"]))
    assert len(a["indices"]) == 4 and all(len(e) == 15 for e in a["indices"])
    assert a["indices"] == b["indices"]  # paired: the same episodes for every checkpoint
    assert a["accuracies"] != b["accuracies"]
    assert a["svm"]["c_grid"] == list(P.C_GRID) and len(a["C"]) == 4
    labels = np.asarray(__import__("r18lab").data.load("synthetic", split="train", **OPTS).labels)
    for e in a["indices"]:  # split rows, 5 of each chosen class
        assert sorted(np.bincount(labels[e], minlength=4).tolist()) == [0, 5, 5, 5] and labels[e].tolist().count(1) == 0


def test_cli_linear_prints_c_and_accuracy_and_writes_out(ckpts, tmp_path, capsys):
    out = tmp_path / "res.json"
    res = probe_json(capsys, "linear", ckpts[0], "synthetic", *SRC, "c_grid=[0.01,1,100]", "folds=3",
                     "--cache", tmp_path, "--out", out)
    assert res["C"] in (0.01, 1.0, 100.0) and 0 <= res["accuracy"] <= 100 and res["num_pool"] == 64
    assert res["svm"]["c_grid"] == [0.01, 1.0, 100.0] and res["svm"]["folds"] == 3
    assert json.loads(out.read_text()) == res
    assert main(["probe", "linear", str(ckpts[0]), "synthetic", *SRC, "--cache", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| C | CV acc (%) | test acc (%) |" in text and "LinearSVC" in text


def test_cli_pool_file_restricts_the_training_images(ckpts, tmp_path, capsys):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(list(range(0, 64, 2))))
    res = probe_json(capsys, "fewshot", ckpts[0], "synthetic", *SRC, f"pool={pool}", "classes=[class0,class1]",
                     "shots=3", "episodes=2", "--cache", tmp_path)
    assert all(i % 2 == 0 for e in res["indices"] for i in e) and res["num_pool"] < 32


def run_main(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException:
        rc = "uncaught"
        print(traceback.format_exc())
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["fewshot", "{a}", "synthetic", *SRC, "classes=[class0,cat]"], "'cat' is not in the dataset; available"),
    (["fewshot", "{a}", "synthetic", *SRC, "shots=20"], "fewer images per class than shots: class class0 has 16"),
    (["fewshoot", "{a}", "synthetic"], "invalid choice: 'fewshoot'"),
    (["fewshot", "{a}", "synthetic", *SRC, "shot=5"], "unknown option 'shot' for probe fewshot"),
    (["linear", "{a}", "synthetic", *SRC, "episodes=3"], "'episodes' does not apply to probe linear"),
    (["linear", "{missing}", "synthetic", *SRC], "does not exist"),
    (["linear", "{a}", "synthetic", *SRC, "c_grid=[0,1]"], "positive finite"),
])
def test_cli_bad_inputs_are_one_line_exit_2(ckpts, tmp_path, capsys, argv, words):
    argv = [x.format(a=ckpts[0], missing=tmp_path / "nope.safetensors") for x in argv]
    rc, err = run_main(["probe", *argv, "--cache", tmp_path], capsys)
    assert rc == 2 and words in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_cli_finetune_trains_on_the_same_episodes(ckpts, tmp_path, capsys):
    args = ["synthetic", *SRC, "classes=[class1,class3]", "shots=3", "--cache", tmp_path]
    ft = probe_json(capsys, "finetune", ckpts[0], *args, "episodes=2", "epochs=1", "batch_size=8")
    few = probe_json(capsys, "fewshot", ckpts[0], *args, "episodes=2")
    assert ft["indices"] == few["indices"] and len(ft["accuracies"]) == 2
    assert all(0 <= v <= 100 for v in ft["accuracies"]) and ft["finetune"]["epochs"] == 1
    cfg = json.loads((tmp_path / "finetune" / ft["runs"][0].split("/")[-1] / "config.json").read_text())
    assert cfg["model"]["init_from"]["checkpoint"].endswith("a.safetensors") and cfg["model"]["heads"] == ["main"]
    assert cfg["data"]["task"] == {"name": "select", "classes": ["class1", "class3"]}
    assert json.loads((tmp_path / "finetune" / "indices").glob("*.json").__next__().read_text())  # rows written
    again = probe_json(capsys, "finetune", ckpts[0], *args, "episodes=2", "epochs=1", "batch_size=8")
    assert again["accuracies"] == ft["accuracies"]  # finished runs are reused
