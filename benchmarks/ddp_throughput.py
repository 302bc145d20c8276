"""DDP throughput on this machine: train images/s of one ResNet-18 run with 1 and with 2 gloo processes
(`torchrun --nproc_per_node=N -m r18lab train ...`), same global batch, one thread per process; ratio 2 / 1.

    .venv/bin/python benchmarks/ddp_throughput.py [--procs 1,2] [--width 0.25] [--image-size 32] [--n 2048]
        [--batch-size 64] [--epochs 3] [--threads 1] [--json OUT.json]

Images/s is the engine's own `train/images_per_s` (global images of an epoch ÷ its training seconds, evaluation
excluded), the best epoch after the first (warm-up) of each run."""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(procs: int, a: argparse.Namespace, folder: Path) -> float:
    out = folder / f"procs{procs}"
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "r18lab", "train", "data.source=synthetic",
           f"data.options={{num_classes: 10, image_size: {a.image_size}, n: {a.n}}}", f"model.width={a.width}",
           f"train.batch_size={a.batch_size}", f"train.epochs={a.epochs}", f"train.threads={a.threads}",
           "train.progress=none", "train.device=cpu", f"train.eval_every={a.epochs}", "data.test_size=64",
           "--out", str(out), "--store", str(folder / "store.sqlite")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=folder)
    if r.returncode:
        sys.exit(f"torchrun with {procs} process(es) failed:\n{r.stderr[-2000:]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
    return max(rates[1:] or rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    a = p.parse_args()
    procs = [int(x) for x in a.procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rates = {n: run(n, a, Path(tmp)) for n in procs}
    base = rates[procs[0]]
    print(f"ResNet-18 width {a.width}, {a.image_size}×{a.image_size}, global batch {a.batch_size}, {a.n} images, "
          f"{a.threads} thread(s) per process, gloo on CPU ({os.cpu_count()} cores)")
    print("| processes | train images/s | ratio |\n|---:|---:|---:|")
    for n in procs:
        print(f"| {n} | {rates[n]:,.0f} | {rates[n] / base:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"config": vars(a), "images_per_s": rates}, indent=2))


if __name__ == "__main__":
    main()
