"""One writer for the results store: workers leave result records (result.json) beside their runs; the protocol
driver or `r18lab runs collect` merges them into SQLite idempotently, keyed by run id."""
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from r18lab.errors import ConfigError
from r18lab.results import records
from r18lab.results.records import RECORD_FILE, RECORD_FORMAT, RecordSink, ResultRecord
from r18lab.results.store import RunStore

WORKERS, RUNS_EACH = 8, 5
CONFIG = {"data": {"source": "synthetic"}, "train": {"epochs": 2}}


def run_id(w: int, k: int) -> str:
    return f"proto/w{w}-r{k}/{w:08x}{k:08x}"


def expected_status(k: int) -> str:
    return "failed" if k == RUNS_EACH - 1 else "done"


def _record_run(out_dir: Path, w: int, k: int, status: str, acc: float) -> None:
    """What a worker does for one run: a `running` record at its start, the final one at its end."""
    rid = run_id(w, k)
    sink = RecordSink(identity=rid.rsplit("/", 1)[1])
    sink.start(rid, config=CONFIG, out_dir=out_dir, protocol="proto", tags={"worker": w, "run": k})
    if status == "running":  # killed before it finished: the `running` record stays
        return
    metrics = {"eval/main/acc": acc, "train_seconds": 1.5, "steps": 4, "identity": sink.identity}
    sink.finish(rid, metrics if status == "done" else {}, status=status, message="" if status == "done" else "boom")


def _worker(root: str, w: int) -> None:
    """One of 8 concurrent workers: its own runs, a requeue of a neighbour's first run (a second `done` into the
    same folder), a copy of its run 2 finished again elsewhere, and a `running` record of its run 1 that a later
    requeue left (must not downgrade `done`)."""
    base = Path(root)
    for k in range(RUNS_EACH):
        _record_run(base / f"w{w}" / f"r{k}", w, k, expected_status(k), acc=10.0 * w + k)
    n = (w + 1) % WORKERS
    _record_run(base / f"w{n}" / "r0", n, 0, "done", acc=10.0 * n)  # requeued: finished twice, same folder
    _record_run(base / "copies" / f"w{w}", w, 2, "done", acc=10.0 * w + 2)  # finished twice, another folder
    time.sleep(0.01)
    _record_run(base / "requeued" / f"w{w}", w, 1, "running", acc=0.0)  # started after it was done


def rows(store: RunStore) -> dict[str, dict]:
    return {r["run_id"]: r for r in store.list()}


def test_eight_concurrent_workers_then_collect_no_lost_or_duplicated_rows(tmp_path):
    root = tmp_path / "runs"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(root), w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    driver = RunStore(tmp_path / "driver.sqlite")  # collects while the workers write: never a half-written file
    passes = 0
    while any(p.is_alive() for p in procs) or passes == 0:
        if root.is_dir():
            records.collect_paths(driver, records.find_records([root]))
            passes += 1
        time.sleep(0.05)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    paths = records.find_records([root])
    assert len(paths) == WORKERS * RUNS_EACH + 2 * WORKERS  # one file per folder (the requeue rewrote its own)
    store = RunStore(tmp_path / "fresh.sqlite")
    counts = records.collect_paths(store, paths)
    got = rows(store)
    expected = {run_id(w, k): expected_status(k) for w in range(WORKERS) for k in range(RUNS_EACH)}
    assert len(store.list()) == len(got) == len(expected)  # no duplicates, nothing lost
    assert {rid: r["status"] for rid, r in got.items()} == expected  # run 1 stays done despite a later `running`
    assert counts["new"] == len(expected) and sum(counts.values()) == len(paths)
    for rid, r in got.items():
        if r["status"] == "done":
            assert r["metrics"]["steps"] == 4 and r["metrics"]["identity"] == rid.rsplit("/", 1)[1]
            assert r["metrics"]["eval/main/acc"] == pytest.approx(float(rid.split("/")[1][1]) * 10
                                                                   + int(rid.split("/")[1][-1]))
        assert r["protocol"] == "proto" and r["tags"]["worker"] == int(rid.split("/")[1][1])
    # collecting again (the same records, in another order) changes nothing
    assert records.collect_paths(store, paths[::-1]) == {"new": 0, "updated": 0, "unchanged": len(expected),
                                                         "older": len(paths) - len(expected)}
    assert rows(store) == got
    # the store collected incrementally while the workers wrote says the same
    records.collect_paths(driver, paths)
    assert {rid: r["status"] for rid, r in rows(driver).items()} == expected


def sink_record(out_dir: Path, rid: str = "p/a/0123456789abcdef", status: str = "done", acc: float = 50.0,
                identity: str = "0123456789abcdef") -> ResultRecord:
    sink = RecordSink(identity)
    sink.start(rid, config=CONFIG, out_dir=out_dir, protocol="p", tags={})
    if status != "running":
        sink.finish(rid, {"eval/main/acc": acc, "train_seconds": 2.0, "steps": 3} if status == "done" else {},
                    status=status, message="" if status == "done" else "boom")
    return records.read_record(out_dir / RECORD_FILE)


def test_merge_rules_requeue_once_done_never_downgraded_newer_identity_wins(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    first = sink_record(tmp_path / "a", acc=50.0)
    assert records.collect(store, [first])["new"] == 1
    for later in (sink_record(tmp_path / "b", status="running"), sink_record(tmp_path / "c", status="failed")):
        assert records.collect(store, [later]) == {"new": 0, "updated": 0, "unchanged": 0, "older": 1}
        assert store.get(first.run_id)["status"] == "done"
    again = sink_record(tmp_path / "d", acc=51.0)  # finished a second time (requeue): one row, the later finish
    assert records.collect(store, [first, again]) == {"new": 0, "updated": 1, "unchanged": 1, "older": 0}
    assert len(store.list()) == 1 and store.get(first.run_id)["metrics"]["eval/main/acc"] == 51.0
    assert records.collect(store, [first])["older"] == 1  # the earlier finish does not come back
    other = sink_record(tmp_path / "e", status="failed", identity="fedcba9876543210")  # retrained: another run
    assert records.collect(store, [other])["updated"] == 1
    row = store.get(first.run_id)
    assert row["status"] == "failed" and row["metrics"] == {"identity": "fedcba9876543210"}
    # a worker killed mid-run: its `running` record shows as interrupted (its process is gone)
    killed = sink_record(tmp_path / "f", rid="p/killed/0123456789abcdef", status="running")
    records.collect(store, [killed.model_copy(update={"pid": 2 ** 22 + 12345})])
    assert store.get(killed.run_id)["status"] == "interrupted"


def test_record_files_are_checked_before_anything_is_merged(tmp_path, capsys):
    from r18lab.cli import main

    store_path = tmp_path / "store.sqlite"
    sink_record(tmp_path / "old" / "run")
    assert main(["runs", "collect", str(tmp_path / "old"), "--store", str(store_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"collected 1 result record(s) into {store_path}: 1 new, 0 updated, 0 unchanged, 0 skipped as older"
    before = rows(RunStore(store_path))

    new = tmp_path / "new"
    sink_record(new / "good", rid="p/good/0123456789abcdef")
    foreign = sink_record(new / "future", rid="p/future/0123456789abcdef").model_dump()
    (new / "future" / RECORD_FILE).write_text(json.dumps({**foreign, "record_format": RECORD_FORMAT + 1}))
    assert main(["runs", "collect", str(tmp_path / "old"), str(new), "--store", str(store_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert (f"{(new / 'future' / RECORD_FILE).resolve()} was written by record format {RECORD_FORMAT + 1}, "
            f"this r18lab reads {RECORD_FORMAT}; collect it with the r18lab that wrote it") in err
    assert rows(RunStore(store_path)) == before  # not even the good record of that batch was merged

    (new / "future" / RECORD_FILE).write_text('{"record_format": 1, "run_id": ')  # a broken file
    assert main(["runs", "collect", str(new), "--store", str(store_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a result record (broken JSON" in err
    (new / "future" / RECORD_FILE).write_text(json.dumps({**foreign, "status": "finished"}))
    assert main(["runs", "collect", str(new), "--store", str(store_path)]) == 2
    assert "is not a valid result record (status:" in capsys.readouterr().err
    assert main(["runs", "collect", str(tmp_path / "nowhere"), "--store", str(store_path)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert rows(RunStore(store_path)) == before
    (tmp_path / "x.json").write_text(json.dumps({**foreign, "record_format": 0}))
    with pytest.raises(ConfigError, match="written by record format 0, this r18lab reads"):
        records.read_record(tmp_path / "x.json")


def test_a_worker_writes_its_record_and_never_opens_the_store(tmp_path):
    from r18lab.config import parse_overrides
    from r18lab.protocols import lowdata, runner

    from helpers import tiny

    spec = lowdata.plan(lowdata.LowDataSettings(labels=[40], seeds=[0], methods=["resnet18"]),
                        parse_overrides(tiny("train.epochs=1")), tmp_path / "out")[0]
    store_path = tmp_path / "store" / "never.sqlite"
    rid, summary, err = runner._run_one(spec, str(store_path), 1)
    assert (rid, err) == (spec.run_id, "") and summary["status"] == "done"
    assert not store_path.parent.exists()  # the worker did not open (or create) the SQLite store
    rec = records.read_record(spec.out_dir / RECORD_FILE)
    assert (rec.run_id, rec.status, rec.identity, rec.steps) == (spec.run_id, "done", spec.identity, summary["steps"])
    assert rec.metrics == summary["final"] and rec.pid == os.getpid() and rec.finished_at >= rec.started_at


def test_protocol_end_to_end_driver_merges_records_and_collect_rebuilds_the_store(tmp_path, capsys):
    from r18lab.cli import main

    from helpers import tiny_recipe

    recipe = tmp_path / "p.yaml"
    recipe.write_text(tiny_recipe(2))
    out, store_path = tmp_path / "proto", tmp_path / "store" / "index.sqlite"
    assert main(["protocol", "lowdata", str(recipe), "--out", str(out), "--store", str(store_path),
                 "--workers", "2"]) == 0
    capsys.readouterr()
    got = rows(RunStore(store_path))
    assert len(got) == 2 and {r["status"] for r in got.values()} == {"done"}
    for rid, r in got.items():
        rec = records.read_record(Path(r["out_dir"]) / RECORD_FILE)  # each run folder holds its record
        assert (rec.run_id, rec.status, rec.identity) == (rid, "done", r["metrics"]["identity"])
        summary = json.loads((Path(r["out_dir"]) / "summary.json").read_text())
        assert r["metrics"]["eval/main/acc"] == summary["final"]["eval/main/acc"]
    assert len(records.find_records([out])) == 2

    for f in store_path.parent.iterdir():  # the store is lost: the records rebuild it
        f.unlink()
    assert main(["runs", "collect", str(out), "--store", str(store_path)]) == 0
    assert "2 new, 0 updated, 0 unchanged, 0 skipped as older" in capsys.readouterr().out
    assert rows(RunStore(store_path)) == got
    assert main(["runs", "collect", str(out), "--store", str(store_path)]) == 0  # again: nothing changes
    assert "0 new, 0 updated, 2 unchanged" in capsys.readouterr().out
    assert rows(RunStore(store_path)) == got
