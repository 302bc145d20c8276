"""SQLite index of runs (WAL mode), safe with several processes writing at once.

Every operation opens its own short-lived connection, so a `RunStore` is cheap, picklable and
safe to share between processes. Writes use `BEGIN IMMEDIATE` (the write lock is taken up
front, so two writers never deadlock upgrading a read lock), SQLite's busy timeout waits for
the lock, and an outer retry loop with backoff covers the SQLITE_BUSY cases the busy handler
does not (e.g. switching to WAL while another process holds the database).
WAL needs a local filesystem: do not put the store on NFS/SMB.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError, DataError, R18Error
from .jsonutil import canonical, dumps

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
FINAL_STATUSES = ("done", "failed", "diverged")
#: the message `finish(..., status="failed")` records for a run stopped by Ctrl-C
INTERRUPTED_MESSAGE = "interrupted"

SHORT_ID_LEN = 8
BUSY_TIMEOUT_MS = 30_000
RETRY_DEADLINE_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    config_hash  TEXT NOT NULL,
    config_json  TEXT NOT NULL,
    protocol     TEXT,
    tags_json    TEXT NOT NULL DEFAULT '[]',
    out_dir      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'diverged')),
    created_at   REAL NOT NULL,
    started_at   REAL NOT NULL,
    finished_at  REAL,
    wall_seconds REAL,
    metrics_json TEXT,
    message      TEXT NOT NULL DEFAULT '',
    host         TEXT,
    pid          INTEGER
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_protocol ON runs(protocol);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
"""

T = TypeVar("T")


def config_hash(config: Mapping[str, Any]) -> str:
    """First 16 hex chars of sha256(canonical JSON of `config`: sorted keys, no whitespace)."""
    try:
        text = canonical(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"config cannot be hashed ({exc}); use only str/int/float/bool/None/list/dict values"
        ) from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def short_id(run_id: str) -> str:
    """The id `runs list` shows: 8 hex digits of sha256(run_id); any unique prefix of it names the run."""
    return hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:SHORT_ID_LEN]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """True for the transient 'database is locked' / 'database is busy' errors."""
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class RunStore:
    """Index of runs in one SQLite file: start/finish runs, look them up, list them newest first."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"run store {self.path} is a folder; pass a file path such as {self.path / 'runs.sqlite'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retry(self._init_db)

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    # -- connection plumbing -------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection with the busy timeout set; closed on exit."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one short `BEGIN IMMEDIATE ... COMMIT` transaction."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying with jittered exponential backoff while the database is locked."""
        deadline = time.monotonic() + RETRY_DEADLINE_S
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.DatabaseError as exc:
                if not (isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)):
                    raise _store_error(self.path, exc) from None
                if time.monotonic() >= deadline:
                    raise R18Error(
                        f"run store {self.path} stayed locked for {RETRY_DEADLINE_S:.0f} s; "
                        "stop the process holding it or use a separate store"
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    def _init_db(self) -> None:
        with self._connect() as conn:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DataError(f"run store {self.path} cannot use WAL mode (got {mode}); put it on a local disk")
            conn.executescript(_SCHEMA)

    # -- writes --------------------------------------------------------------------------

    def start(
        self,
        run_id: str,
        *,
        config: Mapping[str, Any],
        out_dir: str | os.PathLike[str],
        protocol: str | None = None,
        tags: Sequence[str] | Mapping[str, Any] | None = None,
    ) -> None:
        """Insert `run_id` as running, or mark an existing row running again (created_at kept).

        Restarting clears finished_at, wall_seconds, metrics and message of the earlier attempt.
        """
        if not isinstance(run_id, str) or not run_id:
            raise ConfigError(f"run_id must be a non-empty string, got {run_id!r}")
        chash = config_hash(config)
        config_json = canonical(config)
        tags_json = _tags_json(tags)
        now = time.time()
        values = (run_id, chash, config_json, protocol, tags_json, os.fspath(out_dir), now, now,
                  socket.gethostname(), os.getpid())

        def op() -> None:
            with self._write() as conn:
                conn.execute(
                    """
                    INSERT INTO runs (run_id, config_hash, config_json, protocol, tags_json, out_dir,
                                      status, created_at, started_at, host, pid)
                    VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)
                    ON CONFLICT(run_id) DO UPDATE SET
                        config_hash = excluded.config_hash, config_json = excluded.config_json,
                        protocol = excluded.protocol, tags_json = excluded.tags_json,
                        out_dir = excluded.out_dir, status = 'running',
                        started_at = excluded.started_at, finished_at = NULL, wall_seconds = NULL,
                        metrics_json = NULL, message = '', host = excluded.host, pid = excluded.pid
                    """,
                    values,
                )

        self._retry(op)

    def finish(
        self, run_id: str, metrics: Mapping[str, Any], status: str = "done", message: str = ""
    ) -> None:
        """Record the final `metrics`, `status` (done|failed|diverged) and wall time of a started run."""
        if status not in FINAL_STATUSES:
            raise ConfigError(f"finish status {status!r} is invalid; use one of {', '.join(FINAL_STATUSES)}")
        try:
            metrics_json = dumps(dict(metrics))
        except (TypeError, ValueError) as exc:
            raise DataError(f"metrics of run {run_id!r} are not JSON-serialisable ({exc}); pass plain numbers") from None
        now = time.time()

        def op() -> int:
            with self._write() as conn:
                cur = conn.execute(
                    """
                    UPDATE runs SET status = ?, finished_at = ?, wall_seconds = ? - started_at,
                                    metrics_json = ?, message = ?
                    WHERE run_id = ?
                    """,
                    (status, now, now, metrics_json, message, run_id),
                )
                return cur.rowcount

        if self._retry(op) == 0:
            raise DataError(f"run {run_id!r} is not in {self.path}; call start() before finish()")

    def merge(
        self,
        rows: Sequence[Mapping[str, Any]],
        decide: Callable[[dict[str, Any] | None, Mapping[str, Any]], str],
    ) -> list[str]:
        """Write whole rows in one transaction (all or none), each only where `decide` allows it.

        A row has the keys `get` returns (run_id, config, protocol, tags, out_dir, status, started_at,
        finished_at, metrics, message, host, pid). For each row in order, `decide(current, row)` sees the row
        stored now (None if none; its status as written, not the derived `interrupted`) and answers "new" or
        "updated" (the row is written) or anything else (left as is); the answers are returned. A new row's
        created_at is its started_at; an updated one keeps its own.
        """
        prepared = []
        for row in rows:
            if row["status"] not in ("running", *FINAL_STATUSES):
                raise ConfigError(f"run {row['run_id']!r} has status {row['status']!r}; use one of "
                                  f"running, {', '.join(FINAL_STATUSES)}")
            started, finished = float(row["started_at"]), row.get("finished_at")
            try:
                metrics_json = None if row.get("metrics") is None else dumps(dict(row["metrics"]))
            except (TypeError, ValueError) as exc:
                raise DataError(f"metrics of run {row['run_id']!r} are not JSON-serialisable ({exc}); "
                                "pass plain numbers") from None
            prepared.append((row, (
                row["run_id"], config_hash(row["config"]), canonical(row["config"]), row.get("protocol"),
                _tags_json(row.get("tags")), os.fspath(row["out_dir"]), row["status"], started, started,
                finished, None if finished is None else float(finished) - started, metrics_json,
                row.get("message") or "", row.get("host"), row.get("pid"))))

        def op() -> list[str]:
            outcomes = []
            with self._write() as conn:
                for row, values in prepared:
                    cur = conn.execute("SELECT * FROM runs WHERE run_id = ?", (row["run_id"],)).fetchone()
                    outcome = decide(None if cur is None else _decode(cur, effective=False), row)
                    outcomes.append(outcome)
                    if outcome in ("new", "updated"):
                        conn.execute(
                            """
                            INSERT INTO runs (run_id, config_hash, config_json, protocol, tags_json, out_dir, status,
                                              created_at, started_at, finished_at, wall_seconds, metrics_json,
                                              message, host, pid)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                            ON CONFLICT(run_id) DO UPDATE SET
                                config_hash = excluded.config_hash, config_json = excluded.config_json,
                                protocol = excluded.protocol, tags_json = excluded.tags_json,
                                out_dir = excluded.out_dir, status = excluded.status,
                                started_at = excluded.started_at, finished_at = excluded.finished_at,
                                wall_seconds = excluded.wall_seconds, metrics_json = excluded.metrics_json,
                                message = excluded.message, host = excluded.host, pid = excluded.pid
                            """,
                            values,
                        )
            return outcomes

        return self._retry(op)

    # -- reads ---------------------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run as a dict (config/tags/metrics decoded from JSON), or None if unknown."""

        def op() -> sqlite3.Row | None:
            with self._connect() as conn:
                return conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()

        row = self._retry(op)
        return None if row is None else _decode(row)

    def list(
        self, status: str | None = None, protocol: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Runs matching the filters, newest created first (ties: later insert first)."""
        if status is not None and status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}; use one of {', '.join(STATUSES)}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ConfigError(f"limit must be a non-negative integer or None, got {limit!r}")
        where, params = [], []
        if status is not None:  # `interrupted` is derived (see _effective_status): filter after reading
            where.append("status = ?" if status != "interrupted" else "status IN ('running', 'failed')")
            params += [status] if status != "interrupted" else []
        if protocol is not None:
            where.append("protocol = ?")
            params.append(protocol)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None and status != "interrupted":
            sql += " LIMIT ?"
            params.append(limit)

        def op() -> list[sqlite3.Row]:
            with self._connect() as conn:
                return conn.execute(sql, params).fetchall()

        rows = [_decode(r) for r in self._retry(op)]
        if status == "interrupted":
            rows = [r for r in rows if r["status"] == "interrupted"][:limit]
        return rows

    def find(self, query: str) -> dict[str, Any] | None:
        """The run whose id is `query`, else the one whose short id (`short_id`) starts with it; None if none.

        A prefix shared by several runs is a ConfigError naming some of them."""
        row = self.get(query)
        if row is not None or not query:
            return row
        q = query.lower()
        hits = [r for r in self.list() if short_id(r["run_id"]).startswith(q)]
        if len(hits) > 1:
            shown = ", ".join(f"{short_id(r['run_id'])} ({r['run_id']})" for r in hits[:3])
            more = ", …" if len(hits) > 3 else ""
            raise ConfigError(f"run id prefix {query!r} matches {len(hits)} runs: {shown}{more}; "
                              "give more characters of the id")
        return hits[0] if hits else None

    def find_folder(self, folder: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The newest run trained into `folder` (its id or its recorded out_dir resolves to it), or None.

        A relative out_dir is resolved against the current directory, as the command that wrote it most likely ran."""
        target = Path(folder).resolve()
        for r in self.list():
            if r["run_id"] == str(target) or Path(r["out_dir"]).resolve() == target:
                return r
        return None

    def done(self, run_id: str) -> bool:
        """True if `run_id` finished with status 'done'."""

        def op() -> sqlite3.Row | None:
            with self._connect() as conn:
                return conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()

        row = self._retry(op)
        return row is not None and row["status"] == "done"


def _store_error(path: Path, exc: sqlite3.DatabaseError) -> R18Error:
    """One line for a store SQLite cannot use: corrupt, read-only, unopenable or on a full disk."""
    msg = str(exc)
    low = msg.lower()
    if "readonly" in low or "read-only" in low:
        return DataError(f"run store {path} is read-only ({msg}); make it writable, or pass --store "
                         "(or set R18LAB_STORE) to a writable file")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return DataError(f"run store {path} is corrupt or not an r18lab store ({msg}); move it aside to start "
                         "a new one, or pass --store (or set R18LAB_STORE) to another file")
    if "full" in low:
        return DataError(f"run store {path} cannot grow: the disk is full ({msg}); free disk space "
                         "(the runs already recorded are unchanged)")
    return DataError(f"run store {path} cannot be used ({msg}); check the file and its folder, or pass --store "
                     "(or set R18LAB_STORE) to another file")


def _tags_json(tags: Sequence[str] | Mapping[str, Any] | None) -> str:
    """Tags as JSON: None -> [], a list/tuple of strings -> list, a mapping -> object."""
    if tags is None:
        return "[]"
    if isinstance(tags, Mapping):
        return dumps(dict(tags))
    if isinstance(tags, (list, tuple)) and all(isinstance(t, str) for t in tags):
        return dumps(list(tags))
    raise ConfigError(f"tags must be a list of strings or a dict, got {tags!r}")


def _decode(row: sqlite3.Row, effective: bool = True) -> dict[str, Any]:
    """Row -> dict; *_json columns become `config`, `tags`, `metrics` (metrics None while running);
    `effective`: a killed or Ctrl-C'd run's status reads `interrupted` (see _effective_status)."""
    out = dict(row)
    out["config"] = json.loads(out.pop("config_json"))
    out["tags"] = json.loads(out.pop("tags_json"))
    metrics_json = out.pop("metrics_json")
    out["metrics"] = None if metrics_json is None else json.loads(metrics_json)
    if effective:
        out["status"] = _effective_status(out)
    return out


def _effective_status(row: dict[str, Any]) -> str:
    """`interrupted` for a run stopped by Ctrl-C, or still `running` although its process on this host is gone
    (killed); a re-run takes such a row over. Rows of other hosts keep `running` (their processes are not visible)."""
    if row["status"] == "failed" and row.get("message") == INTERRUPTED_MESSAGE:
        return "interrupted"
    if row["status"] == "running" and row.get("host") == socket.gethostname() and row.get("pid"):
        try:
            os.kill(int(row["pid"]), 0)
        except ProcessLookupError:
            return "interrupted"
        except (PermissionError, OverflowError, ValueError):
            pass
    return row["status"]
