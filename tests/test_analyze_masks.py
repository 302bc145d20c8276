"""`r18lab analyze masks` end to end (spec 002a §1.5–1.7, §5): a tiny ResNet-18's random masks saved as a run's
masks.safetensors, the table, JSON, CSV and plot, `--at final`, the three references, and bad inputs."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from r18lab.analysis.masks import mask_topology, spectral_distance
from r18lab.cli import main
from r18lab.models import create_model
from r18lab.models.io import save_model
from r18lab.pruning.io import MaskFile, save_masks
from r18lab.pruning.scores import prunable

SPEC = {"name": "resnet18", "num_classes": 4, "stem": "cifar", "width": 0.0625, "heads": ["main"], "gate": None,
        "peers": 1}


def random_masks(weights: dict, density: float, gen: torch.Generator) -> dict:
    """Each weight kept i.i.d. with probability `density` (a test-only generator, not the prune hook's)."""
    return {n: torch.rand(w.shape, generator=gen) < density for n, w in weights.items()}


def make_run(folder, seed: int, density: float = 0.3, pretrained: bool = True, final: bool = True):
    """A run folder: masks.safetensors (masks, θ_N, θ0) and, with `final`, model.safetensors (θ_final ⊙ m)."""
    gen = torch.Generator().manual_seed(seed)
    model = create_model("resnet18", num_classes=4, width=0.0625)
    init = {n: w.detach().clone() for n, w in prunable(model).items()}
    scored = {n: w + 0.1 * torch.randn(w.shape, generator=gen) if pretrained else w.clone() for n, w in init.items()}
    masks = random_masks(init, density, gen)
    folder.mkdir(parents=True)
    meta = {"method": "random", "scope": "global", "pretrain_steps": 100 * pretrained,
            "layer_density": {n: float(m.float().mean()) for n, m in masks.items()}}  # module order, as the hook
    save_masks(folder / "masks.safetensors", MaskFile(masks, scored, init, meta))
    state = model.state_dict()
    trained = {n: (scored[n] + torch.randn(w.shape, generator=gen)) * masks[n] for n, w in init.items()}
    if final:
        save_model(model, folder / "model.safetensors", SPEC, state={**state, **trained})
    return {"masks": masks, "scored": scored, "init": init, "trained": trained}


@pytest.fixture
def runs(tmp_path):
    return {"a": (tmp_path / "a" / "seed0", make_run(tmp_path / "a" / "seed0", 0)),
            "b": (tmp_path / "b" / "seed0", make_run(tmp_path / "b" / "seed0", 1, density=0.6))}


def _json(capsys, *args):
    capsys.readouterr()
    assert main(["analyze", "masks", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _num(v):
    return math.nan if v is None else v


def test_table_csv_plot_and_json(runs, tmp_path, capsys):
    (a, ra), (b, _) = runs["a"], runs["b"]
    png, table = tmp_path / "out" / "layers.png", tmp_path / "layers.csv"
    (tmp_path / "out").mkdir()
    table.write_text("old")  # replaced, as the other analyses do
    capsys.readouterr()
    assert main(["analyze", "masks", str(a), str(b / "masks.safetensors"), "--csv", str(table),
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for text in ("### a/seed0", "### b/seed0", "| layer", "Δr", "λ", "IMDB", "NaRC", "collapsed", "sparsity",
                 "D = Σ_l", "reference: origin (flagged", "layer4.1.conv2.weight", "32×32×3×3", f"csv: {table}"):
        assert text in out, text
    assert png.stat().st_size > 1000
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 21 and {r["path"] for r in rows} == {str(a / "masks.safetensors"),
                                                                  str(b / "masks.safetensors")}
    assert rows[0]["shape"] == "4x3x3x3" and {"delta_r", "weighted_gap", "imdb_r", "narc", "d_term"} <= set(rows[0])

    # the numbers are the library's on (weights at pruning ⊙ mask), D from the origin over valid layers
    res = _json(capsys, a)
    assert res["at"] == "prune" and res["reference"] == "origin"
    expected = mask_topology(ra["masks"], {n: w * ra["masks"][n] for n, w in ra["scored"].items()})
    got = res["paths"][0]["rows"]
    assert [r["name"] for r in got] == list(ra["masks"])  # depth order (safetensors returns names sorted)
    for g, e in zip(got, expected):
        for key in ("kept", "density", "sigma2", "delta_r", "weighted_gap", "imdb_r", "narc"):
            assert _num(g[key]) == pytest.approx(e[key], nan_ok=True), (g["name"], key)
    net = res["paths"][0]["network"]
    kept, n = sum(int(m.sum()) for m in ra["masks"].values()), sum(m.numel() for m in ra["masks"].values())
    assert net["kept"] == kept and net["density"] == pytest.approx(kept / n)
    assert net["sparsity"] == pytest.approx(1 - kept / n)
    assert net["distance"] == pytest.approx(spectral_distance(expected)) and net["distance"] > 0
    used = [r["name"] for r in got if r["in_distance"]]
    assert used and net["layers_in_distance"] == len(used) < 21  # the small early layers are left out
    assert all(r["kept"] > 1000 for r in got if r["in_distance"])


def test_at_final_and_references(runs, tmp_path, capsys):
    a, ra = runs["a"]
    masks = ra["masks"]
    prune_rows = _json(capsys, a)["paths"][0]["rows"]
    final = _json(capsys, a, "--at", "final")["paths"][0]
    expected = mask_topology(masks, ra["trained"])
    for g, e, p in zip(final["rows"], expected, prune_rows):
        assert _num(g["weighted_gap"]) == pytest.approx(e["weighted_gap"], nan_ok=True)
        assert _num(g["delta_r"]) == pytest.approx(_num(p["delta_r"]), nan_ok=True)  # topology: the same mask
    assert final["network"]["sum_weighted_gap"] != pytest.approx(_json(capsys, a)["paths"][0]["network"]
                                                                 ["sum_weighted_gap"])

    at_prune = mask_topology(masks, {n: w * masks[n] for n, w in ra["scored"].items()})
    dense = mask_topology({n: torch.ones_like(m) for n, m in masks.items()}, ra["init"])
    same = mask_topology(masks, {n: w * masks[n] for n, w in ra["init"].items()})
    d_dense = _json(capsys, a, "--reference", "dense_init")["paths"][0]["network"]["distance"]
    d_same = _json(capsys, a, "--reference", "mask_at_init")["paths"][0]["network"]["distance"]
    assert d_dense == pytest.approx(spectral_distance(at_prune, dense))
    assert d_same == pytest.approx(spectral_distance(at_prune, same)) and 0 < d_same < d_dense

    # no pretraining: the weights at pruning are θ0, so the same mask on θ0 is at distance 0
    c = tmp_path / "c"
    make_run(c, 2, pretrained=False)
    assert _json(capsys, c, "--reference", "mask_at_init")["paths"][0]["network"]["distance"] == 0.0
    assert _json(capsys, c)["paths"][0]["network"]["distance"] > 0


def _one_line_error(rc, err: str, fragment: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def test_bad_inputs_are_one_line_and_change_nothing(runs, tmp_path, capsys):
    a, ra = runs["a"]
    no_model = tmp_path / "no_model"
    make_run(no_model, 3, final=False)
    bare = tmp_path / "bare.safetensors"  # masks only: no θ0 for the init references
    save_masks(bare, MaskFile(ra["masks"]))
    png, table = tmp_path / "p.png", tmp_path / "t.csv"
    png.write_bytes(b"old png")
    table.write_text("old csv")
    keep = ["--plot", str(png), "--csv", str(table)]
    cases = [
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(a / "model.safetensors")], "not an r18lab mask file"),
        ([str(no_model), "--at", "final"], "--at final needs"),
        ([str(bare), "--reference", "dense_init"], "needs θ0"),
        ([str(bare), "--reference", "mask_at_init"], "needs θ0"),
        ([str(a), str(a / "masks.safetensors")], "given twice"),
        ([str(a), "--plot", str(tmp_path)], "is a folder"),
    ]
    for extra, fragment in cases:
        capsys.readouterr()
        rc = main(["analyze", "masks", *extra, *keep] if "--plot" not in extra else ["analyze", "masks", *extra])
        _one_line_error(rc, capsys.readouterr().err, fragment)
    capsys.readouterr()
    _one_line_error(main(["analyze", "spectrum", str(a / "model.safetensors"), "--at", "final"]),
                    capsys.readouterr().err, "--at belongs to `r18lab analyze masks`")
    _one_line_error(main(["analyze", "masks", str(a), "--data", "synthetic"]), capsys.readouterr().err,
                    "--data belongs to")
    assert png.read_bytes() == b"old png" and table.read_text() == "old csv"

    # a mask-only file still gives the topology; λ is undefined, so no layer enters D
    res = _json(capsys, bare)["paths"][0]
    assert all(r["weighted_gap"] is None for r in res["rows"]) and res["network"]["layers_in_distance"] == 0
    assert [r["name"] for r in res["rows"]][:3] == ["conv1.weight", "fc.weight", "layer1.0.conv1.weight"]  # natural
    assert any(r["delta_r"] is not None for r in res["rows"])
