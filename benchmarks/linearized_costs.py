"""Costs of linearised training and of the empirical NTK (spec 002d §5), as ratios to ordinary training measured in
the same run on the same network and batch.

Run: .venv/bin/python benchmarks/linearized_costs.py [--model resnet18] [--width 0.125] [--image-size 32]
     [--batch 128] [--n 256] [--chunk 32] [--repeats 5] [--threads N] [--device auto|cpu|cuda] [--json OUT.json]

(a) Linearised step: `create_model(model, num_classes=1, width, transforms=["linearize"])` (one jvp per forward,
    backward through it) vs the same network built from the same seed without the transform; each step is forward,
    mean sigmoid BCE on the logit, backward, SGD (momentum 0.9) step on one random batch of `--batch`; the model in
    train mode (the linearised network itself always runs in eval mode). Ratio = linearised / normal seconds.
(b) Jacobian rows: `r18lab.analysis.ntk.jacobian_rows` (vmap(grad) per sample, eval-mode BN, `--chunk` rows per
    vmap) over `--n` points; rows/s vs the normal step's training images/s (batch / step seconds). Ratio = rows/s ÷
    images/s (< 1: a Jacobian row costs more than a training image).
(c) Matrix-free matvec: `ntk_matvec` (one vjp over the n points, then one jvp) with a random v over the same `--n`
    points, `--batch` points at a time; its seconds ÷ the seconds of one forward + BCE + backward over the same
    n points in batches of `--batch` (train mode, no optimizer step) = training-pass equivalents.
Each measurement: one warm-up call, then the median of `--repeats` timed calls, the variants taking turns in each
repeat; on CUDA the device is synchronised just before and after each timed call, never inside it.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from r18lab.analysis.ntk import jacobian_rows, ntk_matvec, parameter_count, scalar_output
from r18lab.bench import _sync, finish_benchmark
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.train.environment import pick_device, run_environment


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of fn, the device synchronised just before and after."""
    _sync(device)
    tic = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - tic


def run(model: str = "resnet18", width: float = 0.125, image_size: int = 32, batch: int = 128, n: int = 256,
        chunk: int = 32, repeats: int = 5, threads: int | None = None, device: str = "auto") -> dict:
    for name, value in (("--image-size", image_size), ("--batch", batch), ("--n", n), ("--chunk", chunk),
                        ("--repeats", repeats)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}; e.g. {name} 2")
    dev = pick_device(device)
    with run_environment(threads, deterministic=False):
        torch.manual_seed(0)
        net = create_model(model, num_classes=1, width=width).to(dev)
        torch.manual_seed(0)  # the same θ0: the linearisation of exactly this network
        lin = create_model(model, num_classes=1, width=width, transforms=["linearize"]).to(dev)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(dev)
        y = torch.randint(0, 2, (batch,), generator=gen).float().to(dev)
        xn = torch.randn(n, 3, image_size, image_size, generator=gen).to(dev)
        yn = torch.randint(0, 2, (n,), generator=gen).float().to(dev)
        v = torch.randn(n, generator=gen).to(dev)

        def stepper(m: torch.nn.Module) -> Callable[[], None]:
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

            def step() -> None:
                loss = F.binary_cross_entropy_with_logits(scalar_output(m(x)), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return step

        def passes() -> None:  # forward + backward over the n points, as one training epoch over them would
            for s in range(0, n, batch):
                loss = F.binary_cross_entropy_with_logits(scalar_output(net(xn[s:s + batch])), yn[s:s + batch])
                loss.backward()
            net.zero_grad(set_to_none=True)

        net.train()
        lin.train()
        tasks: dict[str, Callable[[], object]] = {
            "step": stepper(net), "linearized_step": stepper(lin),
            "jacobian": lambda: jacobian_rows(net, xn, chunk=chunk),
            "matvec": lambda: ntk_matvec(net, xn, v, chunk=batch), "passes": passes}
        times: dict[str, list[float]] = {k: [] for k in tasks}
        for k, fn in tasks.items():  # warm-up
            fn()
        for _ in range(repeats):
            for k, fn in tasks.items():
                times[k].append(timed(fn, dev))
        n_threads = torch.get_num_threads()
        params = parameter_count(net)
    med = {k: statistics.median(t) for k, t in times.items()}
    train_img_s = batch / med["step"]
    rows_s = n / med["jacobian"]
    meta = {"date": date.today().isoformat(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": n_threads, "model": model, "width": width,
            "image_size": image_size, "batch": batch, "n": n, "chunk": chunk, "repeats": repeats, "params": params}
    return {"meta": meta, "seconds": med, "all_seconds": times,
            "train_images_per_s": train_img_s, "jacobian_rows_per_s": rows_s,
            "ratios": {"linearized_step": med["linearized_step"] / med["step"],
                       "jacobian_rows_vs_train_images": rows_s / train_img_s,
                       "matvec_training_passes": med["matvec"] / med["passes"]}}


def format_table(r: dict) -> str:
    m, s, q = r["meta"], r["seconds"], r["ratios"]
    return "\n".join([
        f"device {m['device']} ({m['device_name']}), torch {m['torch']}, {m['threads']} threads; {m['model']} width "
        f"{m['width']}, 1 logit, {m['params']:,} parameters, {m['image_size']}×{m['image_size']} images; median of "
        f"{m['repeats']} after 1 warm-up; {m['date']}", "",
        "| what | measured | reference | ratio |", "|---|---:|---:|---:|",
        f"| (a) linearised training step, batch {m['batch']} | {s['linearized_step']:.4f} s | normal step "
        f"{s['step']:.4f} s | {q['linearized_step']:.3f} |",
        f"| (b) Jacobian rows/s (n = {m['n']}, chunk {m['chunk']}) | {r['jacobian_rows_per_s']:.1f} rows/s | "
        f"training {r['train_images_per_s']:.1f} img/s | {q['jacobian_rows_vs_train_images']:.3f} |",
        f"| (c) one NTK matvec over n = {m['n']} | {s['matvec']:.4f} s | forward+backward over n "
        f"{s['passes']:.4f} s | {q['matvec_training_passes']:.3f} |",
        "", json.dumps({"meta": m, "seconds": s, "ratios": q})])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="backbone name (default resnet18, CIFAR stem)")
    p.add_argument("--width", type=float, default=0.125, help="width multiplier (default 0.125)")
    p.add_argument("--image-size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--batch", type=int, default=128, help="training batch, and matvec/pass chunk (default 128)")
    p.add_argument("--n", type=int, default=256, help="points of the Jacobian and the matvec (default 256)")
    p.add_argument("--chunk", type=int, default=32, help="Jacobian rows per vmap (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    return finish_benchmark(lambda: run(a.model, a.width, a.image_size, a.batch, a.n, a.chunk, a.repeats, a.threads,
                                        a.device), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
