"""Issue 10's evidence: a researcher's own image folder — no split, mixed sizes, a greyscale and a corrupt file —
through train → eval (per-class table) → report → runs show, all from the command line."""
import json

import numpy as np
import pytest
from PIL import Image

from r18lab.cli import main

CLASSES = ("apples", "boats", "cars")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "my_images"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(10):
            h, w = (12, 16) if i % 2 else (20, 14)  # mixed sizes
            img = np.clip(rng.normal(60 + 70 * c, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    Image.fromarray(np.full((15, 15), 128, np.uint8), mode="L").save(root / "boats" / "grey.png")  # greyscale
    (root / "cars" / "broken.jpg").write_bytes(b"not a jpeg at all")  # corrupt
    (root / "cars" / "notes.txt").write_text("not an image")
    return root


def test_own_folder_train_eval_report_show(folder, tmp_path, capsys):
    out = tmp_path / "run"
    store = str(tmp_path / "runs.sqlite")
    common = [f"data.source={folder}", "data.image_size=8", "model.width=0.0625", "train.epochs=3",
              "train.batch_size=8", "train.progress=none", "optim.lr=0.05", "data.augment.padding=1"]
    # the corrupt file is one line, exit 2, under the default policy
    assert main(["train", *common, "--out", str(tmp_path / "refused"), "--store", store]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.jpg" in err
    # skipped and listed under on_bad_image=skip; the auto split is stratified (20 % of each class to test)
    assert main(["train", *common, "data.on_bad_image=skip", "--out", str(out), "--store", store]) == 0
    text = capsys.readouterr()
    assert "broken.jpg" in text.err + text.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 3 and summary["num_train"] == 25  # 10 + 11 (grey) + 10 (1 bad skipped) → 25 train + 6 test
    per_class = summary["per_class"]["heads"]["main"]
    assert per_class["support"] == [2, 2, 2] and len(per_class["confusion"]) == 3
    # eval with the weights' stored preprocessing: a per-class table on the same split
    assert main(["eval", str(out / "model.safetensors"), str(folder), "image_size=8", "on_bad_image=skip",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "eval/main/balanced_acc" in json.dumps(res)
    assert main(["eval", str(out / "model.safetensors"), str(folder), "image_size=8", "on_bad_image=skip"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in CLASSES)
    # report writes the confusion matrix and the per-class table, and no TempBalance plot
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    assert (out / "confusion.png").is_file() and (out / "per_class.csv").is_file()
    assert not (out / "alpha_by_epoch.png").exists()
    # runs show accepts the folder given as --out
    assert main(["runs", "show", str(out), "--json", "--store", store]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "done" and str(folder) in json.dumps(shown)
