"""The run directory's guard: what a folder already holds, whether a command may write there, and one lock per
folder so two processes never train into it at once. Every check runs before anything is written."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import result_config
from ..errors import ConfigError, R18Error

#: files a run writes into its folder (removed by an explicit overwrite, nothing else is touched)
RUN_FILES = ("config.json", "splits.json", "metrics.jsonl", "summary.json", "model.safetensors",
             "masks.safetensors",  # written by the prune hook
             "result.json")  # a protocol run's result record (results.records)
CHECKPOINT_DIR = "checkpoint"
LOCK_FILE = ".lock"


@dataclass
class RunState:
    """What a run folder holds: its stored config (None if none), summary status, last committed epoch."""

    config: dict[str, Any] | None
    status: str | None
    epoch: int
    accuracy: float | None = None
    trained: bool = False  # any result written (metrics, summary, weights, a checkpoint)

    @property
    def empty(self) -> bool:
        return self.config is None and self.status is None and self.epoch == 0

    @property
    def holds_results(self) -> bool:
        """False for a folder whose start failed before its first result (only config.json / splits.json)."""
        return self.trained or self.status is not None or self.epoch > 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise R18Error(f"{path} is unreadable or corrupt ({type(e).__name__}); "
                       "repair it, or pass --overwrite to start this run again") from None


def inspect(out: Path) -> RunState:
    """Read a run folder's config.json, summary.json and checkpoint/state.json (all optional)."""
    cfg = _read_json(out / "config.json")
    summary = _read_json(out / "summary.json") or {}
    state = _read_json(out / CHECKPOINT_DIR / "state.json") or {}
    acc = (summary.get("final") or {}).get("eval/main/acc") if isinstance(summary, dict) else None
    trained = any((out / name).exists() for name in ("metrics.jsonl", "summary.json", "model.safetensors"))
    return RunState(cfg if isinstance(cfg, dict) else None, summary.get("status") if isinstance(summary, dict) else None,
                    int(state.get("epoch", 0)) if isinstance(state, dict) else 0, acc, trained)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)) if isinstance(v, dict) else
                   {f"{prefix}.{k}" if prefix else str(k): v})
    return out


def config_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose result-affecting values differ between two config trees, with both values."""
    a, b = _flatten(result_config(stored)), _flatten(result_config(new))
    return [f"{k}: {a.get(k, '(default)')!r} → {b.get(k, '(default)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(default)") != b.get(k, "(default)")]


def check_may_write(out: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> RunState:
    """Refuse, with one line and before writing anything, a command that would destroy or corrupt a run."""
    state = inspect(out)
    if state.empty or overwrite or (not resume and not state.holds_results):
        return state  # a start that failed before any result (e.g. a bad teacher) may simply be tried again
    if resume:
        if state.config is not None:
            diff = config_differences(state.config, config)
            if diff:
                shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
                raise ConfigError(f"--resume with another configuration than {out}'s ({shown}); "
                                  "resume with the stored config, or train into a new --out")
        return state
    if state.status == "done":
        acc = f", main accuracy {state.accuracy:.2f}%" if state.accuracy is not None else ""
        raise R18Error(f"{out} holds a finished run{acc}; choose another --out, "
                       "or pass --overwrite to replace it")
    what = f"an unfinished run (epoch {state.epoch} checkpointed)" if state.epoch else "files of an earlier run"
    raise R18Error(f"{out} holds {what}; continue it with --resume, or pass --overwrite to start again")


def clear(out: Path) -> None:
    """Remove the files a run writes (an explicit overwrite); nothing else in the folder is touched."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def clean_stale(out: Path, committed_tag: str | None) -> None:
    """Remove temporary files of killed atomic writes and checkpoint files newer than the committed one."""
    for folder in (out, out / CHECKPOINT_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
    if (out / CHECKPOINT_DIR).is_dir():
        for f in (out / CHECKPOINT_DIR).glob("epoch*.safetensors"):
            if committed_tag is None or not f.name.startswith(committed_tag + "."):
                f.unlink(missing_ok=True)


class RunLock:
    """An exclusive advisory lock on `out/.lock` (released by the OS when the process dies)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the store's status still guards protocol runs
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise R18Error(f"{self.path.parent} is being trained by {holder}; wait for it to finish "
                           "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
