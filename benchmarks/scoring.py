"""Active learning's two costs per cycle (issue 12): scoring the candidates (an eval-mode forward pass) in
images/s next to training images/s of the same ResNet-18, both measured in one run through the library's own
code paths, and their ratio.

Run: .venv/bin/python benchmarks/scoring.py [--device auto|cpu|cuda] [--width 0.25] [--candidates 10000]
     [--train-images 2048] [--batch 128] [--eval-batch 512] [--threads 1] [--rounds 1] [--seed 0]
     [--image-size 32] [--heads main|main,fr|main,llal] [--json OUT.json]

Training: `r18lab.train.engine.Trainer.fit` on `--train-images` seeded synthetic images (`synthetic` source,
10 classes, `--image-size`), with the active recipe's settings: augmentation pad 4 (zero) + random crop + flip,
SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch `--batch`, and the method overlay of `--heads` from
`r18lab.protocols.methods.METHODS` (`main`: resnet18; `main,fr`: fr-resnet18; `main,llal`: llal, i.e. objective
[ce, llal] and hook llal_detach). It runs 1 + `--rounds` epochs: the first is a warm-up, the best of the others
counts (the engine's own `train/images_per_s`: loader, augmentation, forward, objectives, backward, step).

Scoring: what `ActiveProtocol.acquire` does with that run's `model.safetensors`: `r18lab.predict.predict` (load the
weights, eval mode, no grad, batches of `--eval-batch` normalised on the fly with the stored preprocessing, every
head's logits, auxiliary outputs such as llal's predicted loss, and the pooled features that `coreset` reads)
over `--candidates` random uint8 images in the Dataset layout (N×H×W×C), then `acquisition_inputs.inputs_for`
("entropy": float64 softmax of the main head) and `acquisition.entropy_scores` per candidate. One untimed call
on one batch warms it up; the best of `--rounds` timed calls counts. `coreset` also predicts the labelled pool:
its forward pass costs the same per image, so add labelled ÷ (scoring images/s) seconds for it.

Printed: both images/s, ratio = scoring ÷ training (> 1: an image is scored faster than it is trained on), the
estimated seconds to score 10,000 candidates and to train one epoch of 1,000 labels (the recipe's start).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from r18lab.bench import finish_benchmark
from r18lab.config import _deep_merge, build_config
from r18lab.errors import ConfigError
from r18lab.predict import predict
from r18lab.protocols.acquisition import entropy_scores
from r18lab.protocols.acquisition_inputs import inputs_for
from r18lab.protocols.methods import METHODS
from r18lab.train.engine import Trainer
from r18lab.train.environment import pick_device, run_environment

#: --heads → the method of the active recipe whose overlay builds that model
HEADS = {"main": "resnet18", "main,fr": "fr-resnet18", "main,llal": "llal"}
SCORE_CANDIDATES = 10_000  # the recipe's candidates per cycle
TRAIN_LABELS = 1_000  # the recipe's initial labelled pool


def train_config(width: float, train_images: int, batch: int, eval_batch: int, rounds: int, threads: int,
                 seed: int, image_size: int, heads: str, device: str):
    """The run config: the active recipe's optimiser and augmentation on synthetic images, plus the method overlay."""
    tree = {
        "seed": seed,
        "data": {"source": "synthetic", "options": {"num_classes": 10, "image_size": image_size, "n": train_images,
                                                     "seed": seed},
                 "augment": {"crop": image_size, "padding": 4, "pad_mode": "zero", "flip": True}},
        "model": {"name": "resnet18", "stem": "cifar", "width": width},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5.0e-4},
        "schedule": {"name": "constant"},
        "train": {"epochs": 1 + rounds, "eval_every": 1 + rounds, "batch_size": batch, "eval_batch_size": eval_batch,
                  "progress": "none", "threads": threads, "device": device},
    }
    return build_config(_deep_merge(tree, copy.deepcopy(METHODS[HEADS[heads]])))


def run(device: str = "auto", width: float = 0.25, candidates: int = 10_000, train_images: int = 2048,
        batch: int = 128, eval_batch: int = 512, threads: int = 1, rounds: int = 1, seed: int = 0,
        image_size: int = 32, heads: str = "main") -> dict:
    for name, value in (("--candidates", candidates), ("--train-images", train_images), ("--batch", batch),
                        ("--eval-batch", eval_batch), ("--threads", threads), ("--rounds", rounds)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if width <= 0:
        raise ConfigError(f"--width must be > 0, got {width}")
    if image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 (the CIFAR stem's stages), got {image_size}")
    if batch > train_images:
        raise ConfigError(f"--batch {batch} exceeds --train-images {train_images}; lower --batch")
    heads = heads.replace(" ", "")
    if heads not in HEADS:
        raise ConfigError(f"--heads {heads!r} is not one of: {', '.join(HEADS)}")
    dev = pick_device(device)
    cfg = train_config(width, train_images, batch, eval_batch, rounds, threads, seed, image_size, heads, str(dev))
    with tempfile.TemporaryDirectory() as tmp, run_environment(threads, deterministic=False):
        out = Path(tmp) / "run"
        summary = Trainer(cfg, out).fit()
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train_all = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
        weights = str(out / "model.safetensors")
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (candidates, image_size, image_size, 3), dtype=np.uint8)
        score(weights, images[:eval_batch], eval_batch, dev)  # warm-up: imports, allocator, first-call costs
        score_all, predict_all = [], []
        for _ in range(rounds):
            tic = time.perf_counter()
            scores, features, forward_s = score(weights, images, eval_batch, dev)
            score_all.append(time.perf_counter() - tic)
            predict_all.append(forward_s)
        threads_used = torch.get_num_threads()
    train_ips = max(train_all[1:])
    score_s = min(score_all)
    score_ips = candidates / score_s
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {"device": f"{dev.type} ({name}), torch {torch.__version__}, {threads_used} threads",
            "width": width, "heads": heads, "method": HEADS[heads], "image_size": image_size,
            "params": summary["params"], "rounds": rounds,
            "candidates": candidates, "eval_batch": eval_batch, "train_images": train_images, "batch": batch,
            "scoring_images_per_s": score_ips, "scoring_s": score_s,
            "scoring_forward_s": predict_all[score_all.index(score_s)],
            "feature_dim": int(features.shape[1]), "entropy_finite": bool(np.isfinite(scores).all()),
            "training_images_per_s": train_ips,
            "ratio_scoring_over_training": score_ips / train_ips,
            "est_score_10000_s": SCORE_CANDIDATES / score_ips,
            "est_train_epoch_1000_s": TRAIN_LABELS / train_ips,
            "scoring_all_s": score_all, "training_all_images_per_s": train_all}


def score(weights: str, images: np.ndarray, eval_batch: int, dev: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """The active protocol's scoring of `images`: predict, then entropy inputs and scores; (entropy per
    candidate, pooled features, seconds of the predict call)."""
    tic = time.perf_counter()
    pred = predict(weights, images, batch_size=eval_batch, device=dev)
    forward_s = time.perf_counter() - tic
    inputs = inputs_for("entropy", pred, len(images), head="main", weights=weights, passes=1, dropout=0.0, seed=0)
    return entropy_scores(inputs.probs), pred.features, forward_s


def render(r: dict) -> str:
    return "\n".join([
        f"ResNet-18 (CIFAR stem, width {r['width']}, heads {r['heads']} = method {r['method']}, "
        f"{r['params']:,} params), {r['image_size']}×{r['image_size']}; {r['device']}; best of {r['rounds']} round(s)",
        "| cost | images | batch | images/s |", "|---|---:|---:|---:|",
        f"| scoring (predict + entropy, features kept) | {r['candidates']:,} | {r['eval_batch']} | "
        f"{r['scoring_images_per_s']:.1f} |",
        f"| training (engine epoch, augmented) | {r['train_images']:,} | {r['batch']} | "
        f"{r['training_images_per_s']:.1f} |",
        f"ratio scoring ÷ training: {r['ratio_scoring_over_training']:.3f}",
        f"estimated: score {SCORE_CANDIDATES:,} candidates {r['est_score_10000_s']:.1f} s; "
        f"train one epoch of {TRAIN_LABELS:,} labels {r['est_train_epoch_1000_s']:.1f} s",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (default 0.25)")
    p.add_argument("--candidates", type=int, default=10_000, help="images scored (default 10000)")
    p.add_argument("--train-images", type=int, default=2048, help="images per training epoch (default 2048)")
    p.add_argument("--batch", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--eval-batch", type=int, default=512, help="scoring batch (default 512, predict's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="timed rounds of each, best kept (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=32, help="square image side (default 32)")
    p.add_argument("--heads", default="main", help=f"heads of the model: {' | '.join(HEADS)} (default main)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    return finish_benchmark(lambda: run(a.device, a.width, a.candidates, a.train_images, a.batch, a.eval_batch,
                                        a.threads, a.rounds, a.seed, a.image_size, a.heads), render, a.json)


if __name__ == "__main__":
    sys.exit(main())
