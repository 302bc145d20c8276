"""A run = one config trained into one directory, indexed in the results store with its status."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import RunConfig, config_dict
from ..errors import R18Error, TrainingDiverged
from ..results.store import INTERRUPTED_MESSAGE, RunStore
from .checkpoint import atomic_write_text
from .engine import Trainer


def default_store_path() -> Path:
    """The results store: $R18LAB_STORE, else runs/index.sqlite under the current directory."""
    return Path(os.environ.get("R18LAB_STORE", "runs/index.sqlite"))


def open_store(path: str | Path | None = None) -> RunStore:
    p = Path(path) if path else default_store_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise R18Error(f"cannot create the results store folder {p.parent} ({e.strerror}); "
                       "set R18LAB_STORE to a writable path") from None
    return RunStore(p)


def execute(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
            run_id: str | None = None, store: RunStore | None = None, protocol: str | None = None,
            tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `cfg` into `out_dir`, recording start, finish or failure in the store.

    The folder is checked and locked first: a command refused there (a changed config on --resume, a finished
    run without --overwrite, a folder in use) changes neither the folder nor the store."""
    out = Path(out_dir)
    run_id = run_id or str(out.resolve())
    trainer = Trainer(cfg, out, label=run_id if protocol else "")
    trainer.claim(resume=resume, overwrite=overwrite)
    try:
        if trainer.finished:
            return trainer.fit(resume=True)  # already done: its summary, nothing rewritten
        if store is not None:
            store.start(run_id, config=config_dict(cfg), out_dir=out, protocol=protocol, tags=tags)
        try:
            summary = trainer.fit(resume=resume, overwrite=overwrite)
        except TrainingDiverged as e:
            if trainer.world.is_main:  # under DDP only rank 0 writes the folder
                atomic_write_text(out / "summary.json", json.dumps({"status": "diverged", "message": str(e)},
                                                                   indent=2))
            if store is not None:
                store.finish(run_id, {}, status="diverged", message=str(e))
            raise
        except KeyboardInterrupt:
            if store is not None:
                store.finish(run_id, {}, status="failed", message=INTERRUPTED_MESSAGE)
            raise
        except Exception as e:
            if store is not None:
                store.finish(run_id, {}, status="failed", message=str(e) or type(e).__name__)
            raise
    finally:
        trainer.release()
    if store is not None:
        store.finish(run_id, {**summary["final"], "train_seconds": summary["train_seconds"],
                              "steps": summary["steps"], "identity": summary["identity"]})
    return summary
