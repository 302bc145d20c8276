"""metrics.jsonl: per-record fsync, tolerant reading of a truncated tail, resuming after a crash."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from r18lab.errors import DataError
from r18lab.results import metrics as metrics_mod
from r18lab.results.metrics import MetricsWriter, read_metrics


def test_round_trip_with_nan_and_numpy_values(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write({"epoch": 0, "train/loss": 2.5, "eval/main/acc": np.float32(0.5)})
        w.write({"epoch": 1, "train/loss": float("nan"), "alpha": np.array([1.0, 2.0])})
    recs = read_metrics(path)
    assert recs[0] == {"epoch": 0, "train/loss": 2.5, "eval/main/acc": 0.5}
    assert recs[1]["epoch"] == 1 and math.isnan(recs[1]["train/loss"]) and recs[1]["alpha"] == [1.0, 2.0]
    assert path.read_text().count("\n") == 2


def test_each_record_is_flushed_and_fsynced(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(metrics_mod.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "metrics.jsonl"
    w = MetricsWriter(path)
    for e in range(3):
        w.write({"epoch": e})
        assert len(synced) == e + 1
        assert read_metrics(path) == [{"epoch": i} for i in range(e + 1)]  # visible before close
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write({"epoch": 9})


def test_appends_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write({"epoch": 0})
    with MetricsWriter(path) as w:
        w.write({"epoch": 1})
    assert read_metrics(path) == [{"epoch": 0}, {"epoch": 1}]


def test_unserialisable_record_is_rejected_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        with pytest.raises(DataError, match="not JSON-serialisable"):
            w.write({"model": object()})
    assert path.read_bytes() == b""


@pytest.mark.parametrize("tail", [b'{"epoch": 2, "train/lo', b'{"name": "\xc3', b"{"])
def test_read_skips_truncated_last_line(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epoch": 1}\n' + tail)
    assert read_metrics(path) == [{"epoch": 0}, {"epoch": 1}]


def test_read_errors_on_corrupt_middle_line_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_metrics(path)
    path.write_bytes(b'{"epoch": 0}\n[1, 2]\n{"epoch": 2}\n')
    with pytest.raises(DataError, match="line 2 is list, not a JSON object"):
        read_metrics(path)
    with pytest.raises(DataError, match="does not exist"):
        read_metrics(tmp_path / "nope.jsonl")


def test_read_ignores_blank_lines_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"")
    assert read_metrics(path) == []
    path.write_bytes(b'{"epoch": 0}\n\n{"epoch": 1}\n\n')
    assert read_metrics(path) == [{"epoch": 0}, {"epoch": 1}]


def test_resuming_writer_cuts_off_partial_record(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epoch": 1, "lo')
    with MetricsWriter(path) as w:
        w.write({"epoch": 1})
    assert path.read_bytes() == b'{"epoch": 0}\n{"epoch":1}\n'


def test_resuming_writer_keeps_complete_record_missing_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"epoch": 0}\n{"epoch": 1}')
    with MetricsWriter(path) as w:
        w.write({"epoch": 2})
    assert read_metrics(path) == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}]


def test_resuming_writer_scans_back_past_one_chunk(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    big = json.dumps({"epoch": 0, "pad": "x" * 200_000}).encode()
    path.write_bytes(big + b"\n" + b'{"epoch": 1, "pad": "' + b"y" * 150_000)  # partial line > 64 KiB
    with MetricsWriter(path) as w:
        w.write({"epoch": 1})
    assert [r["epoch"] for r in read_metrics(path)] == [0, 1]
    path.write_bytes(b'{"epoch": 0, "pad": "' + b"z" * 100_000)  # no newline at all
    MetricsWriter(path).close()
    assert path.read_bytes() == b""


_CHILD = """
import sys
from r18lab.results.metrics import MetricsWriter
w = MetricsWriter(sys.argv[1])
i = 0
while True:
    w.write({"epoch": i, "pad": "x" * 5000})
    if i == 20:
        print("ready", flush=True)
    i += 1
"""


def test_killed_writer_loses_no_completed_record(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(0.05)  # let it write more records, then kill it mid-loop
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    recs = read_metrics(path)
    assert len(recs) > 20
    assert [r["epoch"] for r in recs] == list(range(len(recs)))
    assert all(r["pad"] == "x" * 5000 for r in recs)
