"""`r18lab analyze ensemble CKPT [CKPT ...] --data SOURCE`: Breiman's strength, correlation and bound of an
ensemble's members (paper 004 sec. 4.1, Figs. 4/6; spec 004 §A.10) on one dataset.

Members are either the sub-heads of a multi-head classifier (`--members heads`: every `<head>.<i>` logit of a
`ga`, `ca_token` or `multi_fc` head, one row per checkpoint and head), or several checkpoints' `--head` logits
(`--members checkpoints`, default head `main`: one row per `--labels` group, all checkpoints one group by
default). Each member votes its argmax (`strength_correlation`); the soft variant uses its softmax
(`soft_strength_correlation`). Default: `heads` when every checkpoint has a head with several sub-heads, else
`checkpoints`. Logits come from `r18lab.predict.predict`, so every model sees its own stored preprocessing;
checkpoints trained on different datasets (other classes or input size) are refused with one line.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .ensemble import soft_strength_correlation, strength_correlation

MEMBER_MODES = ("heads", "checkpoints")
COLUMNS = ["label", "head", "members", "samples", "combined_acc", "vote_acc", "member_acc", "strength",
           "correlation", "bound", "pairs", "excluded_pairs", "soft_strength", "soft_correlation", "soft_bound",
           "soft_excluded_pairs"]
CSV_COLUMNS = COLUMNS + ["member_names", "member_accs", "checkpoint"]
FORMATS = {"members": "d", "samples": "d", "pairs": "d", "excluded_pairs": "d", "soft_excluded_pairs": "d",
           "strength": ".4f", "correlation": ".4f", "bound": ".4f", "soft_strength": ".4f",
           "soft_correlation": ".4f", "soft_bound": ".4f"}
DEFAULTS = {"split": "test", "weighting": "paper", "batch_size": 512, "device": "auto"}


# -- pure: logits in, numbers out --------------------------------------------------------------------------
def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ensemble_summary(member_logits: Sequence[np.ndarray], labels: np.ndarray, num_classes: int,
                     weighting: str = "paper", combined: np.ndarray | None = None) -> dict[str, Any]:
    """One table row from the members' logits (each samples × classes) and the labels.

    Hard: votes = each member's argmax → `strength_correlation`; soft: each member's softmax →
    `soft_strength_correlation`. Accuracies (%): `combined_acc` of `combined` (default: the members' summed
    logits), `vote_acc` = share of samples whose true class strictly wins the vote (margin > 0), `member_acc` =
    the members' mean accuracy (each in `member_accs`)."""
    z = np.stack([np.asarray(m, dtype=np.float64) for m in member_logits])
    if z.ndim != 3 or z.shape[2] != num_classes:
        raise ConfigError(f"member logits must be members × samples × {num_classes}, got shape {z.shape}")
    labels = np.asarray(labels)
    votes = z.argmax(axis=2)
    hard = strength_correlation(votes, labels, num_classes, weighting)
    soft = soft_strength_correlation(softmax(z, axis=2), labels, weighting)
    comb = z.sum(axis=0) if combined is None else np.asarray(combined)
    accs = (votes == labels[None]).mean(axis=1) * 100
    return {"members": int(z.shape[0]), "samples": int(z.shape[1]),
            "combined_acc": float((comb.argmax(axis=1) == labels).mean() * 100),
            "vote_acc": float((hard["margins"] > 0).mean() * 100), "member_acc": float(accs.mean()),
            "member_accs": [float(v) for v in accs],
            **{k: _number(hard[k]) for k in ("strength", "correlation", "bound", "pairs", "excluded_pairs")},
            **{f"soft_{k}": _number(soft[k]) for k in ("strength", "correlation", "bound", "excluded_pairs")}}


def sub_head_groups(logit_names: Sequence[str]) -> dict[str, list[str]]:
    """Head → its sub-head keys, from logit keys `<head>.<sub>` (a peer's `peer1/ga.0` belongs to `peer1/ga`)."""
    groups: dict[str, list[str]] = {}
    for key in logit_names:
        prefix, _, last = key.rpartition("/")
        if "." in last:
            groups.setdefault((prefix + "/" if prefix else "") + last.rsplit(".", 1)[0], []).append(key)
    return groups


def group_rows(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per label (first-seen order): n, and mean ± sd of accuracy, strength, correlation and bound."""
    from ..results.stats import mean_std
    from ..results.tables import format_pm

    out: list[dict[str, Any]] = []
    for label in dict.fromkeys(r["label"] for r in rows):
        members = [r for r in rows if r["label"] == label]
        row: dict[str, Any] = {"label": label, "n": len(members)}
        for key, fmt in (("combined_acc", ".2f"), ("strength", ".4f"), ("correlation", ".4f"), ("bound", ".4f"),
                         ("soft_correlation", ".4f")):
            values = [r[key] for r in members if r[key] is not None and math.isfinite(r[key])]
            row[key] = format_pm(*mean_std(values), fmt) if values else ""
        out.append(row)
    return out


def _number(v):
    if isinstance(v, (np.integer, int)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else None  # NaN (undefined) → None: an empty cell, JSON null


# -- the command -------------------------------------------------------------------------------------------
def run_ensemble(a: argparse.Namespace) -> int:
    from .. import data as data_mod
    from ..models.io import load_checkpoint
    from ..predict import predict
    from ..results.tables import to_csv, to_markdown
    from ..train.environment import pick_device
    from .commands import _classes_of, _label, _short, checkpoint_inputs, command_options

    paths, source, data_options = checkpoint_inputs(a, "ensemble", "predict")
    opt = command_options(a, DEFAULTS, "ensemble")
    if a.labels is not None:
        labels = [t.strip() for t in a.labels.split(",")]
        if len(labels) != len(paths) or not all(labels):
            raise ConfigError(f"--labels {a.labels!r} must give {len(paths)} non-empty comma-separated names, one "
                              "per checkpoint in order (repeat a name to group checkpoints, e.g. seeds)")
    else:
        labels = None

    device = pick_device(opt["device"])
    loaded = [load_checkpoint(p, device) for p in paths]
    names, k = _classes_of(loaded[0])
    size = _input_size(loaded[0])
    for lm, p in zip(loaded[1:], paths[1:]):  # one dataset: same classes (names, count) and input size
        other_names, other_k = _classes_of(lm)
        other_size = _input_size(lm)
        if (other_names, other_k) != (names, k) or (size and other_size and other_size != size):
            def what(n, kk, s):
                return f"{_short(n) if n else f'{kk} unnamed classes'}" + (f" at {'×'.join(map(str, s))}" if s else "")
            raise ConfigError(f"{p} was trained on {what(other_names, other_k, other_size)} but {paths[0]} on "
                              f"{what(names, k, size)}: different datasets; analyse checkpoints trained on the "
                              "same dataset together")

    groups = [sub_head_groups(lm.model.logit_names) for lm in loaded]
    mode = a.members or ("heads" if len(paths) == 1 or all(
        (a.head in g) if a.head else any(len(v) >= 2 for v in g.values()) for g in groups) else "checkpoints")
    if mode == "checkpoints" and len(paths) < 2:
        raise ConfigError("--members checkpoints needs at least two checkpoints; for one checkpoint's sub-heads "
                          "use --members heads")
    head = a.head or ("main" if mode == "checkpoints" else None)
    for lm, g, p in zip(loaded, groups, paths):
        if mode == "checkpoints" and head not in lm.model.logit_names:
            raise ConfigError(f"{p} has no head {head!r}; choose a head every checkpoint has: "
                              f"--head {' | '.join(lm.model.logit_names)}")
        if mode == "heads" and head is not None and head not in g:
            raise ConfigError(f"{p} has no head {head!r} with sub-heads; its heads with sub-heads: "
                              f"{', '.join(g) or 'none'}")
        if mode == "heads" and head is None and not any(len(v) >= 2 for v in g.values()):
            raise ConfigError(f"{p} has no head with several sub-heads (e.g. heads=[ga]); to compare several "
                              "checkpoints' main heads use --members checkpoints")

    ds = data_mod.load(source, split=opt["split"], **data_options)
    where = f"{source} ({opt['split']})"
    if ds.labels is None or len(ds) == 0:
        raise ConfigError(f"{where} has no labelled images; strength and correlation need labels")
    if names and list(ds.classes) and list(ds.classes) != list(names):
        raise ConfigError(f"{where} names its classes {_short(ds.classes)} but the models were trained on "
                          f"{_short(names)}; use data with the same classes in the same order")
    if ds.labels.min() < 0 or ds.labels.max() >= k:
        raise ConfigError(f"{where} has labels outside 0..{k - 1}; use the data the models were trained on")

    preds = [predict(lm, ds, batch_size=opt["batch_size"], device=device) for lm in loaded]
    y = np.asarray(preds[0].labels)
    names_by_path = [_label(p, paths) for p in paths]
    rows: list[dict[str, Any]] = []
    if mode == "heads":
        for i, (p, g) in enumerate(zip(preds, groups)):
            chosen = [head] if head else [h for h, keys in g.items() if len(keys) >= 2]
            base = labels[i] if labels else names_by_path[i]
            for h in chosen:
                row = ensemble_summary([p.logits[key] for key in g[h]], y, k, opt["weighting"], combined=p.logits[h])
                rows.append({"label": base if len(chosen) == 1 else f"{base}:{h}", "head": h, **row,
                             "member_names": ",".join(g[h]), "checkpoint": str(paths[i])})
    else:
        by_label: dict[str, list[int]] = {}
        for i in range(len(paths)):
            by_label.setdefault(labels[i] if labels else "ensemble", []).append(i)
        for label, idx in by_label.items():
            row = ensemble_summary([preds[i].logits[head] for i in idx], y, k, opt["weighting"])
            rows.append({"label": label, "head": head, **row, "member_names": ",".join(names_by_path[i] for i in idx),
                         "checkpoint": ";".join(str(paths[i]) for i in idx)})
    if a.csv:
        to_csv([{**r, "member_accs": ",".join(f"{v:.4f}" for v in r["member_accs"])} for r in rows], a.csv,
               CSV_COLUMNS)
    if a.plot:
        from .ensemble_plots import plot_strength_correlation
        plot_strength_correlation(rows, a.plot, title=f"strength vs correlation ({where}; members: {mode}, "
                                                      f"weighting {opt['weighting']})")
    grouped = group_rows(rows) if len({r["label"] for r in rows}) < len(rows) else []
    if a.json:
        print(json.dumps({"data": str(source), "split": opt["split"], "members": mode, "head": head,
                          "weighting": opt["weighting"], "samples": int(len(y)), "rows": rows,
                          "groups": grouped}, indent=2))
        return 0
    what = ("each checkpoint's sub-heads" if mode == "heads"
            else f"the {head} heads of {len(paths)} checkpoints, grouped by label")
    print(f"ensemble of {what} on {len(y)} images of {where}; votes = each member's argmax, soft = its softmax; "
          f"ρ̄ = {'plain' if opt['weighting'] == 'paper' else 'sd-weighted (Breiman)'} mean pairwise Pearson of raw "
          "margins (pairs with a constant raw margin excluded and counted); bound = ρ̄(1 − s²)/s² (Breiman 2001); "
          "accuracies in %")
    print(to_markdown(rows, COLUMNS, FORMATS), end="")
    if grouped:
        print("\nper label, mean ± sd over its rows:")
        print(to_markdown(grouped, ["label", "n", "combined_acc", "strength", "correlation", "bound",
                                    "soft_correlation"], {"n": "d"}), end="")
    for flag, target in (("csv", a.csv), ("plot", a.plot)):
        if target:
            print(f"{flag}: {target}")
    return 0


def _input_size(loaded) -> tuple[int, ...] | None:
    pre = loaded.preprocessing
    return tuple(pre.input_size) if pre is not None else None


__all__ = ["ensemble_summary", "group_rows", "run_ensemble", "softmax", "sub_head_groups"]
