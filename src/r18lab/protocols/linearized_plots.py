"""Figures of the linearized protocol: test accuracy vs eigenfunction index (NN and lin, log-x), the kernel
dynamics of the NN on CIFAR2 (distance and alignment vs epoch), and the end alignment profiles (semilog-y)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..results.plots import save_png


def plot_eigen_accuracy(eig: Sequence[dict[str, Any]], path: Path) -> Path:
    """Mean test accuracy over seeds vs eigen-index j + 1 (log-x), NN and linearisation."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    xs = [r["index"] + 1 for r in eig]
    ax.plot(xs, [r["NN acc"] for r in eig], "o-", label="NN")
    ax.plot(xs, [r["lin acc"] for r in eig], "s--", label="linearised")
    ax.set_xscale("log")
    ax.set_xlabel("eigenfunction index j + 1 (0 = largest eigenvalue)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_kernel_dynamics(probe: Sequence[dict[str, Any]], path: Path) -> Path:
    """d(K0, Kt) and A(Kt, y) vs epoch per architecture (mean ± std over seeds)."""
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for i, arch in enumerate(dict.fromkeys(r["architecture"] for r in probe)):
        seq = [r for r in probe if r["architecture"] == arch]
        for ax, key in zip(axes, ("distance", "alignment")):
            ax.errorbar([r["epoch"] for r in seq], [r.get(key, np.nan) for r in seq],
                        yerr=[r.get(f"{key} std", 0.0) for r in seq], marker="o", capsize=3, color=f"C{i}", label=arch)
    axes[0].set_ylabel("kernel distance d(K0, Kt)")
    axes[1].set_ylabel("kernel–target alignment A(Kt, y)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_profiles(prof: Sequence[dict[str, Any]], path: Path) -> Path:
    """a_j of the trained NN's kernel along the initial eigenvectors, and λ_j, vs j (semilog-y), per run."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for i, r in enumerate(prof):
        d = json.loads(Path(r["path"]).read_text())
        n = min(len(d["profile"]), max(64, 8 * (r["index"] + 1)))
        ax.semilogy(range(n), d["profile"][:n], color=f"C{i}", label=f"a_j, trained on φ_{r['index']} (seed {r['seed']})")
        ax.axvline(r["index"], color=f"C{i}", linestyle=":", linewidth=1)
        if i == 0:
            ax.semilogy(range(n), d["eigenvalues"][:n], "k--", linewidth=1, label="λ_j (θ0)")
    ax.set_xlabel("initial eigen-index j")
    ax.set_ylabel("energy of K_end along φ_j")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_all(out: Path, probe: Sequence[dict], eig: Sequence[dict], prof: Sequence[dict]) -> list[Path]:
    written = []
    if eig:
        written.append(plot_eigen_accuracy(eig, out / "eigen_accuracy.png"))
    if probe:
        written.append(plot_kernel_dynamics(probe, out / "kernel_dynamics.png"))
    if prof:
        written.append(plot_profiles(prof, out / "alignment_profiles.png"))
    return written
