"""Throughput of crop+flip+normalise on 32×32 uint8 batches of 512, next to plain x.float().div(255).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_augment.py [--device cuda] [--seconds 4] [--rounds 5]
Each variant is timed in interleaved rounds and the best round is reported (the first rounds pay
for the allocator's warm-up; neighbours on a shared machine add noise).
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import time
from collections.abc import Callable

import torch

from r18lab.data.augment import Augment


def images_per_second(fn: Callable[[], object], batch: int, seconds: float, sync: Callable[[], None]) -> float:
    """Images/s of fn() on one batch, timed over at least `seconds` after a warm-up."""
    for _ in range(5):
        fn()
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync()
    return calls * batch / (time.perf_counter() - start)


def pin_malloc_thresholds() -> bool:
    """Keep glibc malloc from mmapping/trimming the big temporaries every call (page faults vary run to run)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def main() -> None:
    """Print images/s of the augmentation, the reference, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=4.0, help="total timing per variant")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    pinned = pin_malloc_thresholds()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)
    augment = Augment(crop=32, padding=4, flip=True)
    ref = aug = 0.0
    for _ in range(args.rounds):  # interleaved rounds, best of each: allocator warm-up and noisy neighbours
        ref = max(ref, images_per_second(lambda: x.float().div(255), args.batch, args.seconds / args.rounds, sync))
        aug = max(aug, images_per_second(lambda: augment(x, gen), args.batch, args.seconds / args.rounds, sync))
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} 32x32 malloc_pinned={pinned}")
    print(f"reference x.float().div(255): {ref:12,.0f} images/s")
    print(f"crop+flip+normalise:          {aug:12,.0f} images/s")
    print(f"ratio augment/reference:      {aug / ref:12.3f}")


if __name__ == "__main__":
    main()
