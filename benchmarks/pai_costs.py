"""Costs of pruning at initialisation on a full-width ResNet-18 (CIFAR stem, 10 classes): SynFlow's 100 rounds, the
mask topology metrics of every layer, and the per-step cost of keeping the mask (gradients and weights multiplied by
it) as a ratio to one training step measured in the same run (issue: keep it under 5 %).

Run: .venv/bin/python benchmarks/pai_costs.py [--device auto|cpu|cuda] [--width 1.0] [--density 0.05]
     [--rounds 100] [--batch-size 128] [--steps 3] [--threads N] [--json OUT.json]

SynFlow: `r18lab.pruning.masks.build_masks` with the exponential schedule, exactly as the `prune` hook runs it
(score on one all-ones image with |θ|, keep ⌊d_r·N⌋ by `kthvalue`, zero the rest), `--rounds` rounds.
Topology: `r18lab.analysis.masks.mask_topology` of the resulting mask with the weights (σ1, σ2 of B and |W⊙M|,
Δs, Δr, λ, IMDB, NaRC per layer), then the network distance D.
Mask step cost: a training step (forward, CE, backward, SGD with momentum and weight decay) on a random batch, with
and without the hook's two `_foreach_mul_` calls (gradients before the step, weights after); each timed as the best
of `--steps` after a warm-up, the two variants interleaved.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from r18lab.analysis.masks import mask_topology, spectral_distance
from r18lab.bench import _sync, best_seconds, finish_benchmark
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.pruning.masks import build_masks
from r18lab.pruning.scores import ScoreContext, prunable
from r18lab.pruning.select import check_density, round_densities
from r18lab.train.environment import pick_device, run_environment

IMAGE = (3, 32, 32)


def run(device: str = "auto", width: float = 1.0, density: float = 0.05, rounds: int = 100, batch_size: int = 128,
        steps: int = 3, threads: int | None = None) -> dict:
    for name, value in (("--rounds", rounds), ("--batch-size", batch_size), ("--steps", steps)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}; e.g. {name} 2")
    check_density(density)
    dev = pick_device(device)
    with run_environment(threads, deterministic=False):
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=10, width=width).to(dev)
        weights = prunable(model)
        n = sum(w.numel() for w in weights.values())
        sctx = ScoreContext("main", IMAGE, torch.Generator().manual_seed(0))
        _sync(dev)
        tic = time.perf_counter()
        masks = build_masks(model, weights, "synflow", round_densities(density, rounds), "global", [], sctx)
        _sync(dev)
        synflow_s = time.perf_counter() - tic
        kept = sum(int(m.sum()) for m in masks.values())
        tic = time.perf_counter()
        rows = mask_topology({k: m.cpu() for k, m in masks.items()},
                             {k: w.detach().cpu() for k, w in weights.items()})
        distance = spectral_distance(rows)
        topology_s = time.perf_counter() - tic

        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch_size, *IMAGE, generator=gen).to(dev)
        y = torch.randint(0, 10, (batch_size,), generator=gen).to(dev)
        params, mask_list = list(weights.values()), [masks[k] for k in weights]

        def step(with_mask: bool) -> None:
            loss = F.cross_entropy(model(x).logits["main"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if with_mask:
                torch._foreach_mul_([p.grad for p in params], mask_list)
            opt.step()
            if with_mask:
                with torch.no_grad():
                    torch._foreach_mul_(params, mask_list)

        def mask_only() -> None:
            torch._foreach_mul_([p.grad for p in params], mask_list)
            with torch.no_grad():
                torch._foreach_mul_(params, mask_list)

        plain, masked = [], []
        model.train()
        for _ in range(steps):
            plain.append(best_seconds(lambda: step(False), dev, 1))
            masked.append(best_seconds(lambda: step(True), dev, 1))
        mask_s = best_seconds(mask_only, dev, max(steps, 5))
        n_threads = torch.get_num_threads()
    step_s, masked_s = min(plain), min(masked)
    meta = {"date": date.today().isoformat(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": n_threads, "width": width,
            "density": density, "rounds": rounds, "batch_size": batch_size, "steps": steps}
    return {"meta": meta, "prunable": n, "kept": kept, "synflow_seconds": synflow_s,
            "synflow_seconds_per_round": synflow_s / rounds, "topology_seconds": topology_s,
            "topology_layers": len(rows), "distance": distance, "step_seconds": step_s,
            "masked_step_seconds": masked_s, "mask_seconds": mask_s, "mask_ratio": mask_s / step_s,
            "masked_step_ratio": masked_s / step_s}


def format_table(r: dict) -> str:
    m = r["meta"]
    return "\n".join([
        f"device {m['device']} ({m['device_name']}), torch {m['torch']}, {m['threads']} threads; ResNet-18 CIFAR "
        f"stem, width {m['width']}, {r['prunable']:,} prunable weights, density {m['density']} "
        f"({r['kept']:,} kept); {m['date']}", "",
        "| what | seconds | reference | ratio |", "|---|---:|---:|---:|",
        f"| SynFlow, {m['rounds']} rounds (exponential schedule) | {r['synflow_seconds']:.2f} | | |",
        f"| topology metrics, {r['topology_layers']} layers + D | {r['topology_seconds']:.2f} | | |",
        f"| mask upkeep per step (2 × _foreach_mul_) | {r['mask_seconds']:.4f} | training step "
        f"{r['step_seconds']:.3f} (batch {m['batch_size']}) | {r['mask_ratio']:.4f} |",
        f"| training step with mask upkeep | {r['masked_step_seconds']:.3f} | training step {r['step_seconds']:.3f} | "
        f"{r['masked_step_ratio']:.3f} |"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1: full width)")
    p.add_argument("--density", type=float, default=0.05, help="kept fraction (default 0.05)")
    p.add_argument("--rounds", type=int, default=100, help="SynFlow rounds (default 100)")
    p.add_argument("--batch-size", type=int, default=128, help="training-step batch (default 128)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per variant (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    return finish_benchmark(lambda: run(a.device, a.width, a.density, a.rounds, a.batch_size, a.steps, a.threads),
                            format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
