"""`r18lab bench`: engine vs bare PyTorch throughput on the same model and tensors, augmentation speed,
and achieved FLOP/s as a fraction of a matmul peak measured in the same run."""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n×n float32 matmul (2n³ per product), best of `repeats`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        tic = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - tic)
    return 2 * n ** 3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_train(model: torch.nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor], lr: float = 0.1,
               passes: int = 2) -> float:
    """images/s of a plain SGD loop (forward, CE, backward, step): best pass after one warm-up pass."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    best = 0.0
    for p in range(passes + 1):
        _sync(xs[0].device)
        tic = time.perf_counter()
        for x, y in zip(xs, ys):
            loss = F.cross_entropy(model(x).logits["main"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
        _sync(xs[0].device)
        if p > 0:
            best = max(best, sum(len(y) for y in ys) / (time.perf_counter() - tic))
    return best


@torch.no_grad()
def bare_eval(model: torch.nn.Module, x: torch.Tensor, batch: int) -> float:
    model.eval()
    _sync(x.device)
    tic = time.perf_counter()
    for i in range(0, len(x), batch):
        model(x[i:i + batch]).logits["main"].argmax(1).sum().item()
    _sync(x.device)
    return len(x) / (time.perf_counter() - tic)


def augment_speed(device: torch.device, batch: int = 512, repeats: int = 20) -> tuple[float, float]:
    """images/s of crop(pad 4)+flip+normalise on 32×32 uint8 batches, and of normalise alone (reference)."""
    from .data.augment import Augment
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    aug = Augment(crop=32, padding=4, flip=True, mean=[0.5] * 3, std=[0.25] * 3)
    gen = torch.Generator(device=device).manual_seed(0)
    mean = torch.full((1, 3, 1, 1), 0.5, device=device)

    def timed(fn) -> float:
        fn()
        _sync(device)
        tic = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        return batch * repeats / (time.perf_counter() - tic)

    return timed(lambda: aug(images, gen)), timed(lambda: (images.float().div(255) - mean) / 0.25)


def run_bench(a: argparse.Namespace) -> int:
    from .analysis.cost import count_flops
    from .config import build_config
    from .train.engine import Trainer, build_from_spec, evaluate, model_spec, pick_device

    device = pick_device(a.device)
    steps, batch = a.steps, a.batch_size
    n = steps * batch
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"ResNet-18 (CIFAR stem, width {a.width}), batch {batch}, {steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config({
            "data": {"source": "synthetic", "options": {"num_classes": 10, "image_size": 32, "n": n},
                     "augment": {"crop": None, "flip": False}, "normalize": "none"},
            "model": {"width": a.width}, "schedule": {"name": "constant"},
            "train": {"epochs": 3, "eval_every": 3, "batch_size": batch, "eval_batch_size": 512, "progress": "none",
                      "device": str(device)}})
        trainer = Trainer(cfg, Path(tmp))
        summary = trainer.fit()
        # like the bare loop: epoch 1 is the warm-up, the best of the next two counts
        engine_train = max(r["train/images_per_s"] for r in _records(Path(tmp) / "metrics.jsonl")[1:])
        model = build_from_spec(model_spec(cfg, 10)).to(device)
        xs = [trainer.normalizer(trainer.loader.images[i:i + batch]) if hasattr(trainer.loader, "images")
              else torch.randn(batch, 3, 32, 32, device=device) for i in range(0, n, batch)]
        ys = [torch.randint(0, 10, (len(x),), device=device) for x in xs]
        bare = bare_train(copy.deepcopy(model), xs, ys)
        x_eval, y_eval = trainer.x_test, trainer.y_test
        _sync(device)
        tic = time.perf_counter()
        evaluate(trainer.model, x_eval, y_eval, trainer.normalizer, 512)
        _sync(device)
        engine_eval = len(y_eval) / (time.perf_counter() - tic)
        bare_ev = bare_eval(model, trainer.normalizer(x_eval), 512)
    aug, ref = augment_speed(device)
    flops = count_flops(model, (3, 32, 32))
    peak = matmul_peak(device)
    achieved = 3 * 2 * flops * engine_train  # training ≈ 3× forward; 2 FLOPs per multiply-accumulate
    rows = [("train images/s", engine_train, bare), ("eval images/s", engine_eval, bare_ev),
            ("augment images/s (crop+flip+norm vs norm only)", aug, ref)]
    print(f"{'measure':50} {'r18lab':>10} {'reference':>10} {'ratio':>7}")
    for name, ours, theirs in rows:
        print(f"{name:50} {ours:10.1f} {theirs:10.1f} {ours / theirs:7.3f}")
    print(f"{'train FLOP/s (6·MACs·img/s) vs matmul peak':50} {achieved / 1e9:9.2f}G {peak / 1e9:9.2f}G "
          f"{achieved / peak:7.3f}")
    print("(nominal FLOPs count direct convolutions; a fraction above 1 means the convolution library does "
          "fewer multiplications, e.g. Winograd for 3×3)")
    print(f"engine run: {summary['steps']} steps (3 epochs, best of the last 2); model {flops / 1e6:.1f} M MACs per 32×32 image")
    return 0


def _records(path: Path) -> list[dict]:
    from .results.metrics import read_metrics
    return [r for r in read_metrics(path) if "train/images_per_s" in r]
