"""The mask file `masks.safetensors`: per pruned weight its mask, the dense weights scored at pruning time and the
weights at initialisation (θ0), with what made the mask in the metadata. Written by the `prune` hook into the run
folder; read by `analyze masks` and by `prune mask_file: PATH`."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..models.io import atomic_save_tensors, read_tensors

MASKS_FILE = "masks.safetensors"
META_KEY = "r18lab_masks"
KINDS = ("mask", "weight", "init")


@dataclass
class MaskFile:
    """masks: name → bool tensor (the weight's shape); weights: dense weights at pruning time (θ_N, before masking);
    init: θ0 (may be empty); meta: method, density, scope, pretrain_steps, prune_step, model spec, …"""

    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    init: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def density(self) -> float:
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return kept / max(total, 1)


def save_masks(path: str | Path, masks: MaskFile) -> None:
    """Atomic safetensors write; keys `mask.<param>`, `weight.<param>`, `init.<param>`."""
    tensors: dict[str, torch.Tensor] = {}
    for kind, group in zip(KINDS, (masks.masks, masks.weights, masks.init)):
        for name, t in group.items():
            tensors[f"{kind}.{name}"] = t.to(torch.uint8) if kind == "mask" else t.detach().float().clone()
    atomic_save_tensors(tensors, Path(path), {META_KEY: json.dumps(masks.meta)})


def load_masks(path: str | Path) -> MaskFile:
    """Read a mask file (a run folder means its masks.safetensors); one clear line if it is none."""
    path = Path(path)
    if path.is_dir():
        path = path / MASKS_FILE
    if not path.is_file():
        raise CheckpointError(f"mask file {path} does not exist; give a run folder trained with the prune hook "
                              f"or the path of its {MASKS_FILE}")
    tensors, meta = read_tensors(path)
    if META_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not an r18lab mask file (no {META_KEY!r} metadata); "
                              f"give a {MASKS_FILE} written by the prune hook")
    groups: dict[str, dict[str, torch.Tensor]] = {k: {} for k in KINDS}
    for key, t in tensors.items():
        kind, _, name = key.partition(".")
        if kind in groups:
            groups[kind][name] = t.bool() if kind == "mask" else t
    info = json.loads(meta[META_KEY])
    order = depth_order(groups["mask"], info)
    return MaskFile(*({n: g[n] for n in order if n in g} for g in (groups[k] for k in KINDS)), info)


def depth_order(names, meta: dict) -> list[str]:
    """Layer names in the model's order: safetensors hands tensors back sorted by name, so the order comes from
    the prune hook's `layer_density` metadata (written in module order); without it, a natural sort."""
    recorded = [n for n in (meta.get("layer_density") or {}) if n in names]
    if set(recorded) == set(names):
        return recorded
    return sorted(names, key=lambda n: [(0, int(t), "") if t.isdigit() else (1, 0, t)
                                        for t in re.split(r"(\d+)", n)])
