"""`r18lab analyze masks PATH... [--at prune|final] [--reference origin|dense_init|mask_at_init] [--csv FILE]
[--plot FILE] [--json]`: the topology of pruning masks (spec 002a §1.5–1.7, §5) — one row per pruned layer
(`masks.mask_topology`) and the network's full-spectrum distance D = Σ_l ‖c_l − c_l(ref)‖₂, c_l = (Δr, λ).

PATH is a run folder (its `masks.safetensors`, and `model.safetensors` for `--at final`) or a mask file (then the
`model.safetensors` beside it). Layers are listed in the model's order (`pruning.io.depth_order`). Weights:
`--at prune` (default) the dense weights scored at pruning time ⊙ mask (from the mask file), `--at final` the run's
trained `model.safetensors` ⊙ mask. Reference of D: `origin` (default; the third-party PAGS reading, the only
concrete one — flagged), `dense_init` (the dense mask on θ0), `mask_at_init` (the same mask on θ0). Every input is
read and checked before anything is written; a bad one is one line and exit 2. --csv and --plot replace an existing
file atomically, as the other analyses do.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from .masks import DEFAULT_COORDS, distance_terms, mask_topology, valid_reason

AT = ("prune", "final")
REFERENCES = ("origin", "dense_init", "mask_at_init")
MODEL_FILE = "model.safetensors"
MIN_KEPT, MIN_DENSITY = 1000, 1e-3
TABLE = {"name": "layer", "shape": "shape", "kept": "kept", "density": "density", "mean_degree_left": "d̄_L",
         "mean_degree_right": "d̄_R", "sigma1": "σ1", "sigma2": "σ2", "delta_s": "Δs", "delta_r": "Δr",
         "weighted_gap": "λ", "imdb_r": "IMDB", "narc": "NaRC", "collapsed": "collapsed", "d_term": "D_l"}
FORMATS = {"kept": "d", "density": ".4f", "d̄_L": ".2f", "d̄_R": ".2f", "σ1": ".3f", "σ2": ".3f", "Δs": ".3f",
           "Δr": ".3f", "λ": ".3f", "IMDB": ".3f", "NaRC": ".4f", "D_l": ".3f"}
CSV_COLUMNS = ["path", "label", "name", "shape", "n_weights", "kept", "density", "n_left", "n_right",
               "mean_degree_left", "mean_degree_right", "expansion", "sigma1", "sigma2", "omega1", "omega2", "delta_s",
               "delta_r", "delta_mean", "delta_s_norm", "delta_r_norm", "weighted_gap", "imdb_s", "imdb_r",
               "weighted_imdb", "imdb_count", "narc", "collapsed", "in_distance", "d_term", "reason"]


def run_masks(a: argparse.Namespace) -> int:
    from ..results.tables import to_csv, to_markdown
    from .commands import _label, command_options

    opt = command_options(a, {"at": "prune", "reference": "origin"}, "masks")
    if opt["at"] not in AT:
        raise ConfigError(f"--at must be one of {', '.join(AT)}, got {opt['at']!r}")
    if opt["reference"] not in REFERENCES:
        raise ConfigError(f"--reference must be one of {', '.join(REFERENCES)}, got {opt['reference']!r}")
    files = [_mask_path(Path(p)) for p in a.paths]
    seen: set[Path] = set()
    for f in files:
        if f.resolve() in seen:
            raise ConfigError(f"{f} is given twice; give each run folder or mask file once")
        seen.add(f.resolve())

    results = []  # everything is read and computed before any output is written
    for f in files:
        loaded = _load(f)
        weights = _weights(f, loaded, opt["at"])
        rows = mask_topology(loaded.masks, weights)
        ref_rows = _reference_rows(f, loaded, opt["reference"])
        terms = distance_terms(rows, ref_rows, DEFAULT_COORDS, MIN_KEPT, MIN_DENSITY)
        for r in rows:
            r["in_distance"] = r["name"] in terms
            r["d_term"] = terms.get(r["name"], math.nan)
            if not r["in_distance"]:
                r["reason"] = valid_reason(r, DEFAULT_COORDS, MIN_KEPT, MIN_DENSITY) or "reference undefined"
        results.append({"path": str(f), "label": _label(f, files), "meta": loaded.meta,
                        "weights": "none in the file (λ undefined)" if weights is None else opt["at"],
                        "network": _network(rows, terms), "rows": rows})

    if a.csv:
        to_csv([{**_clean(r), "path": res["path"], "label": res["label"], "shape": "x".join(map(str, r["shape"]))}
                for res in results for r in res["rows"]], a.csv, CSV_COLUMNS)
    if a.plot:
        from .masks_plots import plot_layer_profile
        plot_layer_profile({res["label"]: res["rows"] for res in results}, a.plot,
                           title=f"mask topology by layer (weights at {opt['at']}; × = collapsed layer)")
    if a.json:
        print(json.dumps({"at": opt["at"], "reference": opt["reference"], "coords": list(DEFAULT_COORDS),
                          "min_kept": MIN_KEPT, "min_density": MIN_DENSITY,
                          "paths": [{**res, "rows": [_clean(r) for r in res["rows"]],
                                     "network": _clean(res["network"])} for res in results]}, indent=1))
        return 0
    how = {"prune": "weights scored at pruning time ⊙ mask", "final": f"trained {MODEL_FILE} ⊙ mask"}[opt["at"]]
    ref = {"origin": "origin (flagged: the only concrete reading, from a third-party PAGS; the paper's reference "
                     "is unconfirmed)",
           "dense_init": "dense mask on θ0", "mask_at_init": "the same mask on θ0"}[opt["reference"]]
    print(f"mask topology (spec 002a §1.6): μ̂ = σ2 of the biadjacency; Δr = √(d̄_L−1) + √(d̄_R−1) − μ̂; "
          f"λ = ω1 − ω2 of |W⊙M| ({how}); IMDB = mean Δr over left-degree classes; collapsed = mean degree < 3")
    for res in results:
        net = res["network"]
        if len(results) > 1:
            print(f"\n### {res['label']}")
        meta = res["meta"]
        if meta.get("method"):
            print(f"mask: {meta['method']}, {meta.get('scope', '?')} scope, pretrain steps "
                  f"{meta.get('pretrain_steps', '?')}")
        if res["weights"] != opt["at"]:
            print(f"weights: {res['weights']}")
        print(to_markdown([_display(r) for r in res["rows"]], list(TABLE.values()), FORMATS), end="")
        print(f"network: {net['n_weights']:,} prunable weights, kept {net['kept']:,}: density {net['density']:.4f}, "
              f"sparsity {net['sparsity']:.4f}; {net['collapsed_layers']} collapsed layer(s)")
        print(f"D = Σ_l ‖(Δr, λ)_l − ref‖₂ = {net['distance']:.4f} over {net['layers_in_distance']} of "
              f"{net['layers']} layers (kept > {MIN_KEPT}, density > {MIN_DENSITY:g}, defined); reference: {ref}")
    for flag, target in (("csv", a.csv), ("plot", a.plot)):
        if target:
            print(f"{flag}: {target}")
    return 0


# -- inputs ------------------------------------------------------------------------------------------------
def _mask_path(path: Path) -> Path:
    from ..pruning.io import MASKS_FILE
    return path / MASKS_FILE if path.is_dir() else path


def _load(path: Path):
    """The mask file; a missing or foreign file is bad input here (one line, exit 2)."""
    from ..pruning.io import load_masks
    try:
        loaded = load_masks(path)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    if not loaded.masks:
        raise ConfigError(f"{path} holds no masks (no mask.* tensors); give a masks.safetensors written by the "
                          "prune hook")
    return loaded  # layers in the model's order (`pruning.io.depth_order`)


def _weights(path: Path, loaded, at: str) -> dict[str, torch.Tensor] | None:
    """W ⊙ M per layer: the file's pruning-time weights (`prune`) or the run's model.safetensors (`final`)."""
    if at == "prune":
        if not loaded.weights:
            return None  # a mask-only file: topology without λ
        source, where = loaded.weights, f"{path} (weight.* tensors)"
    else:
        model = path.parent / MODEL_FILE
        if not model.is_file():
            raise ConfigError(f"--at final needs the trained weights {model}, which does not exist; give the run "
                              "folder of a finished run, or use --at prune")
        from ..models.io import read_tensors
        try:
            source, _ = read_tensors(model)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        where = str(model)
    out = {}
    for name, m in loaded.masks.items():
        w = source.get(name)
        if w is None:
            raise ConfigError(f"{where} has no tensor {name!r} for the mask of that name; use the weights of the "
                              "run that made the mask")
        if w.shape != m.shape:
            raise ConfigError(f"{where}: {name} has shape {tuple(w.shape)} but its mask {tuple(m.shape)}; use the "
                              "weights of the run that made the mask")
        out[name] = w * m
    return out


def _reference_rows(path: Path, loaded, reference: str) -> list[dict] | None:
    """Rows of the reference point: none (origin), the dense mask on θ0, or the same mask on θ0."""
    if reference == "origin":
        return None
    missing = [n for n in loaded.masks if n not in loaded.init or loaded.init[n].shape != loaded.masks[n].shape]
    if missing:
        raise ConfigError(f"--reference {reference} needs θ0, but {path} has no init tensor for {missing[0]} "
                          f"({len(missing)} of {len(loaded.masks)} layers); use --reference origin or a mask file "
                          "written by the prune hook")
    if reference == "dense_init":
        return mask_topology({n: torch.ones_like(m) for n, m in loaded.masks.items()}, loaded.init)
    return mask_topology(loaded.masks, {n: loaded.init[n] * m for n, m in loaded.masks.items()})


# -- outputs -----------------------------------------------------------------------------------------------
def _network(rows: list[dict], terms: dict[str, float]) -> dict[str, Any]:
    n = sum(r["n_weights"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    used = [r for r in rows if r["in_distance"]]
    return {"n_weights": n, "kept": kept, "density": kept / n, "sparsity": 1 - kept / n, "layers": len(rows),
            "collapsed_layers": sum(bool(r["collapsed"]) for r in rows), "layers_in_distance": len(used),
            "distance": sum(terms.values()), "sum_delta_r": sum(r["delta_r"] for r in used),
            "sum_weighted_gap": sum(r["weighted_gap"] for r in used)}


def _clean(row: dict) -> dict:
    """NaN → None (an empty CSV cell, JSON null)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _display(row: dict) -> dict:
    r = _clean(row)
    r["shape"] = "×".join(map(str, row["shape"]))
    r["collapsed"] = "yes" if row["collapsed"] else ""
    return {label: r.get(key) for key, label in TABLE.items()}


__all__ = ["run_masks"]
