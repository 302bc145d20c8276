"""The objective seam: `(outputs, batch) -> named loss terms`; the engine sums and logs them.

An objective is built once from its config entry and an `ObjectiveContext`, declares the names of the terms it
logs (`term_names()`), and computes them (`compute(out, batch)`). Every objective takes the generic parameter
`tag`, handled here once: it renames the terms (`kd` → `kd:t2`, `ce/main` → `ce:t2/main`) so that two entries
of the same objective (e.g. two `kd` entries, each with its own teacher) log distinct terms;
`build_objectives` refuses a list in which two entries would log the same term name.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

import torch

from ..errors import ConfigError
from ..registry import OBJECTIVES

if TYPE_CHECKING:  # only for annotations: objectives need no model code at import time
    from ..models.io import LoadedModel, Preprocessing

#: parameters every objective accepts, handled by `build_objective` rather than by the objective's class
GENERIC_PARAMS = ("tag", "from_epoch", "until_epoch")  # accepted by every objective
_TAG = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass
class Batch:
    """One training batch as the student sees it: `x` augmented and normalised with the student's
    preprocessing (`ObjectiveContext.preprocessing`), `y` the integer labels, `epoch` the 0-based index of the
    training epoch it belongs to (a Python int set by the engine, so an objective may change with the epoch
    without a host sync; None outside a training loop)."""

    x: torch.Tensor
    y: torch.Tensor
    epoch: int | None = None
    #: training progress in epochs, epoch + batch/batches_per_epoch (a Python float; ramps without a host sync)
    progress: float | None = None
    #: set by a composing objective (MixMatch): soft targets, one row per row of `x`, whose first `labelled` rows
    #: stem from the labelled batch and the rest from unlabelled images; None for a plain batch
    soft: torch.Tensor | None = None
    labelled: int | None = None


@dataclass
class ObjectiveContext:
    """What an objective may need when it is built.

    `load_checkpoint(path)` rebuilds a model from its weights file and returns it already on `device`
    (None: objectives fall back to `r18lab.models.io.load_checkpoint(path, device)`); `preprocessing` is the
    student's input normalisation, the one `Batch.x` is normalised with."""

    head_names: list[str]
    num_classes: int
    device: torch.device
    label_smoothing: float = 0.0
    load_checkpoint: Callable[[str], "LoadedModel"] | None = None
    preprocessing: "Preprocessing | None" = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: every key of the model output's logits (top-level heads, sub-heads `ga.0`, peers `peer1/main`) and aux
    logit_names: list[str] = field(default_factory=list)
    aux_names: list[str] = field(default_factory=list)
    #: the student's built top-level heads by name (a peer group's peer 0), read-only, so an objective can check
    #: a head's declared options when it is built (e.g. hint's `stage`, `teacher_channels`); {} when unknown
    head_modules: dict[str, Any] = field(default_factory=dict)
    #: output units of each top-level head (a head with its own classes answers another label set); {} = unknown,
    #: every head then has `num_classes`
    head_classes: dict[str, int] = field(default_factory=dict)

    def classes_of(self, head: str) -> int:
        """Output units of `head`: its own classes, else the run's."""
        return self.head_classes.get(head, self.num_classes)

    def load(self, path: str) -> "LoadedModel":
        """`load_checkpoint(path)`, or the library's loader onto `device` when the context has none."""
        if self.load_checkpoint is not None:
            return self.load_checkpoint(path)
        from ..models.io import load_checkpoint
        return load_checkpoint(path, self.device)


#: a term whose objective part is `info` (e.g. `info/kl/gen`, `info:t2/agree/gen`) is logged, never optimised
MONITOR = "info"


def is_monitor(term: str) -> bool:
    """True for a logged-only term (`info/...`, also when tagged `info:TAG/...`): the engine leaves it out of the loss."""
    return term.split("/", 1)[0].split(":", 1)[0] == MONITOR


def tag_term(term: str, tag: str | None) -> str:
    """`kd` → `kd:TAG`; `ce/main` → `ce:TAG/main` (the tag joins the objective's part of the name)."""
    if not tag:
        return term
    first, sep, rest = term.partition("/")
    return f"{first}:{tag}{sep}{rest}"


class Objective:
    """Base: subclasses implement `compute(out, batch) -> {term: scalar tensor}` and `term_names()`.

    Calling the objective returns `compute`'s terms renamed by the entry's `tag` (see `tag_term`); subclasses
    do not override `__call__`, so the tag is applied in one place."""

    tag: str | None = None
    name: str = "objective"
    #: augmented views of each unlabelled image this objective wants per step; > 0 makes it the run's composer:
    #: the engine passes it the labelled batch and the unlabelled views (`compose`) and forwards what it returns
    unlabelled_views: int = 0
    #: False for an objective that never reads `batch.y` (it may then sit beside a composer, whose batch rows are
    #: no longer the labelled ones)
    uses_labels: bool = True
    from_epoch: int | None = None  # the terms apply while from_epoch ≤ epoch < until_epoch (0-based), else 0
    until_epoch: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:  # an objective written as a callable: its __call__ becomes `compute`
            if "compute" in cls.__dict__:
                raise TypeError(f"{cls.__name__}: implement compute(out, batch) only; the base's __call__ applies the tag")
            cls.compute = cls.__dict__["__call__"]
            del cls.__call__

    def term_names(self) -> list[str]:
        """The names `compute` returns, before tagging, when known at build time ([]: checked when first called)."""
        return []

    def compute(self, out, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def compose(self, batch: Batch, unlabelled: list[torch.Tensor], forward: Callable, step: int) -> Batch:
        """A composer's training batch built from the labelled `batch`, the unlabelled views and the network's
        `forward` (only objectives with `unlabelled_views` > 0 are asked)."""
        raise NotImplementedError  # pragma: no cover

    @property
    def terms(self) -> list[str]:
        """The names this objective logs, tag applied."""
        return [tag_term(t, self.tag) for t in self.term_names()]

    def active(self, epoch: int | None) -> bool:
        """Whether the terms apply in (0-based) `epoch`: from_epoch ≤ epoch < until_epoch, each bound optional."""
        if self.from_epoch is None and self.until_epoch is None:
            return True
        if epoch is None:
            raise ConfigError(f"objective {self.name}: from_epoch/until_epoch need the batch's epoch but Batch.epoch "
                              "is None; build the batch with Batch(x, y, epoch=EPOCH) (the engine does)")
        return (self.from_epoch or 0) <= epoch and (self.until_epoch is None or epoch < self.until_epoch)

    def __call__(self, out, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.active(batch.epoch):  # nothing computed (no teacher forward); constant zeros keep the log stable
            ref = getattr(out, "features", None)
            zero = (ref if ref is not None else next(iter(out.logits.values()))).new_zeros(())
            return {t: zero for t in self.terms}
        terms = self.compute(out, batch)
        return terms if not self.tag else {tag_term(k, self.tag): v for k, v in terms.items()}


def resolve_heads(heads: str | list[str], available: list[str], who: str) -> list[str]:
    """`"all"` → every head; otherwise check every named head exists."""
    if heads == "all":
        if not available:
            raise ConfigError(f"{who}: the model has no head to train (model.heads is empty); "
                              "add a head, e.g. model.heads=[main]")
        return list(available)
    names = [heads] if isinstance(heads, str) else list(heads)
    missing = [h for h in names if h not in available]
    if missing:
        raise ConfigError(f"{who}: unknown head(s) {missing}; the model has {available}")
    return names


def build_objective(name: str, params: dict[str, Any], ctx: ObjectiveContext) -> Objective:
    """Look up `name` in OBJECTIVES and build it, naming any unknown parameter; applies the generic `tag`."""
    cls = OBJECTIVES.get(name)
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p not in ("self", "ctx")] + list(GENERIC_PARAMS)
    for key in params:
        if key not in valid:
            raise ConfigError(f"unknown parameter {key!r} for objective {name!r}; valid: {', '.join(valid)}")
    params = dict(params)
    tag = params.pop("tag", None)
    if tag is not None and (not isinstance(tag, str) or not _TAG.fullmatch(tag)):
        raise ConfigError(f"objective {name}: tag must be a short name of letters, digits, '_', '.' or '-' "
                          f"(e.g. tag: t2), got {tag!r}")
    window = {k: params.pop(k) for k in ("from_epoch", "until_epoch") if params.get(k) is not None}
    params.pop("from_epoch", None), params.pop("until_epoch", None)
    for key, low in (("from_epoch", 0), ("until_epoch", 1)):
        v = window.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ConfigError(f"objective {name}: {key} must be an integer ≥ {low} (the term applies while "
                              f"from_epoch ≤ epoch < until_epoch, 0-based) or null, got {v!r}; e.g. until_epoch: 20")
    if len(window) == 2 and window["from_epoch"] >= window["until_epoch"]:
        raise ConfigError(f"objective {name}: from_epoch {window['from_epoch']} ≥ until_epoch "
                          f"{window['until_epoch']} leaves no epoch; make from_epoch smaller")
    obj = cls(ctx, **params)
    obj.tag, obj.name = tag, name
    obj.from_epoch, obj.until_epoch = window.get("from_epoch"), window.get("until_epoch")
    if window and not obj.terms:
        raise ConfigError(f"objective {name} cannot take from_epoch/until_epoch: its terms are known only when first "
                          "computed; drop the epoch window")
    return obj


Entry = Union[str, dict, tuple]


def _pair(entry: Entry) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, tuple) and len(entry) == 2:
        return entry[0], dict(entry[1])
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    raise ConfigError(f"each objective must be a name or a mapping with a 'name' key, got {entry!r}")


def build_objectives(entries: Iterable[Entry], ctx: ObjectiveContext) -> list[Objective]:
    """Build every objective entry (`name`, `{name: ..., **params}` or `(name, params)`), refusing two entries
    that would log the same term name (the fix: a distinct `tag` on one of them)."""
    built: list[Objective] = []
    owner: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(entries, 1):
        name, params = _pair(entry)
        obj = build_objective(name, params, ctx)
        for term in obj.terms:
            if term in owner:
                j, other = owner[term]
                raise ConfigError(f"objectives #{j} ({other}) and #{i} ({name}) both log the term {term!r}; "
                                  f"give #{i} a distinct tag, e.g. {{name: {name}, tag: t{i}, ...}}")
            owner[term] = (i, name)
        built.append(obj)
    composers = [o for o in built if o.unlabelled_views]
    if len(composers) > 1:
        raise ConfigError(f"objectives {composers[0].name} and {composers[1].name} both build the training batch from "
                          "unlabelled data; keep one of them")
    if composers:
        others = [o.name for o in built if o is not composers[0] and o.uses_labels]
        if others:
            raise ConfigError(f"objective {composers[0].name} trains on mixed batches whose rows are not the labelled "
                              f"ones, so {others[0]} (which reads the labels) cannot sit beside it; drop {others[0]} "
                              f"({composers[0].name} has its own supervised term)")
    return built
