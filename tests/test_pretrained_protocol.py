"""A protocol whose runs start from a pretrained file (paper 000's Caltech recipe: `model.init_from`) plans the
identity the runs record, so its report lists them and a rerun trains nothing (the file's identity, not its
path, enters the run identity)."""
from __future__ import annotations

import torch

import r18lab
from r18lab.cli import main

from helpers import tiny_recipe


def test_init_from_runs_are_reported_and_not_redone(tmp_path, capsys):
    source = r18lab.create_model("resnet18", num_classes=10, width=0.0625)
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "pre.pth")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe(epochs=1, extra=f"""
protocol: {{labels: [40], seeds: [0], methods: [resnet18, fr-resnet18]}}
""").replace("model: {width: 0.0625}",
             f"model: {{width: 0.0625, init_from: {{checkpoint: {tmp_path / 'pre.pth'}, preprocessing: data}}}}"))
    text = recipe.read_text()
    first = text.index("protocol:")
    recipe.write_text(text[:first] + text[first:].split("\n", 1)[1])  # keep the second protocol line only
    args = ["protocol", "lowdata", str(recipe), "--out", str(tmp_path / "p"), "--store", str(tmp_path / "s.db"),
            "train.threads=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| fr-resnet18 |" in out.replace("  ", " ") or "fr-resnet18" in out
    rows = (tmp_path / "p" / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # both runs reported
    assert main(args) == 0
    assert "2 of 2 runs already done" in capsys.readouterr().err
