"""`r18lab analyze spectrum PATH`: per-layer heavy-tail table (JSON/CSV/markdown) and plots."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError

COLUMNS = ["name", "num_evals", "alpha", "xmin", "ks_distance", "lambda_max", "alpha_weighted",
           "log_alpha_norm", "stable_rank", "warning"]


def run_analysis(a: argparse.Namespace) -> int:
    from ..results.tables import to_markdown
    from .spectrum import analyze, fit_power_law, layer_spectra, to_csv
    from .spectrum_plots import plot_alpha_by_depth, plot_esd

    paths = [Path(p) for p in a.paths]
    first = _model_or_path(paths[0])  # loaded once: analysed, and reused for the ESD plot
    by_label = {_label(p, paths): analyze(first if i == 0 else _model_or_path(p), xmin=a.xmin)
                for i, p in enumerate(paths)}
    rows = by_label[_label(paths[0], paths)]
    if a.json:
        print(json.dumps(rows if len(paths) == 1 else by_label, indent=2))
    else:
        for label, table in by_label.items():
            print(f"### {label}\n" if len(paths) > 1 else "", end="")
            print(to_markdown(table, COLUMNS, {"num_evals": "d", "xmin": ".3g", "lambda_max": ".3g",
                                               "ks_distance": ".3f", "stable_rank": ".1f"}))
    if a.csv:
        to_csv(rows, a.csv)
    if a.plot:
        print(f"plot: {plot_alpha_by_depth(by_label, a.plot)}")
    path = paths[0]
    if a.esd_plot:
        if isinstance(first, Path):
            raise ConfigError(f"{path} carries no r18lab architecture, so its layers cannot be rebuilt for --esd-plot")
        spectra = layer_spectra(first)
        if a.esd_layer not in spectra:
            raise ConfigError(f"--esd-layer {a.esd_layer!r} is not a Conv/Linear layer of {path}; "
                              f"e.g. {', '.join(list(spectra)[:3])}")
        ev = spectra[a.esd_layer]
        plot_esd(ev, fit_power_law(ev, xmin=a.xmin), a.esd_plot, title=a.esd_layer)
    return 0


def _label(path: Path, paths: list[Path]) -> str:
    """The shortest tail of the run directory's path that tells the given files apart."""
    parents = [p.resolve().parent for p in paths]
    for k in range(1, max(len(p.parts) for p in parents) + 1):
        tails = ["/".join(p.parts[-k:]) for p in parents]
        if len(set(tails)) == len(tails):
            return "/".join(path.resolve().parent.parts[-k:])
    return str(path)


def _model_or_path(path: Path):
    """The rebuilt model (layers in depth order) when the file carries r18lab's architecture, else the path."""
    from ..errors import CheckpointError
    from ..models.io import load_model
    try:
        return load_model(path)
    except CheckpointError:
        return path
