"""Corruption robustness (paper 000 appendix C, Figures 13–14): accuracy on generated CIFAR-10-C corruptions ×
severities, means per severity and per corruption, a paired comparison of two models on the same corrupted images,
and the plot.

Corrupted images are cached as .npz per (dataset fingerprint, corruption, severity, seed) under
`<cache_root>/corruptions/`, written atomically.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np
import torch

from ..data.cache import cache_root
from ..data.corruptions import corrupt


def dataset_key(name: str, images: torch.Tensor) -> str:
    """'<name>-<sha256 of the uint8 images, 16 hex>': the cache identity of a dataset's test images."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(str(name)).name)[:40] or "data"
    digest = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{safe}-{digest}"


def corrupted(images: torch.Tensor, name: str, severity: int, seed: int = 0, key: str | None = None) -> torch.Tensor:
    """corrupt(name, images, severity, seed) of uint8 N×C×H×W images, read from / written to the .npz cache when
    `key` (dataset_key) is given; on the images' device."""
    path = None if key is None else cache_root() / "corruptions" / f"{key}-{name}-s{severity}-seed{seed}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                arr = z["images"]
            if arr.shape == tuple(images.shape) and arr.dtype == np.uint8:
                return torch.from_numpy(arr).to(images.device)
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is regenerated
    out = corrupt(name, images, severity, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".partial-{secrets.token_hex(4)}-{path.name}")
        with open(tmp, "wb") as f:
            np.savez(f, images=out.cpu().numpy())
        os.replace(tmp, path)
    return out


@torch.no_grad()
def correct(model: torch.nn.Module, normalizer, images: torch.Tensor, labels: torch.Tensor,
            batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Per-sample correctness (bool, on the CPU) of every head: argmax, or z > 0 for a one-logit head."""
    was = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(labels), batch_size):
        y = labels[i:i + batch_size]
        for h, z in model(normalizer(images[i:i + batch_size])).logits.items():
            pred = (z[:, 0] > 0).long() if z.shape[1] == 1 else z.argmax(1)
            out.setdefault(h, []).append((pred == y).cpu())
    model.train(was)
    return {h: torch.cat(v) for h, v in out.items()}


def evaluate_corruptions(models: dict[str, tuple[torch.nn.Module, object]], images: torch.Tensor,
                         labels: torch.Tensor, names: list[str], severities: list[int], seed: int = 0,
                         key: str | None = None, batch_size: int = 512
                         ) -> tuple[dict, dict[str, np.ndarray]]:
    """(table, correctness): every model (label → (model, normalizer)) on the clean and the same corrupted images.
    Series are '<label>' (one head) or '<label>/<head>'; correctness[series] is bool (1 + cells)×N, row 0 clean, then
    corruption-major cells. table: accuracy (%) per series × corruption × severity, clean, means per severity and per
    corruption, overall mean (the mean over all corrupted cells)."""
    def series(label: str, heads: dict) -> dict[str, torch.Tensor]:
        return {label if len(heads) == 1 else f"{label}/{h}": v for h, v in heads.items()}

    rows: dict[str, list[torch.Tensor]] = {}
    for label, (model, norm) in models.items():
        for s, v in series(label, correct(model, norm, images, labels, batch_size)).items():
            rows[s] = [v]
    for name in names:
        for sev in severities:
            xc = corrupted(images, name, sev, seed, key)
            for label, (model, norm) in models.items():
                for s, v in series(label, correct(model, norm, xc, labels, batch_size)).items():
                    rows[s].append(v)
    correctness = {s: torch.stack(v).numpy() for s, v in rows.items()}
    acc = {s: 100.0 * c.mean(1) for s, c in correctness.items()}
    ns = len(severities)
    table = {"corruptions": list(names), "severities": list(severities), "seed": seed, "n": int(len(labels)),
             "series": {}}
    for s, a in acc.items():
        grid = a[1:].reshape(len(names), ns)
        table["series"][s] = {
            "clean": float(a[0]),
            "acc": {n: {str(sev): float(grid[i, j]) for j, sev in enumerate(severities)} for i, n in enumerate(names)},
            "mean_per_severity": {str(sev): float(grid[:, j].mean()) for j, sev in enumerate(severities)},
            "mean_per_corruption": {n: float(grid[i].mean()) for i, n in enumerate(names)},
            "mean": float(grid.mean()),
        }
    return table, correctness


def paired_comparison(a: np.ndarray, b: np.ndarray, names: list[str], severities: list[int],
                      n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference a − b (points) on the same images: overall corrupted mean and per corruption, each with a
    95% percentile bootstrap interval over images (cells of one image resampled together), and McNemar's counts
    (a right & b wrong, a wrong & b right) over all corrupted (image, cell) pairs. a, b: bool (1 + cells)×N."""
    n = a.shape[1]
    d = a[1:].astype(np.float64) - b[1:].astype(np.float64)  # cells × N
    per = d.reshape(len(names), len(severities), n).mean(1)  # corruption × N
    stats = np.vstack([d.mean(0, keepdims=True), per])  # (1 + corruptions) × N
    rng = np.random.default_rng(seed)
    boot = np.stack([stats[:, rng.integers(0, n, n)].mean(1) for _ in range(n_boot)], 1) * 100
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=1)
    mean = stats.mean(1) * 100

    def row(i: int) -> dict:
        return {"diff": float(mean[i]), "ci95": [float(lo[i]), float(hi[i])]}

    return {"overall": row(0), "clean": float(100 * (a[0].mean() - b[0].mean())),
            "per_corruption": {nm: row(i + 1) for i, nm in enumerate(names)},
            "mcnemar": {"a_only": int((a[1:] & ~b[1:]).sum()), "b_only": int((~a[1:] & b[1:]).sum())},
            "bootstrap": n_boot}


def robustness_lines(table: dict) -> list[str]:
    """Markdown: per series, a corruption × severity accuracy table with per-corruption means and a mean row."""
    sev = table["severities"]
    lines = []
    for s, t in table["series"].items():
        lines += [f"## {s}: clean {t['clean']:.2f}%, mean corrupted {t['mean']:.2f}% (n={table['n']}, "
                  f"seed {table['seed']})", "",
                  "| corruption | " + " | ".join(f"s{v}" for v in sev) + " | mean |",
                  "|---|" + "---:|" * (len(sev) + 1)]
        for n in table["corruptions"]:
            lines.append(f"| {n} | " + " | ".join(f"{t['acc'][n][str(v)]:.2f}" for v in sev)
                         + f" | {t['mean_per_corruption'][n]:.2f} |")
        lines.append("| mean | " + " | ".join(f"{t['mean_per_severity'][str(v)]:.2f}" for v in sev)
                     + f" | {t['mean']:.2f} |")
        lines.append("")
    return lines


def comparison_lines(cmp: dict, a: str, b: str) -> list[str]:
    """Markdown lines of paired_comparison."""
    o = cmp["overall"]
    m = cmp["mcnemar"]
    lines = [f"## paired: {a} − {b} (same corrupted images; 95% bootstrap CI over images, {cmp['bootstrap']} draws)",
             "", f"clean: {cmp['clean']:+.2f} points; mean corrupted: {o['diff']:+.2f} [{o['ci95'][0]:+.2f}, "
                 f"{o['ci95'][1]:+.2f}]; McNemar pairs: {a} only right {m['a_only']}, {b} only right {m['b_only']}",
             "", "| corruption | diff | 95% CI |", "|---|---:|---|"]
    for n, r in cmp["per_corruption"].items():
        lines.append(f"| {n} | {r['diff']:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] |")
    return lines


def plot_robustness(table: dict, path: str | Path) -> Path:
    """Accuracy vs severity (0 = clean), one panel per corruption, one line per series (paper 000 Figures 13–14)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, sev = table["corruptions"], table["severities"]
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, n in zip(axes.flat, names):
        for s, t in table["series"].items():
            ax.plot([0, *sev], [t["clean"], *(t["acc"][n][str(v)] for v in sev)], marker="o", ms=3, label=s)
        ax.set_title(n, fontsize=9)
        ax.set_xticks([0, *sev])
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("severity")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
