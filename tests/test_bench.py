"""`r18lab bench`: every figure printed next to a reference measured in the same run, and an honest bare loop."""
from __future__ import annotations

import argparse

import torch

from r18lab import bench
from r18lab.cli import main


def test_bench_prints_each_figure_with_its_reference_and_ratio(capsys):
    args = argparse.Namespace(steps=1, batch_size=8, width=0.0625, device="cpu", matmul_sizes="32,64")
    assert bench.run_bench(args) == 0
    out = capsys.readouterr().out
    for name in ("train images/s (engine vs bare loop)", "eval images/s (engine vs bare loop)",
                 "augment images/s (crop+flip+norm vs norm only)", "train FLOP/s (6·MACs·img/s) vs matmul peak", "3×3 conv F.conv2d vs matmul peak",
                 "3×3 conv im2col+matmul (direct multiplies) vs peak", "3×3 conv matmul alone (direct multiplies) vs peak",
                 "3×3 conv F.conv2d vs its direct matmul alone"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        ours, ref, ratio = line[len(name):].replace("G", " ").split()
        assert float(ratio) > 0 and abs(float(ours) / float(ref) - float(ratio)) < 0.02 * float(ratio) + 2e-3
    assert "n = 32, 64" in out  # the peak is the best over the sizes measured
    assert "train FLOP/s is" in out  # the fraction is explained from the measurements, not asserted


def test_bare_loop_reads_the_loss_once_per_pass_not_per_step(monkeypatch):
    model = torch.nn.Module()
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))

    class Out:
        def __init__(self, z):
            self.logits = {"main": z}

    model.forward = lambda x: Out(net(x))
    model.net = net
    xs = [torch.randn(4, 3, 2, 2) for _ in range(5)]
    ys = [torch.randint(0, 3, (4,)) for _ in range(5)]
    calls = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or real_item(self))
    assert bench.bare_train(model, xs, ys, passes=2) > 0
    assert len(calls) == 3  # one read per pass (warm-up + 2), not one per step (15)


def test_common_conv_shape_and_direct_reference_agree_with_conv2d():
    import r18lab
    model = r18lab.create_model("resnet18", num_classes=10, stem="cifar", width=0.0625)
    c_in, c_out, h, w, stride, count = bench.common_conv3x3(model, (3, 32, 32))
    assert (c_in, c_out, h, w, stride, count) == (4, 4, 32, 32, 1, 4)  # layer1: four 3×3 convs
    rates = bench.conv_rates(torch.device("cpu"), c_in, c_out, 8, 8, stride, batch=2, repeats=1)
    assert set(rates) == {"conv2d", "im2col", "gemm"} and all(r > 0 for r in rates.values())


def test_bad_bench_arguments_are_one_line(capsys):
    assert main(["bench", "--steps", "0"]) == 2
    assert main(["bench", "--matmul-sizes", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: --") for line in err)
