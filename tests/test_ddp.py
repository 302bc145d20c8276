"""DDP for one run (`torchrun --nproc_per_node=N -m r18lab train ...`), gloo on CPU with 2 processes.

Equivalence setting: LeNet (no batch norm, no dropout), so the only difference from one process is the order of
float sums (each rank's half-batch gradient, then the all-reduce average); with batch norm the statistics would be
per rank (train.sync_bn needs CUDA). Tolerance: max |w_ddp − w_single| ≤ 1e-5 over every parameter.

Run as a script under torchrun (`python -m torch.distributed.run ... test_ddp.py [--stop-after-epoch 1] ARGS`),
this file is a worker: `r18lab train ARGS`, optionally interrupted after the first epoch's checkpoint, and each rank
writes its param groups' lr_scale to <out>/lr_scale.rank<R>.json (hooks must act identically on every rank)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max abs difference of any final weight, DDP (2 ranks) vs one process, same global batch

# 125 images: global batches 32, 32, 32, 29 — the last one splits 14 | 15, weighted so the average stays exact
LENET = ["data.source=synthetic", "data.options={num_classes: 4, image_size: 8, n: 125}", "model.name=lenet",
         "model.options={image_size: 8}", "train.batch_size=32", "train.epochs=2", "train.progress=none",
         "optim.lr=0.05", "schedule.name=constant", "train.threads=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path: Path, args: list[str], nproc: int = 2, stop_after: int | None = None):
    """`torchrun --nproc_per_node=nproc` of this file as a worker (see the module docstring)."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    stop = ["--stop-after-epoch", str(stop_after)] if stop_after else []
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={env['MASTER_PORT']}", __file__, *stop, *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def train_here(args: list[str]) -> int:
    from r18lab.cli import main
    return main(["train", *args])


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, the same global batch."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert train_here([*LENET, "--out", str(out), "--store", str(out.parent / "s.sqlite")]) == 0
    return out


def test_two_gloo_ranks_match_one_process(tmp_path, single):
    out = tmp_path / "ddp"
    # `r18lab train --nproc 2` = torchrun --standalone --nproc_per_node=2 -m r18lab train (the documented entry)
    r = subprocess.run([sys.executable, "-m", "r18lab", "train", *LENET, "--out", str(out), "--nproc", "2",
                        "--store", str(tmp_path / "store.sqlite")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    diff = max_diff(out / "model.safetensors", single / "model.safetensors")
    print(f"DDP (2 gloo ranks) vs one process: max abs weight diff {diff:.3g}")
    assert diff <= TOLERANCE
    one = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [4, 8]  # rank 0 alone wrote, once per epoch
    for a, b in zip(one, two):  # evaluation sharded and reduced; training loss averaged over the ranks
        assert b["eval/main/acc"] == a["eval/main/acc"]
        assert b["eval/main/loss"] == pytest.approx(a["eval/main/loss"], abs=1e-5)
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 8
    assert r.stdout.count("run directory:") == 1  # only rank 0 prints
    import sqlite3
    with sqlite3.connect(tmp_path / "store.sqlite") as db:  # only rank 0 wrote the store
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


def test_resume_under_another_world_size(tmp_path, single):
    out = tmp_path / "run"
    r = torchrun(tmp_path, [*LENET, "--out", str(out), "--store", str(tmp_path / "s.sqlite")], stop_after=1)
    assert r.returncode != 0 and "interrupted" in r.stderr, r.stderr[-3000:]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 1
    assert not (out / "model.safetensors").exists()
    assert train_here([*LENET, "--out", str(out), "--resume", "--store", str(tmp_path / "s.sqlite")]) == 0  # 1 proc
    diff = max_diff(out / "model.safetensors", single / "model.safetensors")
    print(f"2 ranks for epoch 1, then 1 process: max abs weight diff {diff:.3g}")
    assert diff <= TOLERANCE


def test_tempbalance_acts_the_same_on_every_rank_of_the_wrapped_model(tmp_path):
    from helpers import tiny
    out = tmp_path / "tb"
    r = torchrun(tmp_path, [*tiny("model.width=0.125", "hooks=[tempbalance]", "train.epochs=1", "train.threads=1"),
                            "--out", str(out), "--store", str(tmp_path / "s.sqlite")])
    assert r.returncode == 0, r.stderr[-3000:]
    scales = [json.loads((out / f"lr_scale.rank{k}.json").read_text()) for k in (0, 1)]
    assert scales[0] == scales[1] and len(set(scales[0].values())) > 1  # per-layer rates, equal on both ranks
    logged = {k for line in (out / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert any(k.startswith("lr_scale/layer") for k in logged)  # names of the plain model, no `module.` prefix


@pytest.mark.parametrize("how", ["--nproc", "torchrun-rank"])
def test_world_size_that_does_not_divide_the_batch_is_one_line_exit_2(tmp_path, monkeypatch, capsys, how):
    if how == "torchrun-rank":  # what each rank started by torchrun sees: checked before the process group
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
    nproc = ["--nproc", "2"] if how == "--nproc" else []
    rc = train_here([*LENET, "train.batch_size=33", "--out", str(tmp_path / "x"), *nproc])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "train.batch_size=33" in err[0] and "world size 2" in err[0] and "train.batch_size=34" in err[0]
    assert not (tmp_path / "x").exists()  # nothing written, no process started


def test_sync_bn_without_cuda_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    rc = train_here([*LENET, "train.sync_bn=true", "train.device=cpu", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.sync_bn needs CUDA" in err[0], err
    assert not (tmp_path / "x").exists()


def test_loader_shards_are_the_global_batch():
    from r18lab.data.augment import Augment
    from r18lab.data.loader import BatchLoader
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (29, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(29)
    aug = Augment(crop=8, padding=2, pad_mode="zero", flip=True, cutout=2, mean=[0.5] * 3, std=[0.25] * 3)
    whole = BatchLoader(images, labels, batch_size=8, seed=3, augment=aug)
    parts = [BatchLoader(images, labels, batch_size=8, seed=3, augment=aug) for _ in range(3)]
    for k, p in enumerate(parts):
        p.set_shard(k, 3)
    for loader in (whole, *parts):
        loader.set_epoch(1)
    # 29 = 8+8+8+5: a last batch of 5 still gives each of 3 ranks a slice (1|2|2)
    assert len(whole) == len(parts[0]) == 4 and [whole.global_batch_size(b) for b in range(4)] == [8, 8, 8, 5]
    for (x, y), *sliced in zip(whole, *parts):
        assert torch.equal(torch.cat([s[1] for s in sliced]), y)
        assert torch.equal(torch.cat([s[0] for s in sliced]), x)
    two = [BatchLoader(images, labels, batch_size=8, seed=3, augment=aug, views=2) for _ in range(3)]
    for k, p in enumerate(two[1:]):
        p.set_shard(k, 2)
    for (x, _), (a, _), (b, _) in zip(*two):  # views: each view sliced alike
        assert all(torch.equal(torch.cat([a[v], b[v]]), x[v]) for v in range(2))
    last = BatchLoader(images[:26], labels[:26], batch_size=8)  # last batch of 2 < 3 ranks: left out
    last.set_shard(0, 3)
    assert len(last) == 3


def _worker(argv: list[str]) -> int:
    """Under torchrun: one rank of `r18lab train argv` (see the module docstring)."""
    stop = None
    if argv[:1] == ["--stop-after-epoch"]:
        stop, argv = int(argv[1]), argv[2:]
    from r18lab.cli import main
    from r18lab.train import engine

    if stop is not None:
        shown = engine.Progress.epoch

        def epoch(self, epoch, *a, **k):  # called after the epoch's checkpoint is committed
            shown(self, epoch, *a, **k)
            if epoch + 1 >= stop:
                raise KeyboardInterrupt
        engine.Progress.epoch = epoch
    finish = engine.Trainer._finish

    def record_scales(self, *a, **k):
        rank = int(os.environ["RANK"])
        scales = {g.get("layer", str(i)): g.get("lr_scale", 1.0) for i, g in enumerate(self.optimizer.param_groups)}
        (self.out / f"lr_scale.rank{rank}.json").write_text(json.dumps(scales, sort_keys=True))
        return finish(self, *a, **k)
    engine.Trainer._finish = record_scales
    return main(["train", *argv])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(_worker(sys.argv[1:]))
