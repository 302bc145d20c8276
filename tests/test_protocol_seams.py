"""Protocol seams: registries (protocols, executors), dynamic waves, run identity keys folders and skips,
workers die with their parent, Ctrl-C stops a protocol with the command that continues it."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r18lab.cli import build_parser, main
from r18lab.config import build_config, config_dict, parse_overrides, run_identity
from r18lab.protocols import EXECUTORS, PROTOCOLS, Executor, Protocol, RunSpec
from r18lab.protocols import lowdata, runner
from r18lab.protocols.executors import LocalExecutor
from r18lab.results.store import RunStore

from helpers import tiny_recipe, tiny


def settings(**kw) -> lowdata.LowDataSettings:
    return lowdata.LowDataSettings(**{"labels": [40], "seeds": [0], "methods": ["resnet18"], **kw})


# -- registries --------------------------------------------------------------------------------------------


def test_protocols_and_executors_come_from_registries():
    assert {"lowdata", "compare"} <= set(PROTOCOLS.names()) and "local" in EXECUTORS.names()
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["protocol"]
    choices = {a.dest: a.choices for a in sub._actions}
    assert list(choices["name"]) == PROTOCOLS.names() and list(choices["executor"]) == EXECUTORS.names()


@pytest.mark.parametrize("workers", ["-3", "0"])
def test_workers_below_one_is_one_line_exit_2(tmp_path, capsys, workers):
    (tmp_path / "p.yaml").write_text("protocol: {labels: [40], seeds: [0], methods: [resnet18]}\n")
    out = tmp_path / "proto"
    assert main(["protocol", "lowdata", str(tmp_path / "p.yaml"), "--out", str(out), "--workers", workers]) == 2
    assert capsys.readouterr().err == f"error: --workers must be at least 1, got {workers}\n"
    assert not out.exists()


class Growing(Protocol):
    """Active-learning shape: cycle k+1's pool size is read from cycle k's finished summary."""

    def __init__(self, base: dict, out: Path) -> None:
        self.base, self.out, self.name, self.asked = base, out, "growing", []

    def spec(self, n: int) -> RunSpec:
        cfg = config_dict(build_config({**self.base, "data": {**self.base["data"], "labels": n}}))
        ident = run_identity(cfg)
        spec = RunSpec(f"growing/n{n}/{ident}", cfg, self.out / f"n{n}-{ident[:8]}", {"labels": n})
        assert spec.identity == ident  # computed from the config when not given
        return spec

    def waves(self, ctx):
        first = self.spec(20)
        yield [first]
        summary = ctx.summary(first)  # the next wave depends on the previous one's result
        self.asked.append(summary["num_train"])
        yield [self.spec(2 * summary["num_train"])]


class Recording(LocalExecutor):
    calls: list = []

    def run(self, specs):
        Recording.calls.append([s.run_id for s in specs])
        yield from super().run(specs)


EXECUTORS.register("recording-test")(Recording)


def test_a_dynamic_protocol_reads_a_finished_wave_before_the_next_on_a_registered_executor(tmp_path):
    Recording.calls.clear()
    proto = Growing(parse_overrides(tiny()), tmp_path / "out")
    ex = EXECUTORS.build("recording-test", 1, str(tmp_path / "store.sqlite"), runner._run_one)
    assert isinstance(ex, Executor)
    with ex:
        ctx = runner.run(proto, ex, tmp_path / "store.sqlite", log=lambda m: None)
    assert proto.asked == [20] and ctx.failures == {}
    assert [len(c) for c in Recording.calls] == [1, 1]
    assert [ctx.summary(s)["num_train"] for s in ctx.specs.values()] == [20, 40]


def test_ctrl_c_in_process_is_exit_130_naming_the_continue_command(tmp_path, capsys, monkeypatch):
    (tmp_path / "p.yaml").write_text("protocol: {labels: [40], seeds: [0], methods: [resnet18]}\n")

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_run_one", interrupted)
    args = ["protocol", "lowdata", str(tmp_path / "p.yaml"), "train.epochs=1", "--out", str(tmp_path / "o")]
    assert main(args) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: interrupted; continue with: r18lab protocol lowdata {tmp_path / 'p.yaml'} train.epochs=1 "
        f"--out {tmp_path / 'o'}")


# -- run identity: folders, skips, teachers ---------------------------------------------------------------


def test_an_execution_only_override_does_not_retrain(tmp_path, monkeypatch):
    store = tmp_path / "store.sqlite"
    first = lowdata.plan(settings(), parse_overrides(tiny()), tmp_path / "out")
    assert runner.run_all(first, store, log=lambda m: None) == {}
    weights = first[0].out_dir / "model.safetensors"
    before = (weights.read_bytes(), weights.stat().st_mtime_ns)
    again = lowdata.plan(settings(), parse_overrides(tiny("train.progress=lines", "train.eval_batch_size=64")),
                         tmp_path / "out")
    assert (again[0].run_id, again[0].out_dir) == (first[0].run_id, first[0].out_dir)
    monkeypatch.setattr(runner, "_run_one", lambda *a: pytest.fail(f"re-trained {a[0].run_id}"))
    log: list[str] = []
    assert runner.run_all(again, store, log=log.append) == {}
    assert log == ["1 of 1 runs already done; 0 to run with 1 worker(s) × 1 thread(s)"]
    assert (weights.read_bytes(), weights.stat().st_mtime_ns) == before
    # a finished folder the store does not know (another --store) is taken over, not re-trained
    other = tmp_path / "other.sqlite"
    assert runner.run_all(again, other, log=lambda m: None) == {} and RunStore(other).done(first[0].run_id)


def test_a_students_identity_holds_its_teachers_identity_not_its_path(tmp_path):
    s = settings(methods=["kd"])
    a = lowdata.plan(s, parse_overrides(tiny()), tmp_path / "a")
    b = lowdata.plan(s, parse_overrides(tiny()), tmp_path / "b")
    (ta, sa), (tb, sb) = a, b
    assert sa.out_dir != sb.out_dir and sa.identity == sb.identity and sa.run_id == sb.run_id
    path = str(ta.out_dir / "model.safetensors")
    assert sa.teacher_ids == {path: ta.identity}
    assert sa.identity == run_identity(sa.config, {path: ta.identity}) != run_identity(sa.config)
    assert sa.out_dir.name == f"seed0-{sa.identity[:8]}" and sa.run_id == f"lowdata/kd/n40/s0/{sa.identity}"
    wider = lowdata.plan(settings(methods=["kd"], method_defs={"resnet50": {"model": {"name": "resnet50",
                                                                                        "width": 0.125}}}),
                         parse_overrides(tiny()), tmp_path / "a")
    assert wider[0].identity != ta.identity and wider[1].identity != sa.identity  # another teacher, another run


def test_the_engine_records_the_planned_identities_of_a_teacher_and_its_student(tmp_path):
    specs = lowdata.plan(settings(methods=["kd"]), parse_overrides(tiny()), tmp_path / "out")
    assert runner.run_all(specs, tmp_path / "store.sqlite", log=lambda m: None) == {}
    for s in specs:  # so a re-run, or a move of the protocol folder, finds both done
        assert json.loads((s.out_dir / "summary.json").read_text())["identity"] == s.identity


# -- workers die with the parent; Ctrl-C stops and names the command that continues ---------------------

def children(pid: int) -> dict[int, str]:
    """pid → command line of the processes whose parent is `pid` (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            if d.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the protocol exited ({proc.returncode}) before {what}: {proc.communicate()[1]}")
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_protocol(tmp_path: Path, epochs: int) -> tuple[subprocess.Popen, list[str], Path]:
    (tmp_path / "p.yaml").write_text(tiny_recipe(epochs))
    out = tmp_path / "proto"
    args = ["protocol", "lowdata", str(tmp_path / "p.yaml"), "--out", str(out), "--workers", "2"]
    # SIGINT back to its default in the child: a suite started in the background (`make test &`) inherits SIGINT
    # ignored, and Python then never installs its Ctrl-C handler, so the protocol would ignore the interrupt
    proc = subprocess.Popen([sys.executable, "-m", "r18lab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, args, out


def stop(proc: subprocess.Popen, workers: dict[int, str]) -> None:
    """Clean up whatever a failed test left running (workers first: they hold the parent's output pipes)."""
    for p in workers:
        if alive(p):
            os.kill(p, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def training(out: Path, n: int = 2) -> list[Path]:
    """Run folders with a committed checkpoint (an epoch trained), once there are `n` of them."""
    found = [p.parent.parent for p in out.glob("n40/*/*/checkpoint/state.json")]
    return found if len(found) >= n else []


def claimed(out: Path) -> bool:
    """Both run folders are locked by their workers (the initializer ran; training has begun)."""
    return len(list(out.glob("n40/*/*/.lock"))) == 2


def workers_of(proc: subprocess.Popen) -> dict[int, str]:
    return {p: c for p, c in children(proc.pid).items() if "spawn_main" in c}


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
def test_workers_die_with_their_parent(tmp_path):
    proc, _, out = start_protocol(tmp_path, epochs=10000)
    workers: dict[int, str] = {}
    try:
        workers.update(wait_for(lambda: len(workers_of(proc)) == 2 and workers_of(proc), 60, "two workers", proc))
        wait_for(lambda: claimed(out), 60, "both runs claimed by the workers", proc)
        proc.kill()  # SIGKILL: the parent gets no chance to clean up
        proc.wait(5)
        wait_for(lambda: not any(alive(p) for p in workers), 5, f"workers {sorted(workers)} to exit")
    finally:
        stop(proc, workers)


LIFELINE = Path(__file__).resolve().parents[1] / "src" / "r18lab" / "protocols" / "lifeline.py"
CHILD = f"""
import importlib.util, os, time
spec = importlib.util.spec_from_file_location("lifeline", {str(LIFELINE)!r})  # stdlib only: no torch import
lifeline = importlib.util.module_from_spec(spec); spec.loader.exec_module(lifeline)
lifeline.die_with_parent(os.getppid(), use_prctl=False, poll=0.1)
print("ready", flush=True)
time.sleep(60)
"""
PARENT = f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {CHILD!r}]); " \
         "print(p.pid, flush=True); time.sleep(60)"


@linux_only
def test_the_portable_fallback_alone_ends_a_worker_whose_parent_died(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"
        parent.kill()
        parent.wait(5)
        wait_for(lambda: not alive(child), 3, "the orphaned child to exit")
    finally:
        stop(parent, {child: ""})


@linux_only
def test_ctrl_c_stops_the_protocol_and_names_the_command_that_continues_it(tmp_path, monkeypatch):
    epochs = 30  # long enough that Ctrl-C lands mid-run however fast the machine is
    proc, args, out = start_protocol(tmp_path, epochs=epochs)
    workers: dict[int, str] = {}
    try:
        workers.update(wait_for(lambda: len(workers_of(proc)) == 2 and workers_of(proc), 60, "two workers", proc))
        wait_for(lambda: claimed(out) and training(out, 1), 60, "a run training, the other claimed", proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group gets SIGINT
        tic = time.monotonic()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 130 and time.monotonic() - tic < 5
    finally:
        stop(proc, workers)
    command = f"r18lab {shlex.join(args)}"
    assert err.strip().splitlines()[-1] == f"error: interrupted; continue with: {command}"
    wait_for(lambda: not any(alive(p) for p in workers), 3, "the workers to exit")

    monkeypatch.chdir(tmp_path)
    kept = {}  # the epochs each run committed before Ctrl-C: the continued command must not train them again
    for state in out.glob("n40/*/*/checkpoint/state.json"):
        folder = state.parent.parent
        kept[folder] = (folder / "metrics.jsonl").read_text().splitlines()[:json.loads(state.read_text())["epoch"]]
    assert kept and any(kept.values())
    assert main(shlex.split(command)[1:]) == 0  # the continue command, run in this process
    runs = sorted(out.glob("n40/*/*/summary.json"))
    assert len(runs) == 2
    for summary in runs:  # every epoch trained exactly once, across the interrupted and the continued command
        lines = (summary.parent / "metrics.jsonl").read_text().splitlines()
        epochs_seen = [json.loads(line)["epoch"] for line in lines]
        assert epochs_seen == list(range(1, epochs + 1)), summary.parent
        assert lines[:len(kept.get(summary.parent, []))] == kept.get(summary.parent, [])  # resumed, not retrained
        assert json.loads(summary.read_text())["status"] == "done"
    store = RunStore(os.environ["R18LAB_STORE"])
    assert [r["status"] for r in store.list(protocol="lowdata")] == ["done", "done"]
