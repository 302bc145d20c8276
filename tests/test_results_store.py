"""RunStore: schema, start/finish/get/list/done semantics, locking and multi-process writes."""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from r18lab.errors import ConfigError, DataError, R18Error
from r18lab.results import store as store_mod
from r18lab.results.store import RunStore, config_hash


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "index" / "runs.sqlite")


def test_config_hash_is_sha256_prefix_of_canonical_json() -> None:
    # printf '{"a":[1,2],"b":1}' | sha256sum -> 94a786c3662bc7beeb59...
    assert config_hash({"b": 1, "a": [1, 2]}) == "94a786c3662bc7be"
    assert config_hash({"a": [1, 2], "b": 1}) == "94a786c3662bc7be"  # key order does not matter
    assert config_hash({"a": [2, 1], "b": 1}) != "94a786c3662bc7be"  # list order does
    assert config_hash({"a": {"y": 1, "x": 2}}) == config_hash({"a": {"x": 2, "y": 1}})  # nested too


def test_config_hash_rejects_unserialisable_values() -> None:
    with pytest.raises(ConfigError, match="cannot be hashed"):
        config_hash({"fn": object()})


def test_store_uses_wal_mode_and_creates_parent_folder(store: RunStore) -> None:
    assert store.path.parent.is_dir()
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    finally:
        conn.close()
    assert cols == ["run_id", "config_hash", "config_json", "protocol", "tags_json", "out_dir", "status",
                    "created_at", "started_at", "finished_at", "wall_seconds", "metrics_json", "message",
                    "host", "pid"]


def test_store_path_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder"):
        RunStore(tmp_path)


def test_start_then_get_returns_running_row(store: RunStore, tmp_path: Path) -> None:
    before = time.time()
    store.start("r1", config={"lr": 0.1, "depth": 18}, out_dir=tmp_path / "r1", protocol="al", tags=["a", "b"])
    row = store.get("r1")
    assert row is not None
    assert row["run_id"] == "r1"
    assert row["status"] == "running"
    assert row["config"] == {"lr": 0.1, "depth": 18}
    assert row["config_hash"] == config_hash({"lr": 0.1, "depth": 18})
    assert row["protocol"] == "al"
    assert row["tags"] == ["a", "b"]
    assert row["out_dir"] == str(tmp_path / "r1")
    assert before <= row["created_at"] == row["started_at"] <= time.time()
    assert row["finished_at"] is None and row["wall_seconds"] is None and row["metrics"] is None
    assert row["message"] == ""
    assert row["host"] == socket.gethostname() and row["pid"] == os.getpid()
    assert store.get("missing") is None
    assert store.done("r1") is False


def test_finish_records_metrics_status_and_wall_time(store: RunStore) -> None:
    store.start("r1", config={}, out_dir="o")
    store.finish("r1", {"acc": 53.71, "loss": float("nan")}, message="ok")
    row = store.get("r1")
    assert row["status"] == "done" and row["message"] == "ok"
    assert row["metrics"]["acc"] == 53.71 and row["metrics"]["loss"] != row["metrics"]["loss"]  # NaN survives
    assert row["wall_seconds"] == pytest.approx(row["finished_at"] - row["started_at"], abs=1e-6)
    assert row["wall_seconds"] >= 0
    assert store.done("r1") is True
    store.start("r2", config={}, out_dir="o")
    store.finish("r2", {}, status="diverged", message="loss became NaN at epoch 3")
    assert store.get("r2")["status"] == "diverged" and store.done("r2") is False


def test_finish_rejects_unknown_run_and_status(store: RunStore) -> None:
    with pytest.raises(DataError, match="call start"):
        store.finish("nope", {"acc": 1.0})
    store.start("r1", config={}, out_dir="o")
    with pytest.raises(ConfigError, match="done, failed, diverged"):
        store.finish("r1", {}, status="running")


def test_restart_keeps_created_at_and_clears_previous_result(store: RunStore) -> None:
    store.start("r1", config={"lr": 0.1}, out_dir="o", tags=["x"])
    store.finish("r1", {"acc": 1.0}, status="failed", message="oom")
    first = store.get("r1")
    time.sleep(0.01)
    store.start("r1", config={"lr": 0.2}, out_dir="o2", tags={"note": "retry"})
    again = store.get("r1")
    assert again["created_at"] == first["created_at"]
    assert again["started_at"] > first["started_at"]
    assert again["status"] == "running"
    assert again["metrics"] is None and again["finished_at"] is None and again["message"] == ""
    assert again["config"] == {"lr": 0.2} and again["out_dir"] == "o2" and again["tags"] == {"note": "retry"}
    assert len(store.list()) == 1


def test_list_is_newest_first_and_filters(store: RunStore) -> None:
    for i, proto in enumerate(["al", "sup", "al", "sup"]):
        store.start(f"r{i}", config={"i": i}, out_dir="o", protocol=proto)
    store.finish("r0", {})
    store.finish("r3", {})
    assert [r["run_id"] for r in store.list()] == ["r3", "r2", "r1", "r0"]
    assert [r["run_id"] for r in store.list(status="done")] == ["r3", "r0"]
    assert [r["run_id"] for r in store.list(protocol="al")] == ["r2", "r0"]
    assert [r["run_id"] for r in store.list(status="running", protocol="sup")] == ["r1"]
    assert [r["run_id"] for r in store.list(limit=2)] == ["r3", "r2"]
    with pytest.raises(ConfigError, match="unknown run status"):
        store.list(status="finished")
    with pytest.raises(ConfigError, match="limit"):
        store.list(limit=-1)


def test_bad_arguments_raise_config_errors(store: RunStore) -> None:
    with pytest.raises(ConfigError, match="run_id"):
        store.start("", config={}, out_dir="o")
    with pytest.raises(ConfigError, match="tags"):
        store.start("r", config={}, out_dir="o", tags="abc")  # type: ignore[arg-type]


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_write_waits_for_a_lock_held_by_another_connection(store: RunStore, monkeypatch) -> None:
    # A 10 ms busy timeout makes SQLite give up fast, so the 0.3 s wait is the retry loop's work.
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 10)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(store.path, 0.3, locked))
    holder.start()
    locked.wait()
    t0 = time.monotonic()
    store.start("r1", config={}, out_dir="o")
    waited = time.monotonic() - t0
    holder.join()
    assert waited >= 0.2
    assert store.get("r1")["status"] == "running"


def test_lock_held_past_the_deadline_raises_r18error(store: RunStore, monkeypatch) -> None:
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_MS", 10)
    monkeypatch.setattr(store_mod, "RETRY_DEADLINE_S", 0.2)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(store.path, 0.6, locked))
    holder.start()
    locked.wait()
    with pytest.raises(R18Error, match="stayed locked"):
        store.start("r1", config={}, out_dir="o")
    holder.join()
    assert store.get("r1") is None


N_WORKERS, RUNS_PER_WORKER = 4, 25


def _worker(path: str, worker: int, barrier) -> None:
    st = RunStore(path)  # concurrent opening (WAL switch, CREATE TABLE) is part of the test
    barrier.wait()
    for i in range(RUNS_PER_WORKER):
        run_id = f"w{worker}-{i:02d}"
        st.start(run_id, config={"worker": worker, "i": i}, out_dir=f"runs/{run_id}", protocol=f"p{worker}")
        st.finish(run_id, {"acc": worker * 100 + i, "tag": run_id})


def test_four_processes_writing_concurrently_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.sqlite")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N_WORKERS)
    procs = [ctx.Process(target=_worker, args=(path, w, barrier)) for w in range(N_WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * N_WORKERS

    st = RunStore(path)
    rows = st.list()
    assert len(rows) == N_WORKERS * RUNS_PER_WORKER
    by_id = {r["run_id"]: r for r in rows}
    for w in range(N_WORKERS):
        for i in range(RUNS_PER_WORKER):
            r = by_id[f"w{w}-{i:02d}"]
            assert r["status"] == "done"
            assert r["config"] == {"worker": w, "i": i}
            assert r["config_hash"] == config_hash({"worker": w, "i": i})
            assert r["metrics"] == {"acc": w * 100 + i, "tag": f"w{w}-{i:02d}"}
            assert r["protocol"] == f"p{w}"
            assert r["out_dir"] == f"runs/w{w}-{i:02d}"
    assert len({r["pid"] for r in rows}) == N_WORKERS
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
