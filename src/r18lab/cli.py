"""`r18lab` command line: train | eval | export | data | runs | models | analyze | protocol | report | bench."""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Callable

from .errors import ConfigError, R18Error

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def add(fn):
        COMMANDS[name] = fn
        return fn
    return add


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- train / eval / export -----------------------------------------------------------------------
@command("train")
def cmd_train(a: argparse.Namespace) -> int:
    from .config import load_config
    from .train.run import execute, open_store

    if a.config and "=" in a.config and not Path(a.config).exists():
        a.overrides, a.config = [a.config, *a.overrides], None  # no file: only key=value overrides
    cfg = load_config(a.config, a.overrides, a.scale)
    out = Path(a.out) if a.out else Path("runs") / (Path(a.config).stem if a.config else "default")
    from .train import distributed
    from .train.rundir import inspect
    if a.nproc:  # checked here, then torchrun starts the ranks: a bad world size is one line before any process
        from .train.environment import pick_device
        distributed.check(cfg.train, distributed.World(0, a.nproc), pick_device(cfg.train.device))
        argv = [*([a.config] if a.config else []), *a.overrides, "--out", str(out), *(["--resume"] if a.resume else []),
                *(["--overwrite"] if a.overwrite else []), *(["--scale", a.scale] if a.scale else []),
                *(["--store", a.store] if a.store else [])]
        return distributed.launch(a.nproc, ["--debug"] * a.debug + ["train", *argv])
    world = distributed.world_from_env()  # under torchrun: one rank of a DDP run; only rank 0 writes and prints
    finished = a.resume and not a.overwrite and inspect(out).status == "done"
    clean = False
    try:
        summary = execute(cfg, out, resume=a.resume, overwrite=a.overwrite,
                          store=open_store(a.store) if world.is_main else None)
        clean = True
    finally:
        distributed.shutdown(clean)
    if not world.is_main:
        return 0
    if finished:
        print(f"{out} holds this run finished; nothing trained")
    _print_result_table(summary)
    if not finished:  # a finished run's files stay untouched (`r18lab report DIR` redraws them)
        from .results.report import report_run
        print(report_run(out))
    print(f"run directory: {out}")
    return 0


def _print_result_table(summary: dict) -> None:
    final = summary["final"]
    rows = [(k.split("/")[1], v) for k, v in final.items() if k.endswith("/acc")]
    print("| head | test accuracy (%) | balanced accuracy (%) |\n|---|---|---|")
    for head, acc in rows:
        bal = final.get(f"eval/{head}/balanced_acc")
        print(f"| {head} | {acc:.2f} | {'' if bal is None else f'{bal:.2f}'} |")
    print(f"trained {summary['steps']} steps on {summary['num_train']} images in {summary['train_seconds']:.1f} s "
          f"({summary['device']})")


@command("eval")
def cmd_eval(a: argparse.Namespace) -> int:
    from .config import parse_overrides
    from .data import load
    from .data.loader import to_device_tensors
    from .models.io import load_checkpoint, require_preprocessing
    from .train.engine import evaluate_detailed
    from .train.environment import pick_device

    device = pick_device(a.device)
    loaded = load_checkpoint(a.weights, device)
    opts = parse_overrides(a.options)
    test = load(a.data, split=a.split, **opts)
    if a.normalize == "dataset":  # files written before preprocessing was stored: the old behaviour, on request
        from .data.augment import channel_stats
        from .models.io import Preprocessing
        h, w, c = test.images.shape[1:]
        pre = Preprocessing.of(*channel_stats(load(a.data, split="train", **opts)), (c, h, w), test.classes)
    else:
        pre = require_preprocessing(loaded)
    model = loaded.model
    if model.num_classes != test.num_classes:
        raise ConfigError(f"model has {model.num_classes} classes but {a.data} has {test.num_classes}; "
                          "evaluate on the data it was trained on")
    x, y = to_device_tensors(test, device)
    pre.check_images(x.shape, f"{a.data} ({a.split})")
    if pre.classes and list(pre.classes) != list(test.classes):
        raise ConfigError(f"{a.data} names its classes {list(test.classes)[:4]}… but the model was trained on "
                          f"{list(pre.classes)[:4]}…; evaluate on data with the same classes in the same order")
    classes = list(pre.classes or test.classes)
    if getattr(a, "corruptions", None):
        return _eval_corruptions(a, model, pre, x, y, device)
    if getattr(a, "compare", None):
        raise ConfigError("--compare works with --corruptions; e.g. --corruptions all --compare OTHER.safetensors")
    if getattr(a, "heads", None) is None:
        ev = evaluate_detailed(model, x, y, pre.normalizer().to(device), a.batch_size)
        _print_evaluation(ev, classes, a)
        return 0

    # partial deployment (paper 004 Tables C, B): a subset of a head's sub-heads, combined as the head's
    # `combine` says, or one sub-head drawn at random with --seed
    import torch

    from .models.classifier import ModelOutput
    from .models.gramian import combine_logits

    names = list(getattr(model, "logit_names", []))
    spec = a.heads.strip()
    fix = "e.g. --heads ga.0,ga.3 (sub-heads of one head) or --heads ga:random"
    with_subs = sorted({k.rsplit(".", 1)[0] for k in names if "." in k.rsplit("/", 1)[-1]})
    if spec.endswith(":random"):
        parent = spec[:-len(":random")]
        keys = [k for k in names if k.startswith(parent + ".")]
        if not keys:
            raise ConfigError(f"--heads {a.heads}: {a.weights} has no head {parent!r} with sub-heads; its heads "
                              f"with sub-heads: {', '.join(with_subs) or 'none'}")
        pick = int(torch.randint(len(keys), (1,), generator=torch.Generator().manual_seed(a.seed)))
        keys = [keys[pick]]
    else:
        keys = [k.strip() for k in spec.split(",") if k.strip()]
        unknown = [k for k in keys if k not in names or "." not in k.rsplit("/", 1)[-1]]
        if not keys or unknown:
            raise ConfigError(f"--heads {a.heads!r}: {(unknown or [spec])[0]!r} is not a sub-head of {a.weights} "
                              f"(its logits: {', '.join(names)}); {fix}")
        parents = sorted({k.rsplit(".", 1)[0] for k in keys})
        if len(parents) > 1 or len(set(keys)) != len(keys):
            raise ConfigError(f"--heads {a.heads!r} must list distinct sub-heads of one head, got heads {parents}; "
                              f"evaluate one head's subset at a time, {fix}")
        parent = parents[0]
    peer, _, head = parent.rpartition("/")
    owner = model.peers[int(peer[4:] or 0)] if hasattr(model, "peers") else model
    mode = getattr(owner.heads[head], "combine", "sum")
    label = "+".join(keys)

    class Subset(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, inputs: torch.Tensor) -> ModelOutput:
            out = self.inner(inputs)
            return ModelOutput({label: combine_logits([out.logits[k] for k in keys], mode)}, out.features)

    ev = evaluate_detailed(Subset(model), x, y, pre.normalizer().to(device), a.batch_size)
    info = {"heads": keys, "combine": mode, **({"seed": a.seed} if spec.endswith(":random") else {})}
    if not a.json:
        print(f"heads: {', '.join(keys)} (logits combined by {mode}"
              + (f"; drawn with seed {a.seed})" if "seed" in info else ")"))
    _print_evaluation(ev, classes, a, info)
    return 0


def _eval_corruptions(a: argparse.Namespace, model, pre, x, y, device) -> int:
    """`eval --corruptions`: CIFAR-10-C accuracy table (paper 000 appendix C), optionally paired with --compare."""
    from .analysis.robustness import (comparison_lines, dataset_key, evaluate_corruptions, paired_comparison,
                                      plot_robustness, robustness_lines)
    from .data.corruptions import FIDELITY, MISSING, resolve
    from .models.io import load_checkpoint, require_preprocessing

    names = resolve(a.corruptions)
    try:
        sev = sorted({int(v) for v in a.severities.split(",") if v.strip()})
    except ValueError:
        sev = []
    if not sev or any(v not in (1, 2, 3, 4, 5) for v in sev):
        raise ConfigError(f"--severities {a.severities!r}: give integers in 1–5, e.g. --severities 1,3,5")

    def label(path: str) -> str:  # the run folder's name when both files are model.safetensors
        p = Path(path)
        return p.stem if not a.compare or Path(a.weights).stem != Path(a.compare).stem else p.resolve().parent.name

    models = {label(a.weights): (model, pre.normalizer().to(device))}
    if a.compare:
        other = load_checkpoint(a.compare, device)
        opre = require_preprocessing(other)
        opre.check_images(x.shape, a.compare)
        if other.model.num_classes != model.num_classes:
            raise ConfigError(f"--compare {a.compare} has {other.model.num_classes} classes, {a.weights} has "
                              f"{model.num_classes}; compare models of one label set")
        name = label(a.compare)
        models[name if name not in models else f"{name}(2)"] = (other.model, opre.normalizer().to(device))
    table, correctness = evaluate_corruptions(models, x, y, names, sev, a.seed, dataset_key(a.data, x), a.batch_size)
    table["fidelity"] = {n: FIDELITY[n] for n in names}
    table["not_generated"] = {n: FIDELITY[n] for n in MISSING} if a.corruptions.strip() == "all" else {}
    lines = robustness_lines(table)
    if a.compare:
        labels = list(models)
        primary = [next(s for s in reversed(list(correctness)) if s == m or s.startswith(m + "/")) for m in labels]
        cmp = paired_comparison(correctness[primary[0]], correctness[primary[1]], names, sev, seed=a.seed)
        table["comparison"] = {"a": primary[0], "b": primary[1], **cmp}
        lines += comparison_lines(cmp, *primary)
    if a.plot:
        table["plot"] = str(plot_robustness(table, a.plot))
    if a.json:
        _print_json(table)
        return 0
    print("\n".join(lines))
    for n, why in table["not_generated"].items():
        print(f"not generated: {n} ({why}); the means are over the other {len(names)}")
    approx = [n for n in names if not FIDELITY[n].startswith("faithful")]
    if approx:
        print(f"approximate: {', '.join(approx)} (see r18lab.data.corruptions.FIDELITY)")
    if a.plot:
        print(f"plot: {table['plot']}")
    return 0


def _print_evaluation(ev, classes: list[str], a: argparse.Namespace, info: dict | None = None) -> None:
    """`eval`'s output: accuracy, balanced accuracy and loss per head, then each head's per-class table (the
    worst classes first when there are many) — or all of it, confusion matrices included, as JSON; --plot
    writes the first head's confusion matrix."""
    from .results.report import per_class_lines
    per = ev.per_class(classes)
    written = []
    if getattr(a, "plot", None) and per["heads"]:
        from .results.plots import plot_confusion
        head, rep = next(iter(per["heads"].items()))
        written.append(plot_confusion(rep["confusion"], a.plot, per["classes"],
                                      f"{head}: confusion matrix (balanced accuracy {rep['balanced_acc']:.1f}%)"))
    if a.json:
        _print_json({**(info or {}), **ev.metrics, "per_class": per,
                     **({"plot": str(written[0])} if written else {})})
        return
    for k, v in ev.metrics.items():
        print(f"{k}: {v:.4f}")
    for head, rep in per["heads"].items():
        print("\n" + "\n".join(per_class_lines(rep["confusion"], per["classes"], head)))
    for path in written:
        print(f"plot: {path}")


@command("predict")
def cmd_predict(a: argparse.Namespace) -> int:
    from .config import parse_overrides
    from .predict import check_output, predict

    check_output(a.out, a.overwrite)  # before the work, not after it
    preds = predict(a.weights, a.data, split=a.split, indices=a.indices, stages=a.stages,
                    batch_size=a.batch_size, device=a.device, data_options=parse_overrides(a.overrides))
    print(preds.summary(preds.save(a.out, overwrite=a.overwrite)))
    return 0


@command("export")
def cmd_export(a: argparse.Namespace) -> int:
    from .models import export_state
    from .models.classifier import split_entry
    from .models.io import load_checkpoint, save_model
    from .registry import HEADS

    keep = [h.strip() for h in a.keep.split(",") if h.strip()]
    if not keep:
        raise ConfigError(f"--keep {a.keep!r} names no head; list the heads to keep, e.g. --keep main, "
                          "or --keep none for the backbone alone")
    backbone_only = keep == ["none"]  # the backbone for a fresh linear probe (paper 004 Tables A–B)
    if backbone_only:
        keep = []
    elif "none" in keep:
        raise ConfigError(f"--keep {a.keep!r}: none means no head at all; give --keep none alone or list heads")
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise R18Error(f"{out} exists; choose another --out, or pass --overwrite to replace it")
    loaded = load_checkpoint(a.weights)
    model = loaded.model
    owner = model.peers[0] if hasattr(model, "peers") else model  # a peer group exports peer 0
    have = list(getattr(owner, "all_head_names", owner.head_names))  # aux-only heads (hint) too
    unknown = [h for h in keep if h not in have]
    if unknown:
        raise ConfigError(f"{a.weights} has no head {unknown[0]!r}; keep some of its heads: --keep {','.join(have)}")
    state = export_state(model, keep)
    spec = dict(loaded.spec)
    entries = [e for e in spec["heads"] if split_entry(e, "head")[0] in keep]  # kept entries keep their options
    dropped = [n for n in (split_entry(e, "head")[0] for e in spec["heads"]) if n not in keep]
    spec = {k: v for k, v in spec.items() if not any(k.startswith(h + "_") for h in dropped)}
    spec.update(heads=entries, peers=1)
    if not any(HEADS.get(h).gates_main for h in keep if h != "main"):
        spec["gate"] = None  # forward is unchanged: the gate is the identity in the forward pass
    save_model(model, out, spec, state=state, preprocessing=loaded.preprocessing, identity=loaded.identity)
    n = sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
    if backbone_only:  # its spec says heads: []; create_model needs a head, so it is loaded non-strictly
        print(f"wrote {out}: backbone only (no heads), {n:,} parameters; load it into "
              f"create_model({spec['name']!r}, ..., heads=['main']) with strict=False (missing only fc.*) "
              "and fit a fresh fc")
        return 0
    print(f"wrote {out}: heads {keep}, {n:,} parameters")
    return 0


# -- data ----------------------------------------------------------------------------------------
@command("data")
def cmd_data(a: argparse.Namespace) -> int:
    from .data import info
    if a.action == "download":
        from .data.download import download_cifar
        _print_json({"path": str(download_cifar(a.source, a.root))})
        return 0
    if a.action == "cache":
        from .data.cachecmd import run_cache_command
        return run_cache_command(a.source, a.overrides, yes=a.yes, everything=a.all, as_json=a.json)
    from .data.training import source_options
    d = _data_keys(a.source, a.overrides)
    opts = source_options(d)
    if a.action == "prepare":
        result = info.prepare(d.source, **opts)
    else:
        result = info.inspect(d.source, a.split or d.train_split, **opts)
    _print_json(result)
    return 0


def _data_keys(source: str, items: list[str]):
    """The typed `data` section of a `data inspect|prepare` command line: the same `data.*` keys as `train`
    (`data.` may be left out; a key that is not a data key is a source option, as data.options.<key>)."""
    from .config import DataConfig, build_config, parse_overrides
    tree: dict = {"source": source}
    for key, value in parse_overrides(items).items():
        if key == "data" and isinstance(value, dict):
            tree.update(value)
        elif key in DataConfig.model_fields:
            tree[key] = value
        elif isinstance(value, dict):
            raise ConfigError(f"`data inspect|prepare` take data.* keys only, got a {key}.* key; e.g. data.image_size=32")
        else:
            tree.setdefault("options", {})[key] = value
    return build_config({"data": tree}).data


# -- runs ----------------------------------------------------------------------------------------
@command("runs")
def cmd_runs(a: argparse.Namespace) -> int:
    from . import runs
    from .train.run import open_store
    if a.action == "collect":  # result records (result.json) under the folders → the store, idempotently
        from .results import records
        if not a.run_id:
            raise ConfigError("`runs collect` needs folders: the protocol directory (its --out) or run folders")
        recs = records.read_records(records.find_records(a.run_id))  # all checked before the store is touched
        store = open_store(a.store)
        print(records.counts_line(records.collect(store, recs), len(recs), store.path))
        return 0
    if len(a.run_id) > 1:
        raise ConfigError(f"`runs {a.action}` takes one run id, got {len(a.run_id)}: {' '.join(a.run_id)}")
    a.run_id = a.run_id[0] if a.run_id else None
    store = open_store(a.store)
    if a.action == "list":
        if a.run_id:
            raise ConfigError(f"`runs list` takes no run id (got {a.run_id!r}); use `r18lab runs show {a.run_id}`")
        records = [runs.record(r) for r in store.list(status=a.status, protocol=a.protocol, limit=a.limit)]
        if a.json:
            _print_json(records)
        else:
            print(runs.list_table(records) if records else f"no runs in {store.path}"
                  + (" with these filters" if a.status or a.protocol else ""))
        return 0
    if not a.run_id:
        raise ConfigError("`runs show` needs a run id, a short id or a run folder; `r18lab runs list` shows the ids")
    rec = runs.find(store, a.run_id)
    _print_json(rec) if a.json else print(runs.show_text(rec))
    return 0


# -- config ------------------------------------------------------------------------------------------
@command("config")
def cmd_config(a: argparse.Namespace) -> int:
    if a.action == "show":
        from .config import config_dict, load_config, resolve_tree
        from .config_keys import config_yaml
        if a.recipe and "=" in a.recipe and not Path(a.recipe).exists():
            a.overrides, a.recipe = [a.recipe, *a.overrides], None  # no file: only key=value overrides
        tree = config_dict(load_config(a.recipe, a.overrides, a.scale))
        protocol = resolve_tree(a.recipe, a.overrides, a.scale).get("protocol")
        if a.json:
            _print_json(tree)
            return 0
        print(config_yaml(tree))
        if protocol is not None:  # not a run key: shown as resolved; `r18lab protocol` validates it
            print("# the recipe's protocol section, as resolved (validated by `r18lab protocol`):")
            print(config_yaml({"protocol": protocol}))
        return 0
    if not a.keys and a.action != "keys":
        raise ConfigError("`r18lab config` needs --keys (every config key) or `show RECIPE` (a resolved config); "
                          "e.g. r18lab config --keys --markdown")
    if a.recipe or a.overrides or a.scale:
        raise ConfigError(f"`config --keys` takes no recipe, scale or overrides (got "
                          f"{' '.join([*filter(None, [a.recipe, a.scale]), *a.overrides])}); "
                          "use `r18lab config show RECIPE ...` for a resolved config")
    from .config_keys import config_keys, keys_markdown, keys_text
    keys = config_keys()
    if a.json:
        _print_json([k.as_dict() for k in keys])
    else:
        print(keys_markdown(keys) if a.markdown else keys_text(keys))
    return 0


# -- models --------------------------------------------------------------------------------------
@command("models")
def cmd_models(a: argparse.Namespace) -> int:
    from .analysis.cost import count_flops, count_params, head_params
    from .config import build_config, parse_overrides
    from .train.engine import build_from_spec, model_spec

    if a.action == "tables":
        return _models_tables(a)
    tree = parse_overrides(a.overrides)
    num_classes = tree.pop("num_classes", 10)
    image_size = tree.pop("image_size", None)
    in_channels = tree.get("in_channels", 3)
    from .config import ModelConfig
    known = set(ModelConfig.model_fields)
    model_tree = {"name": a.name, **{k: v for k, v in tree.items() if k in known}}
    model_tree["options"] = {**model_tree.get("options", {}), **{k: v for k, v in tree.items() if k not in known}}
    cfg = build_config({"model": model_tree})
    model = build_from_spec(model_spec(cfg, int(num_classes)))
    size = image_size or (32 if cfg.model.stem == "cifar" else 224)
    info = {"name": a.name, "params": count_params(model), "flops": count_flops(model, (in_channels, size, size)),
            "head_params": head_params(model), "transforms": getattr(model, "transforms", []),
            "image_size": size, "num_classes": int(num_classes),
            "flops_convention": "multiply-accumulates of conv and linear layers"}
    from .reference.p003_costs import paper_comparison, paper_key
    key = paper_key(a.name, info["transforms"], num_classes=int(num_classes), width=cfg.model.width,
                    stem=cfg.model.stem, image_size=size, heads=list(cfg.model.heads))
    if key:
        info["paper"] = paper_comparison(key, info["params"], info["flops"])
    if a.json:
        _print_json(info)
    else:
        for k, v in info.items():
            print(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}")
    return 0


#: published cost tables `r18lab models tables NAME` reproduces: name → rows of ours beside the paper's
PAPER_COST_TABLES = {"paper003": "r18lab.reference.p003_costs"}


def _models_tables(a: argparse.Namespace) -> int:
    """Every model of a paper's cost tables counted exactly, beside the printed values (markdown, --json, --csv)."""
    import importlib

    from .results.tables import to_csv, to_markdown

    if a.name not in PAPER_COST_TABLES:
        raise ConfigError(f"no published cost tables named {a.name!r}; choose one of: {', '.join(PAPER_COST_TABLES)}")
    if a.overrides:
        raise ConfigError(f"models tables takes no overrides, got {' '.join(a.overrides)}")
    rows = importlib.import_module(PAPER_COST_TABLES[a.name]).reproduce_tables()
    if a.csv:
        print(f"csv: {to_csv(rows, a.csv)}")
    if a.json:
        _print_json(rows)
    else:
        print(to_markdown(rows, floatfmt=".0f"))
        print(f"{sum(r['params_match'] and r['flops_match'] for r in rows)} of {len(rows)} models match the paper's "
              "printed parameters and FLOPs (multiply-accumulates of conv and linear layers)")
    return 0


# -- analysis, protocols, reports, bench -------------------------------------------------------
@command("analyze")
def cmd_analyze(a: argparse.Namespace) -> int:
    from .analysis.commands import run_analysis
    return run_analysis(a)


@command("protocol")
def cmd_protocol(a: argparse.Namespace) -> int:
    from .protocols.commands import run_protocol  # --workers < 1: one-line error, exit 2; Ctrl-C: exit 130
    return run_protocol(a)


@command("report")
def cmd_report(a: argparse.Namespace) -> int:
    from .results.report import report
    print(report(Path(a.run_dir), Path(a.out) if a.out else None))
    return 0


@command("bench")
def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import run_bench
    return run_bench(a)


@command("probe")
def cmd_probe(a: argparse.Namespace) -> int:
    from .analysis.probe_command import run_probe  # unknown option, class or missing checkpoint: one line, exit 2
    return run_probe(a)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ...; see r18lab CMD --help`, exit 2) instead of usage + error."""

    def error(self, message: str):
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (argparse turns the ValueError into one usage line, exit 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="r18lab", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one configuration",
                       description="Train one configuration. Across N processes (DDP, train.batch_size = the global "
                                   "batch): torchrun --nproc_per_node=N -m r18lab train ...")
    t.add_argument("config", nargs="?", help="YAML config (default: the embedded default, digits)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 model.heads=[main,fr]")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same config)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--scale", help="apply the config's named scale (tiny, small, paper)")
    t.add_argument("--store", help="results store (default $R18LAB_STORE or runs/index.sqlite)")
    t.add_argument("--nproc", type=_positive_int, help="train across N local processes (DDP; as `torchrun "
                   "--standalone --nproc_per_node=N -m r18lab train ...`); train.batch_size is the global batch")

    e = sub.add_parser("eval", help="evaluate saved weights on a dataset")
    e.add_argument("weights")
    e.add_argument("data")
    e.add_argument("options", nargs="*", help="source options, e.g. image_size=32 (as data.options in training)")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=_positive_int, default=512)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.add_argument("--normalize", choices=["stored", "dataset"], default="stored",
                   help="stored: the weights' own preprocessing (default); dataset: recompute mean/std from the "
                        "data's train split (only for files written before preprocessing was stored)")
    e.add_argument("--heads", help="evaluate only these sub-heads of one head, their logits combined as the head's "
                                   "combine option says (e.g. ga.0,ga.3), or one drawn at random: ga:random")
    e.add_argument("--seed", type=int, default=0, help="seed of the --heads HEAD:random draw (default 0)")
    e.add_argument("--plot", metavar="PNG", help="write the (first) head's confusion matrix to this PNG (with "
                                                 "--corruptions: accuracy vs severity per corruption)")
    e.add_argument("--corruptions", metavar="all|NAME,NAME", help="CIFAR-10-C corruptions generated on the fly "
                   "(paper 000 appendix C): all (every one that can be generated) or a list; --seed seeds them")
    e.add_argument("--severities", default="1,2,3,4,5", help="with --corruptions: severities (default 1,2,3,4,5)")
    e.add_argument("--compare", metavar="CKPT2", help="with --corruptions: a second checkpoint on the same corrupted "
                   "images; paired difference (last head of each) with a bootstrap 95%% CI")

    pd = sub.add_parser("predict", help="per-sample logits of every head, features (and stage maps) as .npz")
    pd.add_argument("weights", help="model.safetensors (its stored preprocessing is used)")
    pd.add_argument("data", help="a path or built-in name")
    pd.add_argument("overrides", nargs="*", metavar="option", help="source options, e.g. image_size=32")
    pd.add_argument("--split", default="test")
    pd.add_argument("--indices", help="only these rows: JSON list, save_split JSON, .npy, or one integer per line")
    pd.add_argument("--stages", action="store_true", help="also store the per-stage feature maps")
    pd.add_argument("--batch-size", type=int, default=512)
    pd.add_argument("--device", default="auto")
    pd.add_argument("--out", required=True, help="output .npz")
    pd.add_argument("--overwrite", action="store_true", help="replace an existing --out")

    x = sub.add_parser("export", help="write the model with only the kept heads")
    x.add_argument("weights")
    x.add_argument("--keep", default="main", help="comma-separated heads to keep (default main); none: the backbone "
                                                  "alone, loadable into a plain model without fc (strict=False)")
    x.add_argument("--out", required=True)
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    d = sub.add_parser("data", help="prepare (decode into the cache), inspect, or download (cifar10|cifar100) a "
                                    "dataset; cache list|clear [SOURCE]: the decode cache",
                       description="inspect|prepare SOURCE [data.key=value ...]: the same data.* keys as train "
                                   "(e.g. data.image_size=32 data.resize=shorter_side data.exclude_classes=[x]); "
                                   "cache list: where the cache is, each entry's source and size; cache clear "
                                   "[SOURCE] --yes: delete the entries (of SOURCE: a path or entry name)")
    d.add_argument("action", choices=["prepare", "inspect", "download", "cache"])
    d.add_argument("source", help="a path or built-in name; for download: cifar10 or cifar100; for cache: list or "
                                  "clear")
    d.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data.* keys as in train (inspect, prepare); cache clear: the SOURCE whose entries to delete")
    d.add_argument("--root", default="data", help="download folder (default ./data)")
    d.add_argument("--split", help="inspect: the split to describe (default data.train_split)")
    d.add_argument("--yes", action="store_true", help="cache clear: delete (without it, only show what would go)")
    d.add_argument("--all", action="store_true", help="cache clear: also other caches kept there (probe features)")
    d.add_argument("--json", action="store_true", help="cache list: print JSON")

    r = sub.add_parser("runs", help="list or show runs in the results store, or collect result records into it",
                       description="list: status, short id, dataset, model, heads and main-head accuracy of every "
                                   "run, newest first. show ID: one run by its id, a unique prefix of its short id, "
                                   "or its run folder (the --out of train; read from the folder if the store lacks it). "
                                   "collect DIR...: merge the result.json records under the folders into the store "
                                   "(idempotent; a record of another format merges nothing, exit 2)")
    r.add_argument("action", choices=["list", "show", "collect"])
    r.add_argument("run_id", nargs="*", help="show: a run id, a short-id prefix, or a run folder; collect: folders")
    r.add_argument("--status", help="list: only runs with this status (running, done, failed, diverged, interrupted)")
    r.add_argument("--protocol", help="list: only runs of this protocol")
    r.add_argument("--limit", type=_positive_int, help="list: at most N runs (the newest)")
    r.add_argument("--store", help="results store (default $R18LAB_STORE or runs/index.sqlite)")
    r.add_argument("--json", action="store_true", help="print JSON records (stable keys) instead of text")

    cf = sub.add_parser("config", help="every config key (--keys), or a recipe's resolved config (show)",
                        description="--keys: every config key with type, default and description, generated from "
                                    "the typed config (--markdown: a table for the README; --json). show [RECIPE] "
                                    "[--scale S] [key=value ...]: the resolved, validated config as YAML (as train "
                                    "would run it)")
    cf.add_argument("action", nargs="?", choices=["show", "keys"], help="show: a resolved config; keys: as --keys")
    cf.add_argument("recipe", nargs="?", help="show: a YAML recipe (or the first key=value override)")
    cf.add_argument("overrides", nargs="*", help="show: key=value overrides, e.g. train.epochs=5")
    cf.add_argument("--keys", action="store_true", help="print every config key")
    cf.add_argument("--markdown", action="store_true", help="--keys as a markdown table")
    cf.add_argument("--json", action="store_true", help="JSON instead of text or YAML")
    cf.add_argument("--scale", help="show: apply the recipe's named scale (tiny, paper)")

    m = sub.add_parser("models", help="parameters and FLOPs of a configured model")
    m.add_argument("action", choices=["info", "tables"], help="info NAME: one model; tables paper003: a paper's "
                   "cost tables reproduced")
    m.add_argument("name")
    m.add_argument("overrides", nargs="*", help="num_classes=10 stem=imagenet heads=[main,fr] fr_dim=64 ...")
    m.add_argument("--json", action="store_true")
    m.add_argument("--csv", help="tables: also write them as CSV")

    from .analysis.commands import ANALYSES  # the registered analyses are the choices
    an = sub.add_parser("analyze", help="analyses of trained weights",
                        description="spectrum PATH...: per-layer heavy-tail table. embedding CKPT... --data SOURCE "
                                    "[key=value ...]: t-SNE panel + silhouette/scatter ratio of chosen classes "
                                    "(DATA may also be the last positional). ensemble CKPT... --data SOURCE "
                                    "[key=value ...]: strength, correlation and bound of one checkpoint's sub-heads "
                                    "(ga.0 ... ga.4) or of several checkpoints' --head logits (paper 004). "
                                    "masks PATH...: per-layer topology of pruning masks (run folders or "
                                    "masks.safetensors) and the full-spectrum distance D (spec 002a). "
                                    "ntk CKPT --data SOURCE [key=value ...] [--n-train N] [--n-test M] [--k K] "
                                    "[--out DIR] [--against CKPT2] [--head main] [--route auto|dense|matvec] "
                                    "[--batch B] [--seed S] [--task classes|cifar2]: empirical NTK of a one-logit "
                                    "model on N train + M test images — eigen.npz (for data.task eigenfunction), "
                                    "spectrum, alignment, energy concentration; --against: kernel distance and "
                                    "alignment profile (spec 002d). similarity STUDENT... --teacher T --data SOURCE "
                                    "[--baseline S] [--measures ...]: what students inherit from a teacher, with "
                                    "intervals and paired differences (spec 002c)")
    an.add_argument("analysis", choices=list(ANALYSES))
    an.add_argument("paths", nargs="+", metavar="path",
                    help="model.safetensors (several: one table each, one plot); embedding, ensemble: "
                         "checkpoints, then source options key=value (e.g. image_size=32); masks: run folders "
                         "or masks.safetensors files; ntk: one checkpoint, then source options key=value")
    an.set_defaults(overrides=[])  # embedding's source options given after other options land here
    an.add_argument("--xmin", default="median", choices=["median", "ks"])
    an.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    an.add_argument("--csv", help="write the table as CSV (masks: the rows of every path, with a path column)")
    an.add_argument("--plot", help="PNG: spectrum, alpha by depth; embedding, the 1×N t-SNE panel; ensemble, "
                                   "correlation vs strength, one point per label; masks, density, Δr and λ per "
                                   "layer, one line per path")
    an.add_argument("--esd-layer", help="spectrum: layer whose ESD to plot (with --esd-plot)")
    an.add_argument("--esd-plot")
    an.add_argument("--data", metavar="SOURCE", help="embedding: images to embed, a path or built-in name "
                                                     "(as for eval/predict; default: the last positional); "
                                                     "ensemble: images to predict (required); ntk: the images "
                                                     "of the kernel (train and test splits; required)")
    an.add_argument("--split", help="embedding, ensemble: split of --data (default test)")
    an.add_argument("--classes", help="embedding: worst:K (lowest per-class accuracy of --ref), all, or indices "
                                      "like 0,3,5 (default worst:3)")
    an.add_argument("--ref", metavar="CKPT", help="embedding: checkpoint whose per-class accuracy picks worst:K "
                                                  "(default: the first checkpoint)")
    an.add_argument("--max-per-class", type=_positive_int, help="embedding: at most N images per class "
                                                                "(seeded draw; default all)")
    an.add_argument("--perplexity", type=float, help="embedding: t-SNE perplexity (default 30)")
    an.add_argument("--seed", type=int, help="embedding: t-SNE and subsampling seed (default 0); ntk: seed of the "
                                             "class-balanced subset (test points: seed + 999) and of Lanczos' start "
                                             "vector (default 0)")
    an.add_argument("--head", help="embedding: logits head for accuracy and --features logits (default main); "
                                   "ensemble: the head whose sub-heads are the members (default: every head with "
                                   "several), or with --members checkpoints each checkpoint's head (default main); "
                                   "ntk: the one-logit head f(x) (default main)")
    an.add_argument("--features", choices=["pooled", "logits"], help="embedding: pooled penultimate features "
                                                                     "(default) or the --head logits")
    an.add_argument("--labels", help="embedding: comma-separated panel names, one per checkpoint "
                                     "(default: run directory names); ensemble: one name per checkpoint, repeated "
                                     "names form one group (one plot point; with --members checkpoints one ensemble)")
    an.add_argument("--members", choices=["heads", "checkpoints"],
                    help="ensemble: heads = each checkpoint's sub-heads (default when every checkpoint has a head "
                         "with several), checkpoints = the checkpoints' --head logits")
    an.add_argument("--weighting", choices=["paper", "breiman"],
                    help="ensemble: plain mean of pairwise correlations (paper, default) or Breiman's sd-weighted")
    an.add_argument("--batch-size", "--batch", type=_positive_int,
                    help="embedding, ensemble: prediction batch size (default 512); ntk: points per Jacobian chunk "
                         "(default 32) and per vjp/jvp chunk of the matvec route (default 128)")
    an.add_argument("--device", help="embedding, ensemble, ntk: auto (default), cpu, cuda, ...")
    an.add_argument("--at", choices=["prune", "final"],
                    help="masks: weights for λ — prune = the weights scored at pruning time ⊙ mask (default), "
                         "final = the run's trained model.safetensors ⊙ mask")
    an.add_argument("--reference", choices=["origin", "dense_init", "mask_at_init"],
                    help="masks: reference point of the distance D — origin (default; the only concrete reading, "
                         "flagged), dense_init = the dense mask on θ0, mask_at_init = the same mask on θ0")
    an.add_argument("--n-train", type=_positive_int, help="ntk: train images, a class-balanced seeded subset "
                                                          "(default 1000)")
    an.add_argument("--n-test", type=int, help="ntk: test images after them, class-balanced (default 500; 0: none)")
    an.add_argument("--k", type=_positive_int, help="ntk: eigenpairs kept (default 100, at most n; the matvec "
                                                    "route computes only these)")
    an.add_argument("--out", metavar="DIR", help="ntk: output folder (default <checkpoint folder>/ntk); files in "
                                                 "it are replaced")
    an.add_argument("--against", metavar="CKPT2", help="ntk: a second checkpoint of the same architecture (e.g. "
                                                       "θ_end against θ0): kernel distance and alignment profile")
    an.add_argument("--route", choices=["auto", "dense", "matvec"],
                    help="ntk: auto (default: dense when K and a block of J rows fit in free memory), dense (K = J "
                         "Jᵀ, all eigenpairs), matvec (K v = J(Jᵀ v), top-k by Lanczos; no K)")
    an.add_argument("--teacher", metavar="CKPT", help="similarity: the teacher every student is compared with")
    an.add_argument("--baseline", metavar="CKPT", help="similarity: the independent student (one of the positionals) "
                                                       "the others' paired differences are taken against")
    an.add_argument("--baseline2", metavar="CKPT", help="similarity: a second independent student (cam's "
                                                        "Ind-vs-Ind sanity row, ≈ 50 %%)")
    an.add_argument("--foreign", metavar="CKPT", help="similarity: an unrelated network for adv:foreign (the attack "
                                                      "transferred from it instead of the teacher)")
    an.add_argument("--measures", help="similarity: comma-separated, from agreement, cka, cam, adv, adv:foreign, "
                                       "invariance:color|crop|shift[@strength] (e.g. invariance:color@0.3: one point of a "
                                       "strength curve; hue stays at 0.2), consensus:<domain>, boundary (default: all but "
                                       "adv:foreign, consensus on grayscale)")
    an.add_argument("--taps", help="similarity: comma-separated layers for cka (default relu,layer1,...,layer4,"
                                   "features,logits)")
    an.add_argument("--n", type=_positive_int, help="similarity: images, a class-balanced seeded subset (default 2000)")
    an.add_argument("--task", choices=["classes", "cifar2"], help="ntk: the labels — the data's classes (default; "
                                                                  "must be two) or CIFAR2 (classes 0–4 → 1)")

    from .protocols import EXECUTORS, PROTOCOLS  # the registered protocols and executors are the choices
    pr = sub.add_parser("protocol", help="run a multi-run protocol")
    pr.add_argument("name", choices=PROTOCOLS.names(), help="; ".join(
        f"{n}: {(PROTOCOLS.get(n).__doc__ or '').strip().splitlines()[0]}" for n in PROTOCOLS.names()))
    pr.add_argument("config")
    pr.add_argument("overrides", nargs="*")
    pr.add_argument("--scale")
    pr.add_argument("--out", help="protocol directory (default runs/<name>-<config>[-<scale>])")
    pr.add_argument("--workers", type=int, default=1, help="runs at once (local: 1 = in this process; ray: tasks in "
                                                          "flight; slurm: the job array's concurrency cap)")
    pr.add_argument("--executor", choices=EXECUTORS.names(), help="where the runs execute (default: the recipe key "
                                                                  "executor, else local); options: executor.KEY=VALUE")
    pr.add_argument("--gpus-per-run", type=float, help="GPUs per run: 0.25 packs four runs on each GPU (local: by "
                                                       "CUDA_VISIBLE_DEVICES round-robin; ray: num_gpus); slurm: whole GPUs")
    pr.add_argument("--store")

    rp = sub.add_parser("report", help="plots and tables of a run directory or a protocol directory",
                        description="A run directory: learning_curves.png, confusion.png, per_class.csv and the "
                                    "per-class table; alpha/lr_scale/lr_by_epoch.png only for runs that logged them "
                                    "(the tempbalance hook). A protocol directory: the protocol's tables and plots "
                                    "(rebuilt from its protocol.json), else runs_*.csv/png of its finished runs "
                                    "grouped over seeds. Every file written is printed.")
    rp.add_argument("run_dir", help="the --out directory of `r18lab train` or of `r18lab protocol`")
    rp.add_argument("--out", help="run directory: write the files here instead")

    pb = sub.add_parser("probe", help="downstream probes of a checkpoint: linear SVM, few-shot SVM, fine-tuning",
                        description="r18lab probe {linear,fewshot,finetune} CKPT DATA [key=value ...]: a linear SVM "
                                    "on frozen pooled features (C by stratified k-fold CV), the same over few-shot "
                                    "episodes shared by every checkpoint, or whole-network fine-tuning (spec 001 "
                                    "§2.3). Options: classes=[a,b,c] pool=INDEXFILE shots=5 episodes=50 folds=5 "
                                    "c_grid=[...] (finetune: epochs=30 lr=0.01 batch_size=32); other keys are "
                                    "source options, e.g. image_size=32")
    pb.add_argument("kind", choices=["linear", "fewshot", "finetune"])
    pb.add_argument("checkpoint", help="model.safetensors (or foreign torchvision-layout weights with --arch)")
    pb.add_argument("data", help="a path or built-in name")
    pb.add_argument("options", nargs="*", metavar="key=value", help="probe and source options")
    pb.add_argument("--split-train", default="train", help="split the training images come from (default train)")
    pb.add_argument("--split-test", default="test", help="split tested on, all its images of the task (default test)")
    pb.add_argument("--json", action="store_true", help="print JSON instead of the short table")
    pb.add_argument("--out", help="also write the JSON result to this file")
    pb.add_argument("--cache", help="feature cache (and finetune runs) folder (default $R18LAB_CACHE/probe-features)")
    pb.add_argument("--arch", help="foreign weights without r18lab metadata: the backbone name, e.g. resnet50")
    pb.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"], help="with --arch (default imagenet)")
    pb.add_argument("--image-size", type=_positive_int, default=224, help="with --arch: input size (default 224)")
    pb.add_argument("--width", type=float, default=1.0, help="with --arch: width multiplier (default 1)")
    pb.add_argument("--seed", type=int, default=0, help="episodes, CV folds and fine-tuning seed (default 0)")
    pb.add_argument("--device", default="auto")
    pb.set_defaults(overrides=[])

    b = sub.add_parser("bench", help="engine vs bare PyTorch throughput, augmentation, FLOP/s")
    b.add_argument("--steps", type=int, default=4, help="steps per epoch (3 epochs; the first is a warm-up)")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--width", type=float, default=1.0)
    b.add_argument("--device", default="auto")
    b.add_argument("--matmul-sizes", default="1024,2048,3072,4096",
                   help="n of the n×n float32 matmuls timed for the peak (the best counts)")
    return p


def _continue_command(argv: list[str] | None) -> str:
    """The command line that continues an interrupted command: `--resume` added for train, `--overwrite` dropped."""
    import shlex
    args = list(sys.argv[1:] if argv is None else argv)
    if "train" in args[:2]:
        args = [x for x in args if x != "--overwrite"]
        if "--resume" not in args:
            args.insert(args.index("train") + 1, "--resume")
    return shlex.join(["r18lab", *args])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides given after an option (e.g. `--scale tiny train.epochs=3`)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return COMMANDS[args.command](args)
    except R18Error as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"error: interrupted; continue with: {_continue_command(argv)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
