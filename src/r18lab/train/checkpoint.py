"""Checkpoints without pickle: weights as safetensors, optimizer/hook/RNG state as safetensors + JSON; atomic writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_target
from ..errors import CheckpointError, R18Error

MODEL_META_KEY = "r18lab.model"


def _writable(path: Path):
    """`atomic_target(path)` after creating its folder; a folder that cannot be made is one clear line."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise R18Error(f"cannot write {path}: {e.strerror}; choose a writable output directory (--out)") from None
    return atomic_target(path)


def atomic_write_text(path: Path, text: str) -> None:
    """Text file written atomically (temp file + fsync + rename)."""
    with _writable(path) as tmp:
        tmp.write_text(text)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (temp file + fsync + rename)."""
    with _writable(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata; a missing or corrupt file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a model.safetensors file")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({e}); "
                              "re-export it or point to another file") from None


def save_model(model: nn.Module, path: Path, model_spec: dict[str, Any] | None = None,
               state: dict[str, torch.Tensor] | None = None) -> None:
    meta = {MODEL_META_KEY: json.dumps(model_spec)} if model_spec is not None else None
    atomic_save_tensors(state if state is not None else model.state_dict(), path, meta)


def load_weights(model: nn.Module, path: Path) -> dict[str, str]:
    """Strictly load weights into `model`; a mismatch names the first differing keys."""
    tensors, meta = read_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    bad_shape = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or bad_shape:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {bad_shape[0]} is {tuple(tensors[bad_shape[0]].shape)}, "
                       f"model wants {tuple(own[bad_shape[0]].shape)}")
        raise CheckpointError(f"checkpoint {path} does not fit this architecture ({detail}); "
                              "build the model with the config the checkpoint was trained with")
    model.load_state_dict(tensors, strict=True)
    return meta


def model_spec_of(path: Path) -> dict[str, Any]:
    _, meta = read_tensors(path)
    if MODEL_META_KEY not in meta:
        raise CheckpointError(f"{path} carries no r18lab model description; pass the architecture explicitly")
    return json.loads(meta[MODEL_META_KEY])


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
