"""Result records: what a worker leaves beside a run's outputs (`<out_dir>/result.json`) instead of writing the
SQLite store, and how the one writer (the protocol driver, or `r18lab runs collect`) merges them into it.

A record is written atomically (temp file, fsync, rename), so a reader sees the old record or the new one.
Merging is idempotent and keyed by run id: a run finished twice (a requeue) stays one row, a `done` row is never
downgraded by a `running`/`failed` record of the same run, and collecting the same records again changes nothing.
All records of a batch are read and validated before any is merged: a bad one leaves the store as it was.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import atomic_write_text
from ..errors import ConfigError, DataError, R18Error
from .jsonutil import canonical, to_jsonable
from .store import RunStore

#: the file name of a run's result record, in its folder
RECORD_FILE = "result.json"
#: bumped when a record's fields change meaning; records of another format are refused, never guessed at
RECORD_FORMAT = 1
#: what `collect` counts: rows added, rows replaced, records already in the store, records older than the row
OUTCOMES = ("new", "updated", "unchanged", "older")


class ResultRecord(BaseModel):
    """One run as its worker last recorded it. `metrics`: the final evaluation (empty unless done)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record_format: int = RECORD_FORMAT
    run_id: str = Field(min_length=1)
    identity: str = Field(min_length=1)
    protocol: str | None = None
    status: Literal["running", "done", "failed", "diverged"]
    message: str = ""
    config: dict[str, Any]
    tags: dict[str, Any] | list[str] = Field(default_factory=dict)
    out_dir: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    train_seconds: float | None = None
    steps: int | None = None
    started_at: float
    finished_at: float | None = None
    host: str | None = None
    pid: int | None = None

    def store_row(self) -> dict[str, Any]:
        """The store row this record stands for (metrics as `RunStore.finish` records them; None while running)."""
        if self.status == "done":
            metrics: dict[str, Any] | None = {**self.metrics, "train_seconds": self.train_seconds,
                                              "steps": self.steps, "identity": self.identity}
        else:
            metrics = None if self.status == "running" else {"identity": self.identity}
        return {"run_id": self.run_id, "identity": self.identity, "config": self.config, "protocol": self.protocol,
                "tags": self.tags, "out_dir": self.out_dir, "status": self.status, "started_at": self.started_at,
                "finished_at": self.finished_at, "metrics": metrics, "message": self.message, "host": self.host,
                "pid": self.pid}


# -- files -----------------------------------------------------------------------------------------------------
def write_record(record: ResultRecord, path: str | os.PathLike[str] | None = None) -> Path:
    """Write `record` atomically to `path` (default `<out_dir>/result.json`); a full disk is one line."""
    target = Path(path) if path is not None else Path(record.out_dir) / RECORD_FILE
    text = json.dumps(record.model_dump(), indent=2, default=to_jsonable)
    try:
        return atomic_write_text(target, text)
    except OSError as e:
        raise DataError(f"cannot write the result record {target} ({e.strerror}); free disk space or make "
                        "the run folder writable (the run's other files are unchanged)") from None


def read_record(path: str | os.PathLike[str]) -> ResultRecord:
    """The record in `path`; a broken file or one of another record format is a one-line ConfigError naming it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read the result record {p} ({e.strerror}); check the file's permissions") from None
    except ValueError as e:
        raise ConfigError(f"{p} is not a result record (broken JSON: {e}); move it away, or run that run again "
                          "to rewrite it") from None
    fmt = data.get("record_format") if isinstance(data, dict) else None
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ConfigError(f"{p} is not a result record (no record_format); move it away, or run that run again "
                          "to rewrite it")
    if fmt != RECORD_FORMAT:
        raise ConfigError(f"{p} was written by record format {fmt}, this r18lab reads {RECORD_FORMAT}; "
                          "collect it with the r18lab that wrote it")
    try:
        return ResultRecord.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "record"
        raise ConfigError(f"{p} is not a valid result record ({field}: {err['msg']}); move it away, or run that "
                          "run again to rewrite it") from None


def find_records(dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every result.json under `dirs` (recursively; a result.json itself may be named), sorted, each once."""
    found: dict[Path, None] = {}
    for d in dirs:
        p = Path(d)
        if p.is_file() and p.name == RECORD_FILE:
            found[p.resolve()] = None
        elif p.is_dir():
            found.update((f.resolve(), None) for f in sorted(p.rglob(RECORD_FILE)) if f.is_file())
        else:
            raise ConfigError(f"{p} is not a folder; give protocol directories (the --out of protocol) or run "
                              "folders holding result.json")
    return list(found)


# -- merging ---------------------------------------------------------------------------------------------------
def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when the stored row already says what the record says (NaN metrics compare equal)."""
    keys = ("status", "started_at", "finished_at", "message", "out_dir", "protocol", "host", "pid")
    return (all(old.get(k) == new.get(k) for k in keys)
            and all(canonical(old.get(k)) == canonical(new.get(k)) for k in ("metrics", "config", "tags")))


def _same_run(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Same run identity (else, for a row that records none, the same config)."""
    ident = (old.get("metrics") or {}).get("identity")
    if ident:
        return ident == new["identity"]
    return canonical(old.get("config")) == canonical(new.get("config"))


def _when(row: Mapping[str, Any]) -> tuple[float, float]:
    return float(row["started_at"]), float(row.get("finished_at") or 0.0)


def decide(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What merging the record row `new` over the stored row `old` does: one of OUTCOMES.

    Same run: a `done` row is kept against any record that is not done, a `done` record replaces any row that
    is not, otherwise the later attempt (start, then finish time) wins. Another run under the same id (another
    identity, e.g. a folder trained again with another config): the later start wins."""
    if old is None:
        return "new"
    if _same(old, new):
        return "unchanged"
    if not _same_run(old, new):
        return "updated" if float(new["started_at"]) > float(old["started_at"]) else "older"
    if (old["status"] == "done") != (new["status"] == "done"):
        return "updated" if new["status"] == "done" else "older"
    return "updated" if _when(new) > _when(old) else "older"


def collect(store: RunStore, records: Sequence[ResultRecord]) -> dict[str, int]:
    """Merge `records` into `store` in one transaction; returns how many were new/updated/unchanged/older."""
    outcomes = store.merge([r.store_row() for r in records], decide)
    return {k: outcomes.count(k) for k in OUTCOMES}


def collect_paths(store: RunStore, paths: Sequence[str | os.PathLike[str]]) -> dict[str, int]:
    """Read and validate every record first, then merge them all; one bad file merges nothing (one line)."""
    return collect(store, read_records(paths))


def read_records(paths: Sequence[str | os.PathLike[str]]) -> list[ResultRecord]:
    """Every record in `paths`; any bad file is one ConfigError naming it (and how many more are bad)."""
    records, errors = [], []
    for p in paths:
        try:
            records.append(read_record(p))
        except R18Error as e:
            errors.append(str(e))
    if errors:
        more = f" (and {len(errors) - 1} more bad record(s); nothing of this batch was merged)" if len(errors) > 1 \
            else " (nothing of this batch was merged)"
        raise ConfigError(errors[0] + more)
    return records


def counts_line(counts: Mapping[str, int], n_files: int, store_path: str | os.PathLike[str]) -> str:
    """`runs collect`'s one line."""
    return (f"collected {n_files} result record(s) into {store_path}: {counts['new']} new, {counts['updated']} "
            f"updated, {counts['unchanged']} unchanged, {counts['older']} skipped as older")


# -- the worker's side -----------------------------------------------------------------------------------------
class RecordSink:
    """Records a run where a worker trains it: `<out_dir>/result.json`, with RunStore's start/finish interface,
    so `train.run.execute(..., store=RecordSink(identity))` never opens the SQLite store."""

    def __init__(self, identity: str = "") -> None:
        self.identity = identity
        self.record: ResultRecord | None = None

    def start(self, run_id: str, *, config: Mapping[str, Any], out_dir: str | os.PathLike[str],
              protocol: str | None = None, tags: Sequence[str] | Mapping[str, Any] | None = None) -> None:
        identity = self.identity
        if not identity:
            from ..config import run_identity
            identity = run_identity(dict(config))
        self.record = ResultRecord(
            run_id=run_id, identity=identity, protocol=protocol, status="running", config=dict(config),
            tags=(dict(tags) if isinstance(tags, Mapping) else list(tags or [])), out_dir=os.fspath(out_dir),
            started_at=time.time(), host=socket.gethostname(), pid=os.getpid())
        write_record(self.record)

    def finish(self, run_id: str, metrics: Mapping[str, Any], status: str = "done", message: str = "") -> None:
        if self.record is None or self.record.run_id != run_id:
            raise DataError(f"run {run_id!r} was not started with this record sink; call start() before finish()")
        final = dict(metrics)
        train_seconds, steps = final.pop("train_seconds", None), final.pop("steps", None)
        identity = final.pop("identity", None) or self.record.identity
        try:  # validated again: a bad status or metric is refused before anything is written
            self.record = ResultRecord(**{**self.record.model_dump(), **dict(
                status=status, message=message, metrics=final, train_seconds=train_seconds, steps=steps,
                identity=identity, finished_at=time.time())})
        except ValidationError as e:
            raise ConfigError(f"cannot record run {run_id!r} as {status!r}: {e.errors()[0]['msg']}; use one of "
                              "done, failed, diverged") from None
        write_record(self.record)


def summary_record(run_id: str, identity: str, summary: Mapping[str, Any], *, config: Mapping[str, Any],
                   out_dir: str | os.PathLike[str], protocol: str | None,
                   tags: Sequence[str] | Mapping[str, Any] | None) -> ResultRecord:
    """A `done` record for a finished folder that has none (run by an older r18lab, or killed between its
    summary and its record): finished when summary.json was written, started train_seconds before."""
    summary_path = Path(out_dir) / "summary.json"
    finished = summary_path.stat().st_mtime if summary_path.is_file() else time.time()
    seconds = summary.get("train_seconds")
    return ResultRecord(
        run_id=run_id, identity=summary.get("identity") or identity, protocol=protocol, status="done",
        config=dict(config), tags=(dict(tags) if isinstance(tags, Mapping) else list(tags or [])),
        out_dir=os.fspath(out_dir), metrics=dict(summary.get("final") or {}), train_seconds=seconds,
        steps=summary.get("steps"), started_at=finished - float(seconds or 0.0), finished_at=finished)
