"""What `r18lab runs list` and `runs show` print: one record per run, from the results store or a run folder.

A record has stable keys (`RECORD_KEYS`; `runs show` adds `SHOW_KEYS`). `id` is the short id (`short_id`): 8 hex
digits of sha256(run_id); any unique prefix of it names the run. `accuracy` is the main head's final evaluation
accuracy (%): `eval/main/acc`, else the first configured head's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError, R18Error
from .results.store import RunStore, short_id

RECORD_KEYS = ("id", "run_id", "status", "dataset", "model", "width", "heads", "peers", "accuracy", "accuracies",
               "protocol", "out_dir", "identity", "created_at", "finished_at", "wall_seconds", "source", "metrics")
SHOW_KEYS = ("message", "tags", "host", "config", "summary")


def head_names(config: dict[str, Any]) -> list[str]:
    """The configured heads' names (an entry is a name or a mapping with `name`)."""
    entries = (config.get("model") or {}).get("heads") or ["main"]
    return [e if isinstance(e, str) else str(e.get("name")) if isinstance(e, dict) else str(e) for e in entries]


def accuracies(metrics: dict[str, Any] | None) -> dict[str, float]:
    """{head: final eval accuracy %} from `eval/<head>/acc` metrics (sub-heads and peers included)."""
    return {k[len("eval/"):-len("/acc")]: v for k, v in (metrics or {}).items()
            if k.startswith("eval/") and k.endswith("/acc") and isinstance(v, (int, float))}


def main_accuracy(metrics: dict[str, Any] | None, heads: list[str]) -> float | None:
    """The main head's final eval accuracy, else the first configured head's; None before the run finished."""
    accs = accuracies(metrics)
    for head in ("main", *heads):
        if head in accs:
            return float(accs[head])
    return None


def record(row: dict[str, Any], folder: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a store row (`RunStore.get`/`list`), completed by what its folder holds (`read_folder`)."""
    config = row.get("config") or (folder or {}).get("config") or {}
    summary = (folder or {}).get("summary") or {}
    metrics = row.get("metrics") or summary.get("final") or None
    model, heads = config.get("model") or {}, head_names(config)
    return {
        "id": short_id(row["run_id"]),
        "run_id": row["run_id"],
        "status": row.get("status"),
        "dataset": (config.get("data") or {}).get("source"),
        "model": model.get("name", "resnet18"),
        "width": model.get("width", 1.0),
        "heads": heads,
        "peers": model.get("peers", 1),
        "accuracy": main_accuracy(metrics, heads),
        "accuracies": accuracies(metrics),
        "protocol": row.get("protocol"),
        "out_dir": str(row.get("out_dir")) if row.get("out_dir") is not None else None,
        "identity": (metrics or {}).get("identity") or summary.get("identity"),
        "created_at": row.get("created_at"),
        "finished_at": row.get("finished_at"),
        "wall_seconds": row.get("wall_seconds", summary.get("train_seconds")),
        "source": "store" if "created_at" in row else "folder",
        "metrics": metrics,
    }


def detail(row: dict[str, Any], folder: dict[str, Any] | None = None) -> dict[str, Any]:
    """`record` plus the message, tags, host, full config and the folder's summary.json (None if unread)."""
    folder = folder or {}
    out = record(row, folder)
    out.update(message=row.get("message", ""), tags=row.get("tags"), host=row.get("host"),
               config=row.get("config") or folder.get("config"), summary=folder.get("summary"))
    return out


# -- run folders -----------------------------------------------------------------------------------------------
def run_folder(path: str | os.PathLike[str]) -> Path | None:
    """The run folder `path` names (a folder, or a file in it such as model.safetensors), or None if it is none."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if p.is_dir() and any((p / name).is_file() for name in ("config.json", "summary.json")):
        return p
    return None


def read_folder(folder: Path) -> dict[str, Any]:
    """{config, summary, status} of a run folder; unreadable files count as absent."""
    from .train.rundir import LOCK_FILE, inspect

    def read(name: str) -> Any:
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    config, summary = read("config.json"), read("summary.json")
    status = (summary or {}).get("status")
    if status is None:
        if _locked(folder / LOCK_FILE):
            status = "running"
        else:
            try:
                status = "interrupted" if inspect(folder).holds_results else "not started"
            except R18Error:
                status = "interrupted"
    return {"config": config, "summary": summary, "status": status}


def _locked(path: Path) -> bool:
    """True while a trainer holds the folder's lock (`RunLock`); a missing lock file or no fcntl: False."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def folder_row(folder: Path, info: dict[str, Any]) -> dict[str, Any]:
    """A store-like row for a run folder the store does not know (its id: the resolved folder path)."""
    summary = info.get("summary") or {}
    return {"run_id": str(folder.resolve()), "status": info["status"], "config": info.get("config") or {},
            "metrics": summary.get("final"), "out_dir": str(folder), "message": summary.get("message", "")}


def find(store: RunStore, query: str) -> dict[str, Any]:
    """`runs show QUERY`: a run id, a unique short-id prefix, or a run folder (also one the store does not know)."""
    row = store.get(query)
    folder = run_folder(query) if row is None else None
    if row is None and folder is not None:
        row = store.find_folder(folder)
        info = read_folder(folder)
        return detail(row, info) if row is not None else detail(folder_row(folder, info), info)
    if row is None:
        row = store.find(query)
    if row is None:
        hint = (f"{query} is a folder without config.json or summary.json" if Path(query).is_dir()
                else f"no run {query!r} in {store.path}")
        raise ConfigError(f"{hint}; give a run id or short id from `r18lab runs list`, or a run folder "
                          "(the --out of train)")
    out = Path(row["out_dir"])
    info = read_folder(out) if out.is_dir() else None
    return detail(row, info)


# -- text ------------------------------------------------------------------------------------------------------
def _dataset(source: Any) -> str:
    text = str(source) if source is not None else "?"
    return Path(text).name if "/" in text or os.sep in text else text


def _model(r: dict[str, Any]) -> str:
    width = r.get("width")
    return r["model"] + (f" ×{width:g}" if isinstance(width, (int, float)) and width != 1 else "")


def _heads(r: dict[str, Any]) -> str:
    peers = r.get("peers") or 1
    return ",".join(r["heads"]) + (f" ×{peers} peers" if peers > 1 else "")


def list_table(records: list[dict[str, Any]]) -> str:
    """One aligned line per run: status, id, dataset, model, heads, main accuracy, then the run id."""
    rows = [("status", "id", "dataset", "model", "heads", "acc %", "run")]
    for r in records:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f}"
        rows.append((r["status"] or "?", r["id"], _dataset(r["dataset"])[:32], _model(r), _heads(r), acc, r["run_id"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    right = {5}  # accuracy: right-aligned
    lines = ["  ".join([*(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))),
                        row[-1]]) for row in rows]
    return "\n".join(lines)


def show_text(r: dict[str, Any]) -> str:
    """`runs show` without --json: the record as `key: value` lines (the full config: --json)."""
    accs = ", ".join(f"{h} {a:.2f}%" for h, a in r["accuracies"].items()) or "none yet"
    wall = r.get("wall_seconds")
    lines = [f"id: {r['id']}", f"run_id: {r['run_id']}", f"status: {r['status']}", f"dataset: {r['dataset']}",
             f"model: {_model(r)}", f"heads: {_heads(r)}", f"accuracy: {accs}",
             f"out_dir: {r['out_dir']}", f"protocol: {r['protocol'] or '-'}", f"identity: {r['identity'] or '-'}",
             f"wall time: {'-' if wall is None else f'{wall:.1f} s'}",
             f"recorded in: {'the results store' if r['source'] == 'store' else 'the run folder only'}"]
    if r.get("message"):
        lines.append(f"message: {r['message']}")
    lines.append("config and all metrics: add --json")
    return "\n".join(lines)
