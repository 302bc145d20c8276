"""Plots of `r18lab analyze ntk` (spec 002d §6): the NTK spectrum (log–log), the energy of the labels in the top-k
eigenvectors, and the alignment profile a_j of a second kernel along the first one's eigenvectors (semilog-y, as
the authors' `train_ntk.py` "NTK alignment" vs "Init eig-index"). Drawn without pyplot's global state; each PNG
is written atomically (`results.plots.save_png`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import DataError
from ..results.plots import save_png


def _positive(values) -> np.ndarray:
    """float array with the entries a log axis cannot show (≤ 0, e.g. round-off below zero) as NaN."""
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)


def plot_spectrum(eigenvalues, path, title: str = "") -> Path:
    """λ_j against j = 1..k (1 = largest), both axes logarithmic."""
    lam = _positive(eigenvalues)
    if lam.size == 0:
        raise DataError("plot_spectrum needs at least one eigenvalue")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.loglog(np.arange(1, lam.size + 1), lam, marker="o", markersize=2, linewidth=1.2)
    ax.set_xlabel("eigen-index j (1 = largest; eigen.npz column j − 1)")
    ax.set_ylabel(r"eigenvalue $\lambda_j$")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "NTK spectrum", fontsize=9)
    return save_png(fig, path)


def plot_energy(squared, nonsquared, path, title: str = "") -> Path:
    """E_k(y) = ‖Φ_kᵀ y‖²/‖y‖² and the flagged non-squared ‖Φ_kᵀ y‖/‖y‖ against k (log x)."""
    sq, ns = np.asarray(squared, dtype=float), np.asarray(nonsquared, dtype=float)
    if sq.size == 0 or sq.shape != ns.shape:
        raise DataError("plot_energy needs two equally long, non-empty curves")
    ks = np.arange(1, sq.size + 1)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ks, sq, linewidth=1.5, label=r"$E_k(y) = \|\Phi_k^\top y\|^2 / \|y\|^2$")
    ax.plot(ks, ns, linewidth=1.2, linestyle="--", label=r"$\|\Phi_k^\top y\| / \|y\|$ (flagged variant)")
    if ks.size > 1:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (top eigenvectors)")
    ax.set_ylabel("energy of the ±1 labels")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "energy concentration", fontsize=9)
    return save_png(fig, path)


def plot_alignment_profile(profile, eigenvalues, path, title: str = "") -> Path:
    """a_j = v_jᵀ K2 v_j / ‖v_j‖² against the initial eigen-index j (0-based, as eigen.npz's columns), log y; λ_j
    of the first kernel drawn for reference (a_j = λ_j when K2 = K)."""
    a, lam = _positive(profile), _positive(eigenvalues)
    if a.size == 0 or a.shape != lam.shape:
        raise DataError("plot_alignment_profile needs one a_j per eigenvalue, at least one")
    j = np.arange(a.size)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(j, a, marker="o", markersize=2, linewidth=1.2, label=r"$a_j = v_j^\top K_2 v_j$")
    ax.semilogy(j, lam, linestyle="--", color="grey", linewidth=1.0, label=r"$\lambda_j$ (reference)")
    ax.set_xlabel("initial eigen-index j")
    ax.set_ylabel("NTK alignment")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "alignment profile", fontsize=9)
    return save_png(fig, path)


__all__ = ["plot_spectrum", "plot_energy", "plot_alignment_profile"]
