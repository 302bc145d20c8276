"""predict: stored preprocessing, every head, index subsets, stage maps, .npz round trip; index files; CLI."""
import json

import numpy as np
import pytest
import torch

from r18lab import data
from r18lab.cli import main
from r18lab.data.indices import read_indices
from r18lab.data.loader import to_device_tensors
from r18lab.data.splits import save_split
from r18lab.errors import CheckpointError, DataError, R18Error
from r18lab.models import create_model
from r18lab.models.io import LoadedModel, Preprocessing, load_checkpoint, save_model
from r18lab.predict import Predictions, predict

SPEC = {"name": "resnet18", "num_classes": 4, "stem": "cifar", "width": 0.0625, "heads": ["main", "fr"],
        "gate": None, "peers": 1}
MEAN, STD = (0.2, 0.5, 0.7), (0.3, 0.2, 0.25)  # deliberately far from the synthetic data's own statistics
CLASSES = [f"class{k}" for k in range(4)]
OPTS = {"num_classes": 4, "image_size": 8, "n": 64}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "fr"])
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        model(torch.randn(16, 3, 8, 8) * 2 + 1)
    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    save_model(model, path, SPEC, preprocessing=Preprocessing.of(MEAN, STD, (3, 8, 8), CLASSES), identity="abc")
    return path


@pytest.fixture(scope="module")
def test_set():
    return data.load("synthetic", split="test", **OPTS)


def _reference(path, ds, mean, std):
    model = load_checkpoint(path).model.eval()
    x, _ = to_device_tensors(ds, "cpu")
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in (mean, std))
    with torch.no_grad():
        return model((x.float() / 255 - m) / s)


def test_logits_use_stored_preprocessing(weights, test_set):
    p = predict(weights, "synthetic", data_options=OPTS, batch_size=24, device="cpu")  # 3 uneven batches
    ref = _reference(weights, test_set, MEAN, STD)
    assert p.heads == ["main", "fr"] and len(p) == 64
    for h in p.heads:
        np.testing.assert_allclose(p.logits[h], ref.logits[h].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.features, ref.features.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(p.labels, test_set.labels)
    np.testing.assert_array_equal(p.indices, np.arange(64))
    assert p.identity == "abc" and p.classes == CLASSES and p.stages == []
    own = test_set.images.reshape(-1, 3).astype(np.float64) / 255  # the data's own statistics give other logits
    other = _reference(weights, test_set, own.mean(0).tolist(), own.std(0).tolist())
    assert not np.allclose(p.logits["main"], other.logits["main"].numpy(), atol=1e-3)
    assert set(p.accuracy()) == {"main", "fr"}


def test_inputs_indices_and_stages(weights, test_set):
    loaded = load_checkpoint(weights)
    full = predict(loaded, test_set)
    rows = [5, 0, 63, 17]
    sub = predict(loaded, test_set, indices=rows, stages=True, batch_size=3)
    np.testing.assert_array_equal(sub.indices, rows)
    np.testing.assert_array_equal(sub.labels, test_set.labels[rows])
    for h in full.heads:
        np.testing.assert_allclose(sub.logits[h], full.logits[h][rows], rtol=1e-5, atol=1e-5)
    c = [4, 8, 16, 32]  # width 1/16 of 64..512; cifar stem: 8, 4, 2, 1 pixels
    assert [s.shape for s in sub.stages] == [(4, c[i], 8 >> i, 8 >> i) for i in range(4)]
    np.testing.assert_allclose(sub.stages[3].mean((2, 3)), sub.features, rtol=1e-5, atol=1e-5)
    raw = predict(loaded, test_set.images)  # numpy N×H×W×C, no labels
    assert raw.labels is None and raw.accuracy() == {}
    np.testing.assert_allclose(raw.logits["fr"], full.logits["fr"], rtol=1e-5, atol=1e-5)
    x, _ = to_device_tensors(test_set, "cpu")
    np.testing.assert_allclose(predict(loaded, x).logits["main"], full.logits["main"], rtol=1e-5, atol=1e-5)
    assert loaded.model.training  # predict restores the mode it found (load_checkpoint leaves train mode)


def test_npz_round_trip_and_no_overwrite(weights, tmp_path):
    p = predict(weights, "synthetic", data_options=OPTS, indices=[3, 1, 2], stages=True)
    out = p.save(tmp_path / "preds.npz")
    with np.load(out, allow_pickle=False) as z:
        assert {"logits/main", "logits/fr", "features", "stages/0", "stages/3", "labels", "indices", "meta"} \
            <= set(z.files)
    q = Predictions.load(out)
    assert q.heads == p.heads and q.meta == json.loads(json.dumps(p.meta))
    for a, b in [*zip(p.logits.values(), q.logits.values()), *zip(p.stages, q.stages),
                 (p.features, q.features), (p.labels, q.labels), (p.indices, q.indices)]:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    before = out.read_bytes()
    with pytest.raises(R18Error, match="already exists; pass --overwrite"):
        p.save(out)
    assert out.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["preds.npz"]
    predict(weights, "synthetic", data_options=OPTS, indices=[0]).save(out, overwrite=True)
    assert len(Predictions.load(out)) == 1
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(R18Error, match="not a readable predictions"):
        Predictions.load(tmp_path / "junk.npz")


def test_size_mismatch_is_one_line(weights):
    with pytest.raises(R18Error) as e:
        predict(weights, "synthetic", data_options={**OPTS, "image_size": 16})
    assert str(e.value) == ("synthetic:test gives 3×16×16 images but the model was trained on 3×8×8; "
                            "pass image_size=8")
    with pytest.raises(DataError, match="uint8"):
        predict(weights, np.zeros((2, 8, 8, 3), np.float32))


def test_weights_without_preprocessing(tmp_path):
    path = tmp_path / "old.safetensors"
    save_model(create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "fr"]), path, SPEC)
    with pytest.raises(CheckpointError, match="carries no preprocessing.*re-save it with save_model"):
        predict(path, "synthetic", data_options=OPTS)


@pytest.mark.parametrize("name, content, message", [
    ("a.json", "[1, 2, 2]", "lists index 2 more than once"),
    ("b.json", "[0, 10]", "index 10 .* outside 0..9"),
    ("c.json", "[-1]", "index -1 .* outside 0..9"),
    ("d.json", "[]", "is empty"),
    ("e.json", "[1, 2.5]", "entry 1 is 2.5, not an integer"),
    ("f.json", '{"val": [1]}', "without 'indices' or 'train'"),
    ("g.json", "[1, ", "not valid JSON"),
    ("h.txt", "1\nx\n", "line 2 is 'x', not an integer"),
    ("missing.txt", None, "does not exist"),
])
def test_index_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        read_indices(path, 10)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_index_file_formats(tmp_path):
    (tmp_path / "l.json").write_text("[3, 1]")
    (tmp_path / "o.json").write_text('{"indices": [4]}')
    save_split(tmp_path / "s.json", {"train": np.array([7, 2]), "val": np.array([0])})
    (tmp_path / "t.txt").write_text("# rows\n5\n\n6\n")
    np.save(tmp_path / "n.npy", np.array([9, 0], dtype=np.int32))
    np.save(tmp_path / "f.npy", np.array([1.0]))
    got = {f: read_indices(tmp_path / f, 10).tolist() for f in ("l.json", "o.json", "s.json", "t.txt", "n.npy")}
    assert got == {"l.json": [3, 1], "o.json": [4], "s.json": [7, 2], "t.txt": [5, 6], "n.npy": [9, 0]}
    assert read_indices(tmp_path / "s.json", 10, key="val").dtype == np.int64
    with pytest.raises(DataError, match="must hold integers"):
        read_indices(tmp_path / "f.npy", 10)


def test_cli_end_to_end(weights, tmp_path, capsys):
    (tmp_path / "idx.txt").write_text("0\n2\n4\n")
    out = tmp_path / "preds.npz"
    argv = ["predict", str(weights), "synthetic", "num_classes=4", "image_size=8", "n=64",
            "--indices", str(tmp_path / "idx.txt"), "--stages", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("3 samples from synthetic:test; heads main, fr; accuracy main ")
    assert line.endswith(f"wrote {out}")
    p = Predictions.load(out)
    assert p.indices.tolist() == [0, 2, 4] and len(p.stages) == 4 and p.identity == "abc"
    assert main(argv) == 1  # exists: refused, one line
    assert capsys.readouterr().err.strip().endswith("already exists; pass --overwrite (overwrite=True) to replace "
                                                    "it, or choose another --out")
    assert main([*argv, "--overwrite"]) == 0
    assert main(["predict", str(weights), "synthetic", "image_size=16", "--out", str(tmp_path / "x.npz")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


class _WithAux(torch.nn.Module):
    """Adds a per-sample and a batch-level aux output to a model's output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def peers(self):  # where predict looks for stage maps
        return self.model.peers

    def forward(self, x):
        out = self.model(x)
        out.aux = {"fr.score": out.logits["fr"].sum(1), "batch_mean": out.features.mean()}
        return out


def test_peer_group_aux_round_trip(tmp_path, test_set):
    torch.manual_seed(1)
    pre = Preprocessing.of(MEAN, STD, (3, 8, 8), CLASSES)
    group = create_model("resnet18", num_classes=4, width=0.0625, heads=["main", "fr"], peers=2)
    loaded = LoadedModel(_WithAux(group), {**SPEC, "peers": 2}, pre, "grp", tmp_path / "none.safetensors")
    p = predict(loaded, test_set, indices=np.arange(10), stages=True, batch_size=4)
    assert p.heads == ["main", "fr", "peer1/main", "peer1/fr"] and list(p.aux) == ["fr.score"]
    np.testing.assert_allclose(p.aux["fr.score"], p.logits["fr"].sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.stages[3].mean((2, 3)), p.features, rtol=1e-5, atol=1e-5)  # peer 0's maps
    q = Predictions.load(p.save(tmp_path / "g.npz"))
    assert q.heads == p.heads and q.identity == "grp"
    np.testing.assert_array_equal(q.logits["peer1/fr"], p.logits["peer1/fr"])
    np.testing.assert_array_equal(q.aux["fr.score"], p.aux["fr.score"])
