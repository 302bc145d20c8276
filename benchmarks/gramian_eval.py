"""Eval images/s of GA-ResNet-18 (5 Gramian heads) against the plain ResNet-18 in one run, as a ratio, and the
cost of the Gram step in float64 vs float32 (paper 004 Table 3's claim that the heads are cheap; spec 004 §A.3).

Run: .venv/bin/python benchmarks/gramian_eval.py [--device auto|cpu|cuda] [--width 0.25] [--ga-dim 32]
     [--count 5] [--batch-size 256] [--batches 4] [--rounds 3] [--gram-batch 64] [--threads N] [--arms]
     [--json OUT.json]

Models (CIFAR stem, 32×32, 10 classes, seeded): `ResNet-18` = heads [main] (the reference); `GA-ResNet-18` =
heads [ga] with `ga_count` heads of `ga_dim` channels (ConvNeXt gram block, groups 8: the reference
configuration of spec 004 §D), once with `ga_gram_dtype=float32` and once with `float64` (in eval the default
`auto` computes the Gram in float32: the reference uses float64 only while training with batch < 128).

Eval throughput: `--batches` random batches already on the device, `model.eval()`, no_grad, each batch's argmax
read back (as `r18lab.bench.bare_eval`); `r18lab.bench.best_seconds` times a pass after a warm-up pass; the
models take turns for `--rounds` rounds and each keeps its best round, so load bursts hit every model alike.
FLOPs are `r18lab.analysis.cost.count_flops` MACs per image (convs and linears; the Gram product c²·H·W per head
and the attention products are not in that convention and are listed apart).

Gram step: `r18lab.models.gramian.gram_vector` on a `--gram-batch`×c×8×8 map (stage-3 size of a 32×32 CIFAR
input) with dtype float32 and float64, forward alone and forward + backward, best of `--rounds` timings.
"""
from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import torch
from torch import nn

from r18lab.analysis.cost import count_flops, head_params
from r18lab.bench import finish_benchmark, _sync, best_seconds
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.models.gramian import gram_vector, upper_triangle_index
from r18lab.train.environment import pick_device, run_environment

IMAGE = (3, 32, 32)
NUM_CLASSES = 10


def models(width: float, ga_dim: int, count: int, arms: bool = False) -> dict[str, tuple[dict, str]]:
    """name → (create_model keyword arguments, logit key); the first is the reference. `arms`: also the other
    heads of recipes/gramian_cifar10.yaml (1 GA head, `count` ca_token heads, `count` parameter-matched GAP-FC heads
    with the budget of `count` GA heads + fuser)."""
    ga = {"heads": ["ga"], "ga_count": count, "ga_dim": ga_dim}
    out = {"ResNet-18": ({"width": width}, "main"),
           f"GA-ResNet-18 ({count} heads, Gram float32)": ({"width": width, **ga, "ga_gram_dtype": "float32"}, "ga"),
           f"GA-ResNet-18 ({count} heads, Gram float64)": ({"width": width, **ga, "ga_gram_dtype": "float64"}, "ga")}
    if arms:
        budget = head_params(build({"width": width, **ga}))["ga"]
        out.update({
            "GA-ResNet-18 (1 head)": ({"width": width, "heads": ["ga"], "ga_count": 1, "ga_dim": ga_dim}, "ga"),
            f"CA-token ResNet-18 ({count} heads)": ({"width": width, "heads": ["ca_token"],
                                                     "ca_token_count": count}, "ca_token"),
            f"GAP-FC ×{count}, parameter-matched": ({"width": width, "heads": ["multi_fc"], "multi_fc_count": count,
                                                   "multi_fc_match_params": budget}, "multi_fc")})
    return out


def build(kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=NUM_CLASSES, stem="cifar", **kwargs)


def eval_pass(model: nn.Module, xs: list[torch.Tensor], key: str) -> None:
    with torch.no_grad():
        for x in xs:
            model(x).logits[key].argmax(1).sum().item()


def gram_timings(device: torch.device, batch: int, channels: int, repeats: int) -> dict[str, dict[str, float]]:
    """ms per call of gram_vector forward and forward + backward, float32 and float64, on batch×c×8×8."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, 8, 8, generator=gen).to(device)
    index = upper_triangle_index(channels, device)
    out: dict[str, dict[str, float]] = {}
    for dtype in (torch.float32, torch.float64):
        leaf = x.clone().requires_grad_(True)

        def forward() -> None:
            with torch.no_grad():
                gram_vector(x, index, dtype).sum().item()

        def backward() -> None:
            gram_vector(leaf, index, dtype).pow(2).sum().backward()
            leaf.grad = None

        out[str(dtype).removeprefix("torch.")] = {"forward_ms": 1e3 * best_seconds(forward, device, repeats),
                                                  "forward_backward_ms": 1e3 * best_seconds(backward, device, repeats)}
    return out


def run(device: str = "auto", width: float = 0.25, ga_dim: int = 32, count: int = 5, batch_size: int = 256,
        batches: int = 4, rounds: int = 3, gram_batch: int = 64, threads: int | None = None,
        arms: bool = False) -> dict:
    for name, value in (("--batch-size", batch_size), ("--batches", batches), ("--rounds", rounds),
                        ("--count", count), ("--gram-batch", gram_batch)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}; e.g. {name} 2")
    dev = pick_device(device)
    specs = models(width, ga_dim, count, arms)
    built = {name: build(kw) for name, (kw, _) in specs.items()}  # a bad width or ga_dim fails here, one line
    rows = []
    for name, model in built.items():
        kw, key = specs[name]
        heads = head_params(model)
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()),
                     "head_params": sum(heads.values()), "flops": count_flops(model, IMAGE), "key": key,
                     "images_per_s_rounds": []})
    with run_environment(threads, deterministic=False):
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(batch_size, *IMAGE, generator=gen).to(dev) for _ in range(batches)]
        on_dev = {name: m.to(dev).eval() for name, m in built.items()}
        for _ in range(rounds):
            for row in rows:
                model, key = on_dev[row["model"]], row["key"]
                seconds = best_seconds(lambda: eval_pass(model, xs, key), dev, 1)
                row["images_per_s_rounds"].append(batch_size * batches / seconds)
        del on_dev, built
        _sync(dev)
        gram = gram_timings(dev, gram_batch, ga_dim, rounds)
        n_threads = torch.get_num_threads()
    ref = rows[0]
    for r in rows:
        r["images_per_s"] = max(r["images_per_s_rounds"])
        r["speed_ratio"] = r["images_per_s"] / max(ref["images_per_s"], 1e-12)
        r["flop_ratio"] = r["flops"] / ref["flops"]
    meta = {"date": date.today().isoformat(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": n_threads, "width": width,
            "ga_dim": ga_dim, "count": count, "batch_size": batch_size, "batches": batches, "rounds": rounds,
            "gram_batch": gram_batch, "gram_macs_per_image": count * ga_dim * ga_dim * 64,
            "reference": ref["model"]}
    return {"meta": meta, "rows": rows, "gram": gram}


def format_table(result: dict) -> str:
    m, g = result["meta"], result["gram"]
    lines = [f"device {m['device']} ({m['device_name']}), torch {m['torch']}, {m['threads']} threads; ResNet-18 "
             f"CIFAR stem, width {m['width']}, ga_dim {m['ga_dim']}, eval batch {m['batch_size']} × {m['batches']} "
             f"batches, best of {m['rounds']} interleaved rounds; {m['date']}", "",
             "| model | params | head params | FLOPs (MACs) | eval images/s | speed ratio | FLOP ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['head_params']:,} | {r['flops'] / 1e6:.2f} M | "
                     f"{r['images_per_s']:.1f} | {r['speed_ratio']:.3f} | {r['flop_ratio']:.3f} |")
    f32, f64 = g["float32"], g["float64"]
    lines += ["", f"Gram products not in the FLOPs column: {m['gram_macs_per_image'] / 1e6:.3f} M MACs per image "
                  f"({m['count']} heads × c² × 8 × 8).", "",
              f"Gram step (`gram_vector`, batch {m['gram_batch']} × {m['ga_dim']} × 8 × 8), ms per call:", "",
              "| | float32 | float64 | float64 ÷ float32 |", "|---|---:|---:|---:|"]
    for k, name in (("forward_ms", "forward"), ("forward_backward_ms", "forward + backward")):
        lines.append(f"| {name} | {f32[k]:.3f} | {f64[k]:.3f} | {f64[k] / f32[k]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier (default 0.25: quarter width)")
    p.add_argument("--ga-dim", type=int, default=32, help="Gram channels c (default 32, spec 004 §D at width ¼)")
    p.add_argument("--count", type=int, default=5, help="Gramian heads (default 5)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=4, help="random batches per timed pass (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds, best kept (default 3)")
    p.add_argument("--gram-batch", type=int, default=64, help="batch of the Gram-step timing (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--arms", action="store_true", help="also every other arm of recipes/gramian_cifar10.yaml")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    return finish_benchmark(lambda: run(a.device, a.width, a.ga_dim, a.count, a.batch_size, a.batches, a.rounds, a.gram_batch,
                                        a.threads, a.arms), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
