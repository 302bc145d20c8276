"""A classifier is a backbone plus named heads; `main` is torchvision's `fc`, the others live in `heads`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import BACKBONES, HEADS
from . import heads as _heads  # noqa: F401  (registers the heads)
from . import resnet as _resnet  # noqa: F401  (registers the backbones)
from .heads import gradient_gate

BACKBONE_OPTIONS = ("in_channels", "residual")


@dataclass
class ModelOutput:
    """What every model returns: logits per head name, pooled features, stage maps when asked for."""

    logits: dict[str, torch.Tensor]
    features: torch.Tensor
    stages: list[torch.Tensor] = field(default_factory=list)


class Classifier(nn.Module):
    """Backbone modules at the top level (torchvision names), `fc` = main head, extra heads in `heads`."""

    def __init__(self, backbone: nn.Module, num_classes: int, extra_heads: dict[str, nn.Module],
                 gate: float, with_main: bool = True) -> None:
        super().__init__()
        for name, module in backbone.named_children():
            self.add_module(name, module)
        object.__setattr__(self, "_backbone", backbone)  # shares the modules above; not a child
        self.num_features = backbone.num_features
        self.num_classes = num_classes
        self.gate = float(gate)
        self.fc = nn.Linear(backbone.num_features, num_classes) if with_main else None
        self.heads = nn.ModuleDict(extra_heads)

    @property
    def head_names(self) -> list[str]:
        return (["main"] if self.fc is not None else []) + list(self.heads)

    def __deepcopy__(self, memo):  # keep `_backbone` sharing the copied children
        import copy
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.deepcopy(v, memo))
        return new

    def forward(self, x: torch.Tensor) -> ModelOutput:
        needs_stages = any(getattr(h, "needs_stages", False) for h in self.heads.values())
        features, stages = self._backbone.forward_features(x, stages=needs_stages)
        logits: dict[str, torch.Tensor] = {}
        if self.fc is not None:
            logits["main"] = self.fc(gradient_gate(features, self.gate))
        for name, head in self.heads.items():
            logits[name] = head(features, stages)
        return ModelOutput(logits, features, stages)


class PeerGroup(nn.Module):
    """N independently initialised classifiers trained together (DML, KDCL); peer 0 keeps its head names,
    peer i>0 reports `peer{i}/<head>`."""

    def __init__(self, peers: list[Classifier]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.num_classes = peers[0].num_classes

    @property
    def head_names(self) -> list[str]:
        return [peer_key(i, h) for i, p in enumerate(self.peers) for h in p.head_names]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        logits: dict[str, torch.Tensor] = {}
        first = None
        for i, peer in enumerate(self.peers):
            out = peer(x)
            first = out if first is None else first
            for h, v in out.logits.items():
                logits[peer_key(i, h)] = v
        return ModelOutput(logits, first.features, first.stages)


def peer_key(index: int, head: str) -> str:
    """Logit key of a peer's head: peer 0 keeps the plain name."""
    return head if index == 0 else f"peer{index}/{head}"


def _head_options(head: str, options: dict) -> dict:
    prefix = head + "_"
    return {k[len(prefix):]: v for k, v in options.items() if k.startswith(prefix)}


def _check_options(extra: list[str], options: dict) -> None:
    for key in options:
        if key in BACKBONE_OPTIONS:
            continue
        owner = key.split("_", 1)[0]
        if owner not in extra:
            raise ConfigError(f"unknown model option {key!r}; options are {', '.join(BACKBONE_OPTIONS)} "
                              f"or <head>_<option> for a head in heads={extra or '[main]'}")
        sig = inspect.signature(HEADS.get(owner).__init__)
        opt = key[len(owner) + 1:]
        if opt not in sig.parameters or opt in ("self", "num_features", "num_classes"):
            valid = [p for p in sig.parameters if p not in ("self", "num_features", "num_classes", "_")]
            raise ConfigError(f"unknown option {opt!r} for head {owner!r}; valid: {', '.join(valid) or 'none'}")


def create_model(name: str, *, num_classes: int, stem: str = "cifar", width: float = 1.0,
                 heads: tuple[str, ...] | list[str] = ("main",), gate: float | None = None,
                 peers: int = 1, **options) -> nn.Module:
    """Build a classifier: backbone `name` + named heads (`main` = linear `fc`), optional peer group."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
    if width <= 0:
        raise ConfigError(f"width must be > 0, got {width}")
    if peers < 1:
        raise ConfigError(f"peers must be ≥ 1, got {peers}")
    heads = list(heads)
    if len(set(heads)) != len(heads) or not heads:
        raise ConfigError(f"heads must be a non-empty list of distinct names, got {heads}")
    extra = [h for h in heads if h != "main"]
    for h in extra:
        HEADS.get(h)
    _check_options(extra, options)
    if stem == "imagenet" and "fr" in extra:
        options.setdefault("fr_dim", 256)  # paper 000, appendix A: f = 256 for ImageNet-size inputs
    backbone_kw = {k: v for k, v in options.items() if k in BACKBONE_OPTIONS}
    if gate is None:
        gate = 0.0 if any(HEADS.get(h).gates_main for h in extra) else 1.0

    def one() -> Classifier:
        backbone = BACKBONES.get(name)(stem=stem, width=width, **backbone_kw)
        built = {h: HEADS.get(h)(backbone.num_features, num_classes, **_head_options(h, options))
                 for h in extra}
        return Classifier(backbone, num_classes, built, gate, with_main="main" in heads)

    return one() if peers == 1 else PeerGroup([one() for _ in range(peers)])


def export_state(model: nn.Module, keep: list[str], peer: int = 0) -> dict[str, torch.Tensor]:
    """State dict with only the kept heads; keeping just `main` gives the plain torchvision layout."""
    if isinstance(model, PeerGroup):
        model = model.peers[peer]
    unknown = [h for h in keep if h not in model.head_names]
    if unknown:
        raise ConfigError(f"cannot keep head(s) {unknown}: the model has {model.head_names}")
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc.") and "main" not in keep:
            continue
        if key.startswith("heads.") and key.split(".")[1] not in keep:
            continue
        state[key] = value.detach().clone().contiguous()
    return state
