"""Start a model from another checkpoint's weights (`model.init_from`): the whole backbone, and chosen heads copied
into named heads (e.g. a generalist's `main` classifier into a consolidation student's `gen` head, paper 001 §2).

Works on r18lab weights and on plain torchvision/timm-style state dicts (torchvision names: conv1, bn1,
layer1.0.conv1, ..., fc) as safetensors or as a `.pth` read with `torch.load(weights_only=True)` (tensors only).
A backbone whose published files name some tensors differently declares `foreign_key(key) -> our key` (DenseNet's
`classifier` and old `norm.1` names, VGG's `classifier.6`, EfficientNet's `classifier.1`, timm's `head`)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .io import read_state_dict, state_mismatch

HEAD_PREFIXES = ("fc.", "heads.")


def head_keys(keys, head: str) -> dict[str, str]:
    """A head's state-dict keys by their name inside the head: `main` is torchvision's `fc` (weight, bias); a named
    head lives under `heads.<name>.`, and a linear one (`type: main`, all under `heads.<name>.fc.`) reads as an fc."""
    prefix = "fc." if head == "main" else f"heads.{head}."
    own = [k for k in keys if k.startswith(prefix)]
    if head != "main" and own and all(k.startswith(prefix + "fc.") for k in own):
        prefix += "fc."
    return {k[len(prefix):]: k for k in own}


def is_backbone_key(key: str) -> bool:
    return not key.startswith(HEAD_PREFIXES)


def init_from_checkpoint(model: nn.Module, checkpoint: str | Path, heads: Mapping[str, str] | None = None) -> dict:
    """Copy every backbone tensor of `checkpoint` into `model` (the architectures must match exactly) and each
    `heads[student_head] = checkpoint_head`; other heads keep their fresh initialisation. Returns what was copied."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} does not exist; give a weights file (model.safetensors)")
    if hasattr(model, "peers"):
        raise ConfigError("model.init_from starts one model; with model.peers > 1 every peer would be identical — "
                          "drop init_from or set model.peers=1")
    try:
        source, _ = read_state_dict(path)
    except CheckpointError as e:
        raise CheckpointError(f"model.init_from: {e}") from None
    rename = getattr(getattr(model, "_backbone", None), "foreign_key", None)
    if rename is not None:
        source = {rename(k): v for k, v in source.items()}
    own = model.state_dict()
    mine = [k for k in own if is_backbone_key(k)]
    # BatchNorm's step counter is absent from files saved before PyTorch 0.4 (torchvision's DenseNet weights) and
    # affects nothing unless momentum is None: a missing one keeps its fresh value
    counters = [k for k in mine if k.endswith(".num_batches_tracked")]
    detail = state_mismatch({k: own[k] for k in mine}, {k: v for k, v in source.items() if is_backbone_key(k)},
                            optional=counters)
    if detail:
        raise CheckpointError(f"model.init_from: the backbone of {path} does not fit this model ({detail}); use "
                              "the architecture it was trained with (model.name, width, stem, transforms)")
    copied = {k: source[k] for k in mine if k in source}
    available = sorted({("main" if k.startswith("fc.") else k.split(".")[1]) for k in source if not is_backbone_key(k)})
    for student_head, source_head in (heads or {}).items():
        dst, src = head_keys(own, student_head), head_keys(source, source_head)
        if not dst:
            raise ConfigError(f"model.init_from.heads: this model has no head {student_head!r}; "
                              f"add it to model.heads")
        if not src:
            raise ConfigError(f"model.init_from.heads: {path} has no head {source_head!r}; it has {available}")
        for local, k in dst.items():
            s = src.get(local)
            if s is None or source[s].shape != own[k].shape:
                got = tuple(source[s].shape) if s is not None else "nothing"
                raise ConfigError(f"model.init_from.heads: head {student_head!r} cannot take {source_head!r} of {path}: "
                                  f"{k} is {tuple(own[k].shape)} but the checkpoint has {got} (different classes or "
                                  "head type); give the head the source's classes or drop the mapping")
            copied[k] = source[s]
    with torch.no_grad():
        for k, v in copied.items():
            own[k].copy_(v.to(own[k].dtype))
    return {"backbone": len(mine), "heads": dict(heads or {})}
