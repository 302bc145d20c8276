"""Training-augmentation throughput: pad+crop+flip vs + colour jitter vs random resized crop, one epoch each.

Run: nice -n 19 .venv/bin/python benchmarks/augment_throughput.py [--device auto|cpu|cuda] [--n 50000]
    [--batch-size 128] [--rounds 3] [--threads 1] [--json OUT.json]

Each variant is a full epoch of r18lab's BatchLoader (shuffled index gather + Augment with the per-batch
seeded generator, as in training) over --n random 32×32 uint8 images on the device. The variants take turns
for --rounds rounds and each keeps its best (fastest) round; ratio = images/s ÷ the pad+crop+flip pipeline's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from r18lab.data.augment import RRC_RATIO, RRC_SCALE, Augment
from r18lab.data.loader import BatchLoader

RRC = (RRC_SCALE, RRC_RATIO)  # torchvision's defaults, scale (0.08, 1), ratio (3/4, 4/3) (spec 002c K4)
JITTER = (0.4, 0.4, 0.4, 0.2)  # spec 002c K3

VARIANTS = {
    "pad+crop+flip (legacy uint8 path)": Augment(crop=32, padding=4, flip=True),
    "pad+crop+flip + colour jitter": Augment(crop=32, padding=4, flip=True, color_jitter=JITTER),
    "pad+crop+flip + colour jitter + greyscale 0.2": Augment(crop=32, padding=4, flip=True, color_jitter=JITTER,
                                                            grayscale_p=0.2),
    "random resized crop + flip": Augment(crop=32, padding=0, flip=True, random_resized_crop=RRC),
    "random resized crop + flip + colour jitter": Augment(crop=32, padding=0, flip=True, random_resized_crop=RRC,
                                                         color_jitter=JITTER),
}


def epoch_seconds(loader: BatchLoader, device: torch.device) -> float:
    """Wall seconds of one epoch, reading back one number at the end (CUDA: synchronised at both ends)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    total = torch.zeros((), device=device)
    for x, _ in loader:
        total += x[:, 0, 0, 0].sum()
    total.item()
    sync()
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the result here")
    a = parser.parse_args(argv)
    if a.n < 1 or a.batch_size < 1 or a.rounds < 1 or a.threads < 1:
        print("error: --n, --batch-size, --rounds and --threads must be >= 1", file=sys.stderr)
        return 2
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.zeros(a.n, dtype=torch.int64, device=device)
    loaders = {name: BatchLoader(images, labels, a.batch_size, seed=0, augment=aug) for name, aug in VARIANTS.items()}
    for loader in loaders.values():  # warm-up: a few batches each
        for _, (x, _) in zip(range(3), loader):
            pass
    best = {name: float("inf") for name in loaders}
    rounds: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(a.rounds):
        for name, loader in loaders.items():
            loader.set_epoch(r)
            s = epoch_seconds(loader, device)
            rounds[name].append(s)
            best[name] = min(best[name], s)
    ref = a.n / best[next(iter(best))]
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} n={a.n} "
          f"batch={a.batch_size} 32x32 rounds={a.rounds} (best round kept)")
    print("| pipeline | images/s | ratio to legacy |\n|---|---:|---:|")
    result = {}
    for name, s in best.items():
        ips = a.n / s
        result[name] = {"images_per_s": ips, "ratio": ips / ref, "round_seconds": rounds[name]}
        print(f"| {name} | {ips:,.0f} | {ips / ref:.3f} |")
    line = {"device": str(device), "threads": torch.get_num_threads(), "n": a.n, "batch": a.batch_size,
            "variants": result}
    print(json.dumps(line))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(line, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
