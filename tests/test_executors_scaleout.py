"""Executors beyond one process pool: Ray (a 2-CPU local instance) and SLURM (submitit's local executor) run a
tiny protocol end to end and give the same table as `local`; a SLURM job preempted or killed mid-run resumes from
its folder with the same result; GPU packing slots; and the bad inputs (RAY_ADDRESS unreachable, an engine not
installed, impossible options) are one line, exit 2, nothing written."""
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from r18lab.cli import main
from r18lab.protocols.executors import gpu_slots, visible_gpus

from helpers import tiny_recipe

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (make install does)")
submitit = pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[slurm]'")

ONE_METHOD = ["protocol.methods=[resnet18]"]
LONG = [*ONE_METHOD, "train.epochs=150"]  # ~10 s of training: long enough to be stopped mid-run


def table(stdout: str, out: Path) -> str:
    """The printed report without what differs between invocations (the folder, the wall time)."""
    return "\n".join(line for line in stdout.replace(str(out), "OUT").splitlines() if not line.startswith("wall time"))


def protocol(tmp_path: Path, out: str, *args: str) -> list[str]:
    recipe = tmp_path / "p.yaml"
    if not recipe.exists():
        recipe.write_text(tiny_recipe())
    return ["protocol", "lowdata", str(recipe), "--out", str(tmp_path / out), *args]


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One Ray instance for the module (2 CPUs, no dashboard); its workers see a decode cache of their own."""
    cache = tmp_path_factory.mktemp("ray-cache")
    old = os.environ.get("R18LAB_CACHE")
    os.environ["R18LAB_CACHE"] = str(cache)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("R18LAB_CACHE", None)
    else:
        os.environ["R18LAB_CACHE"] = old


@pytest.fixture(scope="module")
def local_tables(tmp_path_factory):
    """The reference: the tiny protocol (and its long one-method variant) on the local executor, in this process."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("local")
    tables = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R18LAB_CACHE", str(tmp / "cache"))
        for name, extra in (("tiny", []), ("long", LONG)):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
                assert main(protocol(tmp, name, *extra, "--store", str(tmp / "store.sqlite"))) == 0
            tables[name] = table(buf.getvalue(), tmp / name)
    return tables


# -- Ray ---------------------------------------------------------------------------------------------------


def test_ray_local_instance_gives_the_local_table(tmp_path, capsys, ray_session, local_tables):
    assert main(protocol(tmp_path, "ray", "--executor", "ray", "--workers", "2")) == 0
    out, err = capsys.readouterr()
    assert table(out, tmp_path / "ray") == local_tables["tiny"]
    assert "2 to run with 2 worker(s)" in err
    assert ray.is_initialized()  # the executor used the caller's Ray and left it running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh driver process
    assert main(protocol(tmp_path, "o", "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the Ray cluster at {address} ") and "unreachable" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("executor, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_missing_engine_names_the_extra(tmp_path, capsys, monkeypatch, executor, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` / `import submitit` now raises ImportError
    assert main(protocol(tmp_path, "o", "--executor", executor)) == 2
    assert capsys.readouterr().err == (f"error: --executor {executor} needs "
                                       f"{'Ray' if executor == 'ray' else 'submitit'}: pip install 'r18lab[{extra}]'\n")
    assert not (tmp_path / "o").exists()


# -- SLURM through submitit's local executor -----------------------------------------------------------------


def test_slurm_local_gives_the_local_table_from_the_recipe_key(tmp_path, capsys, local_tables):
    (tmp_path / "p.yaml").write_text(tiny_recipe(extra="executor: {name: slurm, cluster: local, timeout_min: 10}"))
    assert main(protocol(tmp_path, "slurm", "--workers", "2")) == 0
    out, err = capsys.readouterr()
    assert table(out, tmp_path / "slurm") == local_tables["tiny"]
    assert "2 to run with 2 worker(s)" in err
    assert len(list((tmp_path / "slurm" / "slurm").glob("*_result.pkl"))) == 2  # two submitit jobs ran them


def test_slurm_array_script_carries_the_options(tmp_path, monkeypatch):
    """On a login node (a stand-in `srun` on PATH): partition, GPUs, time, setup and the array cap reach sbatch."""
    from r18lab.protocols import EXECUTORS

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    options = {"cluster": "slurm", "partition": "gpu", "gpus_per_run": 1, "timeout_min": 600, "cpus_per_run": 8,
               "setup": ["source /shared/venv/bin/activate"]}
    ex = EXECUTORS.build("slurm", 32, str(tmp_path / "s.sqlite"), None, options, tmp_path / "proto")
    assert ex.ex._executor.parameters["array_parallelism"] == 32
    script = ex.ex._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=600",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR2@90", "source /shared/venv/bin/activate",
                 f"#SBATCH --output={tmp_path / 'proto' / 'slurm'}/%j_0_log.out"):
        assert line in script


def test_slurm_without_slurm_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    assert main(protocol(tmp_path, "o", "--executor", "slurm", "executor.cluster=slurm")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: executor.cluster=slurm, but this machine has no SLURM")
    assert not (tmp_path / "o").exists()


def job_process(folder: Path) -> int | None:
    """The pid of the submitit task running in `folder` (python -m submitit.core._submit FOLDER)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and str(folder).encode() in argv:
            return int(proc.name)
    return None


def stop_after_first_checkpoint(out: Path, sig: int, stopped: list) -> threading.Thread:
    """In the background: once the run has committed a checkpoint, send `sig` to its job's process."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(out.glob("n40/resnet18/*/checkpoint/state.json")):
                pid = job_process(out / "slurm")
                if pid is not None:
                    os.kill(pid, sig)
                    stopped.append(pid)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_slurm_preempted_job_is_requeued_and_resumes_to_the_same_table(tmp_path, capsys, local_tables):
    out, stopped = tmp_path / "pre", []
    watcher = stop_after_first_checkpoint(out, signal.SIGUSR2, stopped)  # what SLURM sends before preempting
    assert main(protocol(tmp_path, "pre", *LONG, "--executor", "slurm", "executor.cluster=local")) == 0
    watcher.join(5)
    assert stopped, "the job was never stopped: no checkpoint appeared"
    assert table(capsys.readouterr().out, out) == local_tables["long"]
    log = "".join(p.read_text() for p in sorted((out / "slurm").glob("*_log.*")))
    assert "this job is preempted" in log and "Requeued job" in log  # submitit's Checkpointable requeued it
    assert log.count("Starting with JobEnvironment") == 2 and "Job completed successfully" in log


def test_slurm_job_killed_mid_run_resumes_on_rerun_to_the_same_table(tmp_path, capsys, local_tables):
    out, stopped = tmp_path / "kill", []
    args = protocol(tmp_path, "kill", *LONG, "--executor", "slurm", "executor.cluster=local")
    watcher = stop_after_first_checkpoint(out, signal.SIGKILL, stopped)  # no warning: the node died
    assert main(args) == 1
    watcher.join(5)
    assert stopped
    err = capsys.readouterr().err
    assert re.search(r"error: run lowdata/resnet18/\S+ failed: job \S+ ended without a result .*rerun the same "
                     r"command to resume", err), err
    (epoch,) = {int(p.name[5:9]) for p in out.glob("n40/resnet18/*/checkpoint/epoch*.model.safetensors")}
    assert 0 < epoch < 150  # killed mid-run, its last checkpoint kept
    assert main(args) == 0  # the same command: the run resumes from that checkpoint
    assert table(capsys.readouterr().out, out) == local_tables["long"]


# -- options and GPU packing -------------------------------------------------------------------------------


def test_gpu_slots_are_round_robin():
    assert gpu_slots(2, 0.25) == ["0", "1"] * 4
    assert gpu_slots(1, 0.3) == ["0"] * 3
    assert gpu_slots(4, 2) == ["0,1", "2,3"]
    assert gpu_slots(1, 2) == []


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-run", "1.5"], "error: invalid 'executor.gpus_per_run': Value error, --gpus-per-run must be a "
                                "fraction in (0, 1] (0.25: four runs per GPU) or a whole number of GPUs, got 1.5"),
    (["--executor", "slurm", "--gpus-per-run", "0.5"], "error: SLURM allocates whole GPUs: --gpus-per-run 0.5 needs "
                                                       "--executor local (pack runs on one machine's GPUs), or a "
                                                       "whole number with --executor slurm"),
    (["--executor", "slurm", "executor.partitoin=gpu"], "error: invalid 'executor.partitoin': Extra inputs are not "
                                                        "permitted"),
])
def test_bad_executor_options_are_one_line_exit_2(tmp_path, capsys, args, message):
    assert main(protocol(tmp_path, "o", *args)) == 2
    assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(visible_gpus() > 0, reason="this machine has a CUDA GPU")
def test_gpu_packing_without_cuda_is_one_line_exit_2(tmp_path, capsys):
    assert main(protocol(tmp_path, "o", "--gpus-per-run", "0.25")) == 2
    assert capsys.readouterr().err == ("error: --gpus-per-run 0.25 needs 1 CUDA GPU(s), this machine has 0 visible; "
                                       "drop --gpus-per-run to run on the CPU, or use a GPU machine\n")


def where_am_i(spec, store_path, threads):
    """A task that trains nothing: which worker ran it, and which GPUs it was given."""
    time.sleep(0.3)
    return spec.run_id, {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}, ""


def test_local_gpu_packing_gives_each_worker_one_slot(tmp_path, monkeypatch):
    from r18lab.protocols import RunSpec, executors

    monkeypatch.setattr(executors, "visible_gpus", lambda: 2)  # the driver's count; the workers only read the env
    specs = [RunSpec(f"probe/{i}", {}, tmp_path / str(i), {}) for i in range(8)]
    with executors.LocalExecutor(1, str(tmp_path / "s.sqlite"), where_am_i, {"gpus_per_run": 0.5}) as ex:
        assert ex.workers == 4  # 2 GPUs ÷ 0.5
        seen = {(r.summary["pid"], r.summary["cuda"]) for r in ex.run(specs)}
    slots = dict(seen)
    assert len(slots) == len(seen)  # a worker keeps its GPU
    assert sorted(slots.values()) in (["0", "0", "1", "1"], ["0", "0", "1"], ["0", "1", "1"], ["0", "1"])


def test_continue_command_keeps_executor_and_gpus(tmp_path):
    import argparse

    from r18lab.protocols.commands import continue_command

    a = argparse.Namespace(name="lowdata", config="r.yaml", overrides=["executor.partition=gpu"], scale=None,
                           out=None, workers=8, executor="slurm", store=None, gpus_per_run=1.0)
    argv, sys.argv = sys.argv, ["python"]
    try:
        assert continue_command(a) == ("r18lab protocol lowdata r.yaml executor.partition=gpu --workers 8 "
                                       "--executor slurm --gpus-per-run 1.0")
    finally:
        sys.argv = argv
