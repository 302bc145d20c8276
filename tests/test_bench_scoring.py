"""benchmarks/scoring.py at a tiny size: its printed lines and --json fields, images/s > 0, the ratio equal to
scoring ÷ training and the estimates to 10,000 ÷ scoring and 1,000 ÷ training; a bad --heads is one line, exit 2.
Speeds themselves are not asserted (they depend on the machine)."""
import json

import pytest

from helpers import load_benchmark

TINY = ["--device", "cpu", "--width", "0.0625", "--candidates", "64", "--train-images", "32", "--batch", "16",
        "--image-size", "16", "--rounds", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def sc():
    return load_benchmark("scoring")


def test_tiny_run_prints_and_writes_consistent_fields(sc, tmp_path, capsys):
    out = tmp_path / "scoring.json"
    assert sc.main([*TINY, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    for key in ("scoring_images_per_s", "training_images_per_s", "ratio_scoring_over_training",
                "est_score_10000_s", "est_train_epoch_1000_s", "device", "params"):
        assert key in r
    assert r["scoring_images_per_s"] > 0 and r["training_images_per_s"] > 0
    assert r["ratio_scoring_over_training"] == pytest.approx(r["scoring_images_per_s"] / r["training_images_per_s"],
                                                             rel=1e-12)
    assert r["est_score_10000_s"] == pytest.approx(10_000 / r["scoring_images_per_s"], rel=1e-12)
    assert r["est_train_epoch_1000_s"] == pytest.approx(1_000 / r["training_images_per_s"], rel=1e-12)
    assert r["candidates"] == 64 and r["image_size"] == 16 and r["heads"] == "main"
    assert r["entropy_finite"] and r["feature_dim"] > 0
    assert len(r["training_all_images_per_s"]) == 2  # the warm-up epoch and the one timed round
    assert r["training_images_per_s"] == r["training_all_images_per_s"][1]
    assert "| scoring (predict + entropy, features kept) | 64 | 512 |" in text
    assert "| training (engine epoch, augmented) | 32 | 16 |" in text
    assert f"ratio scoring ÷ training: {r['ratio_scoring_over_training']:.3f}" in text
    assert "estimated: score 10,000 candidates" in text and "train one epoch of 1,000 labels" in text


def test_bad_heads_is_one_line(sc, capsys):
    assert sc.main([*TINY, "--heads", "main,bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --heads 'main,bogus' is not one of: main, main,fr, main,llal")
