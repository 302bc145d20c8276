"""Train images/s of R-g1, R-g16 and R-G1 (ResNet-18, CIFAR stem) in one run, next to their FLOP ratios, and
where the time goes (torch.profiler self time by kind of op).

Run: .venv/bin/python benchmarks/grouped_convs.py [--device auto|cpu|cuda] [--steps 10] [--batch-size 128]
     [--width 0.25] [--threads N] [--json OUT.json]

Models (paper 003 names, spec 003 §1.1–1.2): R-g1 is the plain ResNet-18 (the reference); R-g16 replaces each
block's 3×3 convs by a 16-group 3×3 conv → BN → ReLU → 1×1 ("DConv"); R-G1 does the same with one channel per
group (depthwise). FLOPs are multiply-accumulates per 32×32 image (`r18lab.analysis.cost.count_flops`).

Throughput is `r18lab.bench.bare_train` (the same loop `r18lab bench` uses as its reference): forward, CE,
backward and an SGD step (lr 0.1, momentum 0.9, wd 5e-4) on `--steps` random batches already on the device,
a warm-up pass over them, then a timed pass; on CUDA it synchronises only at the pass boundaries. The models
take turns for `--rounds` rounds and each keeps its best round (load bursts on a shared machine hit every
model alike). Columns: speed ratio = images/s ÷ R-g1's; FLOP ratio = FLOPs ÷ R-g1's; efficiency = speed ratio ÷
(1 / FLOP ratio), the fraction of the FLOP-predicted speed-up that is realised (1 = speed follows FLOPs).

"Where the time goes": after timing, `--profile-steps` more training steps per model run under torch.profiler
(CPU activity; CUDA too on a GPU) with input shapes recorded; each op's self time (CPU time on CPU, kernel
time on CUDA) is put in one of four groups by the convolution weight it touches: conv grouped/depthwise
(groups > 1), conv standard/1×1 (groups = 1, incl. the DConv's 1×1s, the stem and the shortcuts), batchnorm
(forward and backward), other (ReLU, additions, loss, optimizer, allocation, autograd bookkeeping).
"""
from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from r18lab.analysis.cost import count_flops, layer_macs, trace_layers
from r18lab.bench import finish_benchmark, _sync, bare_train
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.train.environment import pick_device, run_environment

#: name → model.transforms; the first is the reference every ratio is taken against
MODELS: dict[str, list[dict]] = {
    "R-g1": [],
    "R-g16": [{"name": "grouped", "groups": 16}],
    "R-G1": [{"name": "grouped", "group_width": 1}],
}
GROUPS = ("conv grouped/depthwise", "conv standard/1×1", "batchnorm", "other")
IMAGE = (3, 32, 32)
NUM_CLASSES = 10


def build(transforms: list[dict], width: float) -> nn.Module:
    """The CIFAR-stem ResNet-18 at `width` with `transforms` applied (seeded, so every run builds the same weights)."""
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=NUM_CLASSES, stem="cifar", width=width, transforms=transforms)


def conv_kinds(model: nn.Module) -> dict[tuple[int, ...], str]:
    """Weight shape → group name for every Conv2d of the model (how profiler rows are told apart)."""
    kinds: dict[tuple[int, ...], set] = {}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kinds.setdefault(tuple(m.weight.shape), set()).add(GROUPS[0] if m.groups > 1 else GROUPS[1])
    return {shape: (GROUPS[0] if GROUPS[0] in k else GROUPS[1]) for shape, k in kinds.items()}


def classify(name: str, shapes: list, kinds: dict[tuple[int, ...], str]) -> tuple[str, tuple[int, ...] | None]:
    """(group, conv weight shape or None) of one profiler row: a conv op by the weight shape among its inputs
    (forward ops take it second, convolution_backward third), batch norm by name, the rest `other`."""
    low = name.lower()
    if "conv" in low and shapes:
        order = [2, 1] if "backward" in low else [1, 2]
        for i in order + [j for j in range(len(shapes)) if j not in order]:
            if i < len(shapes) and tuple(shapes[i]) in kinds:
                return kinds[tuple(shapes[i])], tuple(shapes[i])
    if "batch_norm" in low:
        return GROUPS[2], None
    return GROUPS[3], None


def flops_by_group(model: nn.Module, image: tuple[int, int, int] = IMAGE) -> dict[str, int]:
    """MACs per image of the grouped convs, of the groups = 1 convs and of the linear layers; they add up to
    `count_flops` (same convention: out·(in/groups)·k² per output position, in·out per linear)."""
    macs = {GROUPS[0]: 0, GROUPS[1]: 0, "linear": 0}

    def visit(m: nn.Module, _inp, out: torch.Tensor) -> None:
        group = "linear" if isinstance(m, nn.Linear) else GROUPS[0] if m.groups > 1 else GROUPS[1]
        macs[group] += layer_macs(m, out)

    trace_layers(model, image, visit)
    return macs


def _self_time_us(evt, on_device: bool) -> float:
    if not on_device:
        return float(evt.self_cpu_time_total)
    for attr in ("self_device_time_total", "self_cuda_time_total"):  # renamed in torch 2.4
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def profile_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, top: int = 8) -> dict:
    """Self time per group and the `top` ops by self time over `steps` training steps (after one untimed step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x).logits["main"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(x.device)
    on_device = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        _sync(x.device)
    kinds = conv_kinds(model)
    per_group = dict.fromkeys(GROUPS, 0.0)
    ops: dict[tuple, float] = {}
    for evt in prof.key_averages(group_by_input_shape=True):
        if on_device and evt.device_type != torch.autograd.DeviceType.CPU:
            continue  # kernels: their time is counted as the self device time of the op that launched them
        t = _self_time_us(evt, on_device) / steps
        if t <= 0:
            continue
        group, weight = classify(evt.key, evt.input_shapes, kinds)
        per_group[group] += t
        key = (evt.key, group, weight)
        ops[key] = ops.get(key, 0.0) + t
    total = sum(per_group.values()) or 1.0
    top_ops = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"clock": "CUDA kernel" if on_device else "CPU", "ms_per_step": total / 1e3,
            "groups_ms": {g: v / 1e3 for g, v in per_group.items()},
            "groups_pct": {g: 100 * v / total for g, v in per_group.items()},
            "top": [{"op": name, "group": group, "weight": list(weight) if weight else None,
                     "ms": t / 1e3, "pct": 100 * t / total} for (name, group, weight), t in top_ops]}


def run(device: str = "auto", steps: int = 10, batch_size: int = 128, width: float = 0.25,
        threads: int | None = None, profile_steps_: int = 2, top: int = 8, rounds: int = 2,
        models: dict[str, list[dict]] | None = None) -> dict:
    """Measure every model of `models` (default MODELS, the first the reference) in one run; returns the table
    rows, the profiles and the run's metadata (device, torch version, threads, settings).

    Timing runs in `rounds` interleaved rounds (each model once per round: a warm-up pass and a timed pass of
    `bare_train`), keeping each model's best round, so a burst of load on a shared machine hits one round of
    every model rather than all of one model."""
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--profile-steps", profile_steps_),
                        ("--rounds", rounds)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}; e.g. {name} 2")
    models = models or MODELS
    dev = pick_device(device)
    built = {name: build(transforms, width) for name, transforms in models.items()}  # a bad width fails here
    rows = []
    for name, model in built.items():
        by_group = flops_by_group(model)
        rows.append({"model": name, "transforms": models[name], "params": sum(p.numel() for p in model.parameters()),
                     "flops": count_flops(model, IMAGE),
                     "grouped_flops_share": by_group[GROUPS[0]] / sum(by_group.values())})
    profiles = {}
    with run_environment(threads, deterministic=False):
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(batch_size, *IMAGE, generator=gen).to(dev) for _ in range(steps)]
        ys = [torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen).to(dev) for _ in range(steps)]
        on_dev = {name: model.to(dev) for name, model in built.items()}
        for row in rows:
            row["images_per_s_rounds"] = []
        for _ in range(rounds):
            for row in rows:
                row["images_per_s_rounds"].append(bare_train(on_dev[row["model"]], xs, ys, passes=1))
        for row in rows:
            row["images_per_s"] = max(row["images_per_s_rounds"])
            profiles[row["model"]] = profile_steps(on_dev[row["model"]], xs[0], ys[0], profile_steps_, top)
        del on_dev, built
        n_threads = torch.get_num_threads()
    ref = rows[0]
    for r in rows:
        r["speed_ratio"] = r["images_per_s"] / ref["images_per_s"]
        r["flop_ratio"] = r["flops"] / ref["flops"]
        r["efficiency"] = r["speed_ratio"] / (1 / r["flop_ratio"])
    meta = {"date": date.today().isoformat(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "threads": n_threads, "steps": steps,
            "batch_size": batch_size, "width": width, "rounds": rounds, "profile_steps": profile_steps_,
            "reference": ref["model"]}
    return {"meta": meta, "rows": rows, "profiles": profiles}


def format_table(result: dict) -> str:
    """The throughput table and the where-the-time-goes tables, as Markdown."""
    m = result["meta"]
    lines = [f"device {m['device']} ({m['device_name']}), torch {m['torch']}, {m['threads']} threads; "
             f"ResNet-18 CIFAR stem, width {m['width']}, batch {m['batch_size']}, {m['steps']} steps per pass, "
             f"best of {m['rounds']} interleaved rounds; "
             f"{m['date']}", "",
             "| model | params | FLOPs (MACs) | train images/s | speed ratio | FLOP ratio | efficiency |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['flops'] / 1e6:.2f} M | {r['images_per_s']:.1f} | "
                     f"{r['speed_ratio']:.3f} | {r['flop_ratio']:.4f} | {r['efficiency']:.3f} |")
    lines += ["", f"Where the time goes (self time per training step, {m['profile_steps']} profiled steps; "
                  f"% of the profiled total):", "",
              "| model | clock | ms/step | " + " | ".join(GROUPS) + " | grouped convs' share of FLOPs |",
              "|---|---|---:|" + "---:|" * (len(GROUPS) + 1)]
    shares = {r["model"]: r["grouped_flops_share"] for r in result["rows"]}
    for name, p in result["profiles"].items():
        lines.append(f"| {name} | {p['clock']} | {p['ms_per_step']:.1f} | "
                     + " | ".join(f"{p['groups_pct'][g]:.1f} %" for g in GROUPS) + f" | {100 * shares[name]:.1f} % |")
    for name, p in result["profiles"].items():
        lines += ["", f"Top ops of {name} by self time:", "", "| op | conv weight | group | ms/step | % |",
                  "|---|---|---|---:|---:|"]
        for op in p["top"]:
            w = "×".join(map(str, op["weight"])) if op["weight"] else ""
            lines.append(f"| {op['op']} | {w} | {op['group']} | {op['ms']:.2f} | {op['pct']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--steps", type=int, default=10, help="random batches per timed pass (default 10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.25, help="width multiplier (default 0.25: quarter width)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds, best kept (default 2)")
    p.add_argument("--profile-steps", type=int, default=2, help="profiled training steps per model (default 2)")
    p.add_argument("--top", type=int, default=8, help="ops listed per model (default 8)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    a = p.parse_args(argv)
    return finish_benchmark(lambda: run(a.device, a.steps, a.batch_size, a.width, a.threads, a.profile_steps, a.top, a.rounds), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
