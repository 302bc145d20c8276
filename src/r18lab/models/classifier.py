"""A classifier is a backbone plus named heads; `main` is torchvision's `fc`, the others live in `heads`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils import _pytree

from ..errors import ConfigError
from ..registry import BACKBONES, HEADS, TRANSFORMS
from . import heads as _heads  # noqa: F401  (registers the heads)
from . import gramian as _gramian  # noqa: F401  (registers ga, ca_token, multi_fc)
from . import hint as _hint  # noqa: F401  (registers hint, FitNets' regressor: aux output only)
from . import llal as _llal  # noqa: F401  (registers llal, LLAL's loss-prediction module: aux output only)
from . import mobilenet_v2 as _mobilenet_v2  # noqa: F401  (registers the backbones)
from . import efficientnet as _efficientnet  # noqa: F401
from . import resnet as _resnet  # noqa: F401
from . import wrn as _wrn  # noqa: F401
from . import densenet as _densenet  # noqa: F401
from . import vgg as _vgg  # noqa: F401
from . import mixer as _mixer  # noqa: F401
from . import vit as _vit  # noqa: F401
from . import small as _small  # noqa: F401
from . import transforms as _transforms  # noqa: F401  (registers the model transforms)
from . import linearize as _linearize  # noqa: F401  (registers linearize, a transform of the whole model)
from .heads import gradient_gate
from .init import apply_init

BACKBONE_OPTIONS = ("in_channels",)
LEGACY_OPTIONS = ("residual",)  # residual: false is transforms=[no_residual]


@dataclass
class ModelOutput:
    """What every model returns: `logits` per key (`<head>`, and `<head>.<sub>` for a head's sub-heads), pooled
    `features`, `stages` maps when a head asks for them, `aux` head outputs per `<head>.<name>`.

    A registered pytree, so torch.func (grad with has_aux, jvp, vmap) returns it like a tensor.
    """

    logits: dict[str, torch.Tensor]
    features: torch.Tensor
    stages: list[torch.Tensor] = field(default_factory=list)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


_pytree.register_dataclass(ModelOutput)


def sub_key(head: str, name: str) -> str:
    """Key of a head's sub-head logits or aux output: `<head>.<name>` (no "/", which marks peers)."""
    return f"{head}.{name}"


class Classifier(nn.Module):
    """Backbone modules at the top level (torchvision names), `fc` = main head, extra heads in `heads`."""

    def __init__(self, backbone: nn.Module, num_classes: int, extra_heads: dict[str, nn.Module],
                 gate: float, with_main: bool = True, transforms: Sequence[Any] = (),
                 own_classes: Mapping[str, int] | None = None) -> None:
        super().__init__()
        #: heads with their own output units (another label set than the run's): evaluation on the run's labels
        #: skips them
        self.own_classes = dict(own_classes or {})
        for name, module in backbone.named_children():
            self.add_module(name, module)
        for name, param in backbone.named_parameters(recurse=False):  # e.g. ViT's cls_token, pos_embed
            self.register_parameter(name, param)
        object.__setattr__(self, "_backbone", backbone)  # shares the modules above; not a child
        self.num_features = backbone.num_features
        self.num_classes = num_classes
        self.gate = float(gate)
        self.transforms = list(transforms)  # the transforms applied to the backbone, as entries
        self.fc = (nn.Linear(backbone.num_features, num_classes, bias=getattr(backbone, "fc_bias", True))
                   if with_main else None)  # a backbone may drop the bias (the authors' CIFAR DenseNet-121 head)
        self.heads = nn.ModuleDict(extra_heads)
        for name, head in self.heads.items():
            for kind in ("sub_heads", "aux_outputs"):
                names = list(getattr(head, kind, ()))
                if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
                    raise ValueError(f"head {name!r} declares {kind} {names}: "
                                     "they must be distinct, non-empty, without '/'")
            if not produces_logits(head) and (getattr(head, "sub_heads", ()) or not getattr(head, "aux_outputs", ())):
                raise ValueError(f"head {name!r} produces no logits, so it must declare aux_outputs and no sub_heads")
        if len(set(self.logit_names)) != len(self.logit_names):
            raise ValueError(f"logit keys collide: {self.logit_names}")

    @property
    def head_names(self) -> list[str]:
        """The top-level heads that produce logits (what `heads: all` in an objective means)."""
        return (["main"] if self.fc is not None else []) + [h for h, m in self.heads.items() if produces_logits(m)]

    @property
    def head_classes(self) -> dict[str, int]:
        """Output units of each top-level head that produces logits: the run's classes unless it has its own."""
        return {h: self.own_classes.get(h, self.num_classes) for h in self.head_names}

    @property
    def all_head_names(self) -> list[str]:
        """Every top-level head, with those that produce only aux outputs (e.g. hint): what export may keep."""
        return (["main"] if self.fc is not None else []) + list(self.heads)

    @property
    def logit_names(self) -> list[str]:
        """Every key of `ModelOutput.logits`, in order: each head, then its sub-heads as `<head>.<sub>`."""
        subs = {h: [sub_key(h, s) for s in getattr(head, "sub_heads", ())] for h, head in self.heads.items()}
        return [k for h in self.head_names for k in [h, *subs.get(h, [])]]

    @property
    def aux_names(self) -> list[str]:
        """Every key of `ModelOutput.aux`: `<head>.<name>`."""
        return [sub_key(h, a) for h, head in self.heads.items() for a in getattr(head, "aux_outputs", ())]

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
        aux: dict[str, torch.Tensor] = {}
        if self.fc is not None:
            logits["main"] = self.fc(gradient_gate(features, self.gate))
        for name, head in self.heads.items():
            _collect(name, head, head(features, stages), logits, aux)
        return ModelOutput(logits, features, stages, aux)


def produces_logits(head: nn.Module) -> bool:
    """False for a head that returns only aux outputs (`Head.produces_logits`, e.g. hint)."""
    return bool(getattr(head, "produces_logits", True))


def _collect(name: str, head: nn.Module, result: Any, logits: dict, aux: dict) -> None:
    """File one head's result: a tensor is its logits; a mapping gives `logits`, `sub` and `aux` as declared
    (a head with `produces_logits = False` returns {"aux": {...}} only)."""
    if not produces_logits(head):
        if isinstance(result, torch.Tensor) or set(result) != {"aux"}:
            got = "a tensor" if isinstance(result, torch.Tensor) else f"keys {sorted(result)}"
            raise ValueError(f"head {name!r} produces no logits, so it returns {{'aux': {{...}}}}; got {got}")
    else:
        if isinstance(result, torch.Tensor):
            result = {"logits": result}
        unknown = set(result) - {"logits", "sub", "aux"}
        if unknown or "logits" not in result:
            raise ValueError(f"head {name!r} returned keys {sorted(result)}; a head returns logits or "
                             "{'logits': ..., 'sub': {...}, 'aux': {...}}")
        logits[name] = result["logits"]
    for kind, declared, target in (("sub", getattr(head, "sub_heads", ()), logits),
                                   ("aux", getattr(head, "aux_outputs", ()), aux)):
        got = result.get(kind, {})
        if set(got) != set(declared):
            raise ValueError(f"head {name!r} returned {kind} {sorted(got)} but declares {list(declared)}")
        for k in declared:
            target[sub_key(name, k)] = got[k]


class PeerGroup(nn.Module):
    """N independently initialised classifiers trained together (DML, KDCL); peer 0 keeps its keys,
    peer i>0 reports `peer{i}/<key>` for logits (heads and sub-heads) and aux outputs alike."""

    def __init__(self, peers: list[Classifier]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.num_classes = peers[0].num_classes
        self.transforms = peers[0].transforms

    @property
    def head_names(self) -> list[str]:
        return [peer_key(i, h) for i, p in enumerate(self.peers) for h in p.head_names]

    @property
    def all_head_names(self) -> list[str]:
        return [peer_key(i, h) for i, p in enumerate(self.peers) for h in p.all_head_names]

    @property
    def logit_names(self) -> list[str]:
        return [peer_key(i, k) for i, p in enumerate(self.peers) for k in p.logit_names]

    @property
    def aux_names(self) -> list[str]:
        return [peer_key(i, k) for i, p in enumerate(self.peers) for k in p.aux_names]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        logits: dict[str, torch.Tensor] = {}
        aux: dict[str, torch.Tensor] = {}
        first = None
        for i, peer in enumerate(self.peers):
            out = peer(x)
            first = out if first is None else first
            logits.update({peer_key(i, k): v for k, v in out.logits.items()})
            aux.update({peer_key(i, k): v for k, v in out.aux.items()})
        return ModelOutput(logits, first.features, first.stages, aux)


def peer_key(index: int, head: str) -> str:
    """Logit key of a peer's head: peer 0 keeps the plain name."""
    return head if index == 0 else f"peer{index}/{head}"


# -- entries and options -----------------------------------------------------------------------------------
def split_entry(entry: Any, kind: str) -> tuple[str, dict[str, Any]]:
    """A list entry written as "name" or {name: ..., <option>: value}."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        params = dict(entry)
        return params.pop("name"), params
    raise ConfigError(f"a {kind} entry is a name or {{name: ..., <option>: value}}, got {entry!r}")


def _entries(items: Any, kind: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(items, (str, Mapping)) or not isinstance(items, Sequence):
        raise ConfigError(f"{kind}s must be a list, got {items!r}")
    return [split_entry(e, kind) for e in items]


def _check_params(kind: str, name: str, factory: Any, params: dict, fixed: int) -> None:
    """One line for an option `factory` (after its `fixed` leading arguments) does not take."""
    sig = inspect.signature(factory).parameters.values()
    valid = [p.name for p in list(sig)[fixed:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in params:
        if key not in valid:
            raise ConfigError(f"unknown option {key!r} for {kind} {name!r}; valid: {', '.join(valid) or 'none'}")


def option_owner(key: str) -> str | None:
    """The head a flat option `<head>_<option>` belongs to: the longest registered head name followed by "_"."""
    return max((h for h in HEADS.names() if key.startswith(h + "_")), key=len, default=None)


def backbone_options(name: str) -> tuple[str, ...]:
    """Options backbone `name` takes besides stem and width (e.g. wrn: depth, widen, dropout)."""
    return BACKBONE_OPTIONS + tuple(getattr(BACKBONES.get(name), "options", ()))


def resolve_heads(heads: Any, options: dict[str, Any], stem: str,
                  backbone_keys: Sequence[str] = BACKBONE_OPTIONS) -> dict[str, dict[str, Any]]:
    """Head name -> its options, from entries (name or {name, **options}) and flat `<head>_<option>` keys."""
    entries = _entries(heads, "head")
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):  # [] = the backbone alone (a feature extractor, e.g. `export --keep none`)
        raise ConfigError(f"heads must be a list of distinct names, got {names}")
    opts = {n: dict(p) for n, p in entries}
    kinds = {n: head_type(n, p) for n, p in opts.items()}
    for key, value in options.items():
        if key in tuple(backbone_keys) + LEGACY_OPTIONS:
            continue
        owner = option_owner(key)
        if owner is None:
            raise ConfigError(f"unknown model option {key!r}; options are "
                              f"{', '.join(tuple(backbone_keys) + LEGACY_OPTIONS)} or <head>_<option> for a head in "
                              f"heads={names}")
        if owner not in opts:
            raise ConfigError(f"unknown model option {key!r}: head {owner!r} is not in heads={names}; "
                              "add the head or drop the option")
        opt = key[len(owner) + 1:]
        if opt in opts[owner]:
            raise ConfigError(f"option {opt!r} of head {owner!r} is given twice ({key} and in its heads entry); "
                              "keep one")
        opts[owner][opt] = value
    for n, p in opts.items():
        factory = HEADS.get(kinds[n])
        own = {k: p.pop(k) for k in HEAD_ENTRY_KEYS if k in p}
        _check_params("head", n, factory, p, 2)
        opts[n] = {**getattr(factory, "stem_defaults", {}).get(stem, {}), **p, **own}
    return opts


#: keys of a head entry that every head takes: `type` (the registered head it is, when its name is not one) and
#: `classes` (its own output units, when it answers another label set than the run's, e.g. a consolidation
#: student's `gen` head with the generalist's classes)
HEAD_ENTRY_KEYS = ("type", "classes")


def head_type(name: str, params: dict[str, Any]) -> str:
    """The registered head an entry builds: its `type`, else its name; `main` is the model's own `fc`."""
    kind = params.get("type", name)
    if not isinstance(kind, str):
        raise ConfigError(f"head {name!r}: type must be a registered head name, got {kind!r}")
    if name == "main" and kind != "main":
        raise ConfigError(f"head 'main' is the model's fc and cannot take type {kind!r}; give the head another name")
    if "/" in name or "." in name or not name:
        raise ConfigError(f"head name {name!r} must be non-empty, without '/' or '.'")
    HEADS.get(kind)
    classes = params.get("classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ConfigError(f"head {name!r}: classes must be an integer >= 1 (its own output units), got {classes!r}")
    if name == "main" and classes is not None:
        raise ConfigError("head 'main' answers the run's classes; drop its classes option or add a named head "
                          "{name: NAME, type: main, classes: N}")
    return kind


def resolve_transforms(transforms: Any, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, params) of each model transform in order; the legacy option `residual: false` is `no_residual`."""
    steps = _entries(transforms, "transform")
    residual = options.get("residual", True)
    if not isinstance(residual, bool):
        raise ConfigError(f"model option residual must be true or false, got {residual!r}")
    if not residual and "no_residual" not in [n for n, _ in steps]:
        steps.insert(0, ("no_residual", {}))
    for n, p in steps:
        _check_params("model transform", n, TRANSFORMS.get(n), p, 1)
    kinds = [acts_on_model(n) for n, _ in steps]
    if any(a and not b for a, b in zip(kinds, kinds[1:])):
        first = next(n for (n, _), k in zip(steps, kinds) if k)
        raise ConfigError(f"model transform {first} acts on the whole model, so it must come after every backbone "
                          f"transform; reorder model.transforms={[n for n, _ in steps]}")
    return steps


def acts_on_model(name: str) -> bool:
    """True for a transform of the built classifier (e.g. linearize), False for one of the backbone."""
    return getattr(TRANSFORMS.get(name), "acts_on", "backbone") == "model"


def create_model(name: str, *, num_classes: int, stem: str = "cifar", width: float = 1.0,
                 heads: Sequence[str | dict] = ("main",), gate: float | None = None, peers: int = 1,
                 transforms: Sequence[str | dict] = (), init: str = "default", **options) -> nn.Module:
    """Build a classifier: backbone `name`, rewritten by the backbone `transforms` in order, plus named heads
    (`main` = linear `fc`; an entry is a name or {name, **options}), re-initialised by `init`, then rewritten by
    the model transforms (e.g. linearize); optionally as a peer group."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be ≥ 1, got {num_classes}")
    if width <= 0:
        raise ConfigError(f"width must be > 0, got {width}")
    if peers < 1:
        raise ConfigError(f"peers must be ≥ 1, got {peers}")
    backbone_keys = backbone_options(name)
    head_opts = resolve_heads(heads, options, stem, backbone_keys)
    steps = resolve_transforms(transforms, options)
    extra = [h for h in head_opts if h != "main"]
    backbone_kw = {k: v for k, v in options.items() if k in backbone_keys}
    if gate is None:
        gate = 0.0 if any(getattr(HEADS.get(head_opts[h].get("type", h)), "gates_main", False) for h in extra) else 1.0
    applied = [n if not p else {"name": n, **p} for n, p in steps]

    def one() -> nn.Module:
        backbone = BACKBONES.get(name)(stem=stem, width=width, **backbone_kw)
        for t, params in steps:
            if not acts_on_model(t):
                backbone = TRANSFORMS.get(t)(backbone, **params)
        built = {}
        for h in extra:
            params = dict(head_opts[h])
            kind, classes = params.pop("type", h), params.pop("classes", None)
            built[h] = HEADS.get(kind)(backbone.num_features, classes or num_classes, **params)
        model: nn.Module = Classifier(backbone, num_classes, built, gate, with_main="main" in head_opts,
                                      transforms=applied,
                                      own_classes={h: o["classes"] for h, o in head_opts.items() if o.get("classes")})
        apply_init(model, init)
        for t, params in steps:
            if acts_on_model(t):
                model = TRANSFORMS.get(t)(model, **params)
        return model

    return one() if peers == 1 else PeerGroup([one() for _ in range(peers)])


def export_state(model: nn.Module, keep: list[str], peer: int = 0) -> dict[str, torch.Tensor]:
    """State dict with only the kept heads; keeping just `main` gives the plain torchvision layout."""
    if isinstance(model, PeerGroup):
        model = model.peers[peer]
    have = list(getattr(model, "all_head_names", model.head_names))  # aux-only heads (hint) may be kept too
    unknown = [h for h in keep if h not in have]
    if unknown:
        raise ConfigError(f"cannot keep head(s) {unknown}: the model has {have}")
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc.") and "main" not in keep:
            continue
        if key.startswith("heads.") and key.split(".")[1] not in keep:
            continue
        state[key] = value.detach().clone().contiguous()
    return state


def stage_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's stage maps (layer1..layer4 for a ResNet) of a classifier on input `x`, heads not run
    (e.g. a frozen teacher's hint targets); a peer group gives peer 0's."""
    if isinstance(model, PeerGroup):
        model = model.peers[0]
    backbone = getattr(model, "_backbone", None)
    if backbone is None:
        raise ConfigError(f"a {type(model).__name__} model exposes no backbone stage maps (a linearised model's "
                          "are not its function's); use a plain classifier")
    return backbone.forward_features(x, stages=True)[1]
