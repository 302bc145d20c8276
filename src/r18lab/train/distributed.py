"""One run across processes (DDP under `torchrun`): rank and world size from torchrun's environment, the process
group (gloo on CPU, nccl on CUDA), and the few collectives the engine needs. A process not started by torchrun is
world size 1 and every helper here is a no-op, so the engine has one code path."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place in the run: `rank` of `size` processes, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, the store and the tracker mirrors."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous share of n items (sizes differ by at most one)."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; launch with "
                          "`torchrun --nproc_per_node=N -m r18lab train ...` or unset it") from None


def world_from_env() -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; absent: one process."""
    size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={size} are inconsistent; launch with torchrun, which sets both")
    return World(rank, size, _env_int("LOCAL_RANK", rank))


def check(train_cfg: Any, world: World, device: torch.device) -> None:
    """Before anything is joined or written: the world size divides the global batch (train.batch_size, split into
    equal per-rank slices), and train.sync_bn has the CUDA it needs."""
    if not world.enabled:
        return
    check_batch(train_cfg.batch_size, world)
    if train_cfg.sync_bn and device.type != "cuda":
        raise ConfigError(f"train.sync_bn needs CUDA (torch's SyncBatchNorm has no {device.type} kernel); drop "
                          "train.sync_bn here (batch-norm statistics are then per rank)")


def check_batch(batch_size: int, world: World) -> None:
    """The world size must divide the global batch."""
    if batch_size % world.size:
        up = -(-batch_size // world.size) * world.size
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by the world size {world.size} "
                          f"(torchrun --nproc_per_node); use a multiple of {world.size}, e.g. train.batch_size={up}")


def setup(world: World, device: torch.device) -> torch.device:
    """Join the process group once per process (idempotent); the device of this rank (cuda:LOCAL_RANK on CUDA)."""
    if not world.enabled:
        return device
    import torch.distributed as dist
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank % max(torch.cuda.device_count(), 1))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise ConfigError(f"WORLD_SIZE={world.size} but {var} is not set; launch with "
                                  "`torchrun --nproc_per_node=N -m r18lab train ...`, which sets it")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)
    return device


def launch(nproc: int, argv: list[str]) -> int:
    """`torchrun --standalone --nproc_per_node=nproc -m r18lab ARGV` on this machine; its exit status."""
    import subprocess
    import sys
    if world_from_env().enabled:
        raise ConfigError("--nproc inside a torchrun process; launch either with torchrun or with --nproc, not both")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "r18lab", *argv]
    return subprocess.call(cmd)


def shutdown(clean: bool = True) -> None:
    """Leave the process group (at process end; a no-op when none was joined). After a clean finish every rank first
    meets the others at a barrier, so no rank tears down its gloo pairs while a peer still talks to them (a rank
    leaving early was seen to abort with `terminate called without an active exception`); after an error there is
    no barrier, since the failed peer may never reach it."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if clean and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place across ranks (`sum`, `min` or `max`); returns `t`. One process: `t` unchanged."""
    if _active():
        import torch.distributed as dist
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def barrier() -> None:
    if _active():
        import torch.distributed as dist
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small set-up decisions, never in the loop)."""
    if not _active():
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, device: torch.device, world: World, sync_bn: bool = False) -> nn.Module:
    """The module the training step calls: DDP around `model` (gradients averaged across ranks during backward),
    or `model` itself in one process. The engine keeps `model` (unwrapped) for hooks, evaluation and checkpoints;
    DDP shares its parameters, so both see the same weights."""
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    if sync_bn:  # in place: the BN layers of `model` become SyncBatchNorm sharing their parameters and buffers
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)

