"""Checkpoints without pickle: weights as safetensors, optimizer/hook/RNG state as safetensors + JSON; atomic writes.

A training checkpoint is `epochNNNN.model.safetensors` + `epochNNNN.state.safetensors` + `state.json`; writing
`state.json` last is the commit point, so a kill at any moment leaves the previous checkpoint usable."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.io import (MODEL_META_KEY, atomic_save_tensors, load_weights, model_spec_of,  # noqa: F401
                         read_tensors, save_model, writable_target)


def atomic_write_text(path: Path, text: str) -> None:
    """Text file written atomically (temp file + fsync + rename); disk full or no permission is one line."""
    with writable_target(path) as tmp:
        tmp.write_text(text)


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


# -- tensors inside JSON-like state (hooks may keep masks, running statistics, ...) ------------------------
def split_state(state: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor leaf of a nested dict/list by {"__tensor__": key}, collecting it in `tensors`."""
    if torch.is_tensor(state):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {k: split_state(v, f"{prefix}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    return state


def join_state(state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_state`."""
    if isinstance(state, dict):
        if set(state) == {"__tensor__"}:
            return tensors[state["__tensor__"]]
        return {k: join_state(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [join_state(v, tensors) for v in state]
    return state


def save_training_state(folder: Path, *, epoch: int, step: int, elapsed: float, model: nn.Module,
                        model_spec: dict[str, Any], optimizer: torch.optim.Optimizer, hooks: list,
                        device_flag: dict[str, Any] | None = None) -> None:
    """Write epoch `epoch`'s checkpoint and commit it (state.json last); then drop older checkpoint files."""
    tag = f"epoch{epoch:04d}"
    save_model(model, folder / f"{tag}.model.safetensors", model_spec)
    opt_tensors, opt_info = optimizer_state(optimizer)
    tensors = {f"optim.{k}": v for k, v in opt_tensors.items()}
    tensors.update({f"rng.{k}": v for k, v in rng_state().items()})
    hook_states = [split_state(h.state_dict(), f"hook{i}", tensors) for i, h in enumerate(hooks)]
    atomic_save_tensors(tensors, folder / f"{tag}.state.safetensors")
    state = {"epoch": epoch, "step": step, "tag": tag, "elapsed": elapsed, "optimizer": opt_info,
             "hooks": hook_states, **(device_flag or {})}
    atomic_write_text(folder / "state.json", json.dumps(state))  # the commit point
    for old in folder.glob("epoch*.safetensors"):
        if not old.name.startswith(tag + "."):
            old.unlink(missing_ok=True)


def committed_tag(folder: Path) -> str | None:
    """The tag of the committed checkpoint in `folder`, or None."""
    try:
        return json.loads((folder / "state.json").read_text()).get("tag")
    except (OSError, ValueError, AttributeError):
        return None


def restore_training_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, hooks: list,
                           device: torch.device) -> tuple[int, int, float]:
    """Load the committed checkpoint into model/optimizer/RNG/hooks; (0, 0, 0.0) when there is none."""
    state_path = folder / "state.json"
    if not state_path.is_file():
        return 0, 0, 0.0
    fix = f"delete {folder} to start over, or train again with --overwrite"
    try:
        state = json.loads(state_path.read_text())
        tag = state["tag"]
        load_weights(model, folder / f"{tag}.model.safetensors")
        tensors, _ = read_tensors(folder / f"{tag}.state.safetensors")
        opt = {k[len("optim."):]: v.to(device) for k, v in tensors.items() if k.startswith("optim.")}
        params = [q for g in optimizer.param_groups for q in g["params"]]
        for key, v in opt.items():
            idx = int(key.split(".", 1)[0])
            if idx >= len(params) or (v.ndim > 0 and v.shape != params[idx].shape):
                raise ValueError(f"optimizer state {key} has shape {tuple(v.shape)}, which fits no parameter")
        restore_optimizer(optimizer, opt, state["optimizer"])
        restore_rng({k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")})
        saved_hooks = state["hooks"]
        if len(saved_hooks) != len(hooks):
            raise ValueError(f"{len(saved_hooks)} hook states for {len(hooks)} hooks")
        for hook, hs in zip(hooks, saved_hooks):
            hook.load_state_dict(join_state(hs, {k: v.to(device) for k, v in tensors.items() if k.startswith("hook")}))
        return int(state["epoch"]), int(state["step"]), float(state["elapsed"])
    except CheckpointError as e:
        raise CheckpointError(f"{str(e).split(';')[0]}; {fix}") from None
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint in {folder} is corrupt ({type(e).__name__}: {str(e)[:120]}); {fix}") from None
