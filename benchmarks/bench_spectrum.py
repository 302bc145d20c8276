"""Layer power-law α of a briefly trained ResNet-18: r18lab.analysis.spectrum (xmin="ks") against WeightWatcher.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_spectrum.py [--checkpoint PATH.safetensors] [--steps 30] [--data PATH]

Without --checkpoint (or when that file does not exist yet) a full-width CIFAR-stem ResNet-18 is trained on
CIFAR-10 with SGD (lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, random flips) for --steps steps, so that
the spectra are not those of the random initialisation, and its weights are saved (to --checkpoint, or to a
cache file outside the repository) and reused by later runs. Derived from CIFAR-10: never commit that file.

Then both analyses run on the same weights, each timed as the best of --repeats runs:
  ours   r18lab.analysis.spectrum.analyze(model, xmin="ks"): spectra (batched eigvalsh) + fits + metrics.
  theirs weightwatcher.WeightWatcher(model).analyze(...) with its default power-law fit (pool=True,
         conv2d_norm=True, pl_package="ww", xmax=None, fix_fingers=False, min_evals=8) and every extra that
         is not the α fit switched off: randomize=False, mp_fit=False, vectors=False, plot=False,
         deltas=False, detX=False, intra=False, fft=False. (Its cheap per-layer norm metrics, matrix rank
         and entropy still run: there is no switch for them.)
It prints α per layer both ways, the largest |Δα| over the layers both analyse (target < 0.01), the wall time
of each, and their ratio (target ≥ 10×). Because both spend most of their time in the same LAPACK SVDs,
the fit stage alone is also timed on identical eigenvalues: WeightWatcher's WWFit against fit_power_law.
`pip install -e .[bench]` (or `pip install weightwatcher "torch==<installed>"`) provides WeightWatcher.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

import r18lab
from r18lab.analysis.spectrum import EVALS_THRESH, analyze, fit_power_law, layer_spectra

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
"""Default training data: ../shared/data/cifar10-jpeg.tar.gz relative to the repository root (override with --data)."""
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
WW_OPTIONS = dict(randomize=False, mp_fit=False, vectors=False, plot=False, deltas=False, detX=False,
                  intra=False, fft=False, pool=True, conv2d_norm=True, fix_fingers=False)


def default_checkpoint(steps: int, batch: int, seed: int) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r18lab" / "bench_spectrum"
    return root / f"resnet18_cifar10_steps{steps}_batch{batch}_seed{seed}.safetensors"


def build_model(device: torch.device) -> nn.Module:
    return r18lab.create_model("resnet18", num_classes=10, stem="cifar", width=1.0).to(device)


def train(model: nn.Module, data: str, steps: int, batch: int, seed: int, device: torch.device) -> None:
    """`steps` SGD steps on random CIFAR-10 training batches (random horizontal flips)."""
    from r18lab.data import load
    t0 = time.perf_counter()
    ds = load(data, split="train")
    print(f"data: {len(ds)} training images ({time.perf_counter() - t0:.1f} s to load)")
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(ds), (batch,), generator=gen).numpy()
        x = torch.from_numpy(ds.images[idx]).to(device).permute(0, 3, 1, 2).float().div_(255)
        flip = torch.rand(batch, generator=gen) < 0.5
        x[flip.to(device)] = x[flip.to(device)].flip(-1)
        x = (x - mean) / std
        y = torch.from_numpy(ds.labels[idx]).to(device)
        out = model(x)
        logits = out.logits["main"] if hasattr(out, "logits") else out
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == steps - 1:
            rate = (step + 1) * batch / (time.perf_counter() - t0)
            print(f"  step {step + 1:4d}/{steps}  loss {loss.item():.3f}  ({rate:.1f} img/s)", flush=True)
    model.eval()


def save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()


def best_time(fn, repeats: int, sync) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="safetensors weights of the model; trained and saved here if missing")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=CIFAR,
                   help="CIFAR-10 archive or folder to train on (default: ../shared/data/cifar10-jpeg.tar.gz "
                        "relative to the repository root)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    torch.manual_seed(args.seed)
    model = build_model(device)
    ckpt = args.checkpoint or default_checkpoint(args.steps, args.batch, args.seed)
    if ckpt.is_file():
        print(f"weights: {ckpt} (reused)")
        load_weights(model, ckpt)
    else:
        if not args.data.exists():
            raise SystemExit(f"error: training data {args.data.resolve()} does not exist; pass --data PATH "
                             "(a CIFAR-10 archive or folder) or --checkpoint of trained weights")
        print(f"training ResNet-18 for {args.steps} steps of batch {args.batch} ...")
        train(model, args.data, args.steps, args.batch, args.seed, device)
        save_weights(model, ckpt)
        print(f"weights saved: {ckpt}")

    # ours
    t_ours, rows = best_time(lambda: analyze(model, xmin="ks"), args.repeats, sync)
    t_spec, spectra = best_time(lambda: layer_spectra(model), args.repeats, sync)

    # WeightWatcher (imported only here: a bench extra)
    logging.disable(logging.WARNING)
    import weightwatcher as ww
    from weightwatcher.WW_powerlaw import WWFit

    def run_ww():
        with contextlib.redirect_stdout(io.StringIO()):  # its small-N fit prints a line per layer
            return ww.WeightWatcher(model=model).analyze(**WW_OPTIONS)

    t_ww, details = best_time(run_ww, args.repeats, sync)

    # fit stage alone, identical eigenvalues in both
    evals = {k: v.cpu() for k, v in spectra.items()}

    def ww_fits():
        with contextlib.redirect_stdout(io.StringIO()):
            return {k: WWFit(v.numpy()[v.numpy() > EVALS_THRESH]) for k, v in evals.items() if v.numel() >= 8}

    def our_fits():
        return {k: fit_power_law(v, xmin="ks") for k, v in evals.items() if v.numel() >= 8}

    t_fit_ww, fits_ww = best_time(ww_fits, args.repeats, lambda: None)
    t_fit_ours, fits_ours = best_time(our_fits, args.repeats, lambda: None)

    theirs = {str(r["longname"]): r for r in details.to_dict("records")}
    print(f"\n{'layer':24s} {'evals':>6s} {'alpha ours':>11s} {'alpha WW':>11s} {'|Δα|':>9s} "
          f"{'xmin ours':>10s} {'xmin WW':>10s}")
    deltas, table = [], []
    for r in rows:
        t = theirs.get(r["name"])
        a_ww = float(t["alpha"]) if t is not None else math.nan
        d = abs(r["alpha"] - a_ww) if t is not None and r["alpha"] is not None else math.nan
        if math.isfinite(d):
            deltas.append(d)
        table.append({"name": r["name"], "num_evals": r["num_evals"], "alpha_ours": r["alpha"], "alpha_ww": a_ww,
                      "xmin_ours": r["xmin"], "xmin_ww": float(t["xmin"]) if t is not None else None})
        print(f"{r['name']:24s} {r['num_evals']:6d} {r['alpha']:11.5f} {a_ww:11.5f} {d:9.2e} "
              f"{r['xmin']:10.5f} {float(t['xmin']) if t is not None else math.nan:10.5f}")
    only_ww = sorted(set(theirs) - {r["name"] for r in rows})
    fit_delta = max(abs(fits_ours[k].alpha - float(fits_ww[k].alpha)) for k in fits_ww)

    summary = {
        "layers_compared": len(deltas), "layers_only_in_ww": only_ww,
        "max_abs_delta_alpha": max(deltas) if deltas else None,
        "time_ours_s": t_ours, "time_ours_spectra_s": t_spec, "time_ww_s": t_ww, "speedup": t_ww / t_ours,
        "fit_only_time_ours_s": t_fit_ours, "fit_only_time_ww_s": t_fit_ww, "fit_only_speedup": t_fit_ww / t_fit_ours,
        "fit_only_max_abs_delta_alpha": fit_delta, "device": str(device), "threads": torch.get_num_threads(),
        "checkpoint": str(ckpt),
    }
    print(f"\nlayers compared: {len(deltas)}" + (f"  (only in WeightWatcher: {only_ww})" if only_ww else ""))
    print(f"max |Δα| over layers: {summary['max_abs_delta_alpha']:.2e}   (target < 0.01)")
    print(f"time ours (analyze, ks):  {t_ours:.3f} s   of which spectra (layer_spectra) {t_spec:.3f} s")
    print(f"time WeightWatcher:       {t_ww:.3f} s")
    print(f"speed ratio WW / ours:    {t_ww / t_ours:.2f}x   (target ≥ 10x)")
    print(f"fit stage only, same eigenvalues: ours {t_fit_ours * 1e3:.1f} ms, WWFit {t_fit_ww * 1e3:.1f} ms, "
          f"ratio {t_fit_ww / t_fit_ours:.1f}x, max |Δα| {fit_delta:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "layers": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
