"""Train images/s of every paper-000 backbone at the CIFAR size, and CIFAR-10-C generation images/s per corruption,
in one run (issue: backbone agnosticism; paper 000 appendices A and C).

Run: .venv/bin/python benchmarks/backbones.py [--device auto|cpu|cuda] [--width 0.25] [--batch-size 100]
     [--steps 4] [--rounds 2] [--threads N] [--corruption-images 1000] [--json OUT.json]

Backbones (CIFAR stem, 10 classes, `--width` applied to all, 32×32): resnet18 (the reference every ratio is taken
against), resnet34, densenet121, efficientnet_b3, vgg11 (with its own FC classifier), mlp_mixer, vit. Throughput
is `r18lab.bench.bare_train` (forward, CE, backward, SGD step on `--steps` random batches already on the device, a
warm-up pass, best pass; no host sync per step); the models take turns for `--rounds` rounds and keep their best
(load bursts hit every model alike). FLOPs are multiply-accumulates of conv and linear layers per image
(attention's two matmuls are not counted). Columns: images/s, speed ratio = ÷ resnet18's, FLOP ratio.

Corruptions: `r18lab.data.corruptions.corrupt` on `--corruption-images` random 32×32 uint8 images at severity 3,
on the CPU (generation is CPU-side NumPy/SciPy/PIL by design: the reference's operations), each timed once after
the first call warmed its imports; ratio = images/s ÷ the reference ResNet-18's eval images/s at batch 512 on the
same device, measured in this run: below 1, generating that corruption is slower than evaluating it.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from r18lab.analysis.cost import count_flops
from r18lab.bench import bare_eval, bare_train, finish_benchmark
from r18lab.data.corruptions import CORRUPTIONS, MISSING, corrupt
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.train.environment import pick_device, run_environment

#: name → backbone options; the first is the reference
BACKBONES: dict[str, dict] = {
    "resnet18": {}, "resnet34": {}, "densenet121": {}, "efficientnet_b3": {}, "vgg11": {},
    "mlp_mixer": {}, "vit": {},
}
IMAGE = (3, 32, 32)


def run(device: str, width: float, batch: int, steps: int, rounds: int, threads: int | None,
        n_corrupt: int) -> dict:
    if width <= 0 or batch < 2 or steps < 1 or rounds < 1 or n_corrupt < 1:
        raise ConfigError("--width must be > 0, --batch-size ≥ 2, --steps, --rounds and --corruption-images ≥ 1")
    dev = pick_device(device)
    with run_environment(threads, deterministic=False):
        result = measure(dev, width, batch, steps, rounds, n_corrupt)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {"device": f"{dev.type} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads", **result}


def measure(dev: torch.device, width: float, batch: int, steps: int, rounds: int, n_corrupt: int) -> dict:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, *IMAGE, generator=g).to(dev) for _ in range(steps)]
    ys = [torch.randint(0, 10, (batch,), generator=g).to(dev) for _ in range(steps)]
    models = {}
    for name, options in BACKBONES.items():
        torch.manual_seed(0)
        models[name] = create_model(name, num_classes=10, stem="cifar", width=width, **options).to(dev)
    speed = {name: 0.0 for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            speed[name] = max(speed[name], bare_train(model, xs, ys, passes=1))
    ref = "resnet18"
    flops = {name: count_flops(m.cpu(), IMAGE) for name, m in models.items()}
    eval_x = torch.randn(1024, *IMAGE, generator=g).to(dev)
    ref_eval = bare_eval(models[ref].to(dev), eval_x, 512)
    images = torch.randint(0, 256, (n_corrupt, *IMAGE), dtype=torch.uint8, generator=g)
    rates = {}
    for name in (k for k in CORRUPTIONS if k not in MISSING):
        corrupt(name, images[:8], 3)  # first call: imports, caches
        tic = time.perf_counter()
        corrupt(name, images, 3)
        rates[name] = n_corrupt / (time.perf_counter() - tic)
    return {"width": width, "batch_size": batch, "reference": ref,
            "train": {n: {"images_per_s": speed[n], "speed_ratio": speed[n] / speed[ref],
                          "flops": flops[n], "flop_ratio": flops[n] / flops[ref],
                          "params": sum(p.numel() for p in models[n].parameters())} for n in models},
            "reference_eval_images_per_s": ref_eval,
            "corruptions": {n: {"images_per_s": r, "ratio_to_reference_eval": r / ref_eval}
                            for n, r in sorted(rates.items(), key=lambda kv: kv[1])}}


def format_table(r: dict) -> str:
    lines = [f"train images/s at 32×32, width {r['width']}, batch {r['batch_size']} "
             f"({r['device']}); ratios against {r['reference']}", "",
             "| backbone | params | MMACs/image | images/s | speed ratio | FLOP ratio |", "|---|---|---|---|---|---|"]
    for n, t in r["train"].items():
        lines.append(f"| {n} | {t['params']:,} | {t['flops'] / 1e6:.1f} | {t['images_per_s']:.1f} | "
                     f"{t['speed_ratio']:.2f} | {t['flop_ratio']:.2f} |")
    lines += ["", f"CIFAR-10-C generation, severity 3, CPU; reference: {r['reference']} eval "
              f"{r['reference_eval_images_per_s']:.0f} images/s (batch 512)", "",
              "| corruption | images/s | ÷ reference eval |", "|---|---|---|"]
    for n, c in r["corruptions"].items():
        lines.append(f"| {n} | {c['images_per_s']:.0f} | {c['ratio_to_reference_eval']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier for every backbone (default 0.25)")
    p.add_argument("--batch-size", type=int, default=100, help="the protocols' batch (default 100)")
    p.add_argument("--steps", type=int, default=4, help="random batches per timed pass (default 4)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds, best kept (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--corruption-images", type=int, default=1000, help="images per corruption (default 1000)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    return finish_benchmark(lambda: run(a.device, a.width, a.batch_size, a.steps, a.rounds, a.threads,
                                        a.corruption_images), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
