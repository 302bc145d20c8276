"""`r18lab protocol NAME CONFIG`: build the protocol, run its waves on an executor, write the report."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ..config import resolve_tree
from ..errors import ConfigError, Interrupted, R18Error
from ..registry import PROTOCOLS
from . import runner
from .executors import EXECUTORS, executor_choice


def continue_command(a: argparse.Namespace) -> str:
    """The command that continues this invocation: this process's own command line when it is `r18lab
    protocol ...`, else one rebuilt from the parsed arguments (main() called from Python)."""
    argv = sys.argv
    if Path(argv[0]).name in ("r18lab", "cli.py", "__main__.py") and "protocol" in argv[1:]:
        return shlex.join(["r18lab", *argv[1:]])
    parts = ["r18lab", "protocol", a.name, a.config, *a.overrides]
    for flag, value, default in (("--scale", a.scale, None), ("--out", a.out, None), ("--workers", a.workers, 1),
                                 ("--executor", getattr(a, "executor", None), None), ("--store", a.store, None),
                                 ("--gpus-per-run", getattr(a, "gpus_per_run", None), None)):
        if value != default:
            parts += [flag, str(value)]
    return shlex.join(parts)


def write_manifest(out: Path, a: argparse.Namespace, tree: dict, title: str) -> Path:
    """protocol.json in the protocol directory: the protocol's name, title and resolved recipe tree, from which
    `r18lab report DIR` rebuilds it (results.report.PROTOCOL_FILE)."""
    import json

    from ..atomic import atomic_write_text
    from ..results.report import PROTOCOL_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(out / PROTOCOL_FILE, json.dumps(
            {"name": a.name, "title": title, "config": str(a.config), "scale": a.scale,
             "overrides": list(a.overrides), "tree": tree}, indent=2, default=str))
    except OSError as e:
        raise R18Error(f"cannot write the protocol directory {out} ({e.strerror}); pass --out with a directory "
                       "you can write to") from None


def run_protocol(a: argparse.Namespace) -> int:
    from ..train.run import default_store_path

    if isinstance(a.workers, bool) or not isinstance(a.workers, int) or a.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {a.workers}")
    factory = PROTOCOLS.get(a.name)
    out = Path(a.out) if a.out else Path("runs") / (f"{a.name}-{Path(a.config).stem}" + (f"-{a.scale}" if a.scale else ""))
    tree = resolve_tree(a.config, a.overrides, a.scale)
    # where the runs execute is no part of them: the recipe key `executor:` leaves the tree here
    executor_name, executor_options = executor_choice(getattr(a, "executor", None), tree.pop("executor", None),
                                                      getattr(a, "gpus_per_run", None))
    executor_factory = EXECUTORS.get(executor_name)
    protocol = factory(a.name, tree, out)
    store = str(a.store or default_store_path())
    title = f"{a.name} protocol: {Path(a.config).stem}" + (f" ({a.scale})" if a.scale else "")
    executor = executor_factory(a.workers, store, runner._run_one, executor_options, out)  # bad options: no files yet
    tic = time.perf_counter()
    try:
        with executor:
            write_manifest(out, a, tree, title)
            ctx = runner.run(protocol, executor, store, log=lambda s: print(s, file=sys.stderr, flush=True))
        print(protocol.report(ctx, title))
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(f"interrupted; continue with: {continue_command(a)}") from None
    print(f"wall time {time.perf_counter() - tic:.0f} s; protocol directory: {out}")
    for run_id, err in ctx.failures.items():
        print(f"error: run {run_id} failed: {err}", file=sys.stderr)
    return 1 if ctx.failures else 0
