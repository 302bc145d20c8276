"""Crash-safe metrics log: one JSON object per line in metrics.jsonl, fsynced per record.

A process killed mid-write leaves at most one truncated last line; `read_metrics` skips it,
and a new `MetricsWriter` on the same file (a resumed run) cuts it off before appending.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import DataError
from .jsonutil import dumps


class MetricsWriter:
    """Append records to a JSON-lines file, each written in one call then flushed and fsynced."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._fh = open(self.path, "ab")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append `record` as one JSON line, then flush and fsync so it survives a crash."""
        if self._fh.closed:
            raise ValueError(f"MetricsWriter for {self.path} is closed")
        try:
            line = dumps(dict(record))
        except (TypeError, ValueError) as exc:
            raise DataError(f"metrics record is not JSON-serialisable ({exc}); log plain numbers and strings") from None
        self._fh.write(line.encode("utf-8") + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._fh.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl, skipping blank lines and an unparsable (truncated) last line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"metrics file {p} does not exist; check the run folder or rerun the training") from None
    lines = data.split(b"\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    records: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == last:  # a killed writer: the record being written is lost, nothing else
                break
            raise DataError(f"{p} line {i + 1} is not valid JSON; repair or delete that line") from None
        if not isinstance(rec, dict):
            raise DataError(f"{p} line {i + 1} is {type(rec).__name__}, not a JSON object; repair or delete that line")
        records.append(rec)
    return records


def _drop_partial_last_line(path: Path) -> None:
    """If `path` ends mid-line (a killed writer), cut that partial record off (or end it, if it is complete)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        keep = _last_newline_end(fh, size)
        fh.seek(keep)
        if _is_record(fh.read(size - keep)):  # complete record, only the newline missing
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
        else:
            fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def _last_newline_end(fh: Any, size: int, chunk: int = 1 << 16) -> int:
    """Offset just past the last b'\\n' in the file (0 if none), scanning backwards in chunks."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        fh.seek(start)
        pos = fh.read(end - start).rfind(b"\n")
        if pos >= 0:
            return start + pos + 1
        end = start
    return 0


def _is_record(raw: bytes) -> bool:
    """True if `raw` is one complete JSON object."""
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def keep_epochs(path: str | os.PathLike[str], last_epoch: int) -> None:
    """Drop records of epochs after `last_epoch` (written before a kill, ahead of their checkpoint), atomically.

    A resumed run continues from its last committed checkpoint; records of later epochs would be repeated."""
    from ..atomic import atomic_write_text
    p = Path(path)
    if not p.exists():
        return
    _drop_partial_last_line(p)
    records = read_metrics(p)
    kept = [r for r in records if not isinstance(r.get("epoch"), int) or r["epoch"] <= last_epoch]
    if len(kept) != len(records):
        atomic_write_text(p, "".join(dumps(r) + "\n" for r in kept))
