"""The class-balanced sampler (train.sampler) and progress lines in CI/line mode (fake clock, and the engine)."""
import json

import pytest
import torch

from r18lab.cli import main
from r18lab.data.loader import BatchLoader, balanced_order
from r18lab.errors import DataError
from r18lab.train import engine
from r18lab.train.engine import Progress, eval_epochs

from helpers import tiny


def _imbalanced(sampler: str, seed: int = 0) -> BatchLoader:
    labels = torch.tensor([0] * 90 + [1] * 9 + [2])  # 90 : 9 : 1
    return BatchLoader(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels, batch_size=10, seed=seed, sampler=sampler)


def _epoch_labels(loader: BatchLoader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader])


def test_balanced_sampler_draws_classes_uniformly_on_an_imbalanced_set():
    loader = _imbalanced("balanced")
    drawn = torch.cat([_epoch_labels(loader, e) for e in range(30)])
    assert len(drawn) == 3000  # an epoch is still N draws
    freq = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert freq.tolist() == pytest.approx([1 / 3] * 3, abs=0.04)  # uniform over classes, not 0.9 / 0.09 / 0.01
    uniform = torch.cat([_epoch_labels(_imbalanced("uniform"), e) for e in range(3)])
    assert torch.bincount(uniform).tolist() == [270, 27, 3]  # the default: a permutation, each image once


def test_balanced_sampler_is_seeded_and_uniform_within_a_class():
    a, b, c = _imbalanced("balanced", 0), _imbalanced("balanced", 0), _imbalanced("balanced", 1)
    assert torch.equal(a.order(), b.order())  # same (seed, epoch): same draws
    assert not torch.equal(a.order(), c.order())
    a.set_epoch(1)
    assert not torch.equal(a.order(), b.order())  # another epoch, other draws
    y = torch.tensor([0] * 90 + [1] * 9 + [2])
    idx = balanced_order(y, 30000, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx[y[idx] == 1] - 90, minlength=9).double()
    assert (counts / counts.sum()).tolist() == pytest.approx([1 / 9] * 9, abs=0.02)


def test_sampler_option_and_bad_values(tmp_path, capsys):
    with pytest.raises(DataError, match="unknown sampler 'often'"):
        _imbalanced("often")
    assert main(["train", *tiny("train.sampler=balanced", "train.epochs=1"), "--out", str(tmp_path / "b")]) == 0
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["train"]["sampler"] == "balanced"
    assert main(["train", *tiny("train.sampler=often"), "--out", str(tmp_path / "c")]) == 2
    assert "train.sampler" in capsys.readouterr().err


# -- progress ---------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_mode_prints_every_30_s_with_an_eta_that_counts_evaluations():
    clock, lines = Clock(), []
    p = Progress("lines", total_steps=100, epochs=2, eval_epochs=[0, 1], eval_images=1000, clock=clock,
                 write=lines.append)
    for i in range(29):
        clock.t += 1.0
        p.step(1, None, 100.0, epoch=0)
    assert lines == []  # nothing before 30 s
    clock.t += 1.0
    p.step(1, None, 100.0, epoch=0)
    # 70 steps left at 1 s each, plus 2 evaluations of 1000 images at 3 × 100 img/s = 3.3 s each
    assert lines == ["epoch 1/2 step 30/100 (30%) 100 img/s eta 1m17s"]
    assert p.eta() == pytest.approx(70 + 2 * 1000 / 300)
    for _ in range(20):
        clock.t += 1.0
        p.step(1, None, 100.0, epoch=0)
    p.eval_start()
    for done in range(100, 1001, 100):  # a slow evaluation: 4 s a batch
        clock.t += 4.0
        p.eval_batch(done, 1000)
        if done == 300:  # 12 s in: 50 steps, 700 images at its own pace (28 s), the last evaluation (3.3 s)
            assert p.eta() == pytest.approx(50 + 28 + 1000 / 300)
    assert lines[1:] == ["evaluating 300/1000 images (30%) eta 1m21s"]  # 30 s after the last line
    p.eval_end()
    assert p.eval_estimate() == pytest.approx(40.0)  # measured now
    assert p.eta() == pytest.approx(50 * 1.0 + 1 * 40.0)  # 50 steps and the final evaluation left


def test_bar_and_none_modes_print_no_heartbeat():
    clock, lines = Clock(), []
    p = Progress("none", total_steps=10, clock=clock, write=lines.append)
    clock.t = 100.0
    p.step(1, None, 1.0)
    assert lines == []


def test_eval_epochs():
    assert eval_epochs(10, 3, 1000, 10) == [2, 5, 8, 9]
    assert eval_epochs(10, 1, 25, 10) == [0, 1, 2]  # max_steps ends training in epoch 3


def test_engine_prints_progress_lines_in_line_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)  # every step is "long"
    assert main(["train", *tiny("train.progress=lines"), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    steps = [ln for ln in err.splitlines() if " step " in ln and "img/s eta" in ln]
    assert len(steps) >= 4 and steps[0].startswith("epoch 1/2 step 1/8 (12%)")
    assert "epoch 2/2 loss" in err
