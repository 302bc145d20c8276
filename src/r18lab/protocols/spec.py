"""One run of a protocol (RunSpec) and what its folder holds: this run (by run identity), another, or nothing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import build_config, run_identity
from ..train.rundir import CHECKPOINT_DIR, RUN_FILES

#: files or folders that mean a run was started in a folder (a lone `.lock` does not)
_RUN_FILES = (*RUN_FILES, CHECKPOINT_DIR)

FolderState = Literal["empty", "done", "partial", "foreign"]


@dataclass
class RunSpec:
    """One run of a protocol: its config tree, where it goes, its store id, and what it depends on.
    `identity` is the run identity (result-affecting config, teachers by their identities); `teacher_ids`
    maps each teacher path in the config to the identity of the run that writes it."""

    run_id: str
    config: dict[str, Any]
    out_dir: Path
    tags: dict[str, Any]
    eval_head: str = "main"
    teacher_of: str | None = None  # run_id whose model.safetensors becomes this run's teacher
    depends: list[str] = field(default_factory=list)
    identity: str = ""  # computed from `config` (and teacher_ids) when not given
    teacher_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.identity and self.config:
            self.identity = run_identity(build_config(self.config), self.teacher_ids)


def external_weight_ids(config: dict[str, Any], known: dict[str, str] | None = None) -> dict[str, str]:
    """Identities of the weights files a config reads (model.init_from, teachers) that no planned run writes:
    what the engine substitutes for their paths in the run identity (the identity stored in the file, else its
    sha256), so the protocol plans the identity the run will record. Paths in `known` are kept; files that do not
    exist yet are left out (the run's own check names them)."""
    from ..config import teacher_paths
    from ..models.io import teacher_identity
    known = dict(known or {})
    for p in teacher_paths(config):
        if p not in known and Path(p).is_file():
            known[p] = teacher_identity(p)
    return known


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def folder_identity(out_dir: Path, teacher_ids: dict[str, str] | None = None) -> str | None:
    """The run identity of what `out_dir` holds: the one its summary records, else the one of its config.json
    (teacher paths mapped through `teacher_ids`); None when the folder names no readable configuration."""
    summary = _read_json(out_dir / "summary.json")
    if isinstance(summary, dict) and isinstance(summary.get("identity"), str):
        return summary["identity"]
    tree = _read_json(out_dir / "config.json")
    if not isinstance(tree, dict):
        return None
    try:
        return run_identity(build_config(tree), teacher_ids)
    except Exception:  # a config this version cannot read is not this run's
        return "unreadable"


def folder_state(spec: RunSpec) -> FolderState:
    """`done`: the folder holds this run finished; `partial`: this run unfinished (or files without a config,
    left by a run killed at its start); `foreign`: another configuration's run; `empty`: no run files."""
    out = spec.out_dir
    if not any((out / name).exists() for name in _RUN_FILES):
        return "empty"
    ident = folder_identity(out, spec.teacher_ids)
    if ident is None:
        return "partial"
    if ident != spec.identity:
        return "foreign"
    summary = _read_json(out / "summary.json")
    return "done" if isinstance(summary, dict) and summary.get("status") == "done" else "partial"


def read_summary(spec: RunSpec) -> dict[str, Any] | None:
    """The summary in spec.out_dir when the folder holds this run (by identity), else None."""
    if not (spec.out_dir / "summary.json").is_file():
        return None
    if folder_identity(spec.out_dir, spec.teacher_ids) != spec.identity:
        return None
    summary = _read_json(spec.out_dir / "summary.json")
    return summary if isinstance(summary, dict) else None
