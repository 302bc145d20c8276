"""Per-class accuracy, balanced accuracy and confusion matrices: hand-computed cases, the engine's summaries and
metrics, `eval` (table and --json) and the class-weighted loss."""
import json
import math

import pytest
import torch
from torch import nn

from r18lab.cli import main
from r18lab.errors import ConfigError
from r18lab.models.classifier import ModelOutput
from r18lab.models.io import Normalizer
from r18lab.objectives.base import Batch, ObjectiveContext, build_objectives
from r18lab.objectives.supervised import balanced_class_weights
from r18lab.results.confusion import (balanced_accuracy, per_class_accuracy, per_class_note, per_class_rows,
                                      worst_first)
from r18lab.train.engine import confusion_counts, evaluate, evaluate_detailed

from helpers import tiny

# 10 test images of 3 classes (a 4th class has no test image), and what a fixed model predicts for them
Y = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PRED = [0, 0, 0, 1, 1, 0, 2, 2, 1, 0]
CONF = [[3, 1, 0, 0],   # class 0: 3 of 4 right, one taken for class 1
        [1, 1, 0, 0],   # class 1: 1 of 2
        [1, 1, 2, 0],   # class 2: 2 of 4
        [0, 0, 0, 0]]   # class 3: no test image


class Scripted(nn.Module):
    """Answers the predictions in PRED, batch after batch (one-hot logits), whatever the images."""

    def __init__(self, preds, num_classes: int) -> None:
        super().__init__()
        self.preds, self.num_classes, self.at = preds, num_classes, 0

    def forward(self, x):
        p = torch.tensor(self.preds[self.at:self.at + len(x)])
        self.at += len(x)
        z = torch.nn.functional.one_hot(p, self.num_classes).float() * 5 if self.num_classes > 1 else \
            (p.float() * 2 - 1)[:, None]
        return ModelOutput({"main": z}, x.flatten(1))


def _images(n: int) -> torch.Tensor:
    return torch.zeros(n, 3, 2, 2, dtype=torch.uint8)


def test_confusion_per_class_and_balanced_accuracy_by_hand():
    assert per_class_accuracy(CONF) == [75.0, 50.0, 50.0, None]
    assert balanced_accuracy(CONF) == pytest.approx((75 + 50 + 50) / 3)  # class 3 (no images) left out
    assert confusion_counts(torch.tensor(Y), torch.tensor(PRED), 4).tolist() == CONF
    rows = per_class_rows(CONF, ["a", "b", "c", "d"])
    assert [(r["class"], r["n"], r["correct"], r["confused_with"]) for r in rows] == [
        ("a", 4, 3, "b (1)"), ("b", 2, 1, "a (1)"), ("c", 4, 2, "a (1)"), ("d", 0, 0, "")]


def test_evaluate_gives_confusion_and_balanced_accuracy_over_batches():
    ev = evaluate_detailed(Scripted(PRED, 4), _images(10), torch.tensor(Y), Normalizer([0.0] * 3, [1.0] * 3),
                           batch_size=3)  # 4 batches: the counts add up across them
    assert ev.confusion["main"] == CONF
    assert ev.metrics["eval/main/acc"] == pytest.approx(60.0)
    assert ev.metrics["eval/main/balanced_acc"] == pytest.approx(175 / 3)
    per = ev.per_class(["a", "b", "c", "d"])
    assert per["classes"] == ["a", "b", "c", "d"]
    assert per["heads"]["main"]["per_class_acc"] == [75.0, 50.0, 50.0, None]
    assert per["heads"]["main"]["support"] == [4, 2, 4, 0]
    flat = evaluate(Scripted(PRED, 4), _images(10), torch.tensor(Y), Normalizer([0.0] * 3, [1.0] * 3))
    assert set(flat) == {"eval/main/acc", "eval/main/balanced_acc", "eval/main/loss"}


def test_one_logit_head_is_a_two_class_confusion():
    ev = evaluate_detailed(Scripted([1, 0, 1], 1), _images(3), torch.tensor([1, 1, 0]), Normalizer([0.0] * 3, [1.0] * 3))
    assert ev.confusion["main"] == [[0, 1], [1, 1]]  # z > 0 is class 1
    assert ev.metrics["eval/main/balanced_acc"] == pytest.approx(25.0)


def test_many_classes_show_the_worst_first():
    conf = [[0] * 30 for _ in range(30)]
    for c in range(30):
        conf[c][c] = c  # class c: c right of 29
        conf[c][(c + 1) % 30] = 29 - c
    rows = per_class_rows(conf)
    shown = worst_first(rows)
    assert len(shown) == 20 and [r["class"] for r in shown[:3]] == ["0", "1", "2"]
    assert per_class_note(rows) == "per-class accuracy: the 20 worst of 30 classes; 1 class at 0 %"


def test_train_summary_metrics_eval_and_report_carry_per_class(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *tiny(), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy (%)" in printed and "### main: per-class accuracy (%)" in printed
    assert f"plot: {out / 'confusion.png'}" in printed and f"table: {out / 'per_class.csv'}" in printed
    summary = json.loads((out / "summary.json").read_text())
    rep = summary["per_class"]["heads"]["main"]
    conf = rep["confusion"]
    assert summary["per_class"]["classes"] == ["class0", "class1", "class2", "class3"]
    assert sum(map(sum, conf)) == 128 and rep["support"] == [sum(r) for r in conf]
    assert summary["final"]["eval/main/acc"] == pytest.approx(100 * sum(conf[i][i] for i in range(4)) / 128)
    assert summary["final"]["eval/main/balanced_acc"] == pytest.approx(balanced_accuracy(conf))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/main/balanced_acc" in r for r in records if "eval/main/acc" in r)
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["eval", str(out / "model.safetensors"), "synthetic", "num_classes=4", "image_size=8", "n=128",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["per_class"]["heads"]["main"]["confusion"] == conf  # the same matrix as the run's summary
    assert res["eval/main/balanced_acc"] == pytest.approx(summary["final"]["eval/main/balanced_acc"])
    assert main(["eval", str(out / "model.safetensors"), "synthetic", "num_classes=4", "image_size=8", "n=128",
                 "--plot", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "| class " in text and "| class3 " in text and "per-class accuracy: all 4 classes" in text
    assert f"plot: {tmp_path / 'c.png'}" in text and (tmp_path / "c.png").is_file()


# -- class-weighted loss ------------------------------------------------------------------------------------------


def _ctx(counts=None, classes=3) -> ObjectiveContext:
    return ObjectiveContext(["main"], classes, torch.device("cpu"), extras={} if counts is None else
                            {"class_counts": counts}, logit_names=["main"])


def test_balanced_class_weights_formula():
    assert balanced_class_weights([6, 3, 1]) == pytest.approx([10 / 18, 10 / 9, 10 / 3])  # n / (C·n_c)
    assert balanced_class_weights([4, 0, 4]) == [1.0, 0.0, 1.0]  # C counts the classes with images


@pytest.mark.parametrize("option, weights", [("balanced", [10 / 18, 10 / 9, 10 / 3]), ([1.0, 2.0, 0.5], [1.0, 2.0, 0.5])])
def test_class_weights_change_the_loss_as_the_formula_says(option, weights):
    torch.manual_seed(0)
    z, y = torch.randn(8, 3), torch.tensor([0, 0, 1, 2, 2, 1, 0, 2])
    out = ModelOutput({"main": z}, z)
    (plain,) = build_objectives(["ce"], _ctx([6, 3, 1]))
    (weighted,) = build_objectives([{"name": "ce", "class_weights": option}], _ctx([6, 3, 1]))
    nll = -torch.log_softmax(z, 1)[torch.arange(8), y]
    w = torch.tensor(weights)[y]
    assert float(plain(out, Batch(z, y))["ce/main"]) == pytest.approx(float(nll.mean()), rel=1e-6)
    assert float(weighted(out, Batch(z, y))["ce/main"]) == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-6)


@pytest.mark.parametrize("option, counts, needle", [
    ([1.0, 2.0], [1, 1, 1], "3 numbers"), ("often", [1, 1, 1], "`balanced` or a list"),
    ([1.0, -1.0, 1.0], [1, 1, 1], "3 numbers ≥ 0"), ("balanced", None, "class counts")])
def test_bad_class_weights_are_one_line(option, counts, needle):
    with pytest.raises(ConfigError, match=needle):
        build_objectives([{"name": "ce", "class_weights": option}], _ctx(counts))


def test_engine_hands_the_training_class_counts_to_the_objective(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["train", *tiny("objective=[{name: ce, class_weights: balanced}]", "train.epochs=1"),
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["final"]["eval/main/loss"])
    assert main(["train", *tiny("objective=[{name: ce, class_weights: [1, 2]}]"), "--out", str(tmp_path / "x")]) == 2
    assert "4 numbers" in capsys.readouterr().err
