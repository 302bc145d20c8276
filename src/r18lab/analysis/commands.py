"""`r18lab analyze ANALYSIS ...`: one function per analysis in ANALYSES (the CLI's choices).

spectrum PATH...: per-layer heavy-tail table (JSON/CSV/markdown) and plots.
embedding CKPT... --data SOURCE: t-SNE panel and separability numbers of chosen classes (paper 003 Fig. 2).
ensemble CKPT... --data SOURCE: strength, correlation and bound of a model's sub-heads or of several checkpoints
(paper 004 sec. 4.1; `ensemble_command`).
masks PATH...: per-layer topology of pruning masks (Ramanujan gaps, weighted spectral gap, IMDB, NaRC) and the
full-spectrum distance D of each mask (spec 002a §1.5–1.7; `masks_command`).
ntk CKPT --data SOURCE: empirical NTK of a one-logit model on N + M images — eigen.npz, spectrum, alignment,
energy concentration, and against a second checkpoint kernel distance and alignment profile (spec 002d §6;
`ntk_command`).
similarity STUDENT... --teacher T --data SOURCE: what students inherit from a teacher — Grad-CAM, adversarial
transfer, invariances, consensus on generated domains, decision boundaries, CKA, agreement (paper 002c;
`similarity_command`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError

COLUMNS = ["name", "num_evals", "alpha", "xmin", "ks_distance", "n_tail", "reliable", "lambda_max", "alpha_weighted",
           "log_alpha_norm", "stable_rank", "warning"]


def run_analysis(a: argparse.Namespace) -> int:
    """Run the analysis `a.analysis`; an option that belongs to another analysis is a one-line error."""
    if a.analysis not in ANALYSES:
        raise ConfigError(f"unknown analysis {a.analysis!r}; choose one of: {', '.join(ANALYSES)}")
    fn, own = ANALYSES[a.analysis]
    for other, (_, options) in ANALYSES.items():
        for opt in options - own:
            if getattr(a, opt, None) is not None:
                raise ConfigError(f"--{opt.replace('_', '-')} belongs to `r18lab analyze {other}`, not "
                                  f"`analyze {a.analysis}`; drop it")
    if getattr(a, "overrides", None) and a.analysis not in ("embedding", "ensemble", "ntk", "similarity"):
        raise ConfigError(f"`analyze {a.analysis}` takes no key=value options ({a.overrides[0]!r}); drop them")
    return fn(a)


def run_spectrum(a: argparse.Namespace) -> int:
    from ..results.tables import to_markdown
    from .spectrum import analyze, fit_power_law, layer_spectra, to_csv, unreliable_note
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
            note = unreliable_note(table)
            if note:
                print(note + "\n")
    say = (lambda line: print(line, file=sys.stderr)) if a.json else print  # --json: stdout stays one JSON value
    if a.csv:
        to_csv(rows, a.csv)
        say(f"table: {a.csv}")
    if a.plot:
        say(f"plot: {plot_alpha_by_depth(by_label, a.plot)}")
    path = paths[0]
    if a.esd_plot:
        if isinstance(first, Path):
            raise ConfigError(f"{path} carries no r18lab architecture, so its layers cannot be rebuilt for --esd-plot")
        spectra = layer_spectra(first)
        if a.esd_layer not in spectra:
            raise ConfigError(f"--esd-layer {a.esd_layer!r} is not a Conv/Linear layer of {path}; "
                              f"e.g. {', '.join(list(spectra)[:3])}")
        ev = spectra[a.esd_layer]
        say(f"plot: {plot_esd(ev, fit_power_law(ev, xmin=a.xmin), a.esd_plot, title=a.esd_layer)}")
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


# -- embedding -------------------------------------------------------------------------------------------
EMBEDDING_COLUMNS = ["label", "classes", "n", "silhouette", "scatter_ratio", "accuracy"]
EMBEDDING_DEFAULTS = {"split": "test", "classes": "worst:3", "perplexity": 30.0, "seed": 0, "head": "main",
                      "features": "pooled", "batch_size": 512, "device": "auto"}


def run_embedding(a: argparse.Namespace) -> int:
    """t-SNE panel + silhouette / scatter ratio of the same selected images under several checkpoints."""
    import numpy as np

    from .. import data as data_mod
    from ..models.io import load_checkpoint
    from ..predict import predict
    from ..results.tables import to_csv, to_markdown
    from ..train.environment import pick_device
    from .embedding import embedding_rows, parse_classes, per_class_accuracy, select_rows, worst_classes

    paths, source, data_options = checkpoint_inputs(a, "embedding", "embed", data_from_last=True)
    opt = command_options(a, EMBEDDING_DEFAULTS, "embedding")
    if not opt["perplexity"] > 0:
        raise ConfigError(f"--perplexity must be above 0, got {opt['perplexity']:g}; the paper uses 30")
    labels = _embedding_labels(a.labels, paths)

    # checkpoints: loaded once, onto the run's device, and all on the same classes (checked before reading data)
    device = pick_device(opt["device"])
    ref_path = Path(a.ref) if a.ref else paths[0]
    same = [i for i, p in enumerate(paths) if _same_file(p, ref_path)]
    loaded = [load_checkpoint(p, device) for p in paths]
    ref = loaded[same[0]] if same else load_checkpoint(ref_path, device)
    class_names, num_classes = _classes_of(loaded[0])
    for lm, p in zip([*loaded, ref], [*paths, ref_path]):
        names, k = _classes_of(lm)
        if (names, k) != (class_names, num_classes):
            shown = names if names else f"{k} unnamed classes"
            first = class_names if class_names else f"{num_classes} unnamed classes"
            raise ConfigError(f"{p} has classes {_short(shown)} but {paths[0]} has {_short(first)}; compare "
                              "checkpoints trained on the same classes in the same order")
    mode, value = parse_classes(opt["classes"], num_classes)

    ds = data_mod.load(source, split=opt["split"], **data_options)
    where = f"{source} ({opt['split']})"
    if class_names and list(ds.classes) and list(ds.classes) != list(class_names):
        raise ConfigError(f"{where} names its classes {_short(ds.classes)} but the models were trained on "
                          f"{_short(class_names)}; use data with the same classes in the same order")
    if len(ds) and (ds.labels.min() < 0 or ds.labels.max() >= num_classes):
        raise ConfigError(f"{where} has labels outside 0..{num_classes - 1}; use the data the models were trained on")

    def run(lm, rows=None):
        p = predict(lm, ds, indices=rows, batch_size=opt["batch_size"], device=device)
        if opt["head"] not in p.logits:
            raise ConfigError(f"{lm.path} has no head {opt['head']!r}; choose one of its heads: "
                              f"--head {' | '.join(p.heads)}")
        return p

    ref_acc, ref_full = None, None
    if mode == "worst":
        ref_full = run(ref)
        predicted = ref_full.logits[opt["head"]].argmax(1)
        classes = worst_classes(ref_full.labels, predicted, value)
        pc = per_class_accuracy(ref_full.labels, predicted)
        ref_acc = {c: pc[c] for c in classes}
    else:
        classes = value
    rows = select_rows(ds.labels, classes, a.max_per_class, seed=opt["seed"])
    if opt["perplexity"] >= len(rows):
        raise ConfigError(f"--perplexity {opt['perplexity']:g} must be below the number of points ({len(rows)}); "
                          "lower --perplexity or select more images (--max-per-class, --classes)")

    y = ds.labels[rows]
    feats, accs = {}, {}
    for i, (lm, label) in enumerate(zip(loaded, labels)):
        if ref_full is not None and i in same:  # the reference already ran on every image: take the rows
            logits, pooled = ref_full.logits[opt["head"]][rows], ref_full.features[rows]
        else:
            p = run(lm, rows)
            logits, pooled = p.logits[opt["head"]], p.features
        feats[label] = pooled if opt["features"] == "pooled" else logits
        accs[label] = float((logits.argmax(1) == y).mean() * 100)

    table = embedding_rows(feats, y, seed=opt["seed"], perplexity=opt["perplexity"])
    names = [class_names[c] if class_names else str(c) for c in classes]
    for row, p in zip(table, paths):
        row.update(classes=",".join(map(str, classes)), accuracy=accs[row["label"]], checkpoint=str(p))

    if a.csv:
        to_csv(table, a.csv, EMBEDDING_COLUMNS + ["checkpoint"])
    if a.plot:
        from .embedding_plots import plot_embedding_panel
        how = f"worst {len(classes)} of {labels[same[0]] if same else ref_path}" if mode == "worst" else "classes"
        plot_embedding_panel(table, y, a.plot, class_names=class_names or None,
                             title=f"t-SNE of {opt['features']} features, {how}: {', '.join(names)} "
                                   f"({opt['split']}, seed {opt['seed']}, perplexity {opt['perplexity']:g})")
    if a.json:
        print(json.dumps({
            "data": str(source), "split": opt["split"], "features": opt["features"], "head": opt["head"],
            "seed": opt["seed"], "perplexity": opt["perplexity"], "classes": classes, "class_names": names,
            "selection": mode, "ref": str(ref_path) if mode == "worst" else None, "ref_class_accuracy": ref_acc,
            "indices": rows.tolist(), "labels": y.tolist(),
            "rows": [{**r, "classes": classes, "points": np.asarray(r["points"]).tolist()} for r in table],
        }))  # one line: the points make an indented dump thousands of lines long
        return 0
    if ref_acc is not None:
        print(f"classes: worst {len(classes)} of {ref_path} by per-class accuracy (head {opt['head']}): "
              + ", ".join(f"{c} ({n}) {ref_acc[c]:.1f}%" for c, n in zip(classes, names)))
    else:
        print("classes: " + ", ".join(f"{c} ({n})" for c, n in zip(classes, names)))
    print(f"{opt['features']} features; silhouette and scatter ratio in the original feature space; "
          f"accuracy (%) of head {opt['head']} on these {len(rows)} images of {where}")
    print(to_markdown(table, EMBEDDING_COLUMNS, {"n": "d", "silhouette": ".3f", "scatter_ratio": ".3f",
                                                "accuracy": ".2f"}), end="")
    for flag, target in (("csv", a.csv), ("plot", a.plot)):
        if target:
            print(f"{flag}: {target}")
    return 0


def checkpoint_inputs(a: argparse.Namespace, command: str, what: str,
                      data_from_last: bool = False) -> tuple[list[Path], str, dict]:
    """(checkpoints, data source, data options) of `analyze COMMAND` from the positionals, --data and key=value
    tokens: key=value tokens that are not files are source options (as in eval/predict); with `data_from_last`
    the last positional is the data when --data is absent, unless it is a .safetensors file."""
    from ..config import parse_overrides

    options = [t for t in a.paths if "=" in t and not Path(t).exists()] + list(getattr(a, "overrides", None) or [])
    positional = [t for t in a.paths if not ("=" in t and not Path(t).exists())]
    source = a.data
    if source is None and data_from_last and len(positional) >= 2 and not positional[-1].endswith(".safetensors"):
        source = positional.pop()
    if source is None:
        raise ConfigError(f"`analyze {command}` needs the images to {what}: add --data SOURCE (a path or built-in "
                          "name, e.g. --data cifar10-jpeg.tar.gz)" + (" after the checkpoints" if data_from_last else ""))
    if not positional:
        raise ConfigError(f"`analyze {command}` needs at least one checkpoint: analyze {command} A.safetensors "
                          "[B.safetensors ...] --data SOURCE")
    paths = [Path(p) for p in positional]
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise ConfigError(f"{p} is given twice; give each checkpoint once")
        seen.add(p.resolve())
    return paths, str(source), parse_overrides(options)


def command_options(a: argparse.Namespace, defaults: dict, stem: str) -> dict:
    """The command's options (a given value, else its default); refuses --plot/--csv naming a folder."""
    for flag, target in (("--plot", a.plot), ("--csv", a.csv)):
        if target and Path(target).is_dir():
            raise ConfigError(f"{flag} {target} is a folder; give a file path, e.g. {flag} {stem}"
                              f"{'.png' if flag == '--plot' else '.csv'}")
    return {k: (getattr(a, k, None) if getattr(a, k, None) is not None else v) for k, v in defaults.items()}


def _embedding_labels(text: str | None, paths: list[Path]) -> list[str]:
    if text is None:
        return [_label(p, paths) for p in paths]
    labels = [t.strip() for t in text.split(",")]
    if len(labels) != len(paths) or not all(labels) or len(set(labels)) != len(labels):
        raise ConfigError(f"--labels {text!r} must give {len(paths)} distinct non-empty comma-separated names, "
                          "one per checkpoint in order, e.g. --labels teacher,R,NR,NR+KD")
    return labels


def _classes_of(loaded) -> tuple[list[str], int]:
    """(class names from the stored preprocessing (may be empty), number of output classes)."""
    pre = loaded.preprocessing
    names = list(pre.classes) if pre is not None and pre.classes else []
    k = loaded.spec.get("num_classes") or getattr(loaded.model, "num_classes", None) or len(names)
    return names, int(k)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _short(names) -> str:
    """A class list for a one-line message: its first four names (or a description string as it is)."""
    if isinstance(names, str):
        return names
    names = [str(n) for n in names]
    return str(names[:4])[:-1] + (", …]" if len(names) > 4 else "]")


def run_ensemble(a: argparse.Namespace) -> int:
    """Strength / correlation / bound table, CSV, JSON and scatter plot (`ensemble_command.run_ensemble`)."""
    from .ensemble_command import run_ensemble as run
    return run(a)


def run_masks(a: argparse.Namespace) -> int:
    """Mask topology table, network distance D, CSV, JSON and per-layer plot (`masks_command.run_masks`)."""
    from .masks_command import run_masks as run
    return run(a)


def run_similarity(a: argparse.Namespace) -> int:
    """Teacher–student similarity table with intervals and paired differences (`similarity_command`)."""
    from .similarity_command import run_similarity as run
    return run(a)


def run_ntk(a: argparse.Namespace) -> int:
    """Empirical NTK eigenpairs, alignment, energy and the against-comparison (`ntk_command.run_ntk`)."""
    from .ntk_command import run_ntk as run
    return run(a)


ANALYSES: dict[str, tuple] = {
    "spectrum": (run_spectrum, {"esd_layer", "esd_plot"}),  # --xmin has a default: not policed
    "embedding": (run_embedding, {"data", "split", "classes", "ref", "max_per_class", "perplexity", "seed",
                                  "head", "features", "labels", "batch_size", "device"}),
    "ensemble": (run_ensemble, {"data", "split", "head", "labels", "members", "weighting", "batch_size", "device"}),
    "masks": (run_masks, {"at", "reference"}),
    "ntk": (run_ntk, {"data", "n_train", "n_test", "k", "out", "against", "head", "route", "batch_size", "seed",
                      "task", "device"}),
    "similarity": (run_similarity, {"data", "teacher", "baseline", "baseline2", "foreign", "measures", "n", "split", "taps",
                                    "seed", "labels", "out", "batch_size", "device"}),
}
"""name → (function, the options only this analysis reads; others' options are refused)."""
