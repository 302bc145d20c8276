"""Checkpoints without pickle: weights as safetensors, optimizer/hook/RNG state as safetensors + JSON; atomic writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_target
from ..errors import CheckpointError, R18Error

from ..models.io import (MODEL_META_KEY, atomic_save_tensors, load_weights, model_spec_of,  # noqa: F401
                         read_tensors, save_model)


def atomic_write_text(path: Path, text: str) -> None:
    """Text file written atomically (temp file + fsync + rename); disk full or no permission is one line."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path) as tmp:
            tmp.write_text(text)
    except OSError as e:
        raise R18Error(f"cannot write {path}: {e.strerror or e}; free disk space or choose a writable --out "
                       "(the previous file, if any, is unchanged)") from None


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split the optimizer state into tensors (safetensors) and a JSON-able list of group settings."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, [{"groups": groups, "scalars": scalars}]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: list[dict]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, sc in info[0]["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    groups = info[0]["groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
